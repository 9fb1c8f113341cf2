"""The whole flow: signed webhook in, stored, dispatched, reply sent through the SDK."""

from __future__ import annotations

import json

import httpx

from tests.conftest import PAYLOADS, deliver, load_payload, sign


def test_a_received_message_gets_one_templated_reply_in_its_thread(
    make_runtime, double
):
    rt = make_runtime()
    payload = load_payload("message-received.json")

    response = deliver(rt, payload)
    assert response.status_code == 200
    assert response.get_json() == {"status": "accepted", "event": payload["event_id"]}
    assert rt.drain() == 1

    [email] = double.sent
    assert email.kind == "reply"
    assert email.inbox_id == "helpdesk@agentmail.to"
    assert email.source_message_id == "<CAF0x9k2@mail.example.org>"
    assert email.json["text"] == (
        "Thanks for your email about 'Invoice question for order 1042'."
    )
    assert email.json["headers"]["Auto-Submitted"] == "auto-replied"
    assert email.idempotency_key.startswith("amr-")


def test_sending_the_same_event_again_sends_nothing_more(make_runtime, double):
    rt = make_runtime()
    payload = load_payload("message-received.json")
    deliver(rt, payload)
    rt.drain()

    again = deliver(rt, payload)

    assert again.status_code == 200
    assert again.get_json()["status"] == "duplicate"
    assert rt.drain() == 0
    assert len(double.sent) == 1


def test_every_corpus_payload_through_a_live_server(make_runtime, double, live_server):
    rt = make_runtime()
    server = live_server(rt, workers=2)
    received = []
    with httpx.Client() as http:
        for path in PAYLOADS:
            body = path.read_bytes()
            response = http.post(
                f"{server.url}/webhook", content=body, headers=sign(body)
            )
            assert response.status_code == 200, (path.name, response.text)
            if json.loads(body)["event_type"] == "message.received":
                received.append(json.loads(body)["message"]["message_id"])
        double.wait_for(lambda: len(double.sent) >= len(received), timeout=10)
        for path in PAYLOADS:
            body = path.read_bytes()
            response = http.post(
                f"{server.url}/webhook", content=body, headers=sign(body)
            )
            assert response.json()["status"] == "duplicate"

    rt.stop_workers(grace=5)
    assert sorted(e.source_message_id for e in double.sent) == sorted(received)
    assert all(e.kind == "reply" for e in double.sent)
    assert rt.store.count_by_status() == {"done": len(PAYLOADS)}


def test_a_lone_surrogate_escape_in_the_mail_becomes_a_replacement_character(
    make_runtime, double
):
    # "\ud800" alone is valid JSON but not text: nothing derived from it could be
    # written to the ledger or sent.
    rt = make_runtime()
    payload = load_payload("message-received.json")
    payload["message"]["subject"] = "Invoice \ud800 question"
    body = json.dumps(payload).encode()
    assert b"\\ud800" in body

    assert deliver(rt, body).get_json()["status"] == "accepted"
    assert rt.drain() == 1

    assert rt.store.get_event(payload["event_id"]).status == "done"
    [email] = double.sent
    assert email.json["text"] == (
        "Thanks for your email about 'Invoice \ufffd question'."
    )


def test_a_nul_escape_in_the_mail_becomes_a_replacement_character(make_runtime, double):
    # PostgreSQL's text cannot hold NUL: the thread id would not be written to the
    # action log, and the event would crash at every attempt.
    rt = make_runtime()
    payload = load_payload("message-received.json")
    payload["message"]["subject"] = "Invoice \u0000 question"
    payload["message"]["thread_id"] = "thread-\u0000-1"
    body = json.dumps(payload).encode()
    assert b"\\u0000" in body

    assert deliver(rt, body).get_json()["status"] == "accepted"
    assert rt.drain() == 1

    assert rt.store.get_event(payload["event_id"]).status == "done"
    [email] = double.sent
    assert email.json["text"] == (
        "Thanks for your email about 'Invoice \ufffd question'."
    )
    assert rt.store.count_replies(since=0, thread_id="thread-\ufffd-1") == 1
