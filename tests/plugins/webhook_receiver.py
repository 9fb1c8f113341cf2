"""A loopback HTTP endpoint for tests: records every request, answers as told.

It stands in for a Slack incoming webhook, a JSON webhook or the GitHub REST API, so
a test can check what the runner POSTed (path, headers, JSON body) and make the
endpoint fail on purpose.

    with WebhookReceiver() as receiver:
        receiver.answer(500)            # the next request fails, later ones succeed
        ... aim a plugin at receiver.url + "/hooks/billing" ...
        [first, second] = receiver.requests
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["Received", "WebhookReceiver"]


class _QuietHandler(WSGIRequestHandler):
    """Keeps werkzeug's per-request lines out of the test output."""

    def log(self, type: str, message: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, and the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    json: Any
    status: int


class WebhookReceiver:
    """A threaded werkzeug server on 127.0.0.1 and an OS-chosen port."""

    def __init__(self, default_status: int = 200) -> None:
        self.default_status = default_status
        self._lock = threading.Lock()
        self._statuses: deque[int] = deque()
        self._received: list[Received] = []
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WebhookReceiver:
        self._server = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="webhook-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._thread.join(5)
        self._server.server_close()
        self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the receiver is not running"
        return f"http://127.0.0.1:{self._server.port}"

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, then the default again."""
        with self._lock:
            self._statuses.extend(statuses)

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def _app(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        request = Request(environ)
        body = request.get_data()
        try:
            document = json.loads(body) if body else None
        except ValueError:
            document = None
        with self._lock:
            status = self._statuses.popleft() if self._statuses else self.default_status
            self._received.append(
                Received(
                    method=request.method,
                    path=request.path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    json=document,
                    status=status,
                )
            )
        answer = {"ok": 200 <= status < 300}
        response = Response(
            json.dumps(answer), status=status, content_type="application/json"
        )
        return response(environ, start_response)
