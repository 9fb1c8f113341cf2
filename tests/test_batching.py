"""The ingress's group commit: many deliveries, one transaction, one wake-up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from runner.batching import GroupCommitter
from runner.store import NewEvent, Store
from tests.conftest import database_for


class GatedStore(Store):
    """A store whose first insert waits for the test to open the gate."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []

    def insert_events(
        self, batch: Sequence[NewEvent], *, now: float | None = None
    ) -> list[int | None]:
        if not self.batches:
            self.entered.set()
            self.gate.wait(10)
        self.batches.append([e.event_key for e in batch])
        return super().insert_events(batch, now=now)


def new_event(key: str, *, dead_reason: str | None = None) -> NewEvent:
    return NewEvent(
        event_key=key,
        event_id=key,
        delivery_id=f"msg_{key}",
        event_type="message.received",
        payload="{}",
        scheme="svix",
        dead_reason=dead_reason,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GatedStore]:
    s = GatedStore(database_for(tmp_path))
    yield s
    s.close()


def test_events_that_queue_during_a_commit_share_the_next_one_and_wake_workers_once(
    store: GatedStore,
) -> None:
    wakeups: list[float] = []
    committer = GroupCommitter(store, on_stored=lambda: wakeups.append(time.time()))
    results: dict[str, int | None] = {}

    def submit(key: str) -> None:
        results[key] = committer.submit(new_event(key))

    first = threading.Thread(target=submit, args=("evt-a",))
    first.start()
    assert store.entered.wait(10)  # the committer holds evt-a at the gate
    others = [threading.Thread(target=submit, args=(k,)) for k in ("b", "c", "d")]
    for thread in others:
        thread.start()
    # Until all three wait in the committer's queue.
    deadline = time.monotonic() + 10
    while committer._queue.qsize() < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    store.gate.set()
    for thread in (first, *others):
        thread.join(10)
    committer.close()

    assert store.batches == [["evt-a"], ["b", "c", "d"]]
    assert all(isinstance(pk, int) for pk in results.values())
    assert len(wakeups) == 2


def test_duplicates_and_dead_letters_wake_no_worker(store: GatedStore) -> None:
    store.gate.set()
    wakeups: list[str] = []
    committer = GroupCommitter(store, on_stored=lambda: wakeups.append("woken"))
    try:
        assert committer.submit(new_event("evt-1")) is not None
        assert committer.submit(new_event("evt-1")) is None
        assert committer.submit(new_event("bad", dead_reason="not JSON")) is not None
    finally:
        committer.close()

    assert wakeups == ["woken"]
