"""Hand one claimed event to its plugins, then carry out what they intend.

Each hook implementation is called on its own thread with its own time budget and its
own exception handling, and its outcome is written to the ledger at once. A call that
succeeded is never repeated: on a retry its ledger row supplies what it put on the
context, and its recorded actions are executed again under the same idempotency keys.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from runner import store as st
from runner.actions import Action, Reply, Send, action_from_dict
from runner.context import AgentMailReader, Context, PluginState, SendProposal
from runner.errors import PermanentError
from runner.events import Event, parse_payload
from runner.executor import ActionFailed, Executor, idempotency_key, reply_recipients
from runner.guard import SendGuard, normalise_address
from runner.hookspecs import STAGES
from runner.loader import LoadedPlugin, PluginSet, call_one

if TYPE_CHECKING:
    from agentmail import AgentMail

    from runner.config import RunnerSettings
    from runner.metrics import Metrics

__all__ = ["Dispatcher", "Outcome", "PermanentError"]

log = logging.getLogger("agentmail_runner.dispatch")
trace_log = logging.getLogger("agentmail_runner.trace")

# Ledger statuses: "acted" means the call succeeded and its actions are not all done.
SUCCEEDED, ACTED, FAILED, PERMANENT = "succeeded", "acted", "failed", "permanent"
REJECTED = "rejected"  # an action AgentMail refused for good (a 4xx)


class PluginTimeout(Exception):
    pass


@dataclass
class Outcome:
    """What became of one attempt at an event."""

    status: str  # "done", "retry", "dead" or "lost" (the lease was taken over)
    errors: list[str] = field(default_factory=list)
    # Calls that planned no action need not be durable before anything else happens:
    # they are written with the event's new status, in one transaction.
    ledger: list[st.LedgerWrite] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        return "; ".join(self.errors) or None


class LeaseKeeper(Protocol):
    """Keeps the worker's lease on the event; False once it has been lost.

    ``confirm=False`` may answer from memory (between plugin calls); ``confirm=True``
    asks the store (before an action leaves the machine).
    """

    def __call__(self, confirm: bool = True, /) -> bool: ...


def _always(confirm: bool = True, /) -> bool:
    return True


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random."""
    delay = min(cap, base * 2.0 ** max(attempt - 1, 0))
    return delay / 2 + random.uniform(0, delay / 2)


class Dispatcher:
    """Runs the stages for one event and records every step in the store."""

    def __init__(
        self,
        *,
        store: st.Store,
        plugins: PluginSet,
        executor: Executor,
        guard: SendGuard,
        settings: RunnerSettings,
        metrics: Metrics,
        api_client: AgentMail | None,
        timeouts: dict[str, float] | None = None,
    ) -> None:
        self.store = store
        self.plugins = plugins
        self.executor = executor
        self.guard = guard
        self.settings = settings
        self.metrics = metrics
        self.api_client = api_client
        self.timeouts = timeouts or {}
        self.trace = os.environ.get("AGENTMAIL_RUNNER_TRACE_PLUGINS", "") not in (
            "",
            "0",
        )

    @property
    def dry_run(self) -> bool:
        return self.executor.dry_run

    def process(
        self,
        row: st.EventRow,
        owner: str,
        *,
        keep_lease: LeaseKeeper | None = None,
        state: st.EventState | None = None,
    ) -> Outcome:
        """One attempt: call what has not succeeded, execute what is not done.

        ``state`` is the event's ledger and action log, if the caller read them with
        its claim; otherwise they are read here."""
        keep_lease = keep_lease or _always
        try:
            event = Event(parse_payload(row.payload), delivery_id=row.delivery_id or "")
        except ValueError as exc:
            return Outcome("dead", [f"the stored payload cannot be read: {exc}"])

        outcome = Outcome("done")
        ledger, planned = state if state is not None else self.store.event_state(row.pk)
        calls = {key: call.status for key, call in ledger.items()}
        data: dict[str, Any] = {}
        recorded_actions = False
        for stage in STAGES:
            for plugin in self.plugins.subscribed(event):
                impl = self.plugins.implementation(plugin.name, stage)
                if impl is None:
                    continue
                done = ledger.get((plugin.name, stage))
                if done is not None and done.status in (SUCCEEDED, ACTED):
                    data.update(done.data)
                    continue
                if done is not None and done.status == PERMANENT:
                    outcome.errors.append(f"{plugin.name}.{stage}: {done.error}")
                    continue
                if not keep_lease(False):
                    return Outcome("lost", ["the lease was lost"])
                status = self._call(
                    row, event, plugin, stage, impl, data, outcome, exists=bool(done)
                )
                calls[(plugin.name, stage)] = status
                recorded_actions |= status == ACTED

        if recorded_actions:
            planned = self.store.actions_for(row.pk)
        if not self._execute_actions(row, event, outcome, keep_lease, planned, calls):
            return Outcome("lost", ["the lease was lost"])
        return self._settle(row, outcome, calls, planned)

    # -- plugin calls ----------------------------------------------------------

    def _context(
        self, event: Event, plugin: LoadedPlugin, data: dict[str, Any], attempt: int
    ) -> Context:
        return Context(
            event=event,
            plugin=plugin.name,
            config=plugin.config,
            state=PluginState(self.store, plugin.name),
            api=AgentMailReader(
                self.api_client,
                inbox_id=event.inbox_id,
                timeout=self.settings.api_timeout_seconds,
            ),
            data=data,
            dry_run=self.dry_run,
            attempt=attempt,
        )

    def _call(
        self,
        row: st.EventRow,
        event: Event,
        plugin: LoadedPlugin,
        stage: str,
        impl: Any,
        data: dict[str, Any],
        outcome: Outcome,
        *,
        exists: bool = True,
    ) -> str:
        """Call one hook implementation; its ledger status. ``exists``: whether the
        ledger has a row for it from an earlier attempt."""
        context = self._context(event, plugin, data, row.attempts)
        budget = self.timeouts.get(plugin.name, self.settings.plugin_timeout_seconds)
        if self.trace:
            trace_log.info(
                "call %s.%s event=%s attempt=%d",
                plugin.name,
                stage,
                row.event_key,
                row.attempts,
            )
        started = time.perf_counter()
        status, error, planned = SUCCEEDED, None, []
        try:
            result = _call_with_budget(
                lambda: call_one(impl, event=event, context=context),
                budget,
                name=f"{plugin.name}.{stage}",
            )
            planned = self._plan(row, event, plugin.name, stage, result)
            if planned:
                status = ACTED
        except PluginTimeout:
            status, error = FAILED, f"timed out after {budget:g} s"
        except PermanentError as exc:
            status, error = PERMANENT, f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            status, error = FAILED, _describe(exc)
        duration = time.perf_counter() - started
        contributions = context.contributions()  # closes it, also to a late writer
        if status not in (SUCCEEDED, ACTED):
            contributions = {}

        call = st.LedgerWrite(
            plugin=plugin.name,
            stage=stage,
            status=status,
            error=error,
            data=contributions,
            duration_ms=duration * 1000,
            exists=exists,
        )
        if planned:
            # Intended actions are durable before any of them is executed.
            self.store.record_call(
                row.pk,
                plugin=call.plugin,
                stage=call.stage,
                status=call.status,
                error=call.error,
                data=call.data,
                duration_ms=duration * 1000,
                planned=planned,
            )
        else:
            outcome.ledger.append(call)
        self.metrics.plugin_calls.labels(plugin.name, stage, status).inc()
        self.metrics.plugin_seconds.labels(plugin.name, stage).observe(duration)
        if error is None:
            self.metrics.plugin_health.succeeded(plugin.name)
        else:
            self.metrics.plugin_health.failed(plugin.name, f"{stage}: {error}")
        if self.trace:
            trace_log.info(
                "done %s.%s event=%s status=%s actions=%d %.1f ms",
                plugin.name,
                stage,
                row.event_key,
                status,
                len(planned),
                duration * 1000,
            )
        if error is not None:
            outcome.errors.append(f"{plugin.name}.{stage}: {error}")
            level = logging.ERROR if status == PERMANENT else logging.WARNING
            log.log(
                level,
                "event %s: plugin %s.%s %s: %s",
                row.event_key,
                plugin.name,
                stage,
                "failed for good" if status == PERMANENT else "failed",
                error,
            )
        data.update(contributions)
        return status

    def _plan(
        self, row: st.EventRow, event: Event, plugin: str, stage: str, result: Any
    ) -> list[st.PlannedAction]:
        if result is None:
            return []
        # A lone value (an action, a string, a mapping, a number) is checked as one
        # item, so a wrong return type is named instead of failing on iteration.
        if isinstance(result, Action | str | bytes | Mapping) or not isinstance(
            result, Iterable
        ):
            result = [result]
        planned = []
        for position, action in enumerate(result):
            if not isinstance(action, Action):
                raise TypeError(
                    f"{plugin}.{stage} returned {type(action).__name__}, not an action "
                    "(return a list of runner.Reply, runner.Send, ... or None)"
                )
            recipients = self._recipients(event, action)
            planned.append(
                st.PlannedAction(
                    position=position,
                    kind=action.kind,
                    params=action.to_dict(),
                    idempotency_key=idempotency_key(
                        row.event_key, plugin, stage, position
                    ),
                    inbox_id=event.inbox_id,
                    thread_id=event.thread_id,
                    recipient=normalise_address(recipients[0]) if recipients else "",
                )
            )
        return planned

    def _recipients(self, event: Event, action: Action) -> tuple[str, ...]:
        if isinstance(action, Reply):
            return reply_recipients(event, action)
        return action.recipients()

    # -- actions ---------------------------------------------------------------

    def _execute_actions(
        self,
        row: st.EventRow,
        event: Event,
        outcome: Outcome,
        keep_lease: LeaseKeeper,
        planned: list[st.ActionRow],
        calls: dict[tuple[str, str], str],
    ) -> bool:
        """Execute what is planned, updating ``planned`` in place with each action's
        new status; False when the lease turned out to be lost."""
        confirmed = False
        for index, action_row in enumerate(planned):
            # A reply left "sending" by a worker that died goes again, under its key.
            if action_row.status not in (st.PLANNED, st.FAILED, st.SENDING):
                if action_row.status == REJECTED:
                    outcome.errors.append(
                        f"{action_row.plugin}: {action_row.kind}: {action_row.error}"
                    )
                continue
            if calls.get((action_row.plugin, action_row.stage)) != ACTED:
                continue
            # Another worker may have taken an expired lease over: then it, not this
            # one, executes what is planned.
            if not confirmed and not keep_lease(True):
                return False
            confirmed = True
            status = self._execute_one(row, event, action_row, outcome)
            planned[index] = dataclasses.replace(action_row, status=status)

        finished = {st.EXECUTED, st.VETOED, st.RECORDED}
        by_call: dict[tuple[str, str], set[str]] = {}
        for action_row in planned:
            key = (action_row.plugin, action_row.stage)
            by_call.setdefault(key, set()).add(action_row.status)
        for (plugin, stage), statuses in by_call.items():
            if calls.get((plugin, stage)) == ACTED and statuses <= finished:
                calls[(plugin, stage)] = SUCCEEDED
                outcome.ledger.append(
                    st.LedgerWrite(
                        plugin=plugin,
                        stage=stage,
                        status=SUCCEEDED,
                        counts_attempt=False,
                    )
                )
        return True

    def _execute_one(
        self, row: st.EventRow, event: Event, action_row: st.ActionRow, outcome: Outcome
    ) -> str:
        """Guard, then execute, one action; its new status (recorded at once)."""
        action = action_from_dict(action_row.params)
        recipients = self._recipients(event, action)
        try:
            reason = self._veto(event, action, action_row.plugin, recipients)
        except Exception as exc:
            error = f"a veto_send hook failed, so nothing was sent: {_describe(exc)}"
            outcome.errors.append(error)
            return self._record_action(row, action_row, st.FAILED, None, error)
        if reason is None and isinstance(action, Reply):
            # Last, as close to the send as can be: the caps, checked and reserved
            # in one step, so that concurrent replies cannot all slip under one.
            reason = self.store.reserve_reply(
                action_row.pk,
                lambda count: self.guard.over_cap(event, recipients, count),
            )
        if reason is not None:
            return self._record_action(row, action_row, st.VETOED, None, reason)
        try:
            result = self.executor.execute(event, action, action_row.idempotency_key)
        except ActionFailed as exc:
            status = REJECTED if exc.permanent else st.FAILED
            outcome.errors.append(f"{action_row.plugin}: {action.kind}: {exc}")
            return self._record_action(row, action_row, status, None, str(exc))
        status = st.RECORDED if self.executor.dry_run else st.EXECUTED
        return self._record_action(row, action_row, status, result, None)

    def _veto(
        self, event: Event, action: Action, plugin: str, recipients: tuple[str, ...]
    ) -> str | None:
        reason = self.guard.rules(event, action, recipients)
        if reason is not None or not action.sends_email:
            return reason
        sender = action.inbox_id if isinstance(action, Send) else None
        proposal = SendProposal(
            action=action,
            plugin=plugin,
            event=event,
            inbox_id=sender or event.inbox_id,
            recipients=recipients,
        )
        for loaded in self.plugins.plugins:
            impl = self.plugins.implementation(loaded.name, "veto_send")
            if impl is None:
                continue
            context = self._context(event, loaded, {}, 0)
            verdict = call_one(impl, proposal=proposal, context=context)
            if verdict:
                return f"vetoed by {loaded.name}: {verdict}"
        return None

    def _record_action(
        self,
        row: st.EventRow,
        action_row: st.ActionRow,
        status: str,
        result: dict[str, Any] | None,
        error: str | None,
    ) -> str:
        self.store.finish_action(
            action_row.pk, status=status, result=result, error=error
        )
        self.metrics.actions.labels(action_row.kind, status).inc()
        level = logging.WARNING if status in (st.FAILED, REJECTED) else logging.INFO
        log.log(
            level,
            "event %s: %s %s by %s key=%s%s",
            row.event_key,
            action_row.kind,
            status,
            action_row.plugin,
            action_row.idempotency_key,
            f": {error}" if error else "",
        )
        return status

    # -- the attempt's end -----------------------------------------------------

    def _settle(
        self,
        row: st.EventRow,
        outcome: Outcome,
        calls: dict[tuple[str, str], str],
        planned: list[st.ActionRow],
    ) -> Outcome:
        retryable = FAILED in calls.values() or any(
            a.status == st.FAILED for a in planned
        )
        permanent = PERMANENT in calls.values() or any(
            a.status == REJECTED for a in planned
        )
        if retryable:
            if row.attempts >= self.settings.max_attempts:
                outcome.status = "dead"
                outcome.errors.insert(0, f"gave up after {row.attempts} attempts")
            else:
                outcome.status = "retry"
        elif permanent:
            outcome.status = "dead"
        return outcome

    def next_attempt_at(self, attempts: int) -> float:
        s = self.settings
        return time.time() + backoff(
            attempts, s.retry_base_seconds, s.retry_max_seconds
        )


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


class _Call:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        # Held until the call is over: a plain lock is the cheapest one-shot signal
        # between two threads, where a threading.Event takes three locks per wait.
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None


class _CallThread:
    """A thread that runs plugin calls for one worker, one at a time.

    A Python thread cannot be killed: a call that overruns its budget keeps this
    thread, which is then abandoned (its result discarded, its context closed to
    writes) and the worker's next call gets a new one.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=self._run, name="plugin-calls", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                call.result = call.fn()
            except BaseException as exc:  # handed to the worker's thread
                call.error = exc
            finally:
                call.done.release()

    def close(self) -> None:
        self._calls.put(None)

    def run(self, fn: Callable[[], Any], budget: float) -> tuple[bool, Any]:
        """(finished, result); raises what ``fn`` raised."""
        call = _Call(fn)
        self._calls.put(call)
        # A budget meant as "no limit" (1e10 s) is beyond what a lock can wait.
        if not call.done.acquire(timeout=min(budget, threading.TIMEOUT_MAX)):
            return False, None
        if call.error is not None:
            raise call.error
        return True, call.result


_call_threads = threading.local()


def release_call_thread() -> None:
    """End the calling thread's plugin-call thread (a worker that stops)."""
    runner: _CallThread | None = getattr(_call_threads, "runner", None)
    if runner is not None:
        runner.close()
        _call_threads.runner = None


def _call_with_budget(fn: Callable[[], Any], budget: float, *, name: str) -> Any:
    """Run ``fn`` apart from the worker; give up waiting after ``budget`` seconds."""
    runner: _CallThread | None = getattr(_call_threads, "runner", None)
    if runner is None:
        runner = _call_threads.runner = _CallThread()
    finished, result = runner.run(fn, budget)
    if not finished:
        _call_threads.runner = None
        raise PluginTimeout(name)
    return result
