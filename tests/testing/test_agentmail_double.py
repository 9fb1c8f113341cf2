"""The AgentMail double, driven through the real ``agentmail`` SDK over loopback.

Nothing here is mocked: every call goes through the SDK's HTTP client to the double's
server, so these tests also pin down the paths, escaping, retries and error classes of
the SDK version the runner depends on.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import agentmail
import httpx
import pytest
from agentmail.core.api_error import ApiError

from runner.testing.agentmail_double import AgentMailDouble

INBOX = "bot@agentmail.to"
ODD_ID = "<a/b?c#d@example.com>"


def q(value: str) -> str:
    return quote(value, safe="")


def seed_message(
    double: AgentMailDouble, message_id: str = "<m1@example.com>", **fields: Any
) -> None:
    message: dict[str, Any] = {
        "message_id": message_id,
        "thread_id": "thr-1",
        "from": "Alice <alice@example.com>",
        "to": [INBOX],
        "subject": "Question",
        "text": "Hello?",
        "labels": ["received", "unread"],
    }
    message.update(fields)
    double.add_message(INBOX, message)


@pytest.fixture
def double() -> Iterator[AgentMailDouble]:
    with AgentMailDouble() as running:
        yield running


@pytest.fixture
def client(double: AgentMailDouble) -> agentmail.AgentMail:
    return double.client()


def test_serves_on_loopback_with_matching_environment(double: AgentMailDouble) -> None:
    assert double.url == f"http://127.0.0.1:{double.port}"
    assert double.environment.http == double.url
    assert double.environment.websockets == f"ws://127.0.0.1:{double.port}"
    assert double.api_key == "test-key"


def test_send_reply_reply_all_and_forward_are_recorded(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    seed_message(double)
    messages = client.inboxes.messages

    sent = messages.send(
        INBOX,
        to=["carol@example.com"],
        subject="Hi",
        text="First",
        idempotency_key="send-1",
    )
    reply = messages.reply(
        INBOX, q("<m1@example.com>"), text="Answer", idempotency_key="reply-1"
    )
    reply_all = messages.reply_all(
        INBOX, q("<m1@example.com>"), text="To all", idempotency_key="reply-all-1"
    )
    forward = messages.forward(
        INBOX,
        q("<m1@example.com>"),
        to=["dave@example.com"],
        text="FYI",
        idempotency_key="forward-1",
    )

    records = double.sent
    assert [r.kind for r in records] == ["send", "reply", "reply_all", "forward"]
    assert all(r.inbox_id == INBOX for r in records)
    assert [r.source_message_id for r in records] == [
        None,
        "<m1@example.com>",
        "<m1@example.com>",
        "<m1@example.com>",
    ]
    assert [r.idempotency_key for r in records] == [
        "send-1",
        "reply-1",
        "reply-all-1",
        "forward-1",
    ]
    assert records[0].json == {
        "to": ["carol@example.com"],
        "subject": "Hi",
        "text": "First",
    }
    assert records[1].json == {"text": "Answer"}
    assert records[3].json["to"] == ["dave@example.com"]
    assert [r.message_id for r in records] == [
        sent.message_id,
        reply.message_id,
        reply_all.message_id,
        forward.message_id,
    ]
    assert len({r.message_id for r in records}) == 4
    # Replies stay in the replied-to message's thread; a send or forward starts one.
    assert reply.thread_id == "thr-1"
    assert reply_all.thread_id == "thr-1"
    assert sent.thread_id != "thr-1"
    assert forward.thread_id != "thr-1"
    assert [r.thread_id for r in records] == [
        sent.thread_id,
        reply.thread_id,
        reply_all.thread_id,
        forward.thread_id,
    ]

    # What was sent can be fetched back like any message.
    fetched = messages.get(INBOX, q(reply.message_id))
    assert fetched.in_reply_to == "<m1@example.com>"
    assert fetched.to == ["Alice <alice@example.com>"]
    assert fetched.subject == "Re: Question"
    assert "sent" in fetched.labels


def test_reply_to_an_unknown_message_gets_a_new_thread(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    answer = client.inboxes.messages.reply(
        INBOX, q("<unseen@example.com>"), text="Hi", idempotency_key="k"
    )
    assert answer.thread_id
    assert double.sent[0].source_message_id == "<unseen@example.com>"


def test_replayed_reply_returns_the_first_answer_and_sends_once(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    seed_message(double)
    first = client.inboxes.messages.reply(
        INBOX, q("<m1@example.com>"), text="Once", idempotency_key="job-7"
    )
    again = client.inboxes.messages.reply(
        INBOX, q("<m1@example.com>"), text="Once", idempotency_key="job-7"
    )

    assert again.message_id == first.message_id
    assert again.thread_id == first.thread_id
    assert len(double.sent) == 1
    assert [r.idempotency_key for r in double.requests] == ["job-7", "job-7"]


def test_same_key_with_a_different_body_is_a_conflict(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    seed_message(double)
    client.inboxes.messages.reply(
        INBOX, q("<m1@example.com>"), text="One", idempotency_key="job-8"
    )
    # The SDK retries 409 by itself; no retries keeps the test quick.
    with pytest.raises(agentmail.ConflictError) as caught:
        client.inboxes.messages.reply(
            INBOX,
            q("<m1@example.com>"),
            text="Two",
            idempotency_key="job-8",
            request_options={"max_retries": 0},
        )
    assert caught.value.status_code == 409
    assert len(double.sent) == 1


def test_same_key_on_another_endpoint_is_a_conflict(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    seed_message(double)
    client.inboxes.messages.reply(
        INBOX, q("<m1@example.com>"), text="Same", idempotency_key="job-9"
    )
    with pytest.raises(agentmail.ConflictError):
        client.inboxes.messages.reply_all(
            INBOX,
            q("<m1@example.com>"),
            text="Same",
            idempotency_key="job-9",
            request_options={"max_retries": 0},
        )


def test_malformed_idempotency_key_is_rejected(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    with pytest.raises(agentmail.ValidationError):
        client.inboxes.messages.send(
            INBOX, to=["x@example.com"], text="x", idempotency_key="no spaces"
        )
    assert double.sent == []


def test_sdk_retries_injected_500s_and_sends_once(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    seed_message(double)
    # Retry-After: 1 is the shortest wait the SDK honours (it ignores 0 and
    # fractions), which beats its own 1 s + 2 s backoff.
    double.fail("POST", r"/reply$", 500, times=2, retry_after=1)

    answer = client.inboxes.messages.reply(
        INBOX,
        q("<m1@example.com>"),
        text="Persistent",
        idempotency_key="job-10",
        request_options={"max_retries": 2},
    )

    assert len(double.sent) == 1
    assert double.sent[0].message_id == answer.message_id
    attempts = double.requests
    assert len(attempts) == 3
    assert [r.status for r in attempts] == [500, 500, 200]
    assert {r.idempotency_key for r in attempts} == {"job-10"}
    assert {r.path for r in attempts} == {
        f"/v0/inboxes/{INBOX}/messages/<m1@example.com>/reply"
    }


def test_injected_failure_without_retries_surfaces_as_api_error(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    double.fail("post", r"/send$", 503, body={"name": "Down", "message": "later"})
    with pytest.raises(ApiError) as caught:
        client.inboxes.messages.send(
            INBOX,
            to=["x@example.com"],
            text="x",
            idempotency_key="job-11",
            request_options={"max_retries": 0},
        )
    assert caught.value.status_code == 503
    assert caught.value.body == {"name": "Down", "message": "later"}
    assert double.sent == []

    # The failure used up, the same key now sends: the failed attempt stored nothing.
    client.inboxes.messages.send(
        INBOX, to=["x@example.com"], text="x", idempotency_key="job-11"
    )
    assert len(double.sent) == 1


def test_429_carries_retry_after(double: AgentMailDouble) -> None:
    double.fail("GET", r"^/v0/webhooks$", 429, retry_after=2.5)
    headers = {"Authorization": "Bearer test-key"}
    with httpx.Client(base_url=double.url, headers=headers) as http:
        limited = http.get("/v0/webhooks")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "3"
        assert limited.json()["name"] == "RateLimitError"
        assert http.get("/v0/webhooks").status_code == 200


def test_delay_longer_than_the_timeout_looks_like_a_hang(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    seed_message(double)
    double.fail("POST", r"/reply$", None, delay=1.0)
    with pytest.raises(httpx.TimeoutException):
        client.inboxes.messages.reply(
            INBOX,
            q("<m1@example.com>"),
            text="Slow",
            idempotency_key="job-12",
            request_options={"max_retries": 0, "timeout_in_seconds": 0.2},
        )
    # The server still processes the request once the delay is over, as a real one
    # would after the client gave up: that is what an idempotent retry must survive.
    sent = double.wait_for(lambda: double.sent)
    assert sent[0].idempotency_key == "job-12"
    replay = client.inboxes.messages.reply(
        INBOX, q("<m1@example.com>"), text="Slow", idempotency_key="job-12"
    )
    assert replay.message_id == sent[0].message_id
    assert len(double.sent) == 1


def test_stop_cuts_a_pending_delay_short() -> None:
    before = set(threading.enumerate())
    double = AgentMailDouble().start()
    double.fail("GET", r"/webhooks", 500, delay=60.0)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.get(f"{double.url}/v0/webhooks", timeout=0.2)
        except httpx.TimeoutException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    double.wait_for(lambda: double.requests)
    caller.join()
    started = time.monotonic()
    double.stop()
    assert time.monotonic() - started < 3.0
    assert len(errors) == 1
    assert set(threading.enumerate()) <= before


def test_quoted_message_id_with_reserved_characters_round_trips(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    seed_message(double, ODD_ID, thread_id="thr-odd")

    fetched = client.inboxes.messages.get(INBOX, q(ODD_ID))
    assert fetched.message_id == ODD_ID
    assert fetched.from_ == "Alice <alice@example.com>"

    reply = client.inboxes.messages.reply(
        INBOX, q(ODD_ID), text="Got it", idempotency_key="job-13"
    )
    assert reply.thread_id == "thr-odd"
    assert double.sent[0].source_message_id == ODD_ID

    client.inboxes.messages.update(INBOX, q(ODD_ID), add_labels=["handled"])
    assert double.label_updates[0].message_id == ODD_ID
    assert double.requests[-1].segments == ("v0", "inboxes", INBOX, "messages", ODD_ID)


def test_unknown_ids_raise_not_found(client: agentmail.AgentMail) -> None:
    with pytest.raises(agentmail.NotFoundError):
        client.inboxes.messages.get(INBOX, q("<nope@example.com>"))
    with pytest.raises(agentmail.NotFoundError):
        client.inboxes.threads.get(INBOX, "no-such-thread")
    with pytest.raises(agentmail.NotFoundError):
        client.inboxes.messages.get_attachment(INBOX, q("<nope@example.com>"), "a1")
    with pytest.raises(agentmail.NotFoundError):
        client.webhooks.get("wh_missing")


def test_attachment_metadata_and_download(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    seed_message(double)
    content = b"%PDF-1.4 not really a pdf \x00\xff"
    double.add_attachment(INBOX, "<m1@example.com>", "att-1", content)

    meta = client.inboxes.messages.get_attachment(INBOX, q("<m1@example.com>"), "att-1")
    assert meta.attachment_id == "att-1"
    assert meta.filename == "file.pdf"
    assert meta.content_type == "application/pdf"
    assert meta.size == len(content)
    assert meta.download_url.startswith(f"{double.url}/_downloads/")
    assert meta.expires_at.tzinfo is not None

    # A presigned URL: no Authorization header.
    download = httpx.get(meta.download_url)
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["Content-Type"] == "application/pdf"

    listed = client.inboxes.messages.get(INBOX, q("<m1@example.com>")).attachments
    assert listed is not None
    assert [a.attachment_id for a in listed] == ["att-1"]


def test_thread_get(double: AgentMailDouble, client: agentmail.AgentMail) -> None:
    double.add_thread(
        INBOX,
        {
            "thread_id": "thr-1",
            "subject": "Question",
            "messages": [
                {
                    "message_id": "<m1@example.com>",
                    "from": "alice@example.com",
                    "to": [INBOX],
                    "subject": "Question",
                    "text": "Hello?",
                }
            ],
        },
    )
    reply = client.inboxes.messages.reply(
        INBOX, q("<m1@example.com>"), text="Hi Alice", idempotency_key="job-14"
    )

    thread = client.inboxes.threads.get(INBOX, "thr-1")
    assert thread.thread_id == "thr-1"
    assert thread.inbox_id == INBOX
    assert thread.subject == "Question"
    assert [m.message_id for m in thread.messages] == [
        "<m1@example.com>",
        reply.message_id,
    ]
    assert thread.message_count == 2
    assert thread.last_message_id == reply.message_id
    assert thread.messages[0].text == "Hello?"


def test_label_update(double: AgentMailDouble, client: agentmail.AgentMail) -> None:
    seed_message(double)
    answer = client.inboxes.messages.update(
        INBOX, q("<m1@example.com>"), add_labels=["handled"], remove_labels="unread"
    )
    assert answer.labels == ["received", "handled"]
    assert double.message(INBOX, "<m1@example.com>")["labels"] == [
        "received",
        "handled",
    ]
    [update] = double.label_updates
    assert update.inbox_id == INBOX
    assert update.add_labels == ("handled",)
    assert update.remove_labels == ("unread",)
    assert update.labels == ("received", "handled")
    fetched = client.inboxes.messages.get(INBOX, q("<m1@example.com>"))
    assert fetched.labels == ["received", "handled"]


def test_webhook_create_is_idempotent_on_client_id(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    first = client.webhooks.create(
        url="https://runner.example/hooks",
        event_types=["message.received"],
        client_id="runner-main",
    )
    second = client.webhooks.create(
        url="https://runner.example/hooks",
        event_types=["message.received"],
        client_id="runner-main",
    )
    assert second.webhook_id == first.webhook_id
    assert first.secret.startswith("whsec_")
    assert first.enabled is True

    listed = client.webhooks.list()
    assert listed.count == 1
    assert [w.webhook_id for w in listed.webhooks] == [first.webhook_id]

    other = client.webhooks.create(
        url="https://runner.example/other", event_types=["message.sent"]
    )
    assert other.webhook_id != first.webhook_id
    assert client.webhooks.list().count == 2

    updated = client.webhooks.update(
        first.webhook_id, add_inbox_ids=[INBOX], enabled=False
    )
    assert updated.inbox_ids == [INBOX]
    assert updated.enabled is False
    assert client.webhooks.get(first.webhook_id).enabled is False

    client.webhooks.delete(first.webhook_id)
    with pytest.raises(agentmail.NotFoundError):
        client.webhooks.get(first.webhook_id)
    assert [w["webhook_id"] for w in double.webhooks] == [other.webhook_id]


def test_missing_or_wrong_api_key_is_401(double: AgentMailDouble) -> None:
    with pytest.raises(ApiError) as caught:
        double.client(api_key="wrong").webhooks.list()
    assert caught.value.status_code == 401
    assert caught.value.body["name"] == "UnauthorizedError"

    bare = httpx.get(f"{double.url}/v0/webhooks")
    assert bare.status_code == 401
    assert bare.json()["name"] == "UnauthorizedError"
    assert [r.status for r in double.requests] == [401, 401]
    assert "authorization" not in double.requests[1].headers


def test_reset_clears_records_but_keeps_idempotency(
    double: AgentMailDouble, client: agentmail.AgentMail
) -> None:
    seed_message(double)
    first = client.inboxes.messages.reply(
        INBOX, q("<m1@example.com>"), text="x", idempotency_key="job-15"
    )
    double.fail("GET", r"never-requested")
    double.reset()
    assert double.requests == []
    assert double.sent == []
    again = client.inboxes.messages.reply(
        INBOX, q("<m1@example.com>"), text="x", idempotency_key="job-15"
    )
    assert again.message_id == first.message_id
    assert double.sent == []

    double.reset(state=True)
    with pytest.raises(agentmail.NotFoundError):
        client.inboxes.messages.get(INBOX, q("<m1@example.com>"))


def test_wait_for_times_out(double: AgentMailDouble) -> None:
    with pytest.raises(TimeoutError):
        double.wait_for(lambda: double.sent, timeout=0.1)


def test_stop_is_clean_and_repeatable() -> None:
    before = set(threading.enumerate())
    double = AgentMailDouble()
    with double:
        client = double.client()
        client.webhooks.list()
        url = double.url
    double.stop()
    assert not double.running
    assert set(threading.enumerate()) <= before
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v0/webhooks")


def test_stop_releases_a_connection_that_never_finished_its_request() -> None:
    before = set(threading.enumerate())
    double = AgentMailDouble().start()
    with socket.create_connection(("127.0.0.1", double.port)) as half_open:
        half_open.sendall(b"GET /v0/webhooks HTTP/1.1\r\nHost: x\r\n")
        double.wait_for(lambda: len(threading.enumerate()) > len(before) + 1)
        started = time.monotonic()
        double.stop()
        assert time.monotonic() - started < 5.0
    assert set(threading.enumerate()) <= before
