"""Events: tolerant parsing of every payload shape, read-only, type matching."""

from __future__ import annotations

from typing import Any

import pytest

from runner.events import (
    Address,
    Attachment,
    Event,
    Message,
    html_to_text,
    matches_event_type,
    parse_addresses,
    parse_payload,
    printable,
)
from tests.conftest import load_payload


def with_message(**message: Any) -> Event:
    return Event({"event_type": "message.received", "message": message})


def message_of(**fields: Any) -> Message:
    message = with_message(**fields).message
    assert message is not None
    return message


# -- senders and recipients ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Pat Example <pat@example.org>", Address("pat@example.org", "Pat Example")),
        ("pat@example.org", Address("pat@example.org")),
        ("<pat@example.org>", Address("pat@example.org")),
        (
            [{"name": "Jane Doe", "email": "jane@example.com"}],
            Address("jane@example.com", "Jane Doe"),
        ),
        ([{"email": "jane@example.com"}], Address("jane@example.com")),
        (["Pat <pat@example.org>"], Address("pat@example.org", "Pat")),
        (
            "=?utf-8?q?Jos=C3=A9?= <jose@example.org>",
            Address("jose@example.org", "José"),
        ),
    ],
)
def test_the_sender_is_read_from_every_shape_of_from(
    raw: Any, expected: Address
) -> None:
    assert message_of(**{"from": raw}).sender == expected


def test_the_sender_is_read_from_from_underscore_when_from_is_absent() -> None:
    event = with_message(from_="Pat Example <pat@example.org>")

    assert event.message is not None
    assert event.message.sender == Address("pat@example.org", "Pat Example")


def test_the_seed_guide_payload_with_a_list_of_objects_parses() -> None:
    message = Event(load_payload("seed-message-received.json")).message

    assert message is not None
    assert message.sender == Address("jane@example.com", "Jane Doe")
    assert message.to == (Address("support@agentmail.to", "Support"),)


def test_a_quoted_display_name_with_a_comma_stays_one_address() -> None:
    found = parse_addresses('"Doe, Jane" <jane@example.org>, bob@example.net')

    assert found == (
        Address("jane@example.org", "Doe, Jane"),
        Address("bob@example.net"),
    )


def test_recipient_lists_mix_strings_and_objects_and_skip_empty_entries() -> None:
    event = with_message(
        to=['"Sales, EU" <sales@example.org>', "", {"name": "No address"}],
        cc=[{"name": "Ops", "email": "ops@example.org"}],
        reply_to="replies@example.org",
    )

    message = event.message
    assert message is not None
    assert message.to == (Address("sales@example.org", "Sales, EU"),)
    assert message.cc == (Address("ops@example.org", "Ops"),)
    assert message.reply_to == (Address("replies@example.org"),)


@pytest.mark.parametrize("raw", ["", "<>", None, [], "undisclosed-recipients:;"])
def test_an_empty_or_null_sender_is_none(raw: Any) -> None:
    message = with_message(**{"from": raw}).message

    assert message is not None
    assert message.sender is None


def test_address_parts() -> None:
    address = Address("Pat.Example+tag@Example.ORG", "Pat")

    assert address.local_part == "Pat.Example+tag"
    assert address.domain == "example.org"
    assert str(address) == "Pat <Pat.Example+tag@Example.ORG>"
    assert str(Address("a@b.org")) == "a@b.org"


# -- omitted fields and bodies ---------------------------------------------------------


def test_omitted_fields_read_as_empty_values() -> None:
    event = Event({"event_type": "message.received", "message": {}})

    message = event.message
    assert message is not None
    assert (message.subject, message.text, message.html, message.body_text) == (
        "",
        "",
        "",
        "",
    )
    assert message.sender is None
    assert (message.to, message.cc, message.bcc, message.reply_to) == ((), (), (), ())
    assert (message.labels, message.attachments) == ((), ())
    assert dict(message.headers) == {}
    assert message.body_missing
    assert (event.inbox_id, event.thread_id, event.event_id) == ("", "", "")


def test_an_event_without_type_thread_or_message_still_parses() -> None:
    event = Event({"event_id": "evt-1"}, delivery_id="msg_1")

    assert event.event_type == ""
    assert event.message is None
    assert dict(event.thread) == {}
    assert dict(event.object) == {}
    assert repr(event) == "<Event ? evt-1>"


def test_body_text_prefers_extracted_text_then_text_then_html() -> None:
    full = with_message(extracted_text="new", text="new and quoted", html="<p>h</p>")
    plain = with_message(text="new and quoted", html="<p>h</p>")

    assert full.message is not None and plain.message is not None
    assert full.message.body_text == "new"
    assert plain.message.body_text == "new and quoted"


def test_the_body_of_html_only_mail_is_its_text() -> None:
    message = Event(load_payload("message-received-html-only.json")).message

    assert message is not None
    assert message.text == ""
    assert message.body_text == "Could you send pricing for 40 seats?"
    assert not message.body_missing


def test_html_to_text_drops_scripts_and_styles_and_breaks_blocks() -> None:
    markup = (
        "<html><head><title>T</title><style>p {}</style></head><body>"
        "<p>Hello&nbsp;<b>Pat</b>,</p><script>alert(1)</script>"
        "<div>Caf&eacute; &amp; co</div><ul><li>one</li><li>two</li></ul>"
        "</body></html>"
    )

    assert html_to_text(markup) == "Hello Pat,\nCafé & co\none\ntwo"


def test_html_to_text_decodes_entities_once() -> None:
    assert html_to_text("<p>Write &amp;lt;b&amp;gt; for bold</p>") == (
        "Write &lt;b&gt; for bold"
    )


def test_html_to_text_survives_broken_markup() -> None:
    assert html_to_text("<p>unclosed <b>bold</p></div></span>") == "unclosed bold"


# -- headers and attachments -----------------------------------------------------------


def test_headers_are_looked_up_case_insensitively() -> None:
    headers = message_of(
        headers={"Auto-Submitted": "auto-replied", "X-Multi": ["a", "b"]}
    ).headers

    assert headers["auto-submitted"] == "auto-replied"
    assert headers["AUTO-SUBMITTED"] == "auto-replied"
    assert "auto-SUBMITTED" in headers
    assert headers.get("List-Id") is None
    assert headers["x-multi"] == "a, b"
    assert list(headers) == ["Auto-Submitted", "X-Multi"]


def test_attachments_carry_metadata_in_either_shape() -> None:
    message = with_message(
        attachments=[
            {
                "attachment_id": "att-1",
                "filename": "invoice.pdf",
                "content_type": "application/pdf",
                "size": 18234,
                "inline": False,
            },
            {
                "attachment_id": "att-2",
                "filename": "logo.png",
                "content_type": "image/png",
                "size": "big",
                "content_disposition": "INLINE",
                "content_id": "<logo>",
            },
            "not an attachment",
        ]
    ).message

    assert message is not None
    assert message.attachments == (
        Attachment("att-1", "invoice.pdf", "application/pdf", 18234, False),
        Attachment("att-2", "logo.png", "image/png", None, True),
    )


# -- read-only, and the raw payload ----------------------------------------------------


def test_the_event_payload_cannot_be_changed() -> None:
    event = Event(load_payload("message-received.json"))

    with pytest.raises(TypeError):
        event.payload["event_type"] = "message.sent"  # type: ignore[index]
    with pytest.raises(TypeError):
        event.payload["message"]["subject"] = "changed"
    with pytest.raises(AttributeError):
        event.payload["message"]["labels"].append("x")
    assert event.message is not None
    assert event.message.subject == "Invoice question for order 1042"


def test_changing_the_payload_given_does_not_change_the_event() -> None:
    payload = load_payload("message-received.json")
    event = Event(payload)

    payload["message"]["subject"] = "changed afterwards"

    assert event.message is not None
    assert event.message.subject == "Invoice question for order 1042"


def test_unknown_fields_are_kept_in_the_payload() -> None:
    event = Event({"event_type": "message.received", "brand_new": {"x": [1, 2]}})

    assert event.payload["brand_new"]["x"] == (1, 2)


@pytest.mark.parametrize(
    ("name", "object_key"),
    [
        ("message-bounced.json", "bounce"),
        ("message-delivered.json", "delivery"),
        ("message-sent.json", "send"),
        ("message-complained.json", "complaint"),
        ("message-rejected.json", "reject"),
    ],
)
def test_each_event_type_exposes_its_own_object(name: str, object_key: str) -> None:
    payload = load_payload(name)
    event = Event(payload)

    assert dict(event.object).keys() == payload[object_key].keys()
    assert event.inbox_id == payload[object_key]["inbox_id"]
    assert event.message is None


# -- matching event types --------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "pattern", "matches"),
    [
        ("message.received", "*", True),
        ("anything.at.all", "*", True),
        ("message.received", "message.received", True),
        ("message.received", "message.*", True),
        ("message.received.spam", "message.*", True),
        ("message.received.spam", "message.received.*", True),
        ("message.received", "message.received.*", False),
        ("message.received.spam", "message.received", False),
        ("messages.received", "message.*", False),
        ("message", "message.*", False),
        ("domain.verified", "message.*", False),
        ("message.bounced", "message.b*", True),
        ("message.received", "*.received", True),
        ("message.received", "Message.Received", False),
        ("", "message.*", False),
    ],
)
def test_event_type_matching(event_type: str, pattern: str, matches: bool) -> None:
    assert matches_event_type(event_type, pattern) is matches
    assert Event({"event_type": event_type}).matches(pattern) is matches


def test_fields_of_the_wrong_type_read_as_empty_not_as_errors() -> None:
    event = Event(
        {
            "event_type": "message.received",
            "message": {"from": 5, "to": 7, "labels": 3, "attachments": 1, "cc": None},
        }
    )
    message = event.message
    assert message is not None

    assert message.sender is None
    assert (message.to, message.cc, message.labels, message.attachments) == (
        (),
        (),
        (),
        (),
    )


# -- stored payloads -------------------------------------------------------------------


def nested(depth: int) -> str:
    return (
        '{"event_type": "message.received", "deep": ' + "[" * depth + "]" * depth + "}"
    )


def test_a_stored_payload_is_read_with_lone_surrogates_replaced() -> None:
    assert parse_payload('{"subject": "a\\ud800b"}') == {"subject": "a\ufffdb"}


@pytest.mark.parametrize("depth", [64, 600, 200_000])
def test_a_stored_payload_nested_deeper_than_the_ingress_accepts_is_unreadable(
    depth: int,
) -> None:
    # 600 levels still parse, but walking them (a plugin, the event) exhausts the
    # stack; 200,000 exhaust the JSON decoder itself.
    with pytest.raises(ValueError, match=r"^JSON nested deeper than 64 levels$"):
        parse_payload(nested(depth))


def test_a_stored_payload_nested_as_deep_as_the_ingress_accepts_is_read() -> None:
    assert Event(parse_payload(nested(63))).event_type == "message.received"


def test_a_stored_payload_that_is_not_json_is_unreadable() -> None:
    with pytest.raises(ValueError, match=r"^Expecting value: line 1 column 1"):
        parse_payload("not json")


# -- text for a terminal ---------------------------------------------------------------


def test_printable_shows_terminal_control_sequences_as_escapes() -> None:
    hostile = "\x1b[31mRED\x1b[0m\x1b]0;TITLE\x07"

    assert printable(hostile) == "\\x1b[31mRED\\x1b[0m\\x1b]0;TITLE\\x07"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("line\nbreak\r\ttab", "line\\x0abreak\\x0d\\x09tab"),
        ("nul\x00 del\x7f", "nul\\x00 del\\x7f"),
        ("c1 csi\x9b2J nel\x85", "c1 csi\\x9b2J nel\\x85"),
        ("Grüße, 日本, ✓ and a \\ backslash", "Grüße, 日本, ✓ and a \\ backslash"),
    ],
)
def test_printable_escapes_c0_del_and_c1_and_keeps_other_text(
    text: str, shown: str
) -> None:
    assert printable(text) == shown


def test_a_message_parses_its_addresses_once() -> None:
    message = Message({"to": [f"u{n}@example.org" for n in range(50)], "from": "a@b.c"})

    assert message.to is message.to
    assert message.sender is message.sender
    assert len(message.to) == 50
