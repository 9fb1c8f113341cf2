"""The HTTP side: ``POST /webhook`` and the health and metrics endpoints.

The webhook handler verifies first, stores second and answers last: a 2xx means the
event is committed. It reads at most ``max_body_bytes`` + 1 bytes of raw body, never
``request.json``, and never logs the body.

``POST /webhook`` is answered in front of Flask's dispatch (``WebhookRoute``): it is the
one route under load, and Flask's request and application contexts, URL adapter and
response object cost about as much CPU per delivery as verifying and storing it. Every
other request, and every other method on ``/webhook``, goes through Flask as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_content_length, get_input_stream

from runner.dashboard.suppressions import count_suppressions, suppressions_enabled
from runner.events import MAX_DEPTH, nested_too_deep
from runner.store import DEAD, DONE, PENDING, RUNNING, NewEvent, StoreUnavailable
from runner.verify import VerificationError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from runner.runtime import Runtime

__all__ = ["WebhookRoute", "accept_delivery", "create_app", "receive"]

log = logging.getLogger("agentmail_runner.ingress")

bp = Blueprint("ingress", __name__)


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["agentmail_runner"]
    return rt


def create_app(rt: Runtime) -> Flask:
    """The runner's WSGI application."""
    app = Flask("agentmail_runner")
    app.extensions["agentmail_runner"] = rt
    # A trailing slash must not turn into a redirect: Svix counts 3xx as failure.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False  # /webhook// is not found, not redirected
    app.register_blueprint(bp)
    if rt.settings.admin_token is not None:
        from runner.dashboard.views import blueprint as dashboard

        app.register_blueprint(dashboard)
    app.register_error_handler(HTTPException, _error_as_json)
    app.wsgi_app = WebhookRoute(rt, app.wsgi_app)  # type: ignore[method-assign]
    return app


def _error_as_json(error: HTTPException) -> Response | HTTPException:
    """HTTP errors (404, 405, ...) in the webhook's JSON form; the dashboard's pages
    keep their HTML ones."""
    if request.path.startswith("/dashboard") or error.code is None:
        return error
    response = _json(error.code, error=error.description or error.name)
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


class Answer(NamedTuple):
    """What the webhook answers: a status, a JSON object, and extra headers."""

    code: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    def encoded(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


class WebhookRoute:
    """WSGI middleware that answers ``POST /webhook`` (and ``/webhook/``) itself and
    hands everything else to the Flask app it wraps.

    The answer is the same as the Flask view's, which stays registered for the URL
    map's sake (405 with ``Allow: POST`` for other methods): both call ``receive``.
    """

    _PATHS = frozenset(("/webhook", "/webhook/"))

    def __init__(self, rt: Runtime, app: WSGIApplication) -> None:
        self.rt = rt
        self.app = app

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or (
            environ.get("PATH_INFO") not in self._PATHS
        ):
            return self.app(environ, start_response)
        try:
            answer = receive(self.rt, environ)
        except Exception:
            log.exception("the webhook handler failed; answering 500")
            answer = Answer(500, {"error": "internal error"})
        body = answer.encoded()
        start_response(
            _STATUS_LINES[answer.code],
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                *answer.headers,
            ],
        )
        return [body]


_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


def _json(code: int, **body: Any) -> Response:
    # Not jsonify: every webhook is answered with one of these, and Flask's JSON
    # provider costs several times what json.dumps does for a two-key object.
    return Response(
        json.dumps(body, separators=(",", ":")), code, mimetype="application/json"
    )


def _read_body(environ: WSGIEnvironment, limit: int) -> bytes | None:
    """The raw body, or None when it is longer than ``limit``."""
    declared = get_content_length(environ)
    if declared is not None and declared > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    stream = get_input_stream(environ)
    while True:
        chunk = stream.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)


@bp.post("/webhook")
def webhook() -> Response:
    answer = receive(runtime(), request.environ)
    response = Response(answer.encoded(), answer.code, mimetype="application/json")
    response.headers.extend(answer.headers)
    return response


def receive(rt: Runtime, environ: WSGIEnvironment) -> Answer:
    """Verify, store and answer one delivery to the webhook."""
    body = _read_body(environ, rt.settings.max_body_bytes)
    if body is None:
        rt.metrics.deliveries.labels("too_large").inc()
        return Answer(
            413, {"error": f"body larger than {rt.settings.max_body_bytes} bytes"}
        )
    client = environ.get("REMOTE_ADDR") or "unknown"
    assert rt.verifier is not None, "the web app needs a verifier"
    try:
        verified = rt.verifier.verify(body, EnvironHeaders(environ))
    except VerificationError as exc:
        rt.metrics.verification_failures.inc()
        if rt.limiter.hit(client):
            skipped = rt.limiter.suppressed(client)
            log.warning(
                "rejected a delivery from %s: %s%s",
                client,
                exc,
                f" ({skipped} more not logged)" if skipped else "",
            )
            rt.metrics.deliveries.labels("unauthenticated").inc()
            return Answer(401, {"error": f"signature verification failed: {exc}"})
        rt.metrics.deliveries.labels("rate_limited").inc()
        return Answer(
            429,
            {"error": "too many failed verifications from this address"},
            (("Retry-After", "60"),),
        )

    try:
        outcome, key = accept_delivery(rt, body, verified.delivery_id, verified.scheme)
    except StoreUnavailable as exc:
        log.error("store unavailable, answering 503 so the sender retries: %s", exc)
        rt.metrics.deliveries.labels("store_unavailable").inc()
        return Answer(
            503,
            {"error": "the event store is unavailable; retry later"},
            (("Retry-After", "5"),),
        )
    rt.metrics.deliveries.labels(outcome).inc()
    return Answer(200, {"status": outcome, "event": key})


def accept_delivery(
    rt: Runtime, body: bytes, delivery_id: str, scheme: str
) -> tuple[str, str]:
    """Store an authentic delivery: ("accepted" | "duplicate" | "dead_letter", key).

    A payload that cannot be used (not JSON, no event type, an event id or type the
    store cannot key on) is still stored, as a dead letter with the reason, and
    acknowledged: the sender would only send it again.
    """
    payload, reason = _parse(body)
    # Absent or null is "", any other value is checked as it is (0 is not absent).
    event_id = _or_empty(payload.get("event_id")) if payload else ""
    event_type = _or_empty(payload.get("event_type")) if payload else ""
    unfit = _unfit("event_id", event_id, _ID_CHARS) or _unfit(
        "event_type", event_type, _TYPE_CHARS
    )
    if unfit is not None:
        reason, event_id, event_type = reason or unfit, "", ""
    if _unfit("svix-id", delivery_id, _ID_CHARS) is not None:
        delivery_id = ""
    if event_id:
        key = event_id
    elif delivery_id:
        key = f"delivery:{delivery_id}"
    else:
        key = "sha256:" + hashlib.sha256(body).hexdigest()
    # PostgreSQL's text cannot hold NUL; a body with a raw NUL is not JSON anyway.
    text = body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    pk = rt.committer.submit(
        NewEvent(
            event_key=key,
            event_id=event_id or None,
            delivery_id=delivery_id or None,
            event_type=event_type,
            payload=text,
            scheme=scheme,
            dead_reason=reason,
        )
    )
    if pk is None:
        log.info("event %s %s: duplicate delivery, already stored", key, event_type)
        return "duplicate", key
    if reason is not None:
        log.error(
            "event %s: authentic but unusable, kept as a dead letter: %s", key, reason
        )
        return "dead_letter", key
    log.info("event %s %s: accepted (%s)", key, event_type, scheme)
    return "accepted", key


# The sizes of the store's event_id / delivery_id and event_type columns.
_ID_CHARS = 300
_TYPE_CHARS = 200


def _or_empty(value: Any) -> Any:
    return "" if value is None else value


def _unfit(name: str, value: Any, limit: int) -> str | None:
    """Why a value read from a delivery cannot be stored as a key column, if it
    cannot: it must be a string (not 7, true or a list turned into text), the store's
    columns are ``limit`` characters, PostgreSQL refuses NUL, and no database driver
    takes a lone surrogate."""
    if not isinstance(value, str):
        return f"the {name} is JSON {type(value).__name__}, not a string"
    if len(value) > limit:
        return f"the {name} is longer than {limit} characters"
    if "\x00" in value:
        return f"the {name} contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from an escape such as "\ud800"
        return f"the {name} is not valid Unicode"
    return None


def _not_json(constant: str) -> Any:
    # Python's decoder takes NaN, Infinity and -Infinity; JSON (RFC 8259) has none,
    # and PostgreSQL's json refuses them.
    raise ValueError(f"{constant} is not a JSON value")


def _parse(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    # UTF-8 only, as JSON on the wire must be (RFC 8259): json.loads would also take
    # UTF-16 or UTF-32 bytes, which the store keeps as UTF-8 text and workers could
    # then no longer read; a byte-order mark is refused by json.loads itself.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, "the body is not UTF-8 text"
    try:
        payload = json.loads(text, parse_constant=_not_json)
    except ValueError as exc:
        return None, f"the body is not JSON: {exc}"
    except RecursionError:
        return None, f"the body is JSON nested deeper than {MAX_DEPTH} levels"
    if not isinstance(payload, dict):
        return None, f"the body is JSON {type(payload).__name__}, not an object"
    if nested_too_deep(text, payload):
        return None, f"the body is JSON nested deeper than {MAX_DEPTH} levels"
    if not payload.get("event_type"):
        return payload, "the payload has no event_type"
    return payload, None


@bp.get("/healthz")
def healthz() -> Response:
    return _json(200, status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    rt = runtime()
    checks: dict[str, Any] = {}
    ready = True
    try:
        rt.store.ping()
        checks["store"] = "ok"
        lag_since = rt.store.oldest_due()
        checks["queue_lag_seconds"] = (
            round(time.time() - lag_since, 3) if lag_since is not None else 0.0
        )
    except StoreUnavailable as exc:
        checks["store"] = f"unavailable: {exc}"
        ready = False
    checks["plugins"] = {p.name: _plugin_check(rt, p.name) for p in rt.plugins.plugins}
    checks["plugins"].update(
        {
            name: {"status": "failed", "error": error}
            for name, error in rt.plugins.failures.items()
        }
    )
    checks["dry_run"] = rt.dry_run
    return _json(200 if ready else 503, ready=ready, checks=checks)


def _plugin_check(rt: Runtime, plugin: str) -> dict[str, Any]:
    """A loaded plugin's latest outcomes in this process (none before its first
    call)."""
    record = rt.metrics.plugin_health.get(plugin)
    error = record.last_error
    if error is not None and len(error) > _MAX_ERROR_CHARS:
        error = error[:_MAX_ERROR_CHARS] + "..."
    return {
        "status": "loaded",
        "last_success_at": _iso(record.last_success_at),
        "last_error_at": _iso(record.last_error_at),
        "last_error": error,
    }


_MAX_ERROR_CHARS = 500


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@bp.get("/metrics")
def metrics() -> Response:
    rt = runtime()
    try:
        depth = rt.store.count_by_status()
        # Every status is set, so a queue that empties reads 0 rather than its past.
        for status in (PENDING, RUNNING, DONE, DEAD, *depth):
            rt.metrics.queue_depth.labels(status).set(depth.get(status, 0))
        oldest = rt.store.oldest_due()
        rt.metrics.queue_lag.set(time.time() - oldest if oldest else 0.0)
        if suppressions_enabled(rt):
            rt.metrics.suppressions.set(count_suppressions(rt.store))
    except StoreUnavailable:
        pass  # the counters are still worth serving; /readyz reports the store
    return Response(
        generate_latest(rt.metrics.registry), content_type=CONTENT_TYPE_LATEST
    )
