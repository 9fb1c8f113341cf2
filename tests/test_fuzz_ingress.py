"""Property-based fuzzing of ``POST /webhook``: whatever headers and body arrive, the
answer is 2xx or 4xx, never 5xx, and nothing is stored unless the delivery verified;
every properly signed body is acknowledged and stored (as a dead letter when it cannot
be used).

Most examples go through the Flask app directly; fewer go through the real waitress
server as raw bytes on a socket, where header names and values are bytes that no HTTP
client library would send.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runner.ingress import create_app
from runner.runtime import Runtime
from runner.store import DEAD, PENDING, Store, events
from runner.testing.agentmail_double import AgentMailDouble
from runner.verify import Verifier
from tests.chaos.processes import RunnerProcess, open_store, runner_environment
from tests.conftest import SECRET, RuntimeFactory, sign, write_config

# A fixture made once per test serves every example of it: the row counts that each
# example compares are taken before and after that example alone.
IN_PROCESS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OVER_THE_WIRE = settings(IN_PROCESS, max_examples=40)

SIGNATURE_HEADERS = (
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "X-AgentMail-Signature",
)
# Framing is the server's business; fuzzing it would only hang the client.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect"}


def _as_received(text: str) -> str:
    """A header value as a WSGI server hands it over: bytes read as latin-1."""
    return text.encode("utf-8").decode("latin-1")


def _huge(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda c, n: c * n, alphabet, st.integers(1_000, 60_000))


def _timestamps() -> st.SearchStrategy[str]:
    # Offsets from the clock read at draw time, not bounds read when the strategy is
    # built: hypothesis replays a failing case with the same draws, and bounds that
    # moved with the clock in between make it report the strategy itself as flaky.
    def near_now(offset: int) -> str:
        return str(int(time.time()) + offset)

    return st.one_of(
        st.integers(-400, 400).map(near_now),
        st.integers(-(10**20), 10**20).map(str),
        st.sampled_from(["", " ", "now", "1e9", "0x10", "١٢٣٤٥٦٧٨٩٠"]),
        st.just(0).map(lambda offset: near_now(offset) + ".5"),
    )


def _signatures() -> st.SearchStrategy[str]:
    digest = st.binary(min_size=0, max_size=48).map(
        lambda b: base64.b64encode(b).decode()
    )
    broken = st.text(alphabet="!@#$%^&*=+/ab-_", max_size=60)
    one = st.one_of(
        st.builds(
            lambda v, d: f"{v},{d}", st.sampled_from(["v1", "v2", "v1a", ""]), digest
        ),
        st.builds(lambda d: f"v1,{d}", broken),
        st.builds(lambda d: f"sha256={d}", st.text("0123456789abcdefg ", max_size=70)),
    )
    return st.lists(one, min_size=1, max_size=4).map(" ".join)


def _header_text(min_size: int = 0) -> st.SearchStrategy[str]:
    """Any text a header can carry (no line breaks), as a WSGI server reads it."""
    text = st.text(
        st.characters(codec="utf-8", exclude_characters="\r\n"),
        min_size=min_size,
        max_size=80,
    )
    return text.map(_as_received)


def _values() -> st.SearchStrategy[str]:
    return st.one_of(
        _header_text(),
        st.just(""),
        _huge(st.sampled_from("aZ9=,é")).map(_as_received),
        _timestamps(),
        _signatures(),
        st.uuids().map(lambda u: f"msg_{u.hex}"),
    )


def _names() -> st.SearchStrategy[str]:
    token = st.text("abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=30)
    return st.one_of(st.sampled_from(SIGNATURE_HEADERS), token).filter(
        lambda name: name.lower() not in FRAMING
    )


HEADERS = st.lists(st.tuples(_names(), _values()), max_size=8)

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12), inner, max_size=4),
    ),
    max_leaves=12,
)
# Strings the store must cope with whatever their length or content: NUL, and lone
# surrogates (which JSON can carry as escapes such as "\ud800").
AWKWARD_TEXT = st.one_of(
    st.text(max_size=40),
    _huge(st.sampled_from("xé\x00")),
    st.text(st.sampled_from("\x00\ud800\udfffa"), min_size=1, max_size=5),
)
EVENT_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(AWKWARD_TEXT, JSON_VALUES),
        "event_type": st.one_of(
            AWKWARD_TEXT, st.sampled_from(["message.received", "message.sent"])
        ),
        "type": st.just("event"),
        "message": JSON_VALUES,
    },
)
JSON_BODIES = st.one_of(
    JSON_VALUES, EVENT_LIKE, st.dictionaries(st.text(max_size=12), JSON_VALUES)
).map(lambda value: json.dumps(value).encode())


def _nested(depth: int, brackets: tuple[bytes, bytes]) -> bytes:
    opening, closing = brackets
    return opening * depth + b"1" + closing * depth


# JSON nested up to far deeper than any parser's recursion limit.
NESTED_BODIES = st.builds(
    _nested,
    st.integers(1, 100_000),
    st.sampled_from([(b"[", b"]"), (b'{"a": ', b"}")]),
)
BODIES = st.one_of(
    st.binary(max_size=2_000),
    JSON_BODIES,
    NESTED_BODIES,
    st.text(max_size=500).map(lambda t: t.encode("utf-8")),
)


def _rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(events)).scalar()
        )


def _status_of(store: Store, key: str) -> str | None:
    # By key alone: get_event() reads an all-digit reference as a row number.
    with store.engine.connect() as conn:
        status = conn.execute(
            sa.select(events.c.status).where(events.c.event_key == key)
        ).scalar()
    return None if status is None else str(status)


@pytest.fixture
def runtime(make_runtime: RuntimeFactory) -> Runtime:
    # No workers: what an example stores stays as the ingress left it.
    return make_runtime(failed_verifications_burst=1_000_000)


def _post(rt: Runtime, body: bytes, headers: list[tuple[str, str]]) -> Any:
    client = create_app(rt).test_client()
    return client.post(
        "/webhook",
        data=body,
        headers=headers,
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )


# -- through the Flask app -----------------------------------------------------------


@IN_PROCESS
@given(headers=HEADERS, body=BODIES)
def test_random_headers_and_bodies_get_a_4xx_and_store_nothing(
    runtime: Runtime, headers: list[tuple[str, str]], body: bytes
) -> None:
    before = _rows(runtime.store)

    response = _post(runtime, body, headers)

    assert 400 <= response.status_code < 500, response.get_data()[:300]
    assert _rows(runtime.store) == before


@st.composite
def _tampered(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, str]]]:
    """A properly signed delivery with one thing changed that its signature covers,
    or with a forged header put first."""
    body = draw(JSON_BODIES)
    signed = sign(body, f"msg_{uuid.uuid4().hex}")
    how = draw(
        st.sampled_from(["body", "id", "timestamp", "signature", "version", "first"])
    )
    if how == "body":
        index = draw(st.integers(0, len(body) - 1))
        flipped = bytes([body[index] ^ draw(st.integers(1, 255))])
        body = body[:index] + flipped + body[index + 1 :]
    elif how == "id":
        signed["svix-id"] = draw(_header_text(min_size=1))
    elif how == "timestamp":
        shift = draw(st.integers(-290, 290).filter(bool))
        signed["svix-timestamp"] = str(int(signed["svix-timestamp"]) + shift)
    elif how == "signature":
        version, _, digest = signed["svix-signature"].partition(",")
        raw = bytearray(base64.b64decode(digest))
        raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        signed["svix-signature"] = f"{version},{base64.b64encode(bytes(raw)).decode()}"
    elif how == "version":
        version = draw(st.sampled_from(["v0", "v2", "V1", "v1a", "", "v1 "]))
        digest = signed["svix-signature"].partition(",")[2]
        signed["svix-signature"] = f"{version},{digest}"
    headers = list(signed.items())
    if how == "first":
        # A forged copy of a signature header ahead of the real one: the first of a
        # repeated header is the one read.
        name = draw(st.sampled_from(["svix-id", "svix-timestamp"]))
        headers.insert(0, (name, draw(_values())))
        assume(dict(headers)[name] != signed[name])
    return body, headers


@IN_PROCESS
@given(delivery=_tampered())
def test_a_signed_delivery_with_anything_changed_is_refused_and_not_stored(
    runtime: Runtime, delivery: tuple[bytes, list[tuple[str, str]]]
) -> None:
    body, headers = delivery
    before = _rows(runtime.store)

    response = _post(runtime, body, headers)

    assert response.status_code in (401, 429), response.get_data()[:300]
    assert _rows(runtime.store) == before


@IN_PROCESS
@given(body=st.one_of(JSON_BODIES, NESTED_BODIES, st.binary(max_size=1_000)))
def test_any_properly_signed_body_is_acknowledged_and_stored(
    runtime: Runtime, body: bytes
) -> None:
    before = _rows(runtime.store)

    response = _post(runtime, body, list(sign(body).items()))

    assert response.status_code == 200, response.get_data()[:300]
    answer = response.json
    key = answer["event"]
    if answer["status"] == "duplicate":
        assert _rows(runtime.store) == before
        return
    assert _rows(runtime.store) == before + 1
    usable = _usable(body)
    assert answer["status"] == ("accepted" if usable else "dead_letter")
    assert _status_of(runtime.store, key) == (PENDING if usable else DEAD)


def _usable(body: bytes) -> bool:
    """Whether the runner can process the body: UTF-8 JSON, an object with an event
    type, whose event id and type are strings that fit the store (at most 300 and 200
    characters, no NUL, no lone surrogate)."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    if not isinstance(payload, dict) or not payload.get("event_type"):
        return False
    event_id = payload.get("event_id")
    fields = (("" if event_id is None else event_id, 300), (payload["event_type"], 200))
    return all(_fits(value, limit) for value, limit in fields)


def _fits(value: object, limit: int) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(value) <= limit and "\x00" not in value


UNFIT = {
    "long-event-id": ({"event_id": "e" * 301}, "the event_id is longer than 300"),
    "nul-event-id": ({"event_id": "evt\x001"}, "the event_id contains a NUL character"),
    "long-event-type": ({"event_type": "t" * 201}, "the event_type is longer than 200"),
    "surrogate-event-id": ({"event_id": "\ud800"}, "the event_id is not valid Unicode"),
    "surrogate-event-type": (
        {"event_type": "message.\udfff"},
        "the event_type is not valid Unicode",
    ),
    "nul-event-type": (
        {"event_type": "message.received\x00"},
        "the event_type contains a NUL character",
    ),
}


@pytest.mark.parametrize(("fields", "reason"), UNFIT.values(), ids=UNFIT.keys())
def test_an_event_id_or_type_the_store_cannot_key_on_makes_a_dead_letter(
    runtime: Runtime, fields: dict[str, str], reason: str
) -> None:
    payload = {"event_id": "evt-unfit", "event_type": "message.received", **fields}
    body = json.dumps(payload).encode()

    response = _post(runtime, body, list(sign(body, "msg_unfit").items()))

    assert response.status_code == 200
    assert response.json == {"status": "dead_letter", "event": "delivery:msg_unfit"}
    row = runtime.store.get_event("delivery:msg_unfit")
    assert row is not None and row.status == DEAD
    assert row.event_id is None and row.event_type == ""
    assert (row.last_error or "").startswith(reason)
    assert json.loads(row.payload) == payload


def test_a_body_with_a_nul_byte_is_kept_as_a_dead_letter_with_the_nul_replaced(
    runtime: Runtime,
) -> None:
    body = b"not json\x00 at all"

    response = _post(runtime, body, list(sign(body, "msg_nul").items()))

    assert response.json == {"status": "dead_letter", "event": "delivery:msg_nul"}
    row = runtime.store.get_event("delivery:msg_nul")
    assert row is not None and row.payload == "not json\ufffd at all"
    assert (row.last_error or "").startswith("the body is not JSON")


def test_an_svix_id_too_long_to_store_is_keyed_by_the_event_id(
    runtime: Runtime,
) -> None:
    body = json.dumps({"event_id": "evt-long-id", "event_type": "x.y"}).encode()

    response = _post(runtime, body, list(sign(body, "m" * 301).items()))

    assert response.json == {"status": "accepted", "event": "evt-long-id"}
    row = runtime.store.get_event("evt-long-id")
    assert row is not None and row.delivery_id is None and row.status == PENDING


# -- through the real server ---------------------------------------------------------


@pytest.fixture
def web(
    tmp_path: Path, double: AgentMailDouble
) -> Iterator[tuple[RunnerProcess, Store]]:
    """A ``web`` process on the suite's engine, with the store it writes."""
    config = write_config(
        tmp_path, runner={"failed_verifications_burst": 1_000_000, "workers": 0}
    )
    process = RunnerProcess(tmp_path, runner_environment(double), "web")
    try:
        process.start()
        store = open_store(config)
        try:
            yield process, store
        finally:
            store.close()
    finally:
        process.close()


RAW_NAMES = st.one_of(
    st.sampled_from([n.encode() for n in SIGNATURE_HEADERS]),
    st.binary(min_size=1, max_size=30),
).filter(
    lambda name: (
        b"\r" not in name
        and b"\n" not in name
        and name.strip().lower().rstrip(b":").decode("latin-1") not in FRAMING
    )
)
RAW_VALUES = st.one_of(
    st.binary(max_size=200),
    _values().map(lambda v: v.encode("latin-1", errors="replace")),
).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))


def _raw_post(port: int, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """POST bytes as they are; the status code of the answer."""
    lines = [
        b"POST /webhook HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Connection: close",
        b"Content-Length: " + str(len(body)).encode(),
        *(name + b": " + value for name, value in headers),
    ]
    request = b"\r\n".join(lines) + b"\r\n\r\n" + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    status_line = answer.partition(b"\r\n")[0]
    assert status_line.startswith(b"HTTP/1."), answer[:200]
    return int(status_line.split()[1])


@OVER_THE_WIRE
@given(
    headers=st.lists(st.tuples(RAW_NAMES, RAW_VALUES), max_size=8),
    body=BODIES,
)
def test_raw_header_bytes_at_the_real_server_get_a_4xx_and_store_nothing(
    web: tuple[RunnerProcess, Store],
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    process, store = web
    before = _rows(store)

    status = _raw_post(process.port or 0, headers, body)

    assert 400 <= status < 500
    assert _rows(store) == before


@OVER_THE_WIRE
@given(body=JSON_BODIES)
def test_signed_bodies_at_the_real_server_are_acknowledged_and_stored(
    web: tuple[RunnerProcess, Store], body: bytes
) -> None:
    process, store = web
    before = _rows(store)
    headers = Verifier([SECRET]).sign(body, delivery_id=f"msg_{uuid.uuid4().hex}")

    with httpx.Client(timeout=10) as http:
        response = http.post(process.webhook, content=body, headers=headers)

    assert response.status_code == 200, response.text[:300]
    stored = 0 if response.json()["status"] == "duplicate" else 1
    assert _rows(store) == before + stored
