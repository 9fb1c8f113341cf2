"""Group commit for the ingress: many concurrent deliveries, one durable transaction.

A webhook may only be acknowledged once its event is durable, and on SQLite a durable
commit costs an fsync. Request threads hand their event to one committer thread and
wait; the committer stores everything that queued up while the previous commit was
running in a single transaction. Under load that is one fsync for many deliveries; an
idle runner adds no delay, as nothing waits for a batch to fill.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from runner.store import NewEvent, Store

__all__ = ["GroupCommitter"]

log = logging.getLogger("agentmail_runner.ingress")


@dataclass
class _Pending:
    event: NewEvent
    # Held until the commit is over: the cheapest hand-off between two threads, where
    # a threading.Event would take and release three locks to do the same.
    done: threading.Lock = field(default_factory=threading.Lock)
    pk: int | None = None
    error: BaseException | None = None


class GroupCommitter:
    """Stores events submitted from many threads in shared transactions."""

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 128,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        """``on_stored`` is called once per transaction that stored a new event to
        be processed (to wake idle workers once, not once per event)."""
        self.store = store
        self.max_batch = max_batch
        self._on_stored = on_stored
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, event: NewEvent, *, timeout: float = 30.0) -> int | None:
        """Store one event; its row number, or None for a duplicate. Raises what the
        store raised (StoreUnavailable when it is down)."""
        self._ensure_started()
        pending = _Pending(event)
        pending.done.acquire()
        self._queue.put(pending)
        if not pending.done.acquire(timeout=timeout):
            raise TimeoutError(f"the store did not commit within {timeout:g} s")
        if pending.error is not None:
            raise pending.error
        return pending.pk

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ingress-commit", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._commit(batch)
                    return
                batch.append(more)
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            pks = self.store.insert_events([p.event for p in batch])
        except BaseException as exc:  # handed to every waiting request thread
            for pending in batch:
                pending.error = exc
                pending.done.release()
            return
        if self._on_stored is not None and any(
            pk is not None and p.event.dead_reason is None
            for p, pk in zip(batch, pks, strict=True)
        ):
            self._on_stored()
        for pending, pk in zip(batch, pks, strict=True):
            pending.pk = pk
            pending.done.release()
