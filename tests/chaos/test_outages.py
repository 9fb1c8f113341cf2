"""Outages of the APIs the runner depends on: AgentMail answering 5xx or 429 or
hanging past the runner's timeout, and the model server doing the same. Events wait
and retry, finish once the API recovers, and no email is sent twice. An exhausted
model quota is not retried at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from runner.runtime import Runtime
from runner.testing.agentmail_double import AgentMailDouble
from runner.testing.openai_double import OpenAIDouble
from tests.chaos.processes import (
    received_event,
    replies_by_source,
    reply_keys_by_source,
    source_of,
)
from tests.conftest import RuntimeFactory, deliver

EVENTS = 12
API_TIMEOUT = 1.0
# The runner retries soon, so that an outage of a few seconds is waited out quickly.
QUICK_RETRIES: dict[str, Any] = {
    "api_timeout_seconds": API_TIMEOUT,
    "retry_base_seconds": 0.1,
    "retry_max_seconds": 0.5,
    "max_attempts": 20,
    "workers": 2,
}


def _deliver_all(rt: Runtime, run: str) -> list[dict[str, Any]]:
    payloads = [received_event(run, i) for i in range(EVENTS)]
    for payload in payloads:
        assert deliver(rt, payload).json["status"] == "accepted"
    return payloads


def _wait_until_settled(rt: Runtime, count: int, timeout: float = 60.0) -> None:
    """Until ``count`` events are done or dead."""
    deadline = time.monotonic() + timeout
    while True:
        by_status = rt.store.count_by_status()
        if by_status.get("done", 0) + by_status.get("dead", 0) == count:
            return
        assert time.monotonic() < deadline, f"not settled: {by_status}"
        time.sleep(0.05)


def _all_answered(double: AgentMailDouble) -> None:
    # A request that outlived the runner's timeout is still being answered.
    double.wait_for(
        lambda: all(r.status is not None for r in double.requests), timeout=10
    )


OUTAGES = {
    # AgentMail's own errors, with and without a Retry-After the SDK honours.
    "500": {"status": 500, "times": 6},
    "503-retry-after": {"status": 503, "times": 9, "retry_after": 1},
    "429-retry-after": {"status": 429, "times": 9, "retry_after": 1},
    # Hanging past the runner's timeout, then sending after all: the runner has given
    # up on the request, yet the email went out.
    "hang-then-send": {"status": None, "times": 6, "delay": API_TIMEOUT + 0.5},
    # Hanging, then failing.
    "hang-then-504": {"status": 504, "times": 6, "delay": API_TIMEOUT + 0.5},
}


@pytest.mark.slow
@pytest.mark.parametrize("outage", OUTAGES.values(), ids=OUTAGES.keys())
def test_an_agentmail_outage_delays_replies_but_sends_each_exactly_once(
    make_runtime: RuntimeFactory, double: AgentMailDouble, outage: dict[str, Any]
) -> None:
    rule = double.fail("POST", r"/reply$", **outage)
    rt = make_runtime(**QUICK_RETRIES)
    payloads = _deliver_all(rt, "agentmail-outage")
    rt.start_workers()

    _wait_until_settled(rt, EVENTS)
    _all_answered(double)

    assert rule.remaining <= 0, "the outage was never felt"
    assert rt.store.count_by_status() == {"done": EVENTS}
    assert replies_by_source(double) == {source_of(p): 1 for p in payloads}
    # Every request for one reply, retries included, carried one idempotency key.
    keys = reply_keys_by_source(double)
    assert {source: len(k) for source, k in keys.items()} == {
        source_of(p): 1 for p in payloads
    }
    failed = [r for r in double.requests if r.status != 200]
    if outage["status"] is not None:
        assert len(failed) == outage["times"]


# -- the model server --------------------------------------------------------------


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIDouble]:
    with OpenAIDouble() as running:
        # The environment and the plugin's table both aim the SDK at the double.
        monkeypatch.setenv("OPENAI_BASE_URL", running.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        yield running


def _llm_table(model: OpenAIDouble) -> str:
    table = {
        "model": "gpt-4o-mini",
        "base_url": model.base_url,
        "api_key": "test",
        "request_timeout_seconds": API_TIMEOUT,
        "max_retries": 1,
        "history_messages": 0,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "[plugins.autoresponder]\n" + "\n".join(lines) + "\n"


MODEL_OUTAGES = {
    "500": lambda m: m.fail(500, times=6),
    "429": lambda m: m.fail(429, retry_after=1, times=6),
    "hang": lambda m: m.reply("too late", delay=API_TIMEOUT + 0.5, times=4),
}


@pytest.mark.slow
@pytest.mark.parametrize("outage", MODEL_OUTAGES.values(), ids=MODEL_OUTAGES.keys())
def test_a_model_server_outage_delays_drafts_but_sends_each_reply_exactly_once(
    make_runtime: RuntimeFactory,
    double: AgentMailDouble,
    model: OpenAIDouble,
    outage: Any,
) -> None:
    outage(model)
    rt = make_runtime(_llm_table(model), **QUICK_RETRIES)
    payloads = _deliver_all(rt, "model-outage")
    rt.start_workers()

    _wait_until_settled(rt, EVENTS)
    _all_answered(double)

    assert model.pending == 0, "the outage was never felt"
    assert rt.store.count_by_status() == {"done": EVENTS}
    assert replies_by_source(double) == {source_of(p): 1 for p in payloads}
    assert {e.json["text"] for e in double.sent} == {model.default_content}


@pytest.mark.slow
def test_an_exhausted_model_quota_is_not_retried_and_the_other_events_go_on(
    make_runtime: RuntimeFactory, double: AgentMailDouble, model: OpenAIDouble
) -> None:
    model.fail(429, code="insufficient_quota")
    rt = make_runtime(_llm_table(model), **QUICK_RETRIES)
    payloads = _deliver_all(rt, "quota")
    rt.start_workers()

    _wait_until_settled(rt, EVENTS)
    _all_answered(double)

    # One request per event: the quota error was asked once, by the SDK and the
    # runner alike.
    assert len(model.completion_requests) == EVENTS
    assert rt.store.count_by_status() == {"done": EVENTS - 1, "dead": 1}
    [dead] = rt.store.list_events(status="dead")
    assert dead.attempts == 1
    assert "429 insufficient_quota" in (dead.last_error or "")
    answered = {source_of(p) for p in payloads if p["event_id"] != dead.event_id}
    assert replies_by_source(double) == dict.fromkeys(answered, 1)
