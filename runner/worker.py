"""Workers: claim due events under a lease, dispatch them, settle the outcome."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING

from runner import store as st
from runner.dispatch import release_call_thread

if TYPE_CHECKING:
    from runner.dispatch import Dispatcher
    from runner.metrics import Metrics

__all__ = ["Wakeup", "Worker", "new_owner"]

log = logging.getLogger("agentmail_runner.worker")

PRUNE_EVERY_SECONDS = 600.0


def _lower_priority(nice: int) -> None:
    """Make this thread, and the processes it starts, yield the CPU to the ingress.

    Linux schedules threads one by one, so this lowers only the calling worker thread
    (and children it spawns, such as a PDF reader): acknowledging webhooks keeps its
    share of a busy machine. Elsewhere it is not possible and is skipped.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        os.setpriority(
            os.PRIO_PROCESS, threading.get_native_id(), min(19, current + nice)
        )
    except OSError as exc:
        log.debug("could not lower the worker's priority: %s", exc)


def new_owner() -> str:
    """A lease owner name that says which process held it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Wakeup:
    """Wakes idle workers as soon as the ingress has stored an event."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, timeout: float, seen: int) -> int:
        """Sleep until notified after ``seen`` or ``timeout`` passes; the generation."""
        with self._cond:
            if self._generation == seen:
                self._cond.wait(timeout)
            return self._generation

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation


class Worker:
    """One claiming loop; run several on threads or in several processes."""

    def __init__(
        self,
        *,
        store: st.Store,
        dispatcher: Dispatcher,
        wakeup: Wakeup,
        metrics: Metrics,
        lease_seconds: float,
        poll_seconds: float,
        retention_seconds: float,
        dead_retention_seconds: float,
        prunes: bool = False,
        owner: str | None = None,
        nice: int = 0,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.wakeup = wakeup
        self.metrics = metrics
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.retention_seconds = retention_seconds
        self.dead_retention_seconds = dead_retention_seconds
        self.prunes = prunes
        self.nice = nice
        self.owner = owner or new_owner()
        self.current: int | None = None
        # The monotonic clock starts anywhere (at boot, on Linux): due at once.
        self._last_prune = time.monotonic() - PRUNE_EVERY_SECONDS

    def run_once(self) -> bool:
        """Claim and process one event; False when none was due."""
        claimed = self.store.claim_with_state(self.owner, self.lease_seconds)
        if claimed is None:
            return False
        row, state = claimed
        self.current = row.pk
        try:
            self._process(row, state)
        finally:
            self.current = None
        return True

    def _process(self, row: st.EventRow, state: st.EventState) -> None:
        renewed = time.monotonic()

        def keep_lease(confirm: bool = True) -> bool:
            # Between plugin calls (confirm=False) renew once a third of the lease has
            # gone: a slow plugin never loses it and fast events pay nothing. Before
            # anything leaves the machine (confirm=True), always ask the store.
            nonlocal renewed
            if not confirm and time.monotonic() - renewed < self.lease_seconds / 3:
                return True
            renewed = time.monotonic()
            return self.store.renew_lease(row.pk, self.owner, self.lease_seconds)

        try:
            outcome = self.dispatcher.process(
                row, self.owner, keep_lease=keep_lease, state=state
            )
        except st.StoreUnavailable:
            raise
        except Exception as exc:  # a bug in the runner must not stop the worker
            error = f"dispatch crashed: {exc!r}"
            if row.attempts >= self.dispatcher.settings.max_attempts:
                log.exception("event %s: dispatch crashed; dead letter", row.event_key)
                self.store.bury(row.pk, self.owner, error)
                self.metrics.events_finished.labels("dead").inc()
                return
            log.exception("event %s: dispatch crashed", row.event_key)
            self.store.reschedule(
                row.pk,
                self.owner,
                next_attempt_at=self.dispatcher.next_attempt_at(row.attempts),
                error=error,
            )
            return
        if outcome.status == "lost":
            log.warning("event %s: lease lost to another worker", row.event_key)
        elif outcome.status == "done":
            self.store.complete(row.pk, self.owner, ledger=outcome.ledger)
            self.metrics.events_finished.labels("done").inc()
            log.info("event %s %s: done", row.event_key, row.event_type)
        elif outcome.status == "retry":
            when = self.dispatcher.next_attempt_at(row.attempts)
            self.store.reschedule(
                row.pk,
                self.owner,
                next_attempt_at=when,
                error=outcome.error or "",
                ledger=outcome.ledger,
            )
            self.metrics.events_finished.labels("retry").inc()
            log.warning(
                "event %s: attempt %d failed, next in %.0f s: %s",
                row.event_key,
                row.attempts,
                when - time.time(),
                outcome.error,
            )
        else:
            self.store.bury(
                row.pk, self.owner, outcome.error or "unknown", ledger=outcome.ledger
            )
            self.metrics.events_finished.labels("dead").inc()
            log.error("event %s: dead letter: %s", row.event_key, outcome.error)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; the event in hand is finished first."""
        _lower_priority(self.nice)
        seen = self.wakeup.generation
        try:
            while not stop.is_set():
                try:
                    self._maybe_prune()
                    if self.run_once():
                        continue
                except st.StoreUnavailable as exc:
                    log.error(
                        "store unavailable, retrying in %.0f s: %s",
                        self.poll_seconds,
                        exc,
                    )
                seen = self.wakeup.wait(self._idle_timeout(), seen)
        finally:
            release_call_thread()

    def _idle_timeout(self) -> float:
        try:
            due = self.store.next_due()
        except st.StoreUnavailable:
            return self.poll_seconds
        if due is None:
            return self.poll_seconds
        return max(0.0, min(self.poll_seconds, due - time.time()))

    def _maybe_prune(self) -> None:
        if not self.prunes or time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = time.monotonic()
        removed = self.store.prune(
            retention_seconds=self.retention_seconds,
            dead_retention_seconds=self.dead_retention_seconds,
        )
        if removed:
            log.info("pruned %d finished events past their retention", removed)

    def release_current(self) -> None:
        """Hand the event in progress back to the queue (shutdown past the grace)."""
        pk = self.current
        if pk is not None and self.store.release(pk, self.owner):
            log.warning(
                "event #%d released unfinished; another worker will take it", pk
            )
