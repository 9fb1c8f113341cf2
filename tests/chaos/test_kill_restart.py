"""SIGKILL at random moments while a Svix-like sender streams events: every event the
runner acknowledged is processed, and each gets exactly one reply.

The runner is a real ``serve`` process, killed with SIGKILL (no shutdown code runs)
every one to three seconds of a seeded random schedule and started again on the same
port and store, as a supervisor would. The sender retries what was not acknowledged,
signing every attempt afresh under the same svix-id.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from runner.store import DONE, Store
from runner.testing.agentmail_double import AgentMailDouble
from tests.chaos.processes import (
    RunnerProcess,
    body_of,
    cleanup,
    open_store,
    received_event,
    replies_by_source,
    reply_keys_by_source,
    runner_environment,
    source_of,
    wait_until,
    wait_until_done,
)
from tests.chaos.svix_sender import Stream, SvixSender
from tests.conftest import SECRET, write_config

EVENTS = 1000
# Spread over most of the run, so kills land on deliveries in flight as well as on
# events being processed.
SEND_RATE = 50.0
SEED = 20261204
# Kills stop after this long even if events are still being sent; the sender then
# finishes against a server left running.
KILLING_SECONDS = 30.0
FAST_RECOVERY = {
    "workers": 2,
    "lease_seconds": 5,  # the minimum: a killed worker's events come back soon
    "poll_seconds": 0.2,
    "retry_base_seconds": 0.1,
    "retry_max_seconds": 1.0,
    "drain_seconds": 3,
    "api_timeout_seconds": 5,
}


def _kill_at_random(
    server: RunnerProcess,
    sending: Stream,
    store: Store,
    rng: random.Random,
) -> int:
    """SIGKILL and restart ``server`` every 1-3 s while events are being sent or
    processed; the number of kills."""
    kills = 0
    deadline = time.monotonic() + KILLING_SECONDS
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 3.0))
        if not sending.is_alive() and store.count_by_status().get(DONE) == EVENTS:
            break
        assert server.kill() == -signal.SIGKILL
        kills += 1
        server.start()
    return kills


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_acknowledged_event_and_doubles_no_reply(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    config = write_config(tmp_path, runner=FAST_RECOVERY)
    server = RunnerProcess(tmp_path, runner_environment(double))
    payloads = [received_event("kill", i) for i in range(EVENTS)]
    rng = random.Random(SEED)

    with cleanup(server) as stack, SvixSender(server.webhook, SECRET) as sender:
        server.start()
        store = open_store(config)
        stack.callback(store.close)
        sending = sender.stream(
            map(body_of, payloads), concurrency=8, per_second=SEND_RATE
        )
        kills = _kill_at_random(server, sending, store, rng)
        sending.join(120)
        assert kills >= 3, f"only {kills} kill(s): the run was too short to test much"

        # Every delivery got through within Svix-like retries: the runner kept serving.
        deliveries = sending.deliveries
        assert [d.message_id for d in deliveries if not d.acknowledged] == []
        acknowledged = {d.event_id for d in deliveries if d.acknowledged}
        assert len(acknowledged) == EVENTS
        assert any(len(d.attempts) > 1 for d in deliveries), "no kill hit the ingress"

        # Events a killed worker held come back once their lease expires.
        wait_until_done(store, acknowledged, timeout=60)
        assert store.count_by_status() == {DONE: EVENTS}
        # Replies from killed processes may still be inside the double.
        wait_until(
            lambda: all(r.status is not None for r in double.requests),
            timeout=10,
            what="the double answered every request",
        )
        assert server.signal(signal.SIGTERM) == 0

    replies = replies_by_source(double)
    expected = {source_of(p) for p in payloads}
    missing = expected - set(replies)
    doubled = {source: n for source, n in replies.items() if n != 1}
    assert missing == set(), f"{len(missing)} event(s) got no reply after {kills} kills"
    assert doubled == {}, f"replies sent more than once after {kills} kills"
    assert set(replies) == expected
    # However often an event was attempted, its reply was asked for under one key.
    keys = reply_keys_by_source(double)
    assert {source for source, k in keys.items() if len(k) != 1} == set()
