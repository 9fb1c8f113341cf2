"""Health, readiness, Prometheus metrics and the logs an operator reads."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner.ingress import create_app
from runner.logs import JsonFormatter
from runner.runtime import Runtime
from tests.conftest import RuntimeFactory, deliver, load_payload
from tests.test_dashboard import Flaky, SuppressionKeeper, received, settle

ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

FAMILIES = {
    "agentmail_runner_deliveries": "counter",
    "agentmail_runner_verification_failures": "counter",
    "agentmail_runner_events_finished": "counter",
    "agentmail_runner_plugin_calls": "counter",
    "agentmail_runner_plugin_seconds": "histogram",
    "agentmail_runner_actions": "counter",
    "agentmail_runner_queue_depth": "gauge",
    "agentmail_runner_queue_lag_seconds": "gauge",
    "agentmail_runner_suppressions": "gauge",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(rt: Runtime) -> tuple[dict[str, str], Samples]:
    """The families (name: type) and samples ((name, labels): value) of /metrics."""
    response = create_app(rt).test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    families: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        families[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def readyz(rt: Runtime) -> tuple[int, dict[str, Any]]:
    response = create_app(rt).test_client().get("/readyz")
    body: dict[str, Any] = response.get_json()
    return response.status_code, body


def lose_the_store(rt: Runtime, directory: Path) -> None:
    """Pooled connections dropped and the file's directory removed: the next
    connection fails in SQLite itself."""
    rt.store.engine.dispose()
    shutil.rmtree(directory)


# -- /healthz and /readyz --------------------------------------------------------------


def test_healthz_answers_while_the_process_lives(make_runtime: RuntimeFactory) -> None:
    response = create_app(make_runtime()).test_client().get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_reports_the_store_the_queue_lag_and_each_plugins_last_outcomes(
    make_runtime: RuntimeFactory,
) -> None:
    flaky = Flaky()
    rt = make_runtime(extra_plugins=(("flaky", flaky),), max_attempts=1)
    code, before = readyz(rt)
    assert code == 200
    assert before["checks"]["plugins"]["flaky"] == {
        "status": "loaded",
        "last_success_at": None,
        "last_error_at": None,
        "last_error": None,
    }

    deliver(rt, received())
    settle(rt)
    code, after = readyz(rt)

    assert code == 200 and after["ready"] is True
    checks = after["checks"]
    assert checks["store"] == "ok"
    assert checks["queue_lag_seconds"] == 0.0
    assert checks["dry_run"] is False
    autoresponder, failing = (
        checks["plugins"]["autoresponder"],
        checks["plugins"]["flaky"],
    )
    assert ISO_TIME.match(autoresponder["last_success_at"])
    assert autoresponder["last_error"] is None
    assert failing["last_success_at"] is None
    assert ISO_TIME.match(failing["last_error_at"])
    assert failing["last_error"].startswith(
        "route: RuntimeError: the classifier is down (at "
    )


def test_readyz_keeps_a_plugins_last_success_after_a_later_error(
    make_runtime: RuntimeFactory,
) -> None:
    flaky = Flaky()
    flaky.broken = False
    rt = make_runtime(extra_plugins=(("flaky", flaky),), max_attempts=1)
    deliver(rt, received())
    settle(rt)
    flaky.broken = True
    deliver(rt, received())
    settle(rt)

    plugin = readyz(rt)[1]["checks"]["plugins"]["flaky"]

    assert ISO_TIME.match(plugin["last_success_at"])
    assert ISO_TIME.match(plugin["last_error_at"])
    assert plugin["last_error_at"] >= plugin["last_success_at"]


def test_readyz_measures_the_lag_of_the_oldest_due_event(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    rt.store.insert_event(
        event_key="waiting",
        event_id="waiting",
        delivery_id=None,
        event_type="message.received",
        payload=json.dumps(received()),
        scheme="test",
        now=time.time() - 30,
    )

    lag = readyz(rt)[1]["checks"]["queue_lag_seconds"]

    assert 30 <= lag < 60


def test_readyz_names_a_plugin_that_failed_to_load(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(plugins="[plugins.not_installed]\n")

    plugin = readyz(rt)[1]["checks"]["plugins"]["not_installed"]

    assert plugin["status"] == "failed"
    assert plugin["error"] == (
        "is configured in plugins.toml but not installed: install its package, or "
        "remove [plugins.not_installed]"
    )


def test_readyz_answers_503_when_the_store_is_down(
    make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "store"
    directory.mkdir()
    rt = make_runtime(database=str(directory / "runner.db"))
    lose_the_store(rt, directory)

    code, body = readyz(rt)

    assert code == 503
    assert body["ready"] is False
    assert body["checks"]["store"].startswith("unavailable: ")
    assert "queue_lag_seconds" not in body["checks"]


# -- /metrics --------------------------------------------------------------------------


def test_every_metric_family_is_served_in_prometheus_format(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()

    families, _ = scrape(rt)

    assert {name: families.get(name) for name in FAMILIES} == FAMILIES


def test_every_metric_moves_with_what_the_runner_does(
    make_runtime: RuntimeFactory, double: Any
) -> None:
    rt = make_runtime(
        extra_plugins=(("flaky", Flaky()), ("bounce_tracker", SuppressionKeeper())),
        max_attempts=2,
    )
    _, before = scrape(rt)
    payload = received()

    deliver(rt, payload)
    deliver(rt, payload)
    deliver(rt, b'{"event_type": "message.received"}', signed=False)
    _, queued = scrape(rt)
    settle(rt)
    deliver(rt, load_payload("message-bounced.json"))
    settle(rt)
    _, after = scrape(rt)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    deliveries = "agentmail_runner_deliveries_total"
    assert moved(deliveries, outcome="accepted") == 2
    assert moved(deliveries, outcome="duplicate") == 1
    assert moved(deliveries, outcome="unauthenticated") == 1
    assert moved("agentmail_runner_verification_failures_total") == 1
    assert value(queued, "agentmail_runner_queue_depth", status="pending") == 1
    assert value(after, "agentmail_runner_queue_depth", status="pending") == 0
    assert value(after, "agentmail_runner_queue_depth", status="dead") == 1
    assert value(after, "agentmail_runner_queue_depth", status="done") == 1
    finished = "agentmail_runner_events_finished_total"
    assert moved(finished, status="retry") == 1
    assert moved(finished, status="dead") == 1
    assert moved(finished, status="done") == 1
    calls = "agentmail_runner_plugin_calls_total"
    assert moved(calls, plugin="flaky", stage="route", outcome="failed") == 2
    assert moved(calls, plugin="autoresponder", stage="act", outcome="acted") == 1
    durations = "agentmail_runner_plugin_seconds_count"
    assert moved(durations, plugin="flaky", stage="route") == 2
    assert moved(durations, plugin="bounce_tracker", stage="observe") == 1
    assert moved("agentmail_runner_actions_total", kind="reply", outcome="done") == 1
    assert moved("agentmail_runner_suppressions") == 1
    assert len(double.sent) == 1


def test_the_queue_lag_gauge_reads_the_oldest_due_event(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    rt.store.insert_event(
        event_key="waiting",
        event_id="waiting",
        delivery_id=None,
        event_type="domain.verified",
        payload="{}",
        scheme="test",
        now=time.time() - 120,
    )

    _, samples = scrape(rt)

    assert 120 <= value(samples, "agentmail_runner_queue_lag_seconds") < 180
    rt.drain()
    assert value(scrape(rt)[1], "agentmail_runner_queue_lag_seconds") == 0


def test_the_suppression_gauge_counts_only_suppressed_keys(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(extra_plugins=(("bounce_tracker", SuppressionKeeper()),))
    for n in range(3):
        rt.store.state_set("bounce_tracker", f"suppressed:{n}@example.com", True)
    rt.store.state_set("bounce_tracker", "delivered:x@example.com", 1)

    assert value(scrape(rt)[1], "agentmail_runner_suppressions") == 3
    rt.store.state_delete("bounce_tracker", "suppressed:0@example.com")
    assert value(scrape(rt)[1], "agentmail_runner_suppressions") == 2


def test_metrics_are_served_while_the_store_is_down(
    make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "store"
    directory.mkdir()
    rt = make_runtime(database=str(directory / "runner.db"))
    deliver(rt, received())
    lose_the_store(rt, directory)

    families, samples = scrape(rt)

    assert set(FAMILIES) <= set(families)
    assert value(samples, "agentmail_runner_deliveries_total", outcome="accepted") == 1


# -- logs ------------------------------------------------------------------------------


def test_a_json_log_line_carries_the_event_id_passed_in_extra() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("agentmail_runner.test_json_lines")
    logger.addHandler(handler)
    logger.propagate = False
    event_id = str(uuid.uuid4())
    try:
        logger.warning("event %s: done", event_id, extra={"event_id": event_id})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True

    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["event_id"] == event_id
    assert entry["message"] == f"event {event_id}: done"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "agentmail_runner.test_json_lines"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", entry["time"])


def test_trace_plugins_logs_every_hook_call(
    make_runtime: RuntimeFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("AGENTMAIL_RUNNER_TRACE_PLUGINS", "1")
    rt = make_runtime(extra_plugins=(("flaky", Flaky()),), max_attempts=1)
    payload = received()
    deliver(rt, payload)

    with caplog.at_level(logging.INFO, logger="agentmail_runner.trace"):
        settle(rt)

    traced = [
        r.getMessage() for r in caplog.records if r.name == "agentmail_runner.trace"
    ]
    key = payload["event_id"]
    assert traced[0] == f"call flaky.route event={key} attempt=1"
    assert traced[1].startswith(
        f"done flaky.route event={key} status=failed actions=0 "
    )
    assert traced[2] == f"call autoresponder.act event={key} attempt=1"
    assert traced[3].startswith(
        f"done autoresponder.act event={key} status=acted actions=1 "
    )
    assert len(traced) == 4


def test_hook_calls_are_not_traced_by_default(
    make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rt = make_runtime()
    deliver(rt, received())

    with caplog.at_level(logging.DEBUG, logger="agentmail_runner.trace"):
        rt.drain()

    assert not [r for r in caplog.records if r.name == "agentmail_runner.trace"]
