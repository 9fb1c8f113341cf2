"""Nothing acknowledged is lost and nothing is sent twice, whatever kills the process.

The runner runs as a real process that the tests kill with SIGKILL: no shutdown code
runs, exactly as when a machine dies. What survives is the SQLite file.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx

from runner.runtime import Runtime
from runner.testing.agentmail_double import AgentMailDouble, RecordedRequest
from tests.conftest import RuntimeFactory, deliver, load_payload, sign, write_config
from tests.test_cli import api_environment, serving, wait_for_event

PAYLOAD = load_payload("message-received.json")
EVENT_ID = PAYLOAD["event_id"]


def _replies(double: AgentMailDouble) -> list[RecordedRequest]:
    return [r for r in double.requests if r.path.endswith("/reply")]


def _drain_until_done(rt: Runtime, timeout: float = 5.0) -> None:
    """Process the event, its retries included (due after a test-sized backoff)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rt.drain()
        row = rt.store.get_event(EVENT_ID)
        if row is not None and row.status != "pending":
            return
        time.sleep(0.02)
    raise AssertionError(f"event {EVENT_ID} still pending after {timeout} s")


def _deliver_over_http(url: str) -> httpx.Response:
    body = json.dumps(PAYLOAD).encode()
    return httpx.post(f"{url}/webhook", content=body, headers=sign(body), timeout=10)


def test_an_event_acknowledged_just_before_a_kill_is_processed_after_a_restart(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    write_config(tmp_path, runner={"poll_seconds": 0.1})
    env = api_environment(double)

    # The web half alone: it stores and acknowledges, and nothing processes.
    with serving(tmp_path, env, command=("web",)) as web:
        response = _deliver_over_http(web.url)
        assert response.status_code == 200
        assert response.json() == {"status": "accepted", "event": EVENT_ID}
        assert web.stop(signal.SIGKILL) == -signal.SIGKILL
    assert double.requests == []

    with serving(tmp_path, env) as server:
        row = wait_for_event(tmp_path, EVENT_ID, "done")
        assert server.stop(signal.SIGTERM) == 0

    assert row.attempts == 1
    [email] = double.sent
    assert email.kind == "reply"
    assert email.source_message_id == PAYLOAD["message"]["message_id"]


def test_a_kill_during_the_send_is_recovered_after_the_lease_with_one_email(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    write_config(tmp_path, runner={"lease_seconds": 5, "poll_seconds": 0.2})
    env = api_environment(double)
    # The first reply hangs for three seconds inside AgentMail (then goes through),
    # so the worker is killed while it holds the lease and waits on the send.
    double.fail("POST", r"/reply$", status=None, delay=3)

    with serving(tmp_path, env) as first:
        assert _deliver_over_http(first.url).status_code == 200
        double.wait_for(lambda: _replies(double), timeout=10)
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    held = wait_for_event(tmp_path, EVENT_ID, "running", timeout=1)
    assert held.lease_owner is not None

    with serving(tmp_path, env) as second:
        row = wait_for_event(tmp_path, EVENT_ID, "done", timeout=20)
        # Both requests must have been answered before counting what was sent.
        double.wait_for(lambda: all(r.status is not None for r in _replies(double)))
        assert second.stop(signal.SIGTERM) == 0

    assert row.attempts == 2
    replies = _replies(double)
    assert len(replies) == 2
    assert len({r.idempotency_key for r in replies}) == 1
    [email] = double.sent
    assert email.idempotency_key == replies[0].idempotency_key


def test_an_api_answering_500_twice_then_200_sends_one_email_under_one_key(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    rt = make_runtime()
    double.fail("POST", r"/reply$", status=500, times=2, retry_after=1)

    assert deliver(rt, PAYLOAD).status_code == 200
    assert rt.drain() == 1

    replies = _replies(double)
    assert [r.status for r in replies] == [500, 500, 200]
    assert len({r.idempotency_key for r in replies}) == 1
    [email] = double.sent
    assert email.idempotency_key == replies[0].idempotency_key
    row = rt.store.get_event(EVENT_ID)
    assert row is not None and row.status == "done" and row.attempts == 1


def test_an_api_failing_past_the_sdk_retries_is_retried_by_the_runner_under_one_key(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    rt = make_runtime()
    # Three 500s exhaust the SDK's own retries; the runner's next attempt succeeds.
    double.fail("POST", r"/reply$", status=500, times=3, retry_after=1)

    assert deliver(rt, PAYLOAD).status_code == 200
    _drain_until_done(rt)

    replies = _replies(double)
    assert [r.status for r in replies] == [500, 500, 500, 200]
    assert len({r.idempotency_key for r in replies}) == 1
    [email] = double.sent
    assert email.idempotency_key == replies[0].idempotency_key
    row = rt.store.get_event(EVENT_ID)
    assert row is not None and row.status == "done" and row.attempts == 2
    [action] = rt.store.actions_for(row.pk)
    assert action.status == "done"
    assert action.attempts == 2
