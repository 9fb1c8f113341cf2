"""The send guard: RFC 3834 loop rules, reply caps and every plugin's veto."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from runner import (
    Action,
    AddLabels,
    Context,
    Event,
    Forward,
    Reply,
    Send,
    SendProposal,
    hookimpl,
)
from runner.config import GuardSettings
from runner.executor import reply_recipients
from runner.guard import SendGuard, auto_reply_refusal, normalise_address
from runner.store import DONE, PENDING
from runner.store.schema import actions
from runner.testing.agentmail_double import AgentMailDouble
from tests.conftest import (
    TEMPLATES,
    RuntimeFactory,
    deliver,
    load_payload,
    run_attempt,
    store_event,
)

INBOX = "helpdesk@agentmail.to"
PATTERNS = GuardSettings().no_reply_patterns


def received_event(
    *,
    headers: dict[str, Any] | None = None,
    sender: Any = "Pat Example <pat@example.org>",
    thread_id: str | None = None,
) -> dict[str, Any]:
    payload = load_payload("message-received.json")
    payload["event_id"] = str(uuid.uuid4())
    message = payload["message"]
    message.pop("from_")
    message["from"] = sender
    message["headers"] = headers or {}
    message["message_id"] = f"<{uuid.uuid4().hex}@mail.example.org>"
    if thread_id is not None:
        message["thread_id"] = thread_id
    return payload


def refusal(payload: dict[str, Any]) -> str | None:
    return auto_reply_refusal(Event(payload), PATTERNS)


# -- RFC 3834: mail that must not be answered automatically ----------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Auto-Submitted": "auto-replied"}, "Auto-Submitted: auto-replied (RFC 3834)"),
        (
            {"Auto-Submitted": "auto-generated"},
            "Auto-Submitted: auto-generated (RFC 3834)",
        ),
        (
            {"auto-submitted": "Auto-Notified; owner-email=ops@example.org"},
            "Auto-Submitted: auto-notified; owner-email=ops@example.org (RFC 3834)",
        ),
        ({"Precedence": "bulk"}, "Precedence: bulk"),
        ({"Precedence": "List"}, "Precedence: list"),
        ({"PRECEDENCE": "junk"}, "Precedence: junk"),
        ({"List-Id": "<news.example.org>"}, "mailing-list mail (List-Id)"),
        (
            {"list-unsubscribe": "<mailto:leave@example.org>"},
            "mailing-list mail (List-Unsubscribe)",
        ),
        ({"X-Auto-Response-Suppress": "All"}, "X-Auto-Response-Suppress: all"),
        (
            {"X-Auto-Response-Suppress": "OOF, AutoReply"},
            "X-Auto-Response-Suppress: oof, autoreply",
        ),
    ],
)
def test_automatic_and_list_mail_gets_no_reply(
    headers: dict[str, str], reason: str
) -> None:
    assert refusal(received_event(headers=headers)) == reason


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Auto-Submitted": "no"},
        {"Auto-Submitted": " No "},
        {"Precedence": "first-class"},
        {"X-Mailer": "Thunderbird"},
    ],
)
def test_a_personal_message_may_be_answered(headers: dict[str, str]) -> None:
    assert refusal(received_event(headers=headers)) is None


@pytest.mark.parametrize("sender", ["", "<>", None, []])
def test_a_null_or_empty_sender_gets_no_reply(sender: Any) -> None:
    assert refusal(received_event(sender=sender)) == "no sender (null return path)"


@pytest.mark.parametrize(
    "sender",
    [
        "MAILER-DAEMON@mx.example.org",
        "mailer-daemon@example.org",
        "noreply@example.org",
        "No-Reply <no-reply@example.org>",
        "do-not-reply@example.org",
        "donotreply@example.org",
        "noreply+receipts@example.org",
        "no-reply-billing@example.org",
        "postmaster@example.org",
    ],
)
def test_a_no_reply_or_daemon_sender_gets_no_reply(sender: str) -> None:
    email = normalise_address(sender)
    reason = refusal(received_event(sender=sender))

    assert reason is not None
    assert reason.lower() == f"{email} does not take replies"


@pytest.mark.parametrize(
    "sender", ["noreen@example.org", "replies@example.org", "daemon-fan@example.org"]
)
def test_a_sender_that_only_resembles_a_no_reply_address_is_answered(
    sender: str,
) -> None:
    assert refusal(received_event(sender=sender)) is None


def test_the_no_reply_patterns_come_from_the_settings() -> None:
    event = Event(received_event(sender="alerts@example.org"))

    assert auto_reply_refusal(event, ("alerts",)) == (
        "alerts@example.org does not take replies"
    )
    assert auto_reply_refusal(event, PATTERNS) is None


def test_mail_from_the_inbox_itself_gets_no_reply() -> None:
    payload = received_event(sender="Help Desk <HelpDesk@AgentMail.to>")

    assert refusal(payload) == "the sender is this inbox itself"


def test_message_sent_is_never_answered() -> None:
    event = Event(load_payload("message-sent.json"))

    assert auto_reply_refusal(event, PATTERNS) == (
        "message.sent is our own outgoing mail"
    )


# -- SendGuard.check -------------------------------------------------------------------


def guard(**settings: Any) -> SendGuard:
    return SendGuard(GuardSettings(**settings), count_replies=lambda **_: 0)


@pytest.mark.parametrize(
    "action",
    [
        Reply(text="r"),
        Send(to=["pat@example.org"], subject="s", text="t"),
        Forward(to=["pat@example.org"]),
    ],
)
def test_no_email_of_any_kind_answers_message_sent(action: Action) -> None:
    event = Event(load_payload("message-sent.json"))

    assert guard().check(event, action, action.recipients()) == (
        "message.sent is our own outgoing mail: never answered"
    )


def test_only_replies_follow_the_auto_reply_rules() -> None:
    event = Event(received_event(headers={"Auto-Submitted": "auto-generated"}))

    assert guard().check(event, Reply(text="r"), ["pat@example.org"]) is not None
    assert guard().check(event, Forward(to=["ops@example.org"]), []) is None
    assert guard().check(event, AddLabels(labels=["auto"]), []) is None


# -- caps on replies per thread and per sender -----------------------------------------


def capped(plugins: str = TEMPLATES, **guard_settings: int) -> str:
    lines = "".join(f"{key} = {value}\n" for key, value in guard_settings.items())
    return f"[runner.guard]\n{lines}{plugins}"


@pytest.mark.parametrize("dry_run", [False, True])
def test_replies_in_one_thread_stop_at_the_thread_cap(
    make_runtime: RuntimeFactory, double: AgentMailDouble, dry_run: bool
) -> None:
    rt = make_runtime(capped(max_replies_per_thread=2), dry_run=dry_run)
    pks = [
        store_event(
            rt, received_event(sender=f"p{n}@example.org", thread_id="thread-1")
        )
        for n in range(3)
    ]

    assert rt.drain() == 3

    statuses = [rt.store.actions_for(pk)[0].status for pk in pks]
    assert statuses == ["recorded" if dry_run else "done"] * 2 + ["vetoed"]
    assert rt.store.actions_for(pks[2])[0].error == (
        "2 automatic replies in this thread in the last 24 h (cap 2)"
    )
    assert len(double.sent) == (0 if dry_run else 2)


def test_replies_to_one_sender_stop_at_the_sender_cap(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    rt = make_runtime(capped(max_replies_per_sender=2))
    pks = [
        store_event(
            rt, received_event(sender="Pat <Pat@Example.org>", thread_id=f"t-{n}")
        )
        for n in range(3)
    ]

    rt.drain()

    assert len(double.sent) == 2
    vetoed = rt.store.actions_for(pks[2])[0]
    assert vetoed.status == "vetoed"
    assert vetoed.error == (
        "2 automatic replies to Pat@Example.org in the last 24 h (cap 2)"
    )


@pytest.mark.parametrize("cap", ["thread", "sender"])
def test_workers_replying_at_the_same_time_stop_at_the_cap_together(
    make_runtime: RuntimeFactory, double: AgentMailDouble, cap: str
) -> None:
    # Each reply takes a while inside AgentMail, so four workers are all between
    # their check of the cap and the end of their send at once.
    double.fail("POST", r"/reply$", status=None, delay=0.3, times=20)
    rt = make_runtime(capped(max_replies_per_thread=2, max_replies_per_sender=2))
    for n in range(8):
        if cap == "thread":
            payload = received_event(sender=f"p{n}@example.org", thread_id="thread-1")
        else:
            payload = received_event(thread_id=f"thread-{n}")
        store_event(rt, payload)
    rt.start_workers(4)

    deadline = time.monotonic() + 20
    while rt.store.count_by_status() != {DONE: 8}:
        assert time.monotonic() < deadline, rt.store.count_by_status()
        time.sleep(0.05)

    assert len(double.sent) == 2
    vetoed = [
        a.error
        for e in rt.store.list_events(limit=8)
        for a in rt.store.actions_for(e.pk)
        if a.status == "vetoed"
    ]
    assert len(vetoed) == 6
    assert all("(cap 2)" in error for error in vetoed)


def test_a_reply_a_dead_worker_left_sending_goes_once_and_under_its_own_cap(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    rt = make_runtime(capped(max_replies_per_thread=1))
    double.fail("POST", r"/reply$", status=503, times=3)
    pk = store_event(rt, received_event(thread_id="thread-1"))
    run_attempt(rt)
    [planned] = rt.store.actions_for(pk)
    assert planned.status == "failed"
    # What a worker killed between the reservation and the send leaves behind.
    with rt.store.engine.begin() as conn:
        conn.execute(
            sa.update(actions)
            .where(actions.c.id == planned.pk)
            .values(status="sending", executed_at=time.time())
        )
    assert rt.store.count_replies(since=0, thread_id="thread-1") == 1

    run_attempt(rt)

    assert rt.store.actions_for(pk)[0].status == "done"
    assert len(double.sent) == 1


def test_replies_older_than_the_window_do_not_count(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(capped(max_replies_per_thread=1), dry_run=True)
    store_event(rt, received_event(thread_id="thread-1"))
    rt.drain()
    event = Event(received_event(thread_id="thread-1"))
    settings = rt.settings.guard

    now = SendGuard(settings, count_replies=rt.store.count_replies)
    later = SendGuard(
        settings,
        count_replies=rt.store.count_replies,
        clock=lambda: time.time() + 25 * 3600,
    )

    assert now.check(event, Reply(text="r"), ["pat@example.org"]) == (
        "1 automatic replies in this thread in the last 24 h (cap 1)"
    )
    assert later.check(event, Reply(text="r"), ["pat@example.org"]) is None


# -- plugins' veto_send ----------------------------------------------------------------


class Vetoer:
    """Stops email to some addresses; can be made to fail."""

    def __init__(self, *, suppressed: str = "", failures: int = 0) -> None:
        self.suppressed = suppressed
        self.failures = failures
        self.proposals: list[SendProposal] = []

    @hookimpl
    def veto_send(self, proposal: SendProposal, context: Context) -> str | None:
        self.proposals.append(proposal)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the suppression list is unavailable")
        if self.suppressed in proposal.recipients:
            return f"{self.suppressed} is suppressed"
        return None


class Labeller:
    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event, context: Context) -> list[AddLabels]:
        return [AddLabels(labels=["seen"])]


def test_a_veto_stops_the_email_and_its_reason_is_recorded(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    vetoer = Vetoer(suppressed="pat@example.org")
    rt = make_runtime(extra_plugins=(("vetoer", vetoer),))
    pk = store_event(rt, received_event())

    run_attempt(rt)

    [action] = rt.store.actions_for(pk)
    assert (action.status, action.error) == (
        "vetoed",
        "vetoed by vetoer: pat@example.org is suppressed",
    )
    assert double.sent == []
    row = rt.store.get_event(pk)
    assert row is not None
    assert row.status == DONE
    [proposal] = vetoer.proposals
    assert (proposal.plugin, proposal.inbox_id, proposal.recipients) == (
        "autoresponder",
        INBOX,
        ("pat@example.org",),
    )
    assert isinstance(proposal.action, Reply)


def test_a_veto_is_asked_only_about_email(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    vetoer = Vetoer(suppressed="pat@example.org")
    rt = make_runtime(
        "[plugins.labeller]\n",
        extra_plugins=(("labeller", Labeller()), ("vetoer", vetoer)),
    )
    payload = received_event()
    message = payload["message"]
    double.add_message(
        INBOX, {"message_id": message["message_id"], "thread_id": message["thread_id"]}
    )
    store_event(rt, payload)

    run_attempt(rt)

    assert vetoer.proposals == []
    assert len(double.label_updates) == 1


def test_a_veto_hook_that_fails_means_nothing_is_sent_until_a_retry(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    rt = make_runtime(extra_plugins=(("vetoer", Vetoer(failures=1)),))
    pk = store_event(rt, received_event())

    run_attempt(rt)

    [action] = rt.store.actions_for(pk)
    assert action.status == "failed"
    assert action.error is not None
    assert action.error.startswith(
        "a veto_send hook failed, so nothing was sent: "
        "RuntimeError: the suppression list is unavailable"
    )
    assert double.sent == []
    row = rt.store.get_event(pk)
    assert row is not None
    assert row.status == PENDING

    run_attempt(rt)

    assert len(double.sent) == 1
    assert rt.store.actions_for(pk)[0].status == "done"


# -- the whole flow --------------------------------------------------------------------


def test_an_auto_replied_message_delivered_gets_no_reply(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    rt = make_runtime()
    payload = received_event(headers={"Auto-Submitted": "auto-replied"})

    assert deliver(rt, payload).status_code == 200
    assert rt.drain() == 1

    assert double.sent == []
    row = rt.store.get_event(payload["event_id"])
    assert row is not None
    assert row.status == DONE
    [action] = rt.store.actions_for(row.pk)
    assert (action.kind, action.status, action.error) == (
        "reply",
        "vetoed",
        "Auto-Submitted: auto-replied (RFC 3834)",
    )


class AnswersEverything:
    """A careless plugin that answers whatever it is given, our own mail included."""

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["*"]

    @hookimpl
    def act(self, event: Event, context: Context) -> list[Action]:
        return [
            Reply(text="Got it"),
            Send(to=["pat@example.org"], subject="Re", text="Got it"),
        ]


def test_a_message_sent_event_delivered_sends_no_email(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    rt = make_runtime(extra_plugins=(("careless", AnswersEverything()),))
    payload = load_payload("message-sent.json")

    assert deliver(rt, payload).status_code == 200
    assert rt.drain() == 1

    assert double.requests == []
    row = rt.store.get_event(payload["event_id"])
    assert row is not None
    assert row.status == DONE
    actions = rt.store.actions_for(row.pk)
    assert [(a.plugin, a.kind, a.status) for a in actions] == [
        ("careless", "reply", "vetoed"),
        ("careless", "send", "vetoed"),
    ]
    assert {a.error for a in actions} == {
        "message.sent is our own outgoing mail: never answered"
    }
    assert [plugin for plugin, _ in rt.store.ledger_for(row.pk)] == ["careless"]


@pytest.mark.parametrize(
    ("reply_to", "reason"),
    [
        (["noreply@example.org"], "noreply@example.org does not take replies"),
        (
            ["Help Desk <helpdesk@agentmail.to>"],
            "the reply would go to this inbox itself (helpdesk@agentmail.to)",
        ),
    ],
)
def test_a_reply_to_that_cannot_be_answered_stops_the_reply(
    reply_to: list[str], reason: str
) -> None:
    payload = load_payload("message-received.json")
    payload["message"]["reply_to"] = reply_to
    event = Event(payload)
    guard = SendGuard(GuardSettings(), count_replies=lambda **_: 0)

    verdict = guard.check(
        event, Reply(text="hi"), reply_recipients(event, Reply(text="hi"))
    )

    assert verdict == reason
