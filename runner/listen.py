"""Development ingress without a public URL: AgentMail's event WebSocket.

``agentmail-runner listen`` connects through the agentmail SDK
(``client.websockets.connect()``), subscribes to the event types the enabled plugins
want, and stores every event frame through the same ``accept_delivery`` as a webhook,
with the scheme ``websocket``: the same store, the same dedup on the event id (an event
that also arrives by webhook is processed once), the same workers, here in the same
process. A lost connection is opened again with exponential backoff.

AgentMail does not send again over the socket what it sent while nobody was connected,
so events can be missed between a drop and the reconnection; webhooks, which Svix
retries for about a day, are the production ingress.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from runner.ingress import accept_delivery
from runner.store import StoreUnavailable

if TYPE_CHECKING:
    from agentmail import AgentMail

    from runner.runtime import Runtime

__all__ = ["SCHEME", "ListenError", "Listener", "listen"]

log = logging.getLogger("agentmail_runner.listen")

SCHEME = "websocket"

# Refusals that reconnecting cannot cure.
_FATAL_STATUSES = (401, 403)


class ListenError(Exception):
    """The WebSocket cannot be used; the message says why and what to change."""


@contextmanager
def _sdk_websocket_imports() -> Iterator[None]:
    # The SDK's compatibility shim imports names that websockets 14 deprecated; the
    # warning concerns the SDK's code, not anything an operator can change.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"websockets\.", category=DeprecationWarning
        )
        yield


def _raw_connection(socket: Any) -> Any:
    """The connection under the SDK's socket client, to read frames as sent.

    The SDK turns each frame into one of its models, which rewrites timestamps, drops
    the ``from_`` copy of ``from`` and can choose the wrong model for older payload
    shapes; the store keeps what AgentMail sent, exactly as for a webhook body.
    """
    connection = getattr(socket, "_websocket", None)
    if connection is None or not hasattr(connection, "recv"):
        raise ListenError(
            "this agentmail SDK's WebSocket client does not expose its connection; "
            "install an agentmail release between 2.0.18 and 3"
        )
    return connection


def _raise_if_refused(exc: BaseException) -> None:
    """A handshake refused for the API key: reconnecting cannot cure it."""
    status = getattr(exc, "status_code", None)
    if status is None:
        # websockets' own InvalidStatus, which the SDK lets through.
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in _FATAL_STATUSES:
        raise ListenError(
            f"AgentMail refused the WebSocket ({status}): check AGENTMAIL_API_KEY"
        ) from exc


class Listener:
    """Keeps one subscription open and stores every event it brings."""

    def __init__(
        self,
        rt: Runtime,
        client: AgentMail,
        *,
        event_types: Sequence[str],
        inbox_ids: Sequence[str] = (),
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        poll_seconds: float = 0.5,
    ) -> None:
        self.rt = rt
        self.event_types = list(event_types)
        self.inbox_ids = list(inbox_ids)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.poll_seconds = poll_seconds
        self.subscribed = threading.Event()
        with _sdk_websocket_imports():
            from agentmail import Subscribe

            self._sockets = client.websockets
        selection: dict[str, Any] = {"event_types": self.event_types}
        if self.inbox_ids:
            selection["inbox_ids"] = self.inbox_ids
        self._subscribe = Subscribe(**selection)

    def run(self, stop: threading.Event) -> None:
        """Connect, subscribe and store events until ``stop`` is set."""
        failures = 0
        while not stop.is_set():
            try:
                self._session(stop)
            except ListenError:
                raise
            except Exception as exc:
                _raise_if_refused(exc)
                if stop.is_set():
                    break
                # A connection that got as far as a subscription starts a new series.
                failures = 0 if self.subscribed.is_set() else failures
                self.subscribed.clear()
                delay = self._backoff(failures)
                failures += 1
                log.warning(
                    "WebSocket connection lost (%s); reconnecting in %.1f s",
                    _describe(exc),
                    delay,
                )
                stop.wait(delay)

    def _backoff(self, failures: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2.0**failures)
        return delay / 2 + random.uniform(0, delay / 2)

    def _session(self, stop: threading.Event) -> None:
        with self._sockets.connect() as socket:
            connection = _raw_connection(socket)
            socket.send_subscribe(self._subscribe)
            while not stop.is_set():
                try:
                    frame = connection.recv(timeout=self.poll_seconds)
                except TimeoutError:
                    continue
                self._on_frame(frame, stop)

    def _on_frame(self, frame: str | bytes, stop: threading.Event) -> None:
        body = frame.encode("utf-8") if isinstance(frame, str) else frame
        try:
            message = json.loads(body)
        except ValueError:
            log.warning("ignored a WebSocket frame that is not JSON")
            return
        if not isinstance(message, dict):
            log.warning("ignored a WebSocket frame that is not a JSON object")
            return
        kind = message.get("type")
        if kind == "subscribed":
            self.subscribed.set()
            log.info(
                "subscribed to %s%s",
                ", ".join(message.get("event_types") or self.event_types),
                f" for {', '.join(self.inbox_ids)}" if self.inbox_ids else "",
            )
        elif kind == "error":
            log.error(
                "AgentMail sent an error over the WebSocket: %s: %s",
                message.get("name"),
                message.get("message"),
            )
        elif kind == "event" or message.get("event_type"):
            self._store(body, str(message.get("event_id") or ""), stop)
        else:
            log.debug("ignored a WebSocket frame of type %r", kind)

    def _store(self, body: bytes, event_id: str, stop: threading.Event) -> None:
        """Store one event; while the store is down, hold it and try again."""
        delay = self.backoff_base
        while True:
            try:
                outcome, _key = accept_delivery(self.rt, body, "", SCHEME)
            except StoreUnavailable as exc:
                if stop.is_set():
                    log.error(
                        "event %s: not stored, the store is unavailable at shutdown: "
                        "%s",
                        event_id or "(no id)",
                        exc,
                    )
                    return
                log.error(
                    "store unavailable, holding event %s, next try in %.1f s: %s",
                    event_id or "(no id)",
                    delay,
                    exc,
                )
                stop.wait(delay)
                delay = min(self.backoff_max, delay * 2)
                continue
            self.rt.metrics.deliveries.labels(outcome).inc()
            return


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _install_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def listen(
    rt: Runtime,
    client: AgentMail,
    *,
    event_types: Sequence[str],
    inbox_ids: Sequence[str] = (),
    workers: int | None = None,
) -> int:
    """WebSocket ingress and workers in one process until SIGTERM; the exit status."""
    listener = Listener(rt, client, event_types=event_types, inbox_ids=inbox_ids)
    stop = threading.Event()
    _install_handlers(stop)
    rt.start_workers(workers)
    log.info(
        "listening on AgentMail's WebSocket with %d worker(s)%s",
        len(rt.workers),
        " in DRY-RUN (no action is executed)" if rt.dry_run else "",
    )
    try:
        listener.run(stop)
    finally:
        in_time = rt.stop_workers()
        log.info("stopped%s", "" if in_time else "; unfinished events released")
    return 0
