"""The dashboard's pages: events, one event's story, dead letters, suppressions,
plugins and activity. Server-rendered; every value from a payload is escaped by the
templates, none is marked safe."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.sansio.blueprints import BlueprintSetupState

from runner.dashboard import chart as charts
from runner.dashboard.auth import (
    COOKIE_NAME,
    SESSION_SECONDS,
    Gate,
    Visitor,
    is_loopback,
)
from runner.dashboard.suppressions import (
    list_suppressions,
    remove_suppression,
    suppressions_enabled,
)
from runner.events import Event, parse_payload
from runner.store import (
    DEAD,
    DONE,
    MAX_EVENT_NUMBER,
    PENDING,
    RUNNING,
    EventRow,
    StoreUnavailable,
)
from runner.story import event_story, format_time, why_unusable

if TYPE_CHECKING:
    from werkzeug.wrappers import Response as BaseResponse

    from runner.runtime import Runtime

__all__ = ["blueprint"]

log = logging.getLogger("agentmail_runner.dashboard")

URL_PREFIX = "/dashboard"

blueprint = Blueprint(
    "dashboard",
    __name__,
    url_prefix=URL_PREFIX,
    template_folder="templates",
    static_folder="static",
)

PAGE_SIZE = 50
STATUSES = (PENDING, RUNNING, DONE, DEAD)
OPEN_ENDPOINTS = {"dashboard.login", "dashboard.static"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@blueprint.record
def _install_gate(state: BlueprintSetupState) -> None:
    rt: Runtime = state.app.extensions["agentmail_runner"]
    token = rt.settings.admin_token
    assert token is not None, "the dashboard is registered only with an admin token"
    state.app.extensions["agentmail_runner.dashboard"] = Gate(
        token.get_secret_value(), allow_remote=rt.settings.dashboard_allow_remote
    )


def _runtime() -> Runtime:
    rt: Runtime = current_app.extensions["agentmail_runner"]
    return rt


def _gate() -> Gate:
    gate: Gate = current_app.extensions["agentmail_runner.dashboard"]
    return gate


# -- who may come in -----------------------------------------------------------


@blueprint.before_request
def _admit() -> BaseResponse | None:
    gate = _gate()
    if not gate.allow_remote and not is_loopback(request.remote_addr):
        return _refuse(
            403,
            "The dashboard answers loopback clients only. To open it to others, set "
            "[runner] dashboard_allow_remote = true and serve it over HTTPS.",
        )
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    visitor = _visitor(gate)
    if isinstance(visitor, Response):
        return visitor
    g.visitor = visitor
    if request.method == "POST" and not gate.csrf_ok(
        visitor, request.form.get("csrf_token")
    ):
        return _refuse(
            403,
            "This form has expired or did not come from the dashboard: reload "
            "the page and try again.",
        )
    return None


def _visitor(gate: Gate) -> Visitor | Response:
    bearer = gate.bearer(request.headers)
    if bearer is not None:
        if _guessing(gate):
            return _too_many()
        if gate.token_matches(bearer):
            return Visitor("bearer")
        return _wrong_token(gate)
    visitor = gate.session(request.cookies.get(COOKIE_NAME))
    if visitor is None:
        response = _login_page(401, "")
        response.headers["WWW-Authenticate"] = 'Bearer realm="agentmail-runner"'
        return response
    return visitor


def _guessing(gate: Gate) -> bool:
    """Whether this address is past its budget of wrong tokens: then no token it sends
    is even compared, the right one included, or a 429 would only mean "wrong"."""
    return gate.limiter.exhausted(request.remote_addr or "unknown")


def _too_many() -> Response:
    response = _refuse(429, "Too many wrong admin tokens from this address.")
    response.headers["Retry-After"] = "60"
    return response


def _wrong_token(gate: Gate) -> Response:
    client = request.remote_addr or "unknown"
    if not gate.limiter.hit(client):
        return _too_many()
    log.warning("dashboard: refused a wrong admin token from %s", client)
    return _login_page(401, "That is not the admin token.")


def _refuse(code: int, message: str) -> Response:
    return make_response(
        render_template("dashboard/refused.html", message=message), code
    )


def _login_page(code: int, error: str) -> Response:
    return make_response(render_template("dashboard/login.html", error=error), code)


@blueprint.errorhandler(StoreUnavailable)
def _store_down(exc: StoreUnavailable) -> Response:
    return _refuse(503, f"The event store is unavailable, try again later: {exc}")


@blueprint.after_request
def _harden(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@blueprint.app_template_filter("utc")
def _utc(ts: float | None) -> str:
    return format_time(ts)


@blueprint.app_template_filter("pretty")
def _pretty(value: Any) -> str:
    """JSON for reading; plain text, so the template escapes it."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@blueprint.context_processor
def _page_context() -> dict[str, Any]:
    visitor: Visitor | None = g.get("visitor")
    rt = _runtime()
    return {
        "csrf_token": visitor.csrf if visitor else "",
        "session_login": visitor is not None and visitor.via == "cookie",
        "show_suppressions": suppressions_enabled(rt),
        "dry_run": rt.dry_run,
    }


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse:
    if request.method == "GET":
        return _login_page(200, "")
    gate = _gate()
    if _guessing(gate):
        return _too_many()
    if not gate.token_matches(request.form.get("token", "")):
        return _wrong_token(gate)
    response = redirect(url_for("dashboard.events"), 303)
    response.set_cookie(
        COOKIE_NAME,
        gate.new_session(),
        max_age=SESSION_SECONDS,
        path=URL_PREFIX,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


@blueprint.post("/logout")
def logout() -> BaseResponse:
    response = redirect(url_for("dashboard.login"), 303)
    response.delete_cookie(
        COOKIE_NAME, path=URL_PREFIX, httponly=True, samesite="Strict"
    )
    return response


# -- events --------------------------------------------------------------------


# An event's page and its retry: a larger number names no event, and answers 404.
EVENT_PATH = f"/events/<int(max={MAX_EVENT_NUMBER}):pk>"


def _before() -> int | None:
    """The ``before`` of a page of older events; one that no event number can be
    under, or that numbers no event, is ignored as a malformed one is."""
    before = request.args.get("before", type=int)
    return before if before is not None and 0 < before <= MAX_EVENT_NUMBER else None


@blueprint.get("/")
def events() -> str | Response:
    store = _runtime().store
    status = request.args.get("status", "")
    event_type = request.args.get("type", "")
    search = request.args.get("q", "").strip()
    if "\x00" in status + event_type + search:
        # No stored text holds one, and PostgreSQL refuses to compare with it.
        return _refuse(400, "A filter cannot contain a NUL character (%00).")
    before = _before()
    rows = store.list_events(
        limit=PAGE_SIZE,
        status=status or None,
        event_type=event_type or None,
        search=search or None,
        before=before,
    )
    return render_template(
        "dashboard/events.html",
        rows=[(row, _summary(row)) for row in rows],
        counts=store.count_by_status(),
        statuses=STATUSES,
        event_types=store.event_types(),
        status=status,
        event_type=event_type,
        search=search,
        before=before,
        older=rows[-1].pk if len(rows) == PAGE_SIZE else None,
    )


def _summary(row: EventRow) -> str:
    """Who wrote about what, or which inbox the event concerns."""
    try:
        payload = parse_payload(row.payload)
    except ValueError:
        return ""
    if not isinstance(payload, dict):
        return ""
    event = Event(payload)
    message = event.message
    if message is None:
        return event.inbox_id
    sender = message.sender
    who = sender.email if sender is not None else "(no sender)"
    return f"{who}: {message.subject}" if message.subject else who


@blueprint.get(EVENT_PATH)
def event(pk: int) -> str:
    store = _runtime().store
    row = store.get_event(pk)
    if row is None:
        abort(404)
    story = event_story(store, row)
    return render_template(
        "dashboard/event.html",
        story=story,
        retried=request.args.get("retried") == "1",
    )


@blueprint.post(EVENT_PATH + "/retry")
def retry(pk: int) -> BaseResponse:
    rt = _runtime()
    row = rt.store.get_event(pk)
    if row is None:
        abort(404)
    unusable = why_unusable(row)
    if unusable is not None:
        return _refuse(
            409,
            f"Event #{pk} cannot be retried: no plugin can process it ({unusable}).",
        )
    if not rt.store.retry_event(pk):
        return _refuse(
            409,
            f"Event #{pk} is {row.status}: only a dead letter or a failing event "
            "can be retried.",
        )
    rt.wakeup.notify()
    log.info("event %s: requeued from the dashboard", row.event_key)
    return redirect(url_for("dashboard.event", pk=pk, retried=1), 303)


@blueprint.get("/dead")
def dead_letters() -> str:
    before = _before()
    rows = _runtime().store.list_events(limit=PAGE_SIZE, status=DEAD, before=before)
    return render_template(
        "dashboard/dead.html",
        rows=rows,
        before=before,
        older=rows[-1].pk if len(rows) == PAGE_SIZE else None,
    )


# -- suppressions ----------------------------------------------------------------


@blueprint.get("/suppressions")
def suppressions() -> str:
    rt = _runtime()
    if not suppressions_enabled(rt):
        abort(404)
    search = request.args.get("q", "").strip()
    return render_template(
        "dashboard/suppressions.html",
        suppressions=[
            (s, _details(s.details)) for s in list_suppressions(rt.store, search)
        ],
        search=search,
        removed=request.args.get("removed", ""),
    )


def _details(value: Any) -> list[tuple[str, str]]:
    """A suppression's stored details as label and text pairs, the empty ones and
    the address itself left out."""
    if isinstance(value, dict):
        return [
            (str(k), _text(v))
            for k, v in value.items()
            if k not in ("key", "address") and v not in (None, "", 0, [], {})
        ]
    if value in (None, "", True):
        return []
    return [("", _text(value))]


def _text(value: Any) -> str:
    if isinstance(value, (int, float)) and value > 1e9:
        return format_time(float(value))  # a Unix time
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


@blueprint.post("/suppressions/remove")
def remove() -> BaseResponse:
    rt = _runtime()
    if not suppressions_enabled(rt):
        abort(404)
    key = request.form.get("key", "")
    if not remove_suppression(rt.store, key):
        return _refuse(404, f"{key} is not on the suppression list.")
    log.info("dashboard: removed %s from the suppression list", key)
    return redirect(url_for("dashboard.suppressions", removed=key), 303)


# -- plugins and activity --------------------------------------------------------


@blueprint.get("/plugins")
def plugins() -> str:
    rt = _runtime()
    since = time.time() - 24 * 3600
    activity = {a.plugin: a for a in rt.store.plugin_activity(since=since)}
    loaded = {p.name for p in rt.plugins.plugins}
    return render_template(
        "dashboard/plugins.html",
        plugins=[(p, activity.get(p.name)) for p in rt.plugins.plugins],
        failures=rt.plugins.failures,
        disabled=rt.plugins.disabled,
        idle=sorted(
            name
            for name in rt.plugins.available
            if name not in loaded
            and name not in rt.plugins.failures
            and name not in rt.plugins.disabled
        ),
    )


@blueprint.get("/activity")
def activity() -> str:
    window = charts.WINDOWS.get(request.args.get("window", ""), charts.WINDOWS["24h"])
    start = charts.bucket_start(window)
    counts = _runtime().store.event_counts(
        since=start, bucket_seconds=window.bucket_seconds
    )
    return render_template(
        "dashboard/activity.html",
        chart=charts.build_chart(counts, window, start=start),
        window=window,
        windows=list(charts.WINDOWS),
    )
