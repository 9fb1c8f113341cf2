"""Duplicate storms: the same event delivered many times at once, and again hours later,
is stored once and answered with exactly one reply.

AgentMail's sender retries until it sees a 2xx, may deliver one event through several
endpoints, and keeps retrying for about 28 hours; the runner recognises an event by its
event_id and keeps that key at least 72 hours.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from runner.testing.agentmail_double import AgentMailDouble
from tests.chaos.processes import (
    RunnerProcess,
    body_of,
    cleanup,
    open_store,
    received_event,
    replies_by_source,
    runner_environment,
    source_of,
    statuses,
    wait_until,
    wait_until_done,
)
from tests.chaos.svix_sender import Attempt, SvixSender
from tests.conftest import SECRET, RuntimeFactory, deliver, write_config

COPIES = 20
HOUR = 3600.0


def _storm(
    senders: list[SvixSender], body: bytes, message_ids: list[str]
) -> list[Attempt]:
    """One attempt per message id, all released at the same instant, spread over the
    senders in turn."""
    start = threading.Barrier(len(message_ids))
    answers: list[Attempt | None] = [None] * len(message_ids)

    def send(index: int) -> None:
        sender = senders[index % len(senders)]
        headers = sender.headers(body, message_ids[index])
        start.wait(10)
        answers[index] = sender.post(body, headers)

    threads = [
        threading.Thread(target=send, args=(i,), name=f"copy-{i}")
        for i in range(len(message_ids))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


@pytest.mark.slow
def test_twenty_copies_at_once_through_two_servers_store_one_event_and_one_reply(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    config = write_config(tmp_path, runner={"poll_seconds": 0.1, "lease_seconds": 5})
    env = runner_environment(double)
    first = RunnerProcess(tmp_path, env, name="serve-a")
    second = RunnerProcess(tmp_path, env, name="serve-b")
    payload = received_event("storm", 0)
    # Half are one Svix message retried, half the event re-sent as new messages.
    message_ids = ["msg_storm"] * (COPIES // 2) + [
        f"msg_storm_{i}" for i in range(COPIES - COPIES // 2)
    ]

    with (
        cleanup(first, second) as stack,
        SvixSender(first.webhook, SECRET) as to_first,
        SvixSender(second.webhook, SECRET) as to_second,
    ):
        first.start()
        second.start()
        store = open_store(config)
        stack.callback(store.close)

        answers = _storm([to_first, to_second], body_of(payload), message_ids)

        assert [a.status for a in answers] == [200] * COPIES
        outcomes = Counter(a.body["status"] for a in answers)
        assert outcomes == {"accepted": 1, "duplicate": COPIES - 1}
        assert {a.body["event"] for a in answers} == {payload["event_id"]}
        assert list(statuses(store)) == [payload["event_id"]]
        wait_until_done(store, [payload["event_id"]], timeout=20)
        wait_until(lambda: double.sent, timeout=10, what="the reply reached the double")
        assert first.signal(signal.SIGTERM) == 0
        assert second.signal(signal.SIGTERM) == 0

    assert replies_by_source(double) == {source_of(payload): 1}


def test_a_copy_hours_later_within_the_72_hour_retention_is_still_a_duplicate(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    rt = make_runtime(retention_hours=72)  # the shortest retention allowed
    payload = received_event("late", 0)
    first = deliver(rt, payload, delivery_id="msg_late")
    assert first.status_code == 200
    assert first.json == {"status": "accepted", "event": payload["event_id"]}
    assert rt.drain() == 1
    assert replies_by_source(double) == {source_of(payload): 1}

    # Just inside the retention: pruning keeps the event, and so its dedup key.
    later = time.time() + 71.9 * HOUR
    kept = rt.store.prune(
        retention_seconds=72 * HOUR, dead_retention_seconds=720 * HOUR, now=later
    )
    assert kept == 0

    # Svix's own retry (same svix-id) and a re-sent copy (new svix-id), both late and
    # so signed now: Svix signs every attempt afresh, and the runner checks the
    # signature's timestamp against its clock (five minutes either way).
    for delivery_id in ("msg_late", "msg_late_resent"):
        copy = deliver(rt, payload, delivery_id=delivery_id)
        assert copy.status_code == 200
        assert copy.json == {"status": "duplicate", "event": payload["event_id"]}
    assert rt.drain() == 0
    row = rt.store.get_event(payload["event_id"])
    assert row is not None and row.status == "done" and row.attempts == 1
    assert replies_by_source(double) == {source_of(payload): 1}

    # Past the retention the event, and its key, are forgotten.
    forgotten = rt.store.prune(
        retention_seconds=72 * HOUR,
        dead_retention_seconds=720 * HOUR,
        now=time.time() + 72.1 * HOUR,
    )
    assert forgotten == 1
    assert rt.store.get_event(payload["event_id"]) is None


def test_copies_arriving_while_the_event_is_being_processed_add_nothing(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    # The reply hangs a moment inside AgentMail, so the copies land mid-processing.
    double.fail("POST", r"/reply$", status=None, delay=0.5)
    rt = make_runtime()
    rt.start_workers(2)
    payload = received_event("midway", 0)
    assert deliver(rt, payload).json["status"] == "accepted"
    double.wait_for(lambda: double.requests, timeout=10)

    answers = [deliver(rt, payload).json["status"] for _ in range(COPIES)]

    assert answers == ["duplicate"] * COPIES
    double.wait_for(lambda: double.sent, timeout=10)
    deadline = time.monotonic() + 10
    while rt.store.count_by_status() != {"done": 1}:
        assert time.monotonic() < deadline, rt.store.count_by_status()
        time.sleep(0.02)
    assert replies_by_source(double) == {source_of(payload): 1}
    assert json.loads(rt.store.get_event(payload["event_id"]).payload) == payload
