"""Webhook signature verification: the reference vector, both schemes, rotation, and
every way a hostile or garbled request must fail cleanly."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import standardwebhooks.webhooks
import svix.webhooks
import time_machine
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from runner.verify import (
    SecretError,
    VerificationError,
    Verified,
    Verifier,
    check_secret,
)

# The Standard Webhooks reference vector (also in the shared corpus).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OTHER_SECRET = "whsec_" + base64.b64encode(b"another key of 24 bytes!").decode()
PLAIN_SECRET = "plain-seed-guide-secret"
NOW = 1_700_000_000


def vector_headers() -> dict[str, str]:
    return {
        "svix-id": VECTOR_ID,
        "svix-timestamp": str(VECTOR_TIMESTAMP),
        "svix-signature": VECTOR_SIGNATURE,
    }


def svix_sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A signature made by the svix library, independently of runner.verify."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return svix.webhooks.Webhook(secret).sign(msg_id, when, body.decode())


def standard_sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A signature made by standardwebhooks, which signs bytes that are not UTF-8."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return standardwebhooks.webhooks.Webhook(secret).sign(msg_id, when, body)


def svix_headers(
    signature: str, *, msg_id: str = "msg_1", stamp: int = NOW
) -> dict[str, str]:
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(stamp),
        "svix-signature": signature,
    }


def agentmail_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def frozen() -> Iterator[None]:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def verifier() -> Verifier:
    return Verifier([VECTOR_SECRET])


# --- the reference vector and the time window ---------------------------------------


def test_reference_vector_verifies_at_its_timestamp(verifier: Verifier) -> None:
    with time_machine.travel(VECTOR_TIMESTAMP, tick=False):
        result = verifier.verify(VECTOR_BODY, vector_headers())
    assert result == Verified(
        scheme="svix", delivery_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP
    )


@pytest.mark.parametrize("offset", [-300, 300])
def test_reference_vector_verifies_at_the_edges_of_the_window(
    verifier: Verifier, offset: int
) -> None:
    with time_machine.travel(VECTOR_TIMESTAMP + offset, tick=False):
        assert verifier.verify(VECTOR_BODY, vector_headers()).scheme == "svix"


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(301, "timestamp too old"), (-301, "timestamp too new")],
)
def test_reference_vector_fails_outside_the_window(
    verifier: Verifier, offset: int, reason: str
) -> None:
    with (
        time_machine.travel(VECTOR_TIMESTAMP + offset, tick=False),
        pytest.raises(VerificationError, match=f"^{reason}$"),
    ):
        verifier.verify(VECTOR_BODY, vector_headers())


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize(
    ("age", "reason"),
    [(301, "timestamp too old"), (-301, "timestamp too new")],
)
def test_signed_but_stale_or_future_timestamps_fail(
    verifier: Verifier, age: int, reason: str
) -> None:
    headers = verifier.sign(b"{}", delivery_id="msg_1", timestamp=NOW - age)
    with pytest.raises(VerificationError, match=f"^{reason}$"):
        verifier.verify(b"{}", headers)


@pytest.mark.usefixtures("frozen")
def test_a_narrower_tolerance_is_enforced() -> None:
    verifier = Verifier([VECTOR_SECRET], tolerance_seconds=60)
    assert verifier.verify(
        b"{}", verifier.sign(b"{}", delivery_id="m", timestamp=NOW - 60)
    )
    with pytest.raises(VerificationError, match=r"^timestamp too old$"):
        verifier.verify(
            b"{}", verifier.sign(b"{}", delivery_id="m", timestamp=NOW - 61)
        )
    with pytest.raises(VerificationError, match=r"^timestamp too new$"):
        verifier.verify(
            b"{}", verifier.sign(b"{}", delivery_id="m", timestamp=NOW + 61)
        )


@pytest.mark.usefixtures("frozen")
def test_a_wider_tolerance_than_the_library_still_checks_the_signature() -> None:
    verifier = Verifier([VECTOR_SECRET, OTHER_SECRET], tolerance_seconds=600)
    for stamp in (NOW - 599, NOW + 599):
        headers = svix_headers(
            svix_sign(OTHER_SECRET, "msg_1", stamp, b"{}"), stamp=stamp
        )
        assert verifier.verify(b"{}", headers).timestamp == stamp
        with pytest.raises(VerificationError, match=r"^no matching signature$"):
            verifier.verify(b"{ }", headers)
    headers = verifier.sign(b"{}", delivery_id="m", timestamp=NOW - 601)
    with pytest.raises(VerificationError, match=r"^timestamp too old$"):
        verifier.verify(b"{}", headers)


def test_negative_tolerance_is_refused() -> None:
    with pytest.raises(ValueError, match="tolerance_seconds"):
        Verifier([VECTOR_SECRET], tolerance_seconds=-1)


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize(
    "stamp",
    [
        "",
        "soon",
        "1700000000.5",
        "-1700000000",
        " 1700000000",
        "".join(chr(0xFF10 + int(d)) for d in str(NOW)),
    ],
)
def test_malformed_timestamps_fail(verifier: Verifier, stamp: str) -> None:
    signature = svix_sign(VECTOR_SECRET, "msg_1", NOW, b"{}")
    headers = {"svix-id": "msg_1", "svix-timestamp": stamp, "svix-signature": signature}
    reason = "^missing svix-timestamp header$" if not stamp else "^bad timestamp$"
    with pytest.raises(VerificationError, match=reason):
        verifier.verify(b"{}", headers)


# --- raw bytes, header names, rotation ----------------------------------------------

# Upper-case \u001B escapes and a raw UTF-8 emoji: re-serialising changes the bytes.
ESCAPED_BODY = (
    b'{"text": "\\u001B[31mred\\u001B[0m", "emoji": "\xf0\x9f\x98\x80", "n": 1.50}'
)


@pytest.mark.usefixtures("frozen")
def test_escapes_and_emoji_verify_over_the_raw_bytes(verifier: Verifier) -> None:
    signature = svix_sign(VECTOR_SECRET, "msg_1", NOW, ESCAPED_BODY)
    assert verifier.verify(ESCAPED_BODY, svix_headers(signature)).scheme == "svix"
    ours = verifier.sign(ESCAPED_BODY, delivery_id="msg_1", timestamp=NOW)
    assert ours["svix-signature"] == signature
    reserialised = json.dumps(json.loads(ESCAPED_BODY)).encode()
    assert reserialised != ESCAPED_BODY
    with pytest.raises(VerificationError, match=r"^no matching signature$"):
        verifier.verify(reserialised, svix_headers(signature))


@pytest.mark.usefixtures("frozen")
def test_a_non_utf8_body_verifies_as_signed(verifier: Verifier) -> None:
    body = b'{"name": "caf\xe9"}\xff\xfe'
    signature = standard_sign(VECTOR_SECRET, "msg_1", NOW, body)
    assert verifier.verify(body, svix_headers(signature)).scheme == "svix"
    assert verifier.verify(body, verifier.sign(body, delivery_id="msg_1")).scheme == (
        "svix"
    )


@pytest.mark.usefixtures("frozen")
def test_a_non_utf8_body_with_a_wrong_signature_fails(verifier: Verifier) -> None:
    signature = svix_sign(VECTOR_SECRET, "msg_1", NOW, b"{}")
    with pytest.raises(VerificationError, match=r"^no matching signature$"):
        verifier.verify(b"\xff\xfe\x00", svix_headers(signature))


def test_header_names_are_case_insensitive(verifier: Verifier) -> None:
    title = {name.title(): value for name, value in vector_headers().items()}
    assert set(title) == {"Svix-Id", "Svix-Timestamp", "Svix-Signature"}
    upper = {name.upper(): value for name, value in vector_headers().items()}
    with time_machine.travel(VECTOR_TIMESTAMP, tick=False):
        assert verifier.verify(VECTOR_BODY, title).delivery_id == VECTOR_ID
        assert verifier.verify(VECTOR_BODY, upper).delivery_id == VECTOR_ID


def test_werkzeug_headers_are_accepted(verifier: Verifier) -> None:
    headers = Headers([("Content-Type", "application/json"), *vector_headers().items()])
    with time_machine.travel(VECTOR_TIMESTAMP, tick=False):
        assert verifier.verify(VECTOR_BODY, headers).delivery_id == VECTOR_ID


def test_standard_webhooks_header_names(verifier: Verifier) -> None:
    headers = {
        "Webhook-Id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "WEBHOOK-SIGNATURE": VECTOR_SIGNATURE,
    }
    with time_machine.travel(VECTOR_TIMESTAMP, tick=False):
        result = verifier.verify(VECTOR_BODY, headers)
    assert result == Verified(
        scheme="svix", delivery_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP
    )


@pytest.mark.usefixtures("frozen")
def test_rotation_header_where_only_the_second_signature_matches(
    verifier: Verifier,
) -> None:
    stale = svix_sign(OTHER_SECRET, "msg_1", NOW, b"{}")
    current = svix_sign(VECTOR_SECRET, "msg_1", NOW, b"{}")
    assert verifier.verify(b"{}", svix_headers(f"{stale} {current}")).scheme == "svix"
    with pytest.raises(VerificationError, match=r"^no matching signature$"):
        verifier.verify(b"{}", svix_headers(stale))


@pytest.mark.usefixtures("frozen")
def test_two_secrets_where_only_the_second_matches() -> None:
    verifier = Verifier([OTHER_SECRET, VECTOR_SECRET])
    signature = svix_sign(VECTOR_SECRET, "msg_1", NOW, b"{}")
    assert verifier.verify(b"{}", svix_headers(signature)).delivery_id == "msg_1"


@pytest.mark.usefixtures("frozen")
def test_the_signature_covers_the_id_and_the_timestamp(verifier: Verifier) -> None:
    signature = svix_sign(VECTOR_SECRET, "msg_1", NOW, b"{}")
    with pytest.raises(VerificationError, match=r"^no matching signature$"):
        verifier.verify(b"{}", svix_headers(signature, msg_id="msg_2"))
    with pytest.raises(VerificationError, match=r"^no matching signature$"):
        verifier.verify(b"{}", svix_headers(signature, stamp=NOW - 1))


# --- garbled signatures never escape as anything but VerificationError --------------


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize(
    "signature",
    [
        "v1,\u00e9abc",
        # UTF-8 "é" as werkzeug hands it over: each byte decoded as latin-1.
        "v1," + "é".encode().decode("latin-1") + "abc",
        "v1,\udce9abc",  # a lone surrogate, as surrogateescape would produce
    ],
)
def test_non_ascii_signatures_fail(verifier: Verifier, signature: str) -> None:
    with pytest.raises(VerificationError, match=r"^malformed signature header$"):
        verifier.verify(b"{}", svix_headers(signature))


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize(
    "signature", ["v1", "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "v1,", " ", ","]
)
def test_signature_items_without_a_usable_value_fail(
    verifier: Verifier, signature: str
) -> None:
    with pytest.raises(VerificationError, match=r"^no matching signature$"):
        verifier.verify(b"{}", svix_headers(signature))


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"),
        TypeError("bad"),
    ],
)
def test_any_library_exception_is_a_failed_verification(
    verifier: Verifier, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(svix.webhooks.Webhook, "verify", explode)
    signature = svix_sign(VECTOR_SECRET, "msg_1", NOW, b"{}")
    with pytest.raises(VerificationError, match=r"^malformed signature header$"):
        verifier.verify(b"{}", svix_headers(signature))


FUZZ_VERIFIER = Verifier([VECTOR_SECRET, PLAIN_SECRET])


@settings(max_examples=300, deadline=None)
@given(
    msg_id=st.text(max_size=20),
    stamp=st.one_of(st.text(max_size=14), st.integers(NOW - 400, NOW + 400).map(str)),
    signature=st.text(max_size=60),
    body=st.binary(max_size=40),
)
def test_arbitrary_svix_headers_only_ever_fail_cleanly(
    msg_id: str, stamp: str, signature: str, body: bytes
) -> None:
    headers = {"svix-id": msg_id, "svix-timestamp": stamp, "svix-signature": signature}
    with (
        time_machine.travel(NOW, tick=False),
        pytest.raises(VerificationError),
    ):
        FUZZ_VERIFIER.verify(body, headers)


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=80), body=st.binary(max_size=40))
def test_arbitrary_agentmail_signatures_only_ever_fail_cleanly(
    value: str, body: bytes
) -> None:
    with pytest.raises(VerificationError):
        FUZZ_VERIFIER.verify(body, {"X-AgentMail-Signature": value})


# --- missing headers and scheme selection -------------------------------------------


def test_no_signature_headers(verifier: Verifier) -> None:
    with pytest.raises(VerificationError, match=r"^no signature headers$"):
        verifier.verify(b"{}", {"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"svix-id": "m", "svix-timestamp": "1"}, "^missing svix-signature header$"),
        ({"Svix-Signature": "v1,x"}, "^missing svix-id, svix-timestamp headers$"),
        ({"webhook-id": "m"}, "^missing webhook-timestamp, webhook-signature headers$"),
        (
            {"svix-id": "", "svix-timestamp": "1", "svix-signature": "v1,x"},
            "^missing svix-id header$",
        ),
    ],
)
def test_incomplete_svix_headers_name_what_is_missing(
    verifier: Verifier, headers: dict[str, str], reason: str
) -> None:
    with pytest.raises(VerificationError, match=reason):
        verifier.verify(b"{}", headers)


@pytest.mark.usefixtures("frozen")
def test_svix_headers_decide_when_both_schemes_are_present() -> None:
    verifier = Verifier([VECTOR_SECRET, PLAIN_SECRET])
    good_hmac = agentmail_signature(PLAIN_SECRET, b"{}")
    bad_svix = svix_headers(svix_sign(OTHER_SECRET, "msg_1", NOW, b"{}"))
    with pytest.raises(VerificationError, match=r"^no matching signature$"):
        verifier.verify(b"{}", {**bad_svix, "X-AgentMail-Signature": good_hmac})
    good_svix = svix_headers(svix_sign(VECTOR_SECRET, "msg_1", NOW, b"{}"))
    both = {**good_svix, "X-AgentMail-Signature": "sha256=zz"}
    assert verifier.verify(b"{}", both).scheme == "svix"


@pytest.mark.usefixtures("frozen")
def test_svix_headers_without_a_whsec_secret_fail() -> None:
    verifier = Verifier([PLAIN_SECRET])
    headers = svix_headers(svix_sign(VECTOR_SECRET, "msg_1", NOW, b"{}"))
    with pytest.raises(VerificationError, match="no whsec_ secret is configured"):
        verifier.verify(b"{}", headers)


# --- X-AgentMail-Signature ----------------------------------------------------------


def test_agentmail_signature_good() -> None:
    verifier = Verifier([PLAIN_SECRET])
    body = b'{"event_id": "ev_1"}'
    headers = {"X-AgentMail-Signature": agentmail_signature(PLAIN_SECRET, body)}
    assert verifier.verify(body, headers) == Verified(
        scheme="hmac", delivery_id="", timestamp=None
    )
    upper_hex = "sha256=" + headers["X-AgentMail-Signature"][7:].upper()
    assert verifier.verify(body, {"x-agentmail-signature": upper_hex}).scheme == "hmac"


def test_agentmail_signature_bad() -> None:
    verifier = Verifier([PLAIN_SECRET])
    headers = {"X-AgentMail-Signature": agentmail_signature("other", b"{}")}
    with pytest.raises(VerificationError, match=r"^no matching signature$"):
        verifier.verify(b"{}", headers)
    headers = {"X-AgentMail-Signature": agentmail_signature(PLAIN_SECRET, b"{}")}
    with pytest.raises(VerificationError, match=r"^no matching signature$"):
        verifier.verify(b"{} ", headers)


@pytest.mark.parametrize(
    "value",
    [
        "sha256=zz",
        hashlib.sha256(b"x").hexdigest(),  # no "sha256=" prefix
        "sha1=" + hashlib.sha256(b"x").hexdigest(),
        "sha256=" + hashlib.sha256(b"x").hexdigest()[:-2],
        "sha256=" + "é" * 64,
        "sha256=" + " ".join(["ab"] * 32),
        "sha256=" + "ab" * 15 + "  " + "ab" * 16,  # 64 characters, 31 bytes
        "",
    ],
)
def test_agentmail_signature_malformed(value: str) -> None:
    verifier = Verifier([PLAIN_SECRET])
    with pytest.raises(
        VerificationError, match=r"^malformed X-AgentMail-Signature header$"
    ):
        verifier.verify(b"{}", {"X-AgentMail-Signature": value})


def test_agentmail_signature_tries_every_secret_whsec_included() -> None:
    verifier = Verifier([PLAIN_SECRET, VECTOR_SECRET])
    headers = {"X-AgentMail-Signature": agentmail_signature(VECTOR_SECRET, b"{}")}
    assert verifier.verify(b"{}", headers).scheme == "hmac"


# --- unsigned development mode ------------------------------------------------------


def test_allow_unsigned_passes_requests_without_signatures() -> None:
    verifier = Verifier([], allow_unsigned=True)
    assert verifier.verify(b"{}", {}) == Verified(
        scheme="unsigned", delivery_id="", timestamp=None
    )
    assert verifier.sign(b"{}", delivery_id="m") == {}


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize("secrets", [[], [VECTOR_SECRET]])
def test_allow_unsigned_still_rejects_bad_signatures(secrets: list[str]) -> None:
    verifier = Verifier(secrets, allow_unsigned=True)
    with pytest.raises(VerificationError, match=r"^no matching signature$"):
        verifier.verify(
            b"{}", {"X-AgentMail-Signature": agentmail_signature("x", b"{}")}
        )
    with pytest.raises(VerificationError):
        verifier.verify(b"{}", svix_headers(svix_sign(OTHER_SECRET, "m", NOW, b"{}")))
    with pytest.raises(VerificationError, match=r"^missing svix-signature header$"):
        verifier.verify(b"{}", {"svix-id": "m", "svix-timestamp": str(NOW)})


@pytest.mark.usefixtures("frozen")
def test_allow_unsigned_still_accepts_good_signatures() -> None:
    verifier = Verifier([VECTOR_SECRET], allow_unsigned=True)
    headers = verifier.sign(b"{}", delivery_id="msg_9")
    assert verifier.verify(b"{}", headers).delivery_id == "msg_9"


# --- sign() -------------------------------------------------------------------------


@pytest.mark.usefixtures("frozen")
def test_sign_round_trips_with_the_first_whsec_secret() -> None:
    verifier = Verifier([PLAIN_SECRET, OTHER_SECRET, VECTOR_SECRET])
    headers = verifier.sign(b'{"a": 1}', delivery_id="msg_7")
    assert headers["svix-id"] == "msg_7"
    assert headers["svix-timestamp"] == str(NOW)
    assert headers["svix-signature"] == svix_sign(
        OTHER_SECRET, "msg_7", NOW, b'{"a": 1}'
    )
    assert verifier.verify(b'{"a": 1}', headers) == Verified("svix", "msg_7", NOW)


def test_sign_reproduces_the_reference_vector(verifier: Verifier) -> None:
    headers = verifier.sign(
        VECTOR_BODY, delivery_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP
    )
    assert headers == vector_headers()


def test_sign_round_trips_with_a_plain_secret() -> None:
    verifier = Verifier([PLAIN_SECRET, "a-second-plain-secret"])
    headers = verifier.sign(b"\xff body", delivery_id="ignored")
    assert headers == {
        "X-AgentMail-Signature": agentmail_signature(PLAIN_SECRET, b"\xff body")
    }
    assert verifier.verify(b"\xff body", headers).scheme == "hmac"


def test_sign_needs_a_delivery_id_for_svix(verifier: Verifier) -> None:
    with pytest.raises(ValueError, match="delivery_id"):
        verifier.sign(b"{}", delivery_id="")


# --- secrets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "MY_SETTING is empty: set it to the endpoint's whsec_ signing secret"),
        (
            VECTOR_SECRET + "\n",
            r"MY_SETTING has stray whitespace \(a trailing newline\?\): "
            "copy the secret again without it",
        ),
        (" " + VECTOR_SECRET, r"MY_SETTING has stray whitespace"),
        ("plain\t", r"MY_SETTING has stray whitespace"),
        (
            "whsec_!!!notbase64",
            "MY_SETTING starts with whsec_ but the rest is not valid base64: copy",
        ),
        ("whsec_abcde", "MY_SETTING starts with whsec_ but the rest is not valid"),
        ("whsec_YWJj-_", "MY_SETTING starts with whsec_ but the rest is not valid"),
        ("whsec_", "MY_SETTING is whsec_ with no key after it"),
        (
            "short",  # a plain secret, and a short one
            "MY_SETTING is a plain secret of 5 characters, fewer than 16: anyone could "
            "guess it. Use the endpoint's whsec_ signing secret",
        ),
    ],
)
def test_check_secret_refuses(value: str, reason: str) -> None:
    with pytest.raises(SecretError, match=f"^{reason}") as info:
        check_secret(value, "MY_SETTING")
    assert isinstance(info.value, ValueError)
    if value.strip() not in ("", "whsec_"):
        assert value.strip() not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        VECTOR_SECRET,
        "whsec_YWJj",  # no padding needed
        "whsec_YWI",  # padding left off
        "whsec_YWI=",
        "any plain secret",
        "whsec-but-plain-secret",  # not the prefix: a plain secret
    ],
)
def test_check_secret_accepts(value: str) -> None:
    check_secret(value, "MY_SETTING")


def test_verifier_without_secrets_says_how_to_fix_it() -> None:
    with pytest.raises(
        SecretError,
        match=r"set AGENTMAIL_WEBHOOK_SECRET to the endpoint's whsec_ signing secret, "
        r"or \[runner\] webhook_secrets in plugins\.toml",
    ):
        Verifier([])


def test_verifier_names_a_custom_setting() -> None:
    with pytest.raises(
        SecretError, match=r"^no webhook secret is configured: set MINE"
    ):
        Verifier([], setting="MINE")
    with pytest.raises(SecretError, match=r"^MINE has stray whitespace"):
        Verifier([VECTOR_SECRET + "\n"], setting="MINE")


def test_verifier_numbers_the_faulty_entry_when_there_are_several() -> None:
    with pytest.raises(SecretError, match=r"^AGENTMAIL_WEBHOOK_SECRET \(entry 2\) has"):
        Verifier([VECTOR_SECRET, " " + OTHER_SECRET])


def test_verifier_refuses_a_bare_string() -> None:
    with pytest.raises(TypeError, match="list of strings"):
        Verifier(VECTOR_SECRET)


@pytest.mark.usefixtures("frozen")
def test_reasons_never_leak_the_body_or_the_secret(verifier: Verifier) -> None:
    body = b'{"secret-looking": "body"}'
    for headers in (
        svix_headers("v1,nope"),
        svix_headers("v1,\u00e9"),
        {"X-AgentMail-Signature": "sha256=zz"},
        {},
    ):
        with pytest.raises(VerificationError) as info:
            verifier.verify(body, headers)
        reason = str(info.value)
        assert "body" not in reason
        assert VECTOR_SECRET.removeprefix("whsec_") not in reason
        assert len(reason) < 80
