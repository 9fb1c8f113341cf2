"""Workers: wake-ups, due retries, leases lost mid-attempt, pruning, stopping."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from runner import AddLabels, Context, Event, hookimpl
from runner.runtime import Runtime
from runner.store import DONE, RUNNING
from runner.testing.agentmail_double import AgentMailDouble
from runner.worker import Wakeup
from tests.conftest import (
    RuntimeFactory,
    deliver,
    load_payload,
    run_attempt,
    store_event,
)

INBOX = "helpdesk@agentmail.to"
HOUR = 3600.0


def received_event() -> dict[str, Any]:
    payload = load_payload("message-received.json")
    payload["event_id"] = str(uuid.uuid4())
    return payload


class Stamper:
    """Notes when each of its calls started; fails its first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.started: list[float] = []
        self.called = threading.Event()

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event, context: Context) -> None:
        self.started.append(time.monotonic())
        self.called.set()
        if len(self.started) <= self.failures:
            raise RuntimeError("try again")


# -- Wakeup ----------------------------------------------------------------------------


def test_wakeup_wait_returns_at_once_when_notified_since_the_generation_seen() -> None:
    wakeup = Wakeup()
    seen = wakeup.generation
    wakeup.notify()

    started = time.monotonic()
    generation = wakeup.wait(30, seen)

    assert time.monotonic() - started < 0.5
    assert generation == seen + 1


def test_wakeup_notify_from_another_thread_ends_a_wait() -> None:
    wakeup = Wakeup()
    seen = wakeup.generation
    timer = threading.Timer(0.1, wakeup.notify)
    timer.start()
    try:
        started = time.monotonic()
        generation = wakeup.wait(30, seen)
        elapsed = time.monotonic() - started
    finally:
        timer.cancel()

    assert elapsed < 5
    assert generation == seen + 1


def test_wakeup_wait_without_a_notify_times_out_at_the_same_generation() -> None:
    wakeup = Wakeup()
    seen = wakeup.generation

    assert wakeup.wait(0.05, seen) == seen


# -- the claiming loop -----------------------------------------------------------------


def test_a_worker_starts_on_a_stored_event_at_once_not_at_the_next_poll(
    make_runtime: RuntimeFactory,
) -> None:
    stamper = Stamper()
    rt = make_runtime(
        "[plugins.stamper]\n",
        extra_plugins=(("stamper", stamper),),
        poll_seconds=30,
        dry_run=True,
    )
    rt.start_workers(1)
    time.sleep(0.3)  # the worker has found nothing and is waiting

    stored = time.monotonic()
    assert deliver(rt, received_event()).status_code == 200

    assert stamper.called.wait(5)
    assert stamper.started[0] - stored < 1.0


def test_a_retry_is_taken_when_it_falls_due_without_any_wakeup(
    make_runtime: RuntimeFactory,
) -> None:
    stamper = Stamper(failures=1)
    rt = make_runtime(
        "[plugins.stamper]\n",
        extra_plugins=(("stamper", stamper),),
        poll_seconds=30,
        retry_base_seconds=0.1,
        retry_max_seconds=0.2,
        dry_run=True,
    )
    pk = store_event(rt, received_event())
    rt.start_workers(1)
    rt.wakeup.notify()

    deadline = time.monotonic() + 5
    while len(stamper.started) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)

    assert len(stamper.started) == 2
    assert 0.05 <= stamper.started[1] - stamper.started[0] < 2.0
    row = rt.store.get_event(pk)
    assert row is not None
    assert row.attempts == 2


def test_stopping_idle_workers_does_not_wait_for_the_poll(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(poll_seconds=30)
    rt.start_workers(2)
    time.sleep(0.2)

    started = time.monotonic()
    assert rt.stop_workers(grace=5)
    assert time.monotonic() - started < 1.0


def test_the_pruning_worker_forgets_old_finished_events_on_its_first_pass(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(poll_seconds=30)
    old = time.time() - 200 * HOUR  # past the default retention of 168 h
    pk = store_event(rt, received_event(), now=old)
    assert rt.store.claim("earlier-run", 60, now=old) is not None
    assert rt.store.complete(pk, "earlier-run", now=old)
    young = store_event(rt, received_event())

    rt.start_workers(1)
    deadline = time.monotonic() + 5
    while rt.store.get_event(pk) is not None and time.monotonic() < deadline:
        time.sleep(0.02)

    assert rt.store.get_event(pk) is None
    kept = rt.store.get_event(young)
    assert kept is not None


# -- leases ----------------------------------------------------------------------------


class Thief:
    """While its call runs, another worker takes the event over (the lease expired)."""

    def __init__(self, rt_box: list[Runtime]) -> None:
        self.rt_box = rt_box
        self.calls = 0
        self.taken_by: str | None = None

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event, context: Context) -> list[AddLabels]:
        self.calls += 1
        rt = self.rt_box[0]
        later = time.time() + rt.settings.lease_seconds + 1
        row = rt.store.claim("other-worker", 60, now=later)
        self.taken_by = row.lease_owner if row is not None else None
        return [AddLabels(labels=["seen"])]


def test_a_worker_whose_lease_was_taken_over_cannot_finish_the_event(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    box: list[Runtime] = []
    thief = Thief(box)
    rt = make_runtime("[plugins.thief]\n", extra_plugins=(("thief", thief),))
    box.append(rt)
    payload = received_event()
    message = payload["message"]
    double.add_message(
        INBOX, {"message_id": message["message_id"], "thread_id": message["thread_id"]}
    )
    pk = store_event(rt, payload)

    assert rt.new_worker().run_once()

    assert thief.taken_by == "other-worker"
    row = rt.store.get_event(pk)
    assert row is not None
    assert (row.status, row.lease_owner) == (RUNNING, "other-worker")

    outcome = rt.dispatcher.process(row, "other-worker")
    assert outcome.status == "done"
    assert rt.store.complete(pk, "other-worker")

    assert thief.calls == 1  # its successful call was not repeated
    assert [u.add_labels for u in double.label_updates] == [("seen",)]
    finished = rt.store.get_event(pk)
    assert finished is not None
    assert finished.status == DONE


def test_a_crash_in_dispatch_is_retried_then_makes_a_dead_letter(
    make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(max_attempts=2)

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("a bug in the runner")

    monkeypatch.setattr(rt.dispatcher, "process", crash)
    pk = store_event(rt, received_event())

    assert rt.new_worker().run_once()
    first = rt.store.get_event(pk)
    assert first is not None
    assert (first.status, first.attempts) == ("pending", 1)
    assert first.last_error == "dispatch crashed: RuntimeError('a bug in the runner')"

    run_attempt(rt)  # once its backoff has passed
    second = rt.store.get_event(pk)
    assert second is not None
    assert (second.status, second.attempts) == ("dead", 2)


def test_an_event_stored_too_deep_to_read_is_a_dead_letter_at_its_first_attempt(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(max_attempts=2)
    # Stored directly: the ingress refuses such nesting, an older release might not.
    deep = "[" * 5000 + "]" * 5000
    pk = rt.store.insert_event(
        event_key="deep",
        event_id="deep",
        delivery_id=None,
        event_type="message.received",
        payload='{"event_type": "message.received", "message": ' + deep + "}",
        scheme="test",
    )
    assert pk is not None

    assert rt.new_worker().run_once()

    row = rt.store.get_event(pk)
    assert row is not None
    assert (row.status, row.attempts) == ("dead", 1)
    assert row.last_error is not None
    assert row.last_error.endswith("JSON nested deeper than 64 levels")
