"""``POST /webhook`` as a sender sees it: what is accepted, stored, refused and why.

Most tests go through Flask's test client; those where the wire matters (header case,
raw header bytes, chunked bodies, concurrency) go through the real waitress server.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from runner import Context, Event, hookimpl
from runner.config import load_config
from runner.ingress import create_app
from runner.runtime import Runtime
from runner.store import StoreUnavailable
from runner.testing.agentmail_double import AgentMailDouble
from runner.verify import Verifier
from tests.conftest import (
    ENGINE,
    SECRET,
    LiveServer,
    RuntimeFactory,
    deliver,
    load_payload,
    sign,
    write_config,
)

# Another valid secret (base64 of 24 bytes), for rotations.
OTHER_SECRET = "whsec_b3RoZXItc2VjcmV0LWZvci1yb3RhdGlvbi10ZXN0cw=="

# A marker that must never reach the logs: it stands for a message body.
BODY_MARKER = "confidential-body-text-7f3a"


def _body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def _received(**message: Any) -> dict[str, Any]:
    """A message.received payload with a fresh event id."""
    payload = load_payload("message-received.json")
    payload["event_id"] = str(uuid.uuid4())
    payload["message"].update(message)
    return payload


def _post(
    rt: Runtime,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    client: str = "127.0.0.1",
) -> Any:
    return (
        create_app(rt)
        .test_client()
        .post(path, data=body, headers=headers, environ_base={"REMOTE_ADDR": client})
    )


def _signed_at(body: bytes, seconds: int) -> dict[str, str]:
    return Verifier([SECRET]).sign(
        body, delivery_id=f"msg_{uuid.uuid4().hex}", timestamp=seconds
    )


# -- verification over the raw bytes ----------------------------------------------


def test_signed_bytes_with_upper_case_escapes_and_emoji_are_accepted_as_sent(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    # json.dumps would write \u001b and escape the emoji; a re-serialised body would
    # not match the signature, so only the bytes as received can verify.
    body = (
        '{"event_type": "message.received", "event_id": "evt-escapes", '
        '"message": {"inbox_id": "helpdesk@agentmail.to", "from": "a@example.org", '
        '"subject": "ESC \\u001B here \\uD83D\\uDE00 and 🎉 raw"}}'
    ).encode()

    response = deliver(rt, body)

    assert response.status_code == 200
    assert response.get_json() == {"status": "accepted", "event": "evt-escapes"}
    stored = rt.store.get_event("evt-escapes")
    assert stored is not None
    assert stored.payload == body.decode("utf-8")
    subject = json.loads(stored.payload)["message"]["subject"]
    assert subject == "ESC \x1b here \U0001f600 and 🎉 raw"


def test_title_case_svix_header_names_are_accepted_on_the_wire(
    make_runtime: RuntimeFactory, live_server: Any
) -> None:
    server: LiveServer = live_server(make_runtime(), workers=0)
    body = _body(_received())
    headers = {name.title(): value for name, value in sign(body).items()}
    assert set(headers) == {"Svix-Id", "Svix-Timestamp", "Svix-Signature"}

    with httpx.Client() as http:
        response = http.post(f"{server.url}/webhook", content=body, headers=headers)

    assert response.status_code == 200
    assert response.json()["status"] == "accepted"


def test_standard_webhooks_header_names_are_accepted(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    body = _body(_received())
    headers = {
        name.replace("svix-", "Webhook-"): value for name, value in sign(body).items()
    }

    response = deliver(rt, body, headers=headers, signed=False)

    assert response.status_code == 200
    assert response.get_json()["status"] == "accepted"
    stored = rt.store.get_event(response.get_json()["event"])
    assert stored is not None and stored.scheme == "svix"


def test_a_rotation_header_where_only_the_second_signature_matches_is_accepted(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    body = _body(_received())
    headers = sign(body)
    old = Verifier([OTHER_SECRET]).sign(
        body,
        delivery_id=headers["svix-id"],
        timestamp=int(headers["svix-timestamp"]),
    )
    headers["svix-signature"] = f"{old['svix-signature']} {headers['svix-signature']}"

    response = deliver(rt, body, headers=headers, signed=False)

    assert response.status_code == 200
    assert response.get_json()["status"] == "accepted"


@pytest.fixture
def rotated_runtime(tmp_path: Path) -> Iterator[Runtime]:
    """A runtime configured, as in a rotation, with AGENTMAIL_WEBHOOK_SECRET="a,b"."""
    path = write_config(tmp_path)
    config = load_config(
        path, environ={"AGENTMAIL_WEBHOOK_SECRET": f"{OTHER_SECRET},{SECRET}"}
    )
    rt = Runtime(config)
    yield rt
    rt.close()


def test_two_configured_secrets_where_the_second_matches(
    rotated_runtime: Runtime,
) -> None:
    assert rotated_runtime.config.webhook_secrets == [OTHER_SECRET, SECRET]
    body = _body(_received())

    response = deliver(rotated_runtime, body)

    assert response.status_code == 200
    assert response.get_json()["status"] == "accepted"


def test_a_signature_header_with_a_non_ascii_byte_is_401_and_the_body_is_not_logged(
    make_runtime: RuntimeFactory,
    live_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = make_runtime()
    server: LiveServer = live_server(rt, workers=0)
    body = _body(_received(text=BODY_MARKER))
    headers: dict[str, Any] = dict(sign(body))
    headers["svix-signature"] = b"v1,\xe9" + headers["svix-signature"][3:].encode()
    caplog.set_level(logging.DEBUG)

    with httpx.Client() as http:
        response = http.post(f"{server.url}/webhook", content=body, headers=headers)

    assert response.status_code == 401
    assert response.json() == {
        "error": "signature verification failed: malformed signature header"
    }
    assert rt.store.count_by_status() == {}
    assert "rejected a delivery from 127.0.0.1" in caplog.text
    assert BODY_MARKER not in caplog.text


def test_a_signature_item_without_a_comma_is_401_not_500(
    make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rt = make_runtime()
    body = _body(_received(text=BODY_MARKER))
    headers = sign(body)
    headers["svix-signature"] = headers["svix-signature"].replace(",", "")
    caplog.set_level(logging.DEBUG)

    response = deliver(rt, body, headers=headers, signed=False)

    assert response.status_code == 401
    assert response.get_json() == {
        "error": "signature verification failed: no matching signature"
    }
    assert rt.store.count_by_status() == {}
    assert BODY_MARKER not in caplog.text


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(-301, "timestamp too old"), (301, "timestamp too new")],
    ids=["five-minutes-and-a-second-old", "five-minutes-and-a-second-ahead"],
)
def test_timestamps_outside_five_minutes_are_401(
    make_runtime: RuntimeFactory, offset: int, reason: str
) -> None:
    rt = make_runtime()
    body = _body(_received())
    headers = _signed_at(body, int(time.time()) + offset)

    response = deliver(rt, body, headers=headers, signed=False)

    assert response.status_code == 401
    assert response.get_json() == {"error": f"signature verification failed: {reason}"}
    assert rt.store.count_by_status() == {}


# -- content types and sizes ------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", [None, "text/plain"], ids=["no-content-type", "text-plain"]
)
def test_the_content_type_does_not_matter(
    make_runtime: RuntimeFactory, live_server: Any, content_type: str | None
) -> None:
    rt = make_runtime()
    server: LiveServer = live_server(rt, workers=0)
    body = _body(_received())
    headers = sign(body)
    if content_type is not None:
        headers["Content-Type"] = content_type

    with httpx.Client() as http:
        request = http.build_request(
            "POST", f"{server.url}/webhook", content=body, headers=headers
        )
        assert request.headers.get("content-type") == content_type
        response = http.send(request)

    assert response.status_code == 200
    assert response.json()["status"] == "accepted"


def test_a_body_over_the_cap_with_content_length_is_413(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(max_body_bytes=2048)
    body = _padded(2049)

    response = deliver(rt, body)

    assert response.status_code == 413
    assert response.get_json() == {"error": "body larger than 2048 bytes"}
    assert rt.store.count_by_status() == {}


def test_a_chunked_body_past_the_cap_is_413_on_the_wire(
    make_runtime: RuntimeFactory, live_server: Any
) -> None:
    rt = make_runtime(max_body_bytes=2048)
    server: LiveServer = live_server(rt, workers=0)
    body = _padded(4096)

    def chunks() -> Any:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    with httpx.Client() as http:
        request = http.build_request(
            "POST", f"{server.url}/webhook", content=chunks(), headers=sign(body)
        )
        assert request.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in request.headers
        response = http.send(request)

    assert response.status_code == 413
    assert rt.store.count_by_status() == {}


def test_the_app_itself_caps_a_body_that_has_no_content_length(
    make_runtime: RuntimeFactory,
) -> None:
    # Behind a server that streams the body instead of buffering it, the handler's
    # own bounded read is what stops it.
    rt = make_runtime(max_body_bytes=2048)
    body = _padded(4096)

    response = (
        create_app(rt)
        .test_client()
        .post(
            "/webhook",
            input_stream=io.BytesIO(body),
            headers={**sign(body), "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
    )

    assert response.status_code == 413
    assert rt.store.count_by_status() == {}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_exactly_at_the_cap_is_accepted(
    make_runtime: RuntimeFactory, live_server: Any, chunked: bool
) -> None:
    rt = make_runtime(max_body_bytes=2048)
    server: LiveServer = live_server(rt, workers=0)
    body = _padded(2048)

    def chunks() -> Any:
        yield body[:1000]
        yield body[1000:]

    with httpx.Client() as http:
        response = http.post(
            f"{server.url}/webhook",
            content=chunks() if chunked else body,
            headers=sign(body),
        )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"


def _padded(size: int) -> bytes:
    """A usable payload of exactly ``size`` bytes."""
    payload = _received(padding="")
    bare = len(_body(payload))
    payload["message"]["padding"] = "x" * (size - bare)
    body = _body(payload)
    assert len(body) == size
    return body


# -- duplicates, unknown types and unusable payloads ------------------------------


def test_two_concurrent_deliveries_of_one_event_store_it_once_and_reply_once(
    make_runtime: RuntimeFactory, live_server: Any, double: AgentMailDouble
) -> None:
    rt = make_runtime()
    server: LiveServer = live_server(rt, workers=2)
    body = _body(_received())
    headers = sign(body)
    start = threading.Barrier(2)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def post() -> None:
        with httpx.Client(timeout=10) as http:
            start.wait(5)
            response = http.post(f"{server.url}/webhook", content=body, headers=headers)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert [r.status_code for r in answers] == [200, 200]
    assert sorted(r.json()["status"] for r in answers) == ["accepted", "duplicate"]
    double.wait_for(lambda: rt.store.count_by_status() == {"done": 1}, timeout=10)
    rt.stop_workers(grace=5)
    assert len(double.sent) == 1
    assert double.sent[0].kind == "reply"


class Everything:
    """A plugin that subscribes to every event type and remembers what it saw."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["*"]

    @hookimpl
    def observe(self, event: Event, context: Context) -> None:
        self.seen.append(event)


def test_an_unknown_event_type_is_stored_acknowledged_and_given_to_a_wildcard_plugin(
    make_runtime: RuntimeFactory,
) -> None:
    everything = Everything()
    rt = make_runtime(extra_plugins=(("everything", everything),))
    payload = {
        "type": "event",
        "event_type": "inbox.archived",
        "event_id": "evt-unknown-type",
        "inbox": {"inbox_id": "helpdesk@agentmail.to", "archived_by": "ops"},
    }

    response = deliver(rt, payload)

    assert response.status_code == 200
    assert response.get_json() == {"status": "accepted", "event": "evt-unknown-type"}
    assert rt.drain() == 1
    [event] = everything.seen
    assert event.event_type == "inbox.archived"
    assert event.payload["inbox"]["archived_by"] == "ops"
    stored = rt.store.get_event("evt-unknown-type")
    assert stored is not None and stored.status == "done"


def test_unknown_fields_are_kept_in_the_stored_payload(
    make_runtime: RuntimeFactory,
) -> None:
    everything = Everything()
    rt = make_runtime(extra_plugins=(("everything", everything),))
    payload = _received(sentiment={"score": 0.8, "label": "calm"})
    payload["delivery_region"] = "eu-west-1"

    deliver(rt, payload)
    rt.drain()

    stored = rt.store.get_event(payload["event_id"])
    assert stored is not None
    kept = json.loads(stored.payload)
    assert kept["delivery_region"] == "eu-west-1"
    assert kept["message"]["sentiment"] == {"score": 0.8, "label": "calm"}
    [event] = everything.seen
    assert event.payload["delivery_region"] == "eu-west-1"
    assert event.payload["message"]["sentiment"]["label"] == "calm"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"this is not JSON at all", "the body is not JSON"),
        (
            b'[{"event_type": "message.received"}]',
            "the body is JSON list, not an object",
        ),
        (
            b'{"event_id": "evt-no-type", "message": {}}',
            "the payload has no event_type",
        ),
        (
            b'{"event_type": "message.received", "x": "\xff\xfe"}',
            "the body is not UTF-8",
        ),
        (
            '{"event_type": "message.received"}'.encode("utf-16"),
            "the body is not UTF-8",
        ),
        (
            '{"event_type": "message.received"}'.encode("utf-32"),
            "the body is not UTF-8",
        ),
        (
            '{"event_type": "message.received"}'.encode("utf-8-sig"),
            "the body is not JSON: Unexpected UTF-8 BOM",
        ),
        (
            b'{"event_type": "message.received", "event_id": true}',
            "the event_id is JSON bool, not a string",
        ),
        (
            b'{"event_type": "message.received", "event_id": 0}',
            "the event_id is JSON int, not a string",
        ),
        (
            b'{"event_type": ["message.received"], "event_id": "evt-list"}',
            "the event_type is JSON list, not a string",
        ),
        (
            b'{"event_type": "message.received", "score": NaN}',
            "the body is not JSON: NaN is not a JSON value",
        ),
        (
            b'{"event_type": "message.received", "score": -Infinity}',
            "the body is not JSON: -Infinity is not a JSON value",
        ),
    ],
    ids=[
        "not-json",
        "json-array",
        "no-event-type",
        "not-utf8",
        "utf16",
        "utf32",
        "bom",
        "bool-id",
        "zero-id",
        "list-type",
        "nan",
        "infinity",
    ],
)
def test_an_authentic_payload_that_cannot_be_used_becomes_a_dead_letter(
    make_runtime: RuntimeFactory, double: AgentMailDouble, body: bytes, reason: str
) -> None:
    rt = make_runtime()

    response = deliver(rt, body)

    assert response.status_code == 200
    answer = response.get_json()
    assert answer["status"] == "dead_letter"
    stored = rt.store.get_event(answer["event"])
    assert stored is not None
    assert stored.status == "dead"
    assert stored.last_error is not None and stored.last_error.startswith(reason)
    assert rt.drain() == 0
    assert double.requests == []


def test_a_redelivered_dead_letter_is_a_duplicate(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime()
    body = b"not JSON, and delivered twice"
    headers = sign(body)

    first = deliver(rt, body, headers=headers, signed=False)
    second = deliver(rt, body, headers=headers, signed=False)

    assert first.get_json()["status"] == "dead_letter"
    assert second.get_json() == {
        "status": "duplicate",
        "event": first.get_json()["event"],
    }
    assert rt.store.count_by_status() == {"dead": 1}


# -- the store, paths and methods -------------------------------------------------


def test_a_store_that_is_gone_answers_503_with_retry_after(
    make_runtime: RuntimeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "store"
    directory.mkdir()
    rt = make_runtime(database=str(directory / "runner.db"))
    assert deliver(rt, _received()).status_code == 200
    # The disk goes away: pooled connections are dropped and the file's directory
    # removed, so the next connection the store opens fails in SQLite itself.
    rt.store.engine.dispose()
    shutil.rmtree(directory)

    response = deliver(rt, _received())

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json() == {
        "error": "the event store is unavailable; retry later"
    }
    assert "store unavailable, answering 503 so the sender retries" in caplog.text
    ready = create_app(rt).test_client().get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["store"].startswith("unavailable: ")


@pytest.mark.skipif(ENGINE != "sqlite", reason="SQLite's write lock")
def test_a_sqlite_store_locked_by_another_process_answers_503_not_500(
    make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    database = tmp_path / "runner.db"
    rt = make_runtime(database=str(database))

    @sa.event.listens_for(rt.store.engine, "connect")
    def _give_up_soon(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=50")

    rt.store.engine.dispose()
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds SQLite's write lock
    try:
        # The ingest's insert and a worker's BEGIN both reach the driver directly.
        assert deliver(rt, _received()).status_code == 503
        with pytest.raises(StoreUnavailable, match="database is locked"):
            rt.store.claim("worker-1", 30)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert deliver(rt, _received()).status_code == 200


def test_a_trailing_slash_is_served_not_redirected(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    body = _body(_received())

    response = _post(rt, "/webhook/", body, sign(body))

    assert response.status_code == 200
    assert "Location" not in response.headers
    assert response.get_json()["status"] == "accepted"


def test_doubled_slashes_are_not_found_rather_than_redirected(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    body = _body(_received())

    response = _post(rt, "/webhook//", body, sign(body))

    assert response.status_code == 404
    assert "Location" not in response.headers
    assert rt.store.count_by_status() == {}


@pytest.mark.parametrize("path", ["/webhook", "/webhook/"])
def test_get_on_the_webhook_is_405_not_a_redirect(
    make_runtime: RuntimeFactory, path: str
) -> None:
    rt = make_runtime()

    response = create_app(rt).test_client().get(path)

    assert response.status_code == 405
    assert "Location" not in response.headers
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("POST", "/webhook//", 404),
        ("POST", "/WEBHOOK", 404),
        ("GET", "/webhook", 405),
        ("POST", "/healthz", 405),
    ],
)
def test_http_errors_outside_the_dashboard_are_json(
    make_runtime: RuntimeFactory, method: str, path: str, code: int
) -> None:
    rt = make_runtime()

    response = create_app(rt).test_client().open(path, method=method)

    assert response.status_code == code
    assert response.mimetype == "application/json"
    assert set(response.get_json()) == {"error"}
    assert response.get_json()["error"]
    if code == 405:
        assert response.headers["Allow"]


# -- the route in front of Flask's dispatch ---------------------------------------


def _answers(app: Any, requests: list[tuple[bytes, dict[str, str]]]) -> list[Any]:
    client = app.test_client()
    answers = []
    for body, headers in requests:
        r = client.post(
            "/webhook",
            data=body,
            headers=headers,
            environ_base={"REMOTE_ADDR": "10.1.1.1"},
        )
        kept = {k: r.headers.get(k) for k in ("Content-Type", "Retry-After")}
        answers.append((r.status_code, r.get_json(), kept))
    return answers


def test_the_flask_view_answers_every_case_as_the_route_in_front_of_it(
    tmp_path: Path,
) -> None:
    accepted = _body(_received())
    dead = b"not json"
    large = _body(_received(text="x" * 4096))
    forged = _body(_received())
    requests = [
        (accepted, sign(accepted, "msg_same")),
        (accepted, sign(accepted, "msg_same")),  # a duplicate
        (dead, sign(dead, "msg_dead")),
        (large, sign(large)),  # 413
        *[(forged, sign(b"other", "msg_forged"))] * 3,  # 401, 401, then 429
    ]
    settings = {
        "webhook_secrets": [SECRET],
        "max_body_bytes": 2048,
        "failed_verifications_burst": 2,
        "failed_verifications_per_minute": 1,
    }
    results = []
    for name in ("front", "flask"):
        directory = tmp_path / name
        directory.mkdir()
        rt = Runtime(load_config(write_config(directory, runner=settings), environ={}))
        try:
            app = create_app(rt)
            if name == "flask":
                app.wsgi_app = app.wsgi_app.app  # type: ignore[attr-defined]
            results.append(_answers(app, requests))
        finally:
            rt.close()

    front, flask = results
    assert [code for code, _, _ in front] == [200, 200, 200, 413, 401, 401, 429]
    assert [body.get("status") for _, body, _ in front[:3]] == [
        "accepted",
        "duplicate",
        "dead_letter",
    ]
    assert front[-1][2]["Retry-After"] == "60"
    assert flask == front


def test_an_unexpected_failure_is_a_500_with_a_json_error_and_is_logged(
    make_runtime: RuntimeFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = make_runtime()

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("a bug in the store layer")

    monkeypatch.setattr(rt.committer, "submit", broken)
    caplog.set_level(logging.ERROR, logger="agentmail_runner")

    response = deliver(rt, _received())

    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error"}
    assert "a bug in the store layer" in caplog.text
    assert rt.store.count_by_status() == {}


# -- rate limiting of failed verifications ----------------------------------------


def test_failed_verifications_are_limited_per_address_but_authentic_ones_are_not(
    make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rt = make_runtime(failed_verifications_burst=3, failed_verifications_per_minute=1)
    forged = _body(_received())
    bad = Verifier([OTHER_SECRET]).sign(forged, delivery_id="msg_forged")
    caplog.set_level(logging.INFO, logger="agentmail_runner")

    codes = [_post(rt, "/webhook", forged, bad).status_code for _ in range(3)]
    limited = [_post(rt, "/webhook", forged, bad) for _ in range(5)]

    assert codes == [401, 401, 401]
    assert [r.status_code for r in limited] == [429] * 5
    assert limited[0].headers["Retry-After"] == "60"
    assert limited[0].get_json() == {
        "error": "too many failed verifications from this address"
    }
    rejections = [r for r in caplog.records if "rejected a delivery" in r.getMessage()]
    assert len(rejections) == 3

    # Another address has its own budget.
    assert _post(rt, "/webhook", forged, bad, client="10.0.0.9").status_code == 401
    # And an authentic delivery from the limited address is still taken.
    authentic = _body(_received())
    accepted = _post(rt, "/webhook", authentic, sign(authentic))
    assert accepted.status_code == 200
    assert accepted.get_json()["status"] == "accepted"


# -- the sender's address in its several shapes -----------------------------------

SENDER_TEMPLATE = """
[plugins.autoresponder]
[[plugins.autoresponder.templates]]
to = "*"
text = "Dear {sender_name} ({sender_email})"
"""


def _from_string() -> dict[str, Any]:
    return load_payload("message-received.json")


def _from_underscore_only() -> dict[str, Any]:
    payload = load_payload("message-received.json")
    del payload["message"]["from"]
    return payload


def _from_seed_list() -> dict[str, Any]:
    return load_payload("seed-message-received.json")


@pytest.mark.parametrize(
    ("payload", "email", "name"),
    [
        (_from_string, "pat@example.org", "Pat Example"),
        (_from_underscore_only, "pat@example.org", "Pat Example"),
        (_from_seed_list, "jane@example.com", "Jane Doe"),
    ],
    ids=["from-string", "from_-only", "from-list-of-objects"],
)
def test_every_shape_of_from_gets_a_reply_to_the_sender(
    make_runtime: RuntimeFactory,
    double: AgentMailDouble,
    payload: Any,
    email: str,
    name: str,
) -> None:
    rt = make_runtime(SENDER_TEMPLATE)
    data = payload()

    assert deliver(rt, data).status_code == 200
    assert rt.drain() == 1

    [sent] = double.sent
    assert sent.kind == "reply"
    assert sent.source_message_id == data["message"]["message_id"]
    assert sent.json["text"] == f"Dear {name} ({email})"
    assert rt.store.count_replies(since=0, recipient=email) == 1


@pytest.mark.parametrize("depth", [100, 50_000])
def test_json_nested_too_deep_is_acknowledged_and_kept_as_a_dead_letter(
    make_runtime, depth
):
    rt = make_runtime()
    body = (
        '{"event_type": "message.received", "event_id": "deep", "message": '
        + "[" * depth
        + "]" * depth
        + "}"
    ).encode()

    response = deliver(rt, body)

    assert response.status_code == 200
    assert response.get_json()["status"] == "dead_letter"
    row = rt.store.get_event(response.get_json()["event"])
    assert row is not None and row.status == "dead"
    assert row.last_error == "the body is JSON nested deeper than 64 levels"


def test_many_idle_half_sent_connections_do_not_lock_deliveries_out(
    make_runtime, live_server
):
    rt = make_runtime(workers=0)
    server = live_server(rt, workers=0)
    port = int(server.url.rsplit(":", 1)[1])
    idle = []
    try:
        for _ in range(150):  # past waitress's own default limit of 100
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn.sendall(
                b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx"
            )
            idle.append(conn)
        body = json.dumps(load_payload("message-received.json")).encode()

        response = httpx.post(
            f"{server.url}/webhook", content=body, headers=sign(body), timeout=10
        )

        assert response.status_code == 200
    finally:
        for conn in idle:
            conn.close()


def test_an_idle_connection_is_closed_soon_after_its_timeout(make_runtime, live_server):
    rt = make_runtime(workers=0, connection_timeout_seconds=1)
    server = live_server(rt, workers=0)
    port = int(server.url.rsplit(":", 1)[1])

    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        opened = time.monotonic()
        assert conn.recv(1) == b""  # closed by the server
        idle_for = time.monotonic() - opened

    # waitress's default sweep, every 30 s, left it open for up to twice as long.
    assert 1 <= idle_for < 3
