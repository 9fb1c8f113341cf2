"""Dispatch: isolated hook calls, the ledger, retries of only what failed, back-off."""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from typing import Any

import pytest
import time_machine

from runner import AddLabels, Context, Event, PermanentError, hookimpl
from runner.dispatch import backoff
from runner.runtime import Runtime
from runner.store import DONE, PENDING
from runner.testing.agentmail_double import AgentMailDouble
from tests.conftest import (
    RuntimeFactory,
    deliver,
    load_payload,
    run_attempt,
    store_event,
)

INBOX = "helpdesk@agentmail.to"


def received_event(**message: Any) -> dict[str, Any]:
    """The corpus message.received event under a fresh event id."""
    payload = load_payload("message-received.json")
    payload["event_id"] = str(uuid.uuid4())
    payload["message"].update(message)
    return payload


def seed_message(double: AgentMailDouble, payload: dict[str, Any]) -> None:
    message = payload["message"]
    double.add_message(
        INBOX, {"message_id": message["message_id"], "thread_id": message["thread_id"]}
    )


def labels_added(double: AgentMailDouble) -> list[str]:
    return [label for update in double.label_updates for label in update.add_labels]


class Labeller:
    """Labels the event's message from one stage; fails its first ``failures`` calls."""

    def __init__(
        self,
        label: str,
        *,
        failures: int = 0,
        error: Exception | None = None,
        patterns: tuple[str, ...] = ("message.received",),
        journal: list[str] | None = None,
    ) -> None:
        self.label = label
        self.failures = failures
        self.error = error or RuntimeError(f"{label} broke")
        self.patterns = patterns
        self.journal = journal if journal is not None else []
        self.calls = 0

    @hookimpl
    def subscriptions(self) -> list[str]:
        return list(self.patterns)

    @hookimpl
    def act(self, event: Event, context: Context) -> list[AddLabels]:
        self.calls += 1
        self.journal.append(self.label)
        if self.calls <= self.failures:
            raise self.error
        return [AddLabels(labels=[self.label])]


def tables(*names: str) -> str:
    return "".join(f"[plugins.{name}]\n" for name in names)


# -- one plugin cannot sink another ----------------------------------------------------


def test_a_failing_plugin_between_two_others_does_not_stop_them(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    first, flaky, third = (
        Labeller("first"),
        Labeller("flaky", failures=1),
        Labeller("third"),
    )
    rt = make_runtime(
        tables("first", "flaky", "third"),
        extra_plugins=(("first", first), ("flaky", flaky), ("third", third)),
    )
    payload = received_event()
    seed_message(double, payload)
    pk = store_event(rt, payload)

    run_attempt(rt)

    assert labels_added(double) == ["first", "third"]
    ledger = rt.store.ledger_for(pk)
    assert ledger[("flaky", "act")].status == "failed"
    assert ledger[("flaky", "act")].error.startswith("RuntimeError: flaky broke")
    assert ledger[("first", "act")].status == "succeeded"
    assert ledger[("third", "act")].status == "succeeded"
    row = rt.store.get_event(pk)
    assert row is not None
    assert row.status == PENDING
    assert "flaky.act: RuntimeError: flaky broke" in (row.last_error or "")


def test_a_retry_calls_only_the_plugin_that_failed(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    first, flaky, third = (
        Labeller("first"),
        Labeller("flaky", failures=1),
        Labeller("third"),
    )
    rt = make_runtime(
        tables("first", "flaky", "third"),
        extra_plugins=(("first", first), ("flaky", flaky), ("third", third)),
    )
    payload = received_event()
    seed_message(double, payload)
    pk = store_event(rt, payload)

    run_attempt(rt)
    run_attempt(rt)

    assert (first.calls, flaky.calls, third.calls) == (1, 2, 1)
    assert labels_added(double) == ["first", "third", "flaky"]
    row = rt.store.get_event(pk)
    assert row is not None
    assert (row.status, row.attempts) == (DONE, 2)
    assert rt.store.ledger_for(pk)[("flaky", "act")].attempts == 2
    assert {a.plugin: a.attempts for a in rt.store.actions_for(pk)} == {
        "first": 1,
        "third": 1,
        "flaky": 1,
    }


def test_plugins_run_in_configuration_order_and_extra_ones_after_in_given_order(
    make_runtime: RuntimeFactory,
) -> None:
    journal: list[str] = []
    names = ["alpha", "zulu", "charlie", "yankee", "mike"]
    plugins = {name: Labeller(name, journal=journal) for name in names}
    rt = make_runtime(
        tables("charlie", "alpha"),
        extra_plugins=tuple((name, plugins[name]) for name in names),
        dry_run=True,
    )
    store_event(rt, received_event())

    run_attempt(rt)

    assert journal == ["charlie", "alpha", "zulu", "yankee", "mike"]


# -- time budgets ----------------------------------------------------------------------


class Sleeper:
    """Hangs in ``act`` until released, then tries to put on its (closed) context."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.late_put: queue.Queue[str] = queue.Queue()

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event, context: Context) -> list[AddLabels]:
        context.put("early", True)
        self.release.wait(10)
        try:
            context.put("late", True)
        except RuntimeError as exc:
            self.late_put.put(str(exc))
            raise
        self.late_put.put("accepted")
        return [AddLabels(labels=["late"])]


@pytest.mark.parametrize("where", ["runner", "plugin table"])
def test_a_plugin_past_its_time_budget_fails_and_the_others_run(
    make_runtime: RuntimeFactory, double: AgentMailDouble, where: str
) -> None:
    sleeper = Sleeper()
    plugins = tables("first", "sleeper", "third")
    runner: dict[str, Any] = {}
    if where == "runner":
        runner["plugin_timeout_seconds"] = 0.3
    else:
        plugins = plugins.replace(
            "[plugins.sleeper]\n", "[plugins.sleeper]\ntimeout_seconds = 0.3\n"
        )
    rt = make_runtime(
        plugins,
        extra_plugins=(
            ("first", Labeller("first")),
            ("sleeper", sleeper),
            ("third", Labeller("third")),
        ),
        **runner,
    )
    payload = received_event()
    seed_message(double, payload)
    pk = store_event(rt, payload)
    try:
        started = time.monotonic()
        run_attempt(rt)
        elapsed = time.monotonic() - started
    finally:
        sleeper.release.set()

    assert elapsed < 5
    call = rt.store.ledger_for(pk)[("sleeper", "act")]
    assert call.status == "failed"
    assert call.error == "timed out after 0.3 s"
    assert call.data == {}
    assert labels_added(double) == ["first", "third"]
    late = sleeper.late_put.get(timeout=5)
    assert late == "this call has ended; its context is closed"
    assert [a.plugin for a in rt.store.actions_for(pk)] == ["first", "third"]


def test_a_budget_meant_as_no_limit_lets_the_plugin_run(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    # 1e10 s is more than a thread can be told to wait for.
    rt = make_runtime(
        tables("first"),
        extra_plugins=(("first", Labeller("first")),),
        plugin_timeout_seconds=1e10,
    )
    payload = received_event()
    seed_message(double, payload)
    pk = store_event(rt, payload)

    run_attempt(rt)

    assert rt.store.ledger_for(pk)[("first", "act")].status == "succeeded"
    assert labels_added(double) == ["first"]


# -- enrichment flows forward ----------------------------------------------------------


class Enricher:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def enrich(self, event: Event, context: Context) -> None:
        self.calls += 1
        context.put("invoice_total", "1042.00")


class Reader:
    """Records what it finds on the context in ``route`` and ``act``."""

    def __init__(self, *, act_failures: int = 0) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.act_failures = act_failures

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def route(self, event: Event, context: Context) -> None:
        self.seen.append(("route", context.get("invoice_total")))

    @hookimpl
    def act(self, event: Event, context: Context) -> None:
        self.seen.append(("act", context.get("invoice_total")))
        if self.act_failures:
            self.act_failures -= 1
            raise RuntimeError("not yet")


def test_what_enrich_puts_is_seen_by_route_and_act_of_the_same_event(
    make_runtime: RuntimeFactory,
) -> None:
    # The enricher is listed last: stages, not plugin order, decide what runs first.
    reader, enricher = Reader(), Enricher()
    rt = make_runtime(
        tables("reader", "enricher"),
        extra_plugins=(("reader", reader), ("enricher", enricher)),
    )
    pk = store_event(rt, received_event())

    run_attempt(rt)

    assert reader.seen == [("route", "1042.00"), ("act", "1042.00")]
    assert rt.store.ledger_for(pk)[("enricher", "enrich")].data == {
        "invoice_total": "1042.00"
    }


def test_enrichment_is_read_back_from_the_ledger_on_a_retry(
    make_runtime: RuntimeFactory,
) -> None:
    reader, enricher = Reader(act_failures=1), Enricher()
    rt = make_runtime(
        tables("enricher", "reader"),
        extra_plugins=(("enricher", enricher), ("reader", reader)),
    )
    pk = store_event(rt, received_event())

    run_attempt(rt)
    run_attempt(rt)

    assert enricher.calls == 1
    assert reader.seen == [
        ("route", "1042.00"),
        ("act", "1042.00"),
        ("act", "1042.00"),
    ]
    row = rt.store.get_event(pk)
    assert row is not None
    assert row.status == DONE


# -- what a hook returns ---------------------------------------------------------------


class Returns:
    def __init__(self, value: Any) -> None:
        self.value = value

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event, context: Context) -> Any:
        return self.value


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (["Thanks!"], "str"),
        ("Thanks!", "str"),
        (42, "int"),
        ({"kind": "reply"}, "dict"),
        ([AddLabels(labels=["ok"]), object()], "object"),
    ],
)
def test_a_hook_returning_something_that_is_not_an_action_fails_clearly(
    make_runtime: RuntimeFactory, double: AgentMailDouble, value: Any, kind: str
) -> None:
    rt = make_runtime(tables("odd"), extra_plugins=(("odd", Returns(value)),))
    pk = store_event(rt, received_event())

    run_attempt(rt)

    call = rt.store.ledger_for(pk)[("odd", "act")]
    assert call.status == "failed"
    assert call.error is not None
    assert call.error.startswith(
        f"TypeError: odd.act returned {kind}, not an action (return a list of "
        "runner.Reply, runner.Send, ... or None)"
    )
    assert rt.store.actions_for(pk) == []
    assert double.requests == []


# -- permanent failures ----------------------------------------------------------------


def test_a_permanent_error_is_not_retried_and_the_event_is_a_dead_letter(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    doomed = Labeller("doomed", failures=99, error=PermanentError("quota exhausted"))
    fine = Labeller("fine")
    rt = make_runtime(
        tables("doomed", "fine"), extra_plugins=(("doomed", doomed), ("fine", fine))
    )
    payload = received_event()
    seed_message(double, payload)
    pk = store_event(rt, payload)

    run_attempt(rt)

    row = rt.store.get_event(pk)
    assert row is not None
    assert row.status == "dead"
    assert row.last_error == "doomed.act: PermanentError: quota exhausted"
    assert rt.store.ledger_for(pk)[("doomed", "act")].status == "permanent"
    assert labels_added(double) == ["fine"]
    assert rt.drain() == 0
    assert doomed.calls == 1


def test_a_permanent_error_waits_for_retryable_calls_before_the_event_dies(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    doomed = Labeller("doomed", failures=99, error=PermanentError("bad input"))
    flaky = Labeller("flaky", failures=1)
    rt = make_runtime(
        tables("doomed", "flaky"), extra_plugins=(("doomed", doomed), ("flaky", flaky))
    )
    payload = received_event()
    seed_message(double, payload)
    pk = store_event(rt, payload)

    run_attempt(rt)
    row = rt.store.get_event(pk)
    assert row is not None
    assert row.status == PENDING

    run_attempt(rt)
    row = rt.store.get_event(pk)
    assert row is not None
    assert row.status == "dead"
    assert row.last_error == "doomed.act: PermanentError: bad input"
    assert (doomed.calls, flaky.calls) == (1, 2)
    assert labels_added(double) == ["flaky"]


# -- back-off and dead letters ---------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_equal_jitter() -> None:
    rng_state = random.getstate()
    try:
        random.seed(1)
        for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (9, 100)]:
            delays = [backoff(attempt, 10, 100) for _ in range(200)]
            assert all(ceiling / 2 <= d <= ceiling for d in delays)
            assert len(set(delays)) == len(delays)
            assert max(delays) - min(delays) > ceiling / 4
    finally:
        random.setstate(rng_state)


def test_retries_back_off_and_the_last_attempt_makes_a_dead_letter(
    make_runtime: RuntimeFactory,
) -> None:
    broken = Labeller("broken", failures=99)
    rt = make_runtime(
        tables("broken"),
        extra_plugins=(("broken", broken),),
        retry_base_seconds=10,
        retry_max_seconds=1000,
        max_attempts=5,
    )
    pk = store_event(rt, received_event())
    now = time.time()
    gaps = []
    for attempt in range(1, 6):
        with time_machine.travel(now, tick=False):
            at = time.time()
            assert rt.new_worker().run_once()
        row = rt.store.get_event(pk)
        assert row is not None
        assert row.attempts == attempt
        if attempt < 5:
            assert row.status == PENDING
            gaps.append(row.next_attempt_at - at)
            # Just past the due time: the clock keeps nanoseconds, not every float.
            now = row.next_attempt_at + 0.001

    for n, gap in enumerate(gaps, start=1):
        assert 10 * 2 ** (n - 1) / 2 <= gap <= 10 * 2 ** (n - 1)
    assert gaps[2] > gaps[0] and gaps[3] > gaps[1]
    assert row.status == "dead"
    assert row.last_error is not None
    assert row.last_error.startswith("gave up after 5 attempts; broken.act: ")
    assert broken.calls == 5
    assert rt.drain() == 0


def test_two_events_failing_together_are_retried_at_different_times(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(
        tables("broken"),
        extra_plugins=(("broken", Labeller("broken", failures=99)),),
        retry_base_seconds=100,
        retry_max_seconds=1000,
    )
    pks = [store_event(rt, received_event()) for _ in range(2)]
    with time_machine.travel(time.time(), tick=False):
        assert rt.drain() == 2

    rows = [rt.store.get_event(pk) for pk in pks]
    due = {row.next_attempt_at for row in rows if row is not None}
    assert len(due) == 2


# -- leases ----------------------------------------------------------------------------


class Thief(Labeller):
    """While its call runs, the event's lease expires and another worker takes it."""

    def __init__(self, rt_box: list[Runtime]) -> None:
        super().__init__("thief")
        self.rt_box = rt_box

    @hookimpl
    def act(self, event: Event, context: Context) -> list[AddLabels]:
        rt = self.rt_box[0]
        later = time.time() + rt.settings.lease_seconds + 1
        assert rt.store.claim("other-worker", 60, now=later) is not None
        return super().act(event, context)


def test_an_attempt_that_lost_its_lease_stops_before_executing_actions(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    box: list[Runtime] = []
    thief, after = Thief(box), Labeller("after")
    rt = make_runtime(
        tables("thief", "after"), extra_plugins=(("thief", thief), ("after", after))
    )
    box.append(rt)
    payload = received_event()
    seed_message(double, payload)
    store_event(rt, payload)
    row = rt.store.claim("first-worker", rt.settings.lease_seconds)
    assert row is not None

    outcome = rt.dispatcher.process(
        row,
        "first-worker",
        keep_lease=lambda confirm=True: rt.store.renew_lease(
            row.pk, "first-worker", 300
        ),
    )

    assert (outcome.status, outcome.error) == ("lost", "the lease was lost")
    assert (thief.calls, after.calls) == (1, 0)
    assert double.label_updates == []
    assert not rt.store.complete(row.pk, "first-worker")


# -- who is called ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [
        ("message.received.spam", {"everything", "messages"}),
        ("message.received", {"everything", "messages", "exact"}),
        ("domain.verified", {"everything", "domains"}),
        ("inbox.created", {"everything"}),
    ],
)
def test_an_event_goes_only_to_plugins_whose_subscription_matches(
    make_runtime: RuntimeFactory, event_type: str, expected: set[str]
) -> None:
    subscribers = {
        "everything": Labeller("everything", patterns=("*",)),
        "messages": Labeller("messages", patterns=("message.*",)),
        "exact": Labeller("exact", patterns=("message.received",)),
        "domains": Labeller("domains", patterns=("domain.*",)),
    }
    rt = make_runtime(
        tables(*subscribers),
        extra_plugins=tuple(subscribers.items()),
        dry_run=True,
    )
    payload = received_event()
    payload["event_type"] = event_type
    pk = store_event(rt, payload)

    run_attempt(rt)

    called = {name for name, plugin in subscribers.items() if plugin.calls}
    assert called == expected
    assert {plugin for plugin, _ in rt.store.ledger_for(pk)} == expected


def test_what_a_dry_run_recorded_is_sent_once_by_a_later_retry(
    make_runtime: RuntimeFactory, double: AgentMailDouble
) -> None:
    payload = load_payload("message-received.json")
    seed_message(double, payload)
    dry = make_runtime(dry_run=True)
    deliver(dry, payload)
    assert dry.drain() == 1
    row = dry.store.get_event(payload["event_id"])
    assert row is not None and row.status == DONE
    [recorded] = dry.store.actions_for(row.pk)
    assert recorded.status == "recorded"
    assert double.sent == []

    live = make_runtime()
    assert live.store.retry_event(row.pk)
    assert live.drain() == 1

    [sent] = double.sent
    assert sent.idempotency_key == recorded.idempotency_key
    [action] = live.store.actions_for(row.pk)
    assert action.status == "done"
    assert not live.store.retry_event(row.pk)  # nothing is left to send
