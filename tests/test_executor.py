"""Actions through the real agentmail SDK and the API double: once, with one key."""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from runner import (
    Action,
    AddLabels,
    Context,
    Event,
    Forward,
    HttpPost,
    RemoveLabels,
    Reply,
    Send,
    hookimpl,
)
from runner.executor import ActionFailed, Executor
from runner.runtime import Runtime
from runner.store import DONE, PENDING
from runner.testing.agentmail_double import AgentMailDouble
from tests.conftest import (
    RuntimeFactory,
    free_port,
    load_payload,
    run_attempt,
    store_event,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

INBOX = "helpdesk@agentmail.to"
KEY = "amr-test-key-1"


def received_event(message_id: str = "<CAF0x9k2@mail.example.org>") -> dict[str, Any]:
    payload = load_payload("message-received.json")
    payload["event_id"] = str(uuid.uuid4())
    payload["message"]["message_id"] = message_id
    return payload


def seeded_event(
    double: AgentMailDouble, message_id: str = "<m1@example.org>"
) -> Event:
    payload = received_event(message_id)
    double.add_message(
        INBOX, {"message_id": message_id, "thread_id": payload["message"]["thread_id"]}
    )
    return Event(payload)


def event_status(rt: Runtime, pk: int) -> str:
    row = rt.store.get_event(pk)
    assert row is not None
    return row.status


@pytest.fixture
def executor(double: AgentMailDouble) -> Executor:
    return Executor(double.client(), dry_run=False, timeout=10)


class Returns:
    """A plugin whose ``act`` returns the same actions for every message."""

    def __init__(self, *actions: Action) -> None:
        self.actions = list(actions)

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event, context: Context) -> list[Action]:
        return self.actions


# -- a loopback endpoint for HttpPost --------------------------------------------------


@dataclass(frozen=True)
class Posted:
    path: str
    headers: dict[str, str]
    json: Any


class _Quiet(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class Receiver:
    """Records each request and answers with the next queued status (else 200)."""

    def __init__(self) -> None:
        self.requests: list[Posted] = []
        self.answers: deque[tuple[int, dict[str, str]]] = deque()
        self._lock = threading.Lock()
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=_Quiet
        )
        self.url = f"http://127.0.0.1:{self._server.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self._thread.start()

    def answer(self, status: int, **headers: str) -> None:
        self.answers.append((status, headers))

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)
        self._server.server_close()

    def _app(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        request = Request(environ)
        body = request.get_data()
        with self._lock:
            self.requests.append(
                Posted(
                    path=request.path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    json=json.loads(body) if body else None,
                )
            )
            status, headers = self.answers.popleft() if self.answers else (200, {})
        response = Response(b"{}", status=status, content_type="application/json")
        response.headers.update(headers)
        return response(environ, start_response)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# -- the SDK's own retries -------------------------------------------------------------


def test_a_reply_that_fails_twice_with_500_is_sent_once_under_one_key(
    executor: Executor, double: AgentMailDouble
) -> None:
    event = seeded_event(double)
    double.fail("POST", r"/reply$", 500, times=2, retry_after=1)

    result = executor.execute(event, Reply(text="Thanks"), KEY)

    [email] = double.sent
    assert result == {"message_id": email.message_id, "thread_id": email.thread_id}
    attempts = [r for r in double.requests if r.path.endswith("/reply")]
    assert [r.status for r in attempts] == [500, 500, 200]
    assert {r.idempotency_key for r in attempts} == {KEY}


# -- job retries and permanent refusals ------------------------------------------------


def test_a_job_retry_after_a_transient_failure_resends_with_the_same_key(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    rt = make_runtime()
    pk = store_event(rt, received_event())
    double.fail("POST", r"/reply$", 503, times=3, retry_after=1)

    run_attempt(rt)
    [action] = rt.store.actions_for(pk)
    assert action.status == "failed"
    assert action.error is not None
    assert action.error.startswith("AgentMail answered 503")
    assert event_status(rt, pk) == PENDING

    run_attempt(rt)

    assert len(double.sent) == 1
    replies = [r for r in double.requests if r.path.endswith("/reply")]
    assert [r.status for r in replies] == [503, 503, 503, 200]
    assert {r.idempotency_key for r in replies} == {action.idempotency_key}
    assert event_status(rt, pk) == DONE
    assert rt.store.actions_for(pk)[0].status == "done"


def test_a_reply_whose_answer_was_lost_is_not_sent_again_by_the_job_retry(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    rt = make_runtime(api_timeout_seconds=0.5)
    pk = store_event(rt, received_event())
    # AgentMail sends, but the answer arrives after the client has given up.
    double.fail("POST", r"/reply$", status=None, delay=1.0)

    run_attempt(rt)
    assert event_status(rt, pk) == PENDING
    double.wait_for(lambda: double.sent)

    run_attempt(rt)

    assert len(double.sent) == 1
    assert event_status(rt, pk) == DONE
    keys = {r.idempotency_key for r in double.requests if r.path.endswith("/reply")}
    assert len(keys) == 1


@pytest.mark.parametrize("status", [400, 403, 422])
def test_a_permanent_refusal_rejects_the_action_and_buries_the_event(
    make_runtime: RuntimeFactory, double: AgentMailDouble, status: int
) -> None:
    rt = make_runtime()
    pk = store_event(rt, received_event())
    double.fail("POST", r"/reply$", status, times=5)

    run_attempt(rt)

    [action] = rt.store.actions_for(pk)
    assert action.status == "rejected"
    assert action.error is not None
    assert action.error.startswith(f"AgentMail answered {status}")
    row = rt.store.get_event(pk)
    assert row is not None
    assert row.status == "dead"
    assert f"autoresponder: reply: AgentMail answered {status}" in (
        row.last_error or ""
    )
    assert rt.drain() == 0
    assert len([r for r in double.requests if r.path.endswith("/reply")]) == 1
    assert double.sent == []


# -- what each action sends ------------------------------------------------------------


def test_a_reply_carries_its_fields_and_the_auto_reply_header(
    executor: Executor, double: AgentMailDouble
) -> None:
    event = seeded_event(double)
    reply = Reply(
        text="Thanks",
        html="<p>Thanks</p>",
        to=["pat@example.org"],
        cc=["team@example.org"],
        reply_all=True,
        labels=["answered"],
        headers={"X-Ticket": "1042", "Auto-Submitted": "no"},
    )

    executor.execute(event, reply, KEY)

    [email] = double.sent
    assert (email.kind, email.inbox_id) == ("reply", INBOX)
    assert email.source_message_id == "<m1@example.org>"
    assert email.idempotency_key == KEY
    body = email.json
    assert (body["text"], body["html"]) == ("Thanks", "<p>Thanks</p>")
    assert (body["to"], body["cc"]) == (["pat@example.org"], ["team@example.org"])
    assert (body["reply_all"], body["labels"]) == (True, ["answered"])
    assert body["headers"] == {"X-Ticket": "1042", "Auto-Submitted": "auto-replied"}


def test_a_send_carries_its_fields_from_the_event_inbox_or_its_own(
    executor: Executor, double: AgentMailDouble
) -> None:
    event = seeded_event(double)
    send = Send(
        to=["a@example.org"],
        cc=["b@example.org"],
        bcc=["c@example.org"],
        subject="Your order",
        text="Shipped",
        html="<b>Shipped</b>",
        labels=["outbound"],
        headers={"X-Order": "1042"},
    )

    executor.execute(event, send, KEY)
    executor.execute(
        event,
        Send(
            to="d@example.org", subject="s", text="t", inbox_id="sales+eu@agentmail.to"
        ),
        "amr-key-2",
    )

    first, second = double.sent
    assert (first.kind, first.inbox_id, first.source_message_id) == (
        "send",
        INBOX,
        None,
    )
    assert first.json == {
        "to": ["a@example.org"],
        "cc": ["b@example.org"],
        "bcc": ["c@example.org"],
        "subject": "Your order",
        "text": "Shipped",
        "html": "<b>Shipped</b>",
        "labels": ["outbound"],
        "headers": {"X-Order": "1042"},
    }
    assert first.idempotency_key == KEY
    assert (second.inbox_id, second.json["to"]) == (
        "sales+eu@agentmail.to",
        ["d@example.org"],
    )


def test_a_forward_carries_its_fields(
    executor: Executor, double: AgentMailDouble
) -> None:
    event = seeded_event(double)

    executor.execute(
        event,
        Forward(
            to=["billing@example.org"],
            subject="FYI",
            text="See below",
            labels=["forwarded"],
        ),
        KEY,
    )

    [email] = double.sent
    assert (email.kind, email.source_message_id) == ("forward", "<m1@example.org>")
    assert email.json == {
        "to": ["billing@example.org"],
        "subject": "FYI",
        "text": "See below",
        "labels": ["forwarded"],
    }
    assert email.idempotency_key == KEY


def test_labels_are_added_and_removed_on_the_event_message(
    executor: Executor, double: AgentMailDouble
) -> None:
    event = seeded_event(double)

    assert executor.execute(event, AddLabels(labels=["billing", "urgent"]), KEY) == {
        "labels": ["billing", "urgent"]
    }
    executor.execute(event, RemoveLabels(labels=["urgent"]), "amr-key-2")

    added, removed = double.label_updates
    assert (added.message_id, added.add_labels, added.remove_labels) == (
        "<m1@example.org>",
        ("billing", "urgent"),
        (),
    )
    assert (removed.add_labels, removed.remove_labels) == ((), ("urgent",))
    assert double.message(INBOX, "<m1@example.org>")["labels"] == ["billing"]


@pytest.mark.parametrize(
    "message_id",
    [
        "<a/b@example.org>",
        "<q?x=1@example.org>",
        "<frag#1@example.org>",
        "<100%sure@example.org>",
        "<plain+tag@example.org>",
    ],
)
def test_message_ids_with_reserved_characters_reach_the_right_message(
    executor: Executor, double: AgentMailDouble, message_id: str
) -> None:
    event = seeded_event(double, message_id)

    executor.execute(event, Reply(text="r"), "amr-key-1")
    executor.execute(event, Forward(to=["x@example.org"]), "amr-key-2")
    executor.execute(event, AddLabels(labels=["seen"]), "amr-key-3")

    assert [e.source_message_id for e in double.sent] == [message_id, message_id]
    assert [u.message_id for u in double.label_updates] == [message_id]
    assert double.message(INBOX, message_id)["labels"] == ["seen"]


def test_an_action_on_a_message_event_without_a_message_fails_for_good(
    executor: Executor,
) -> None:
    event = Event(load_payload("message-delivered.json"))

    with pytest.raises(ActionFailed) as caught:
        executor.execute(event, Reply(text="r"), KEY)

    assert caught.value.permanent is True
    assert str(caught.value) == "reply: the event carries no message to act on"


# -- HttpPost --------------------------------------------------------------------------


def test_an_http_post_carries_the_idempotency_key_and_its_own_headers(
    executor: Executor, receiver: Receiver
) -> None:
    action = HttpPost(
        url=f"{receiver.url}/hooks/billing",
        json={"subject": "Invoice", "amount": 42},
        headers={"Authorization": "Bearer t0ken"},
        endpoint="billing",
    )

    result = executor.execute(Event(received_event()), action, KEY)

    assert result == {"status": 200}
    [posted] = receiver.requests
    assert posted.path == "/hooks/billing"
    assert posted.json == {"subject": "Invoice", "amount": 42}
    assert posted.headers["idempotency-key"] == KEY
    assert posted.headers["authorization"] == "Bearer t0ken"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_an_http_post_does_not_follow_a_redirect_and_fails_for_good(
    executor: Executor, receiver: Receiver, status: int
) -> None:
    receiver.answer(status, Location=f"{receiver.url}/elsewhere")
    action = HttpPost(url=f"{receiver.url}/hook", json={}, endpoint="billing")

    with pytest.raises(ActionFailed) as caught:
        executor.execute(Event(received_event()), action, KEY)

    assert caught.value.permanent is True
    assert str(caught.value) == f"billing answered {status}"
    assert [r.path for r in receiver.requests] == ["/hook"]


@pytest.mark.parametrize(
    ("status", "permanent"), [(500, False), (503, False), (429, False), (404, True)]
)
def test_an_http_post_failure_is_retryable_only_when_trying_again_can_help(
    executor: Executor, receiver: Receiver, status: int, permanent: bool
) -> None:
    receiver.answer(status)
    action = HttpPost(url=f"{receiver.url}/hook", json={})

    with pytest.raises(ActionFailed) as caught:
        executor.execute(Event(received_event()), action, KEY)

    assert caught.value.permanent is permanent
    assert str(caught.value) == f"endpoint answered {status}"


def test_an_unreachable_endpoint_is_a_retryable_network_failure(
    executor: Executor,
) -> None:
    action = HttpPost(url=f"http://127.0.0.1:{free_port()}/hook", json={})

    with pytest.raises(ActionFailed) as caught:
        executor.execute(Event(received_event()), action, KEY)

    assert caught.value.permanent is False
    assert str(caught.value).startswith("network: ConnectError")


def test_an_http_post_answered_503_is_retried_by_the_job_with_the_same_key(
    make_runtime: RuntimeFactory, receiver: Receiver
) -> None:
    post = HttpPost(url=f"{receiver.url}/hook", json={"n": 1}, endpoint="crm")
    rt = make_runtime("[plugins.poster]\n", extra_plugins=(("poster", Returns(post)),))
    pk = store_event(rt, received_event())
    receiver.answer(503)

    run_attempt(rt)
    assert event_status(rt, pk) == PENDING
    run_attempt(rt)

    assert event_status(rt, pk) == DONE
    first, second = receiver.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.headers["idempotency-key"].startswith("amr-")


def test_an_http_post_redirected_makes_a_dead_letter_without_retries(
    make_runtime: RuntimeFactory, receiver: Receiver
) -> None:
    post = HttpPost(url=f"{receiver.url}/hook", json={}, endpoint="crm")
    rt = make_runtime("[plugins.poster]\n", extra_plugins=(("poster", Returns(post)),))
    pk = store_event(rt, received_event())
    receiver.answer(302, Location=f"{receiver.url}/elsewhere")

    run_attempt(rt)

    assert event_status(rt, pk) == "dead"
    assert rt.store.actions_for(pk)[0].status == "rejected"
    assert rt.drain() == 0
    assert [r.path for r in receiver.requests] == ["/hook"]


# -- dry-run ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["dry_run", "no API key"])
def test_dry_run_records_the_actions_and_calls_nothing(
    make_runtime: RuntimeFactory,
    double: AgentMailDouble,
    receiver: Receiver,
    how: str,
) -> None:
    others = Returns(
        AddLabels(labels=["seen"]),
        Send(to=["a@example.org"], subject="s", text="t"),
        HttpPost(url=f"{receiver.url}/hook", json={}),
    )
    plugins = "[plugins.autoresponder]\n[[plugins.autoresponder.templates]]\n"
    plugins += 'text = "Thanks"\n[plugins.others]\n'
    if how == "dry_run":
        rt = make_runtime(plugins, extra_plugins=(("others", others),), dry_run=True)
    else:
        rt = make_runtime(plugins, extra_plugins=(("others", others),), api=False)
    pk = store_event(rt, received_event())

    run_attempt(rt)

    assert rt.dry_run
    actions = rt.store.actions_for(pk)
    assert [(a.kind, a.status) for a in actions] == [
        ("reply", "recorded"),
        ("add_labels", "recorded"),
        ("send", "recorded"),
        ("http_post", "recorded"),
    ]
    assert actions[0].result == {"dry_run": True, "would": "reply (6 chars)"}
    assert event_status(rt, pk) == DONE
    assert double.requests == []
    assert receiver.requests == []


def test_an_executor_without_a_client_is_a_dry_run() -> None:
    executor = Executor(None, dry_run=False)

    assert executor.dry_run
    assert executor.execute(
        Event(received_event()), Send(to=["a@example.org"], subject="Hi", text="t"), KEY
    ) == {"dry_run": True, "would": "send to a@example.org: 'Hi'"}
