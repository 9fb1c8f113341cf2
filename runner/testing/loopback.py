"""The lifecycle the HTTP test doubles share: a WSGI app on 127.0.0.1, OS-chosen port.

Handler threads are not daemons, so ``stop`` returns only once every request has been
answered; a request sleeping in an injected delay is woken by ``stopping``, and a
connection that never completes its request is cut after a grace period.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Self, TypeVar

from werkzeug.serving import (
    BaseWSGIServer,
    ThreadedWSGIServer,
    WSGIRequestHandler,
    make_server,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["LoopbackServer", "StopRequested"]

_logger = logging.getLogger("agentmail_runner.testing")
_T = TypeVar("_T")

# Generous enough for a request that was mid-flight when stop() was called.
_STOP_GRACE_SECONDS = 1.0


class StopRequested(Exception):
    """Raised in a handler whose injected delay was cut short by ``stop``."""


class _QuietHandler(WSGIRequestHandler):
    """Routes werkzeug's per-request log lines to debug logging instead of stderr."""

    def log(self, type: str, message: str, *args: Any) -> None:
        _logger.debug(message, *args)


class LoopbackServer:
    """Base of the HTTP doubles: start, stop, ``url``, ``wait_for``.

    Subclasses implement ``_wsgi_app`` and may extend ``_after_stop``. ``_lock``
    guards their state; notify ``_changed`` whenever something is recorded, so that
    ``wait_for`` returns promptly.
    """

    name = "double"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._connections: set[socket.socket] = set()

    def _wsgi_app(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        raise NotImplementedError

    def start(self) -> Self:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._stopping.clear()
        double = self

        class _Handler(_QuietHandler):
            def setup(self) -> None:
                super().setup()
                with double._lock:
                    double._connections.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with double._lock:
                        double._connections.discard(self.connection)

        server = make_server(
            "127.0.0.1", 0, self._wsgi_app, threaded=True, request_handler=_Handler
        )
        # socketserver only remembers, and server_close() only joins, non-daemon
        # handler threads; werkzeug makes them daemons, which would let stop() return
        # with a request still running.
        if not isinstance(server, ThreadedWSGIServer):
            raise TypeError(f"expected a threaded server, got {type(server).__name__}")
        server.daemon_threads = False
        self._server = server
        self._port = server.port
        # A short poll interval keeps stop() fast: shutdown() waits for one poll.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}:{server.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wait for every server thread, delayed answers included."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        server.shutdown()
        # serve_forever() closes the server on exit, which joins the handler threads.
        thread.join(_STOP_GRACE_SECONDS)
        while thread.is_alive():
            # A handler is stuck on a connection that never completed its request;
            # cutting the socket is the only way to release it. Looping covers a
            # handler that had not registered its connection yet.
            with self._lock:
                stuck = list(self._connections)
            for conn in stuck:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            thread.join(0.5)
        self._server = None
        self._thread = None
        self._after_stop()

    def _after_stop(self) -> None:
        """What a subclass releases once the server is down."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _pause(self, seconds: float) -> None:
        """Sleep an injected delay; StopRequested when ``stop`` cuts it short."""
        if seconds > 0 and self._stopping.wait(seconds):
            raise StopRequested

    def wait_for(
        self, predicate: Callable[[], _T], timeout: float = 5.0, interval: float = 0.02
    ) -> _T:
        """Call ``predicate`` until it returns something truthy, and return that.

        The double wakes waiters whenever it records something, so this returns
        promptly; ``interval`` bounds the wait for predicates on other state. Raises
        TimeoutError after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s")
            with self._changed:
                self._changed.wait(min(interval, remaining))
