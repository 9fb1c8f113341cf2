"""Operator command families: events retry/replay, dlq, webhooks, config show.

The store is filled by a real runner (signed deliveries, workers, the AgentMail double);
the commands run in-process through click's CliRunner on the same plugins.toml, and
the runner processes what they queued.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from runner import Event, PermanentError, Send, hookimpl
from runner.cli import cli
from runner.runtime import Runtime
from runner.subscriptions import AGENTMAIL_EVENT_TYPES, expand_subscriptions
from runner.testing.agentmail_double import AgentMailDouble
from runner.webhooks import client_id_for
from tests.conftest import deliver, load_payload, write_config

ENVIRONMENT = (
    "AGENTMAIL_WEBHOOK_SECRET",
    "AGENTMAIL_API_KEY",
    "AGENTMAIL_BASE_URL",
    "AGENTMAIL_RUNNER_DATABASE",
    "AGENTMAIL_RUNNER_CONFIG",
    "AGENTMAIL_RUNNER_LOG_JSON",
    "AGENTMAIL_WEBSOCKET_URL",
)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    logger = logging.getLogger("agentmail_runner")
    level = logger.level
    yield
    logger.setLevel(level)


def run(config: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(
        cli,
        ["--config", str(config), *args],
        input=input,
        env=dict.fromkeys(ENVIRONMENT),
        catch_exceptions=False,
    )


class Auditor:
    """Sends an audit copy of each new message; broken until told otherwise."""

    def __init__(self) -> None:
        self.broken = True
        self.calls = 0

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event, context: Any) -> list[Send]:
        self.calls += 1
        if self.broken:
            raise PermanentError("the audit mailbox is not configured")
        return [Send(to=["audit@example.com"], subject="seen", text=event.event_id)]


def received(event_id: str) -> dict[str, Any]:
    payload = load_payload("message-received.json")
    payload["event_id"] = event_id
    return payload


def config_path(tmp_path: Path) -> Path:
    return tmp_path / "plugins.toml"


@pytest.fixture
def audited(make_runtime: Any) -> tuple[Runtime, Auditor]:
    """A runner with the template auto-responder and the broken auditor."""
    auditor = Auditor()
    return make_runtime(extra_plugins=(("auditor", auditor),)), auditor


# -- events retry ------------------------------------------------------------------


def test_retry_runs_again_only_what_failed_and_sends_nothing_twice(
    audited, double, tmp_path
):
    rt, auditor = audited
    deliver(rt, received("evt-retry-1"))
    rt.drain()
    assert rt.store.get_event("evt-retry-1").status == "dead"
    assert [e.kind for e in double.sent] == ["reply"]

    auditor.broken = False
    result = run(config_path(tmp_path), "events", "retry", "evt-retry-1")
    rt.drain()

    assert result.exit_code == 0, result.output
    assert "queued 1 event(s) again: #1" in result.output
    assert rt.store.get_event("evt-retry-1").status == "done"
    assert [e.kind for e in double.sent] == ["reply", "send"]
    assert auditor.calls == 2
    ledger = rt.store.ledger_for(1)
    assert ledger[("autoresponder", "act")].attempts == 1
    assert ledger[("auditor", "act")].status == "succeeded"


def test_retry_refuses_a_done_event_and_points_to_replay(make_runtime, tmp_path):
    rt = make_runtime()
    deliver(rt, received("evt-done"))
    rt.drain()

    result = run(config_path(tmp_path), "events", "retry", "#1")

    assert result.exit_code == 1
    assert (
        "event #1 not retried: it is done and nothing failed (`events replay` "
        "processes it again)" in result.output
    )


def test_retry_all_dead_letters_with_a_progress_bar(audited, double, tmp_path):
    rt, auditor = audited
    for n in range(3):
        deliver(rt, received(f"evt-bulk-{n}"))
    rt.drain()
    auditor.broken = False

    result = run(config_path(tmp_path), "events", "retry", "--all", "--status", "dead")
    rt.drain()

    assert result.exit_code == 0, result.output
    assert "retrying" in result.stderr
    assert "queued 3 event(s) again: #1, #2, #3" in result.stdout
    assert rt.store.count_by_status() == {"done": 3}
    assert sorted(e.kind for e in double.sent) == ["reply"] * 3 + ["send"] * 3


def test_retry_without_events_or_all_says_what_to_name(make_runtime, tmp_path):
    make_runtime()

    result = run(config_path(tmp_path), "events", "retry")

    assert result.exit_code == 2
    assert (
        "error: name the events (#number or event id), or pass --all with "
        "--status/--type" in result.output
    )


def test_retry_of_an_unknown_event_names_it(make_runtime, tmp_path):
    make_runtime()

    result = run(config_path(tmp_path), "events", "retry", "#99")

    assert result.exit_code == 1
    assert "error: no event #99: name it by #number, event id or delivery id" in (
        result.output
    )


# -- events replay -----------------------------------------------------------------


def test_replay_processes_the_event_again_under_new_idempotency_keys(
    make_runtime, double, tmp_path
):
    rt = make_runtime()
    payload = received("evt-replay")
    deliver(rt, payload)
    rt.drain()

    result = run(config_path(tmp_path), "events", "replay", "#1", "--yes")
    rt.drain()

    assert result.exit_code == 0, result.output
    assert "replayed 1 event(s) as new events: #2" in result.output
    first, second = double.sent
    assert first.json["text"] == second.json["text"]
    assert first.idempotency_key != second.idempotency_key
    original, replay = rt.store.get_event(1), rt.store.get_event(2)
    assert (original.status, replay.status) == ("done", "done")
    assert replay.event_id == "evt-replay"
    assert replay.scheme == "replay"
    assert deliver(rt, payload).get_json()["status"] == "duplicate"


def test_replay_asks_first_and_declining_changes_nothing(make_runtime, tmp_path):
    rt = make_runtime()
    deliver(rt, received("evt-declined"))
    rt.drain()

    result = run(config_path(tmp_path), "events", "replay", "#1", input="n\n")

    assert result.exit_code == 1
    assert "Replay 1 event(s)? Every plugin runs again and its emails are sent" in (
        result.output
    )
    assert "Aborted" in result.output
    assert rt.store.count_by_status() == {"done": 1}


def test_replay_refuses_an_event_that_is_not_finished(make_runtime, tmp_path):
    rt = make_runtime()
    deliver(rt, received("evt-waiting"))

    result = run(config_path(tmp_path), "events", "replay", "#1", "--yes")

    assert result.exit_code == 1
    assert (
        "event #1 is pending, not finished: wait for it, or use `events retry`"
        in result.output
    )
    assert rt.store.count_by_status() == {"pending": 1}


def test_replay_all_dead_letters_shows_progress(audited, double, tmp_path):
    rt, auditor = audited
    for n in range(2):
        deliver(rt, received(f"evt-replay-dead-{n}"))
    rt.drain()
    auditor.broken = False

    result = run(
        config_path(tmp_path), "events", "replay", "--all", "--status", "dead", "--yes"
    )
    rt.drain()

    assert result.exit_code == 0, result.output
    assert "replaying" in result.stderr
    assert "replayed 2 event(s) as new events: #3, #4" in result.stdout
    # The replays ran every plugin afresh: two more replies and two audit copies.
    assert sorted(e.kind for e in double.sent) == ["reply"] * 4 + ["send"] * 2
    assert rt.store.count_by_status() == {"dead": 2, "done": 2}


# -- dlq ---------------------------------------------------------------------------


def test_dlq_list_shows_each_dead_letter_with_its_reason(audited, tmp_path):
    rt, _auditor = audited
    deliver(rt, received("evt-dead-listed"))
    deliver(rt, load_payload("message-delivered.json"))
    rt.drain()

    result = run(config_path(tmp_path), "dlq", "list")
    as_json = json.loads(run(config_path(tmp_path), "dlq", "list", "--json").output)

    assert result.exit_code == 0
    assert "evt-dead-listed" in result.output
    assert "auditor.act: PermanentError: the audit mailbox is not configured" in (
        result.output
    )
    assert [row["event_key"] for row in as_json] == ["evt-dead-listed"]


def test_dlq_retry_refuses_an_event_that_is_not_dead(make_runtime, tmp_path):
    rt = make_runtime()
    deliver(rt, received("evt-alive"))
    rt.drain()

    result = run(config_path(tmp_path), "dlq", "retry", "evt-alive")

    assert result.exit_code == 1
    assert "event #1 is not a dead letter (done)" in result.output


def test_dlq_retry_all_queues_every_dead_letter(audited, tmp_path):
    rt, auditor = audited
    deliver(rt, received("evt-dlq-a"))
    deliver(rt, received("evt-dlq-b"))
    rt.drain()
    auditor.broken = False

    result = run(config_path(tmp_path), "dlq", "retry", "--all")
    rt.drain()

    assert result.exit_code == 0, result.output
    assert "queued 2 event(s) again" in result.output
    assert rt.store.count_by_status() == {"done": 2}


def test_dlq_drop_deletes_after_confirmation_and_forgets_the_event_id(
    audited, tmp_path
):
    rt, _auditor = audited
    payload = received("evt-dropped")
    deliver(rt, payload)
    rt.drain()

    result = run(config_path(tmp_path), "dlq", "drop", "evt-dropped", input="y\n")

    assert result.exit_code == 0, result.output
    assert "Delete 1 dead letter(s) for good?" in result.output
    assert "dropped 1 dead letter(s): #1" in result.output
    assert rt.store.get_event("evt-dropped") is None
    assert deliver(rt, payload).get_json()["status"] == "accepted"


def test_dlq_drop_declined_keeps_the_dead_letter(audited, tmp_path):
    rt, _auditor = audited
    deliver(rt, received("evt-kept"))
    rt.drain()

    result = run(config_path(tmp_path), "dlq", "drop", "--all", input="n\n")

    assert result.exit_code == 1
    assert rt.store.get_event("evt-kept").status == "dead"


# -- webhooks ----------------------------------------------------------------------


def webhook_config(tmp_path: Path, double: AgentMailDouble, plugins: str = "") -> Path:
    from tests.conftest import TEMPLATES

    return write_config(
        tmp_path,
        plugins or TEMPLATES,
        {"api_key": double.api_key, "api_base_url": double.url},
    )


def test_register_subscribes_to_what_the_enabled_plugins_want(double, tmp_path):
    config = webhook_config(tmp_path, double)
    url = "https://runner.example.com/webhook"

    result = run(config, "webhooks", "register", url)

    assert result.exit_code == 0, result.output
    [webhook] = double.webhooks
    assert webhook["url"] == url
    assert webhook["event_types"] == ["message.received"]
    assert webhook["client_id"] == client_id_for(url)
    assert f"created: {webhook['webhook_id']}" in result.output
    assert webhook["secret"] not in result.output
    assert "signing secret: not shown (--show-secret prints it)" in result.output


def test_register_again_is_harmless_and_brings_event_types_up_to_date(double, tmp_path):
    config = webhook_config(tmp_path, double)
    url = "https://runner.example.com/webhook"
    run(config, "webhooks", "register", url)

    again = run(config, "webhooks", "register", url)
    wider = run(config, "webhooks", "register", url, "--event-type", "message.*")

    assert again.exit_code == 0 and "unchanged:" in again.output
    assert wider.exit_code == 0 and "updated:" in wider.output
    [webhook] = double.webhooks
    assert webhook["event_types"] == [
        t for t in AGENTMAIL_EVENT_TYPES if t.startswith("message.")
    ]


def test_register_with_other_inboxes_moves_the_webhook_to_them(double, tmp_path):
    config = webhook_config(tmp_path, double)
    url = "https://runner.example.com/webhook"
    run(config, "webhooks", "register", url, "--inbox", "sales@agentmail.to")

    moved = run(config, "webhooks", "register", url, "--inbox", "help@agentmail.to")

    assert moved.exit_code == 0 and "updated:" in moved.output
    [webhook] = double.webhooks
    assert webhook["inbox_ids"] == ["help@agentmail.to"]
    assert "inboxes:     help@agentmail.to" in moved.output


def test_register_shows_the_signing_secret_only_when_asked(double, tmp_path):
    config = webhook_config(tmp_path, double)

    result = run(
        config,
        "webhooks",
        "register",
        "https://runner.example.com/webhook",
        "--show-secret",
    )

    [webhook] = double.webhooks
    assert f"signing secret: {webhook['secret']}" in result.output


def test_register_refuses_plain_http_unless_the_host_is_loopback(double, tmp_path):
    config = webhook_config(tmp_path, double)

    refused = run(config, "webhooks", "register", "http://runner.example.com/webhook")
    loopback = run(config, "webhooks", "register", "http://127.0.0.1:3000/webhook")

    assert refused.exit_code == 2
    assert (
        "error: refusing http://runner.example.com/webhook: AgentMail must deliver "
        "over HTTPS" in refused.output
    )
    assert loopback.exit_code == 0, loopback.output
    assert [w["url"] for w in double.webhooks] == ["http://127.0.0.1:3000/webhook"]


def test_webhooks_list_never_shows_a_secret(double, tmp_path):
    config = webhook_config(tmp_path, double)
    run(config, "webhooks", "register", "https://runner.example.com/webhook")

    text = run(config, "webhooks", "list")
    rows = json.loads(run(config, "webhooks", "list", "--json").output)

    assert "https://runner.example.com/webhook  [enabled]" in text.output
    assert "whsec_" not in text.output
    assert [sorted(row) for row in rows] == [
        ["client_id", "enabled", "event_types", "inbox_ids", "url", "webhook_id"]
    ]


def test_webhooks_list_hides_a_password_in_a_webhook_url(double, tmp_path):
    config = webhook_config(tmp_path, double)
    run(config, "webhooks", "register", "https://amr:hunter2@runner.example.com/hook")

    text = run(config, "webhooks", "list")
    rows = json.loads(run(config, "webhooks", "list", "--json").output)

    assert "https://amr:***@runner.example.com/hook  [enabled]" in text.output
    assert [row["url"] for row in rows] == ["https://amr:***@runner.example.com/hook"]
    assert "hunter2" not in text.output


def test_webhooks_delete_by_url_after_confirmation(double, tmp_path):
    config = webhook_config(tmp_path, double)
    url = "https://runner.example.com/webhook"
    run(config, "webhooks", "register", url)
    [webhook] = double.webhooks

    result = run(config, "webhooks", "delete", url, "--yes")

    assert result.exit_code == 0, result.output
    assert f"deleted {webhook['webhook_id']} ({url})" in result.output
    assert double.webhooks == []


def test_webhooks_need_an_api_key(tmp_path):
    config = write_config(tmp_path)

    result = run(config, "webhooks", "list")

    assert result.exit_code == 2
    assert (
        "error: webhooks list needs an AgentMail API key: set AGENTMAIL_API_KEY"
        in result.output
    )


def test_an_agentmail_refusal_is_reported_with_its_status(double, tmp_path):
    config = webhook_config(tmp_path, double)
    double.fail("POST", r"^/v0/webhooks$", status=403, times=3)

    result = run(config, "webhooks", "register", "https://runner.example.com/webhook")

    assert result.exit_code == 1
    assert (
        "error: registering https://runner.example.com/webhook: AgentMail answered "
        "403" in result.output
    )


def test_wildcards_expand_to_agentmail_event_types():
    assert expand_subscriptions(["message.received*"]) == [
        "message.received",
        "message.received.spam",
        "message.received.blocked",
        "message.received.unauthenticated",
    ]
    assert expand_subscriptions(["*"]) == list(AGENTMAIL_EVENT_TYPES)
    assert expand_subscriptions(["domain.verified", "calendar.event.created"]) == [
        "domain.verified",
        "calendar.event.created",
    ]


# -- config show -------------------------------------------------------------------


def test_config_show_hides_secrets_and_the_database_password(tmp_path):
    config = write_config(
        tmp_path,
        runner={
            "database": "postgresql://amr:hunter2@127.0.0.1:5432/amr",
            "api_key": "key-that-must-not-show",
            "webhook_secrets": ["whsec_dGVzdC1zZWNyZXQtZm9yLXRoZS1ydW5uZXItdGVzdHM="],
        },
    )

    result = run(config, "config", "show")

    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["runner"]["database"] == "postgresql://amr:***@127.0.0.1:5432/amr"
    assert shown["runner"]["api_key"] == "***"
    assert shown["runner"]["webhook_secrets"] == ["***"]
    assert "hunter2" not in result.output
    assert "key-that-must-not-show" not in result.output
