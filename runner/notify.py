"""Cross-process wake-ups: PostgreSQL's LISTEN/NOTIFY.

Workers in the ingress process are woken in memory; workers in other processes (and on
other machines) are woken by a NOTIFY sent in the transaction that stored the event.
SQLite has no such channel: there, separate worker processes poll every
``poll_seconds``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from runner.store import NOTIFY_CHANNEL, Store

if TYPE_CHECKING:
    from runner.worker import Wakeup

__all__ = ["start_listener"]

log = logging.getLogger("agentmail_runner.notify")


def start_listener(
    store: Store, wakeup: Wakeup, stop: threading.Event
) -> threading.Thread | None:
    """Listen for new events on PostgreSQL; None for engines without notifications."""
    if store.dialect != "postgresql":
        return None
    conninfo = store.engine.url.set(drivername="postgresql").render_as_string(
        hide_password=False
    )
    thread = threading.Thread(
        target=_listen, args=(conninfo, wakeup, stop), name="notify", daemon=True
    )
    thread.start()
    return thread


def _listen(conninfo: str, wakeup: Wakeup, stop: threading.Event) -> None:
    import psycopg

    delay = 0.5
    while not stop.is_set():
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                delay = 0.5
                # Wake once on (re)connecting: a notification may have been missed.
                wakeup.notify()
                while not stop.is_set():
                    for _ in conn.notifies(timeout=1.0, stop_after=1000):
                        wakeup.notify()
        except psycopg.Error as exc:
            log.warning(
                "LISTEN connection lost, reconnecting in %.1f s: %s", delay, exc
            )
            stop.wait(delay)
            delay = min(delay * 2, 30.0)
