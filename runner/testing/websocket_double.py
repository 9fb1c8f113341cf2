"""A loopback stand-in for AgentMail's event WebSocket, for tests that use the real SDK.

It speaks the protocol the ``agentmail`` SDK's ``client.websockets.connect()`` speaks:
the client opens ``{websockets}/v0`` with its API key (an ``Authorization: Bearer``
header, or an ``api_key`` query parameter), sends one
``{"type": "subscribe", "event_types": [...], "inbox_ids": [...]}`` frame and gets
``{"type": "subscribed", ...}`` back; from then on, every event that matches the
subscription arrives as a text frame holding the same JSON document a webhook would
carry. A bad frame is answered with ``{"type": "error", "name": ..., "message": ...}``.

A test publishes events with :meth:`WebSocketDouble.publish` and cuts connections
with :meth:`WebSocketDouble.drop_connections` to see a client reconnect.

Example::

    with WebSocketDouble(api_key=double.api_key) as sockets:
        environment = AgentMailEnvironment(http=double.url, websockets=sockets.url)
        ...
        sockets.wait_for_subscriptions(1)
        sockets.publish(payload)
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

__all__ = ["Subscription", "WebSocketDouble"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subscription:
    """One subscribe frame as the double accepted it; None means "everything"."""

    event_types: tuple[str, ...] | None
    inbox_ids: tuple[str, ...] | None

    def selects(self, payload: dict[str, Any]) -> bool:
        event_type = str(payload.get("event_type") or "")
        if self.event_types is not None and event_type not in self.event_types:
            return False
        if self.inbox_ids is None:
            return True
        return _inbox_of(payload) in self.inbox_ids


def _inbox_of(payload: dict[str, Any]) -> str:
    for value in payload.values():
        if isinstance(value, dict) and value.get("inbox_id"):
            return str(value["inbox_id"])
    return ""


def _string_list(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings")
    return tuple(value)


class WebSocketDouble:
    """AgentMail's event WebSocket, served on 127.0.0.1 on an OS-chosen port."""

    def __init__(self, api_key: str = "test-key") -> None:
        self.api_key = api_key
        self._lock = threading.Condition()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._subscribed: dict[ServerConnection, Subscription] = {}
        self._subscriptions: list[Subscription] = []
        self._handshakes = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> WebSocketDouble:
        if self._server is not None:
            raise RuntimeError("WebSocketDouble is already running")
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._check_request,
            logger=_logger,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="websocket-double", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket; wait for the handlers."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        thread.join(5)
        self._server = None
        self._thread = None

    def __enter__(self) -> WebSocketDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("WebSocketDouble has not been started")
        port: int = self._server.socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The ``websockets`` value of an ``AgentMailEnvironment``."""
        return f"ws://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ records

    @property
    def subscriptions(self) -> list[Subscription]:
        """Every subscription accepted, in order, reconnections included."""
        with self._lock:
            return list(self._subscriptions)

    @property
    def handshakes(self) -> int:
        """WebSocket connections opened so far (authenticated or not)."""
        with self._lock:
            return self._handshakes

    def wait_for_subscriptions(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` subscriptions were accepted in all; TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._subscriptions) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._subscriptions)} of {count} subscriptions "
                        f"within {timeout} s"
                    )
                self._lock.wait(remaining)

    # ------------------------------------------------------------------ actions

    def publish(self, payload: dict[str, Any] | str) -> int:
        """Send an event to every connection whose subscription selects it.

        A string is sent as it is (to check that a client keeps the bytes it got).
        Returns the number of connections it was sent to.
        """
        text = payload if isinstance(payload, str) else json.dumps(payload)
        document = json.loads(text)
        with self._lock:
            targets = [c for c, s in self._subscribed.items() if s.selects(document)]
        sent = 0
        for connection in targets:
            with contextlib.suppress(ConnectionClosed):
                connection.send(text)
                sent += 1
        return sent

    def broadcast(self, frame: str | bytes) -> int:
        """Send a frame as it is to every subscribed connection, whatever it holds
        (to see how a client treats frames that are not events)."""
        with self._lock:
            targets = list(self._subscribed)
        sent = 0
        for connection in targets:
            with contextlib.suppress(ConnectionClosed):
                connection.send(frame)
                sent += 1
        return sent

    def drop_connections(self) -> int:
        """Cut every open connection without a closing handshake, like a network
        failure; returns how many were cut."""
        with self._lock:
            connections = list(self._subscribed)
            self._subscribed.clear()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.socket.shutdown(socket.SHUT_RDWR)
        return len(connections)

    # ------------------------------------------------------------------ serving

    def _check_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path != "/v0":
            return connection.respond(HTTPStatus.NOT_FOUND, "No such endpoint\n")
        query_key = parse_qs(parts.query).get("api_key", [""])[-1]
        bearer = request.headers.get("Authorization", "")
        if f"Bearer {self.api_key}" != bearer and query_key != self.api_key:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Invalid API key\n")
        with self._lock:
            self._handshakes += 1
        return None

    def _handle(self, connection: ServerConnection) -> None:
        try:
            for frame in connection:
                self._on_frame(connection, frame)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._subscribed.pop(connection, None)

    def _on_frame(self, connection: ServerConnection, frame: str | bytes) -> None:
        try:
            message = json.loads(frame)
            if not isinstance(message, dict):
                raise ValueError("a frame is a JSON object")
            if message.get("type") != "subscribe":
                raise ValueError(f"unknown message type {message.get('type')!r}")
            subscription = Subscription(
                event_types=_string_list(message.get("event_types"), "event_types"),
                inbox_ids=_string_list(message.get("inbox_ids"), "inbox_ids"),
            )
        except ValueError as exc:
            error = {"type": "error", "name": "ValidationError", "message": str(exc)}
            connection.send(json.dumps(error))
            return
        answer: dict[str, Any] = {"type": "subscribed"}
        if subscription.event_types is not None:
            answer["event_types"] = list(subscription.event_types)
        if subscription.inbox_ids is not None:
            answer["inbox_ids"] = list(subscription.inbox_ids)
        # Answer before registering, so that no event can overtake "subscribed".
        connection.send(json.dumps(answer))
        with self._lock:
            self._subscribed[connection] = subscription
            self._subscriptions.append(copy.copy(subscription))
            self._lock.notify_all()
