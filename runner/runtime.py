"""Assemble one runner from its configuration: store, plugins, verifier, workers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx

from runner.batching import GroupCommitter
from runner.config import Config, ConfigError
from runner.dispatch import Dispatcher
from runner.executor import Executor
from runner.guard import SendGuard
from runner.loader import PluginSet, load
from runner.metrics import Metrics
from runner.notify import start_listener
from runner.ratelimit import FailureLimiter
from runner.store import Store
from runner.verify import SecretError, Verifier
from runner.worker import Wakeup, Worker, new_owner

if TYPE_CHECKING:
    from agentmail import AgentMail

__all__ = ["Runtime", "make_client"]

log = logging.getLogger("agentmail_runner")


def make_client(config: Config, http: httpx.Client) -> AgentMail | None:
    """The AgentMail client, or None when no API key is configured (dry-run).

    The key is passed explicitly: the SDK's own default is read from the environment
    when it is imported, before ``.env`` has been loaded.
    """
    key = config.api_key
    if not key:
        return None
    from agentmail import AgentMail, AgentMailEnvironment

    base = config.runner.api_base_url
    if not base:
        return AgentMail(api_key=key, httpx_client=http)
    base = base.rstrip("/")
    ws = "ws" + base.removeprefix("http") if base.startswith("http") else base
    environment = AgentMailEnvironment(http=base, websockets=ws)
    return AgentMail(api_key=key, environment=environment, httpx_client=http)


class Runtime:
    """One configured runner; the web app and the workers share it."""

    def __init__(
        self,
        config: Config,
        *,
        dry_run: bool | None = None,
        extra_plugins: Sequence[tuple[str, object]] = (),
        require_secrets: bool = True,
        client: AgentMail | None = None,
        store: Store | None = None,
    ) -> None:
        settings = config.runner
        self.config = config
        self.settings = settings
        self.metrics = Metrics()
        self.verifier: Verifier | None = None
        if require_secrets or config.webhook_secrets:
            try:
                self.verifier = Verifier(
                    config.webhook_secrets,
                    allow_unsigned=settings.allow_unsigned_webhooks,
                )
            except SecretError as exc:
                raise ConfigError(str(exc)) from exc
        self.limiter = FailureLimiter(
            per_minute=settings.failed_verifications_per_minute,
            burst=settings.failed_verifications_burst,
        )
        self.store = store or Store(settings.database)
        self.wakeup = Wakeup()
        self.committer = GroupCommitter(self.store, on_stored=self.wakeup.notify)
        try:
            self.plugins: PluginSet = load(config, extra=extra_plugins)
        except BaseException:
            # A plugin's bad configuration stops the start: leave no pool open.
            if store is None:
                self.store.close()
            raise
        self._http = httpx.Client(timeout=settings.api_timeout_seconds)
        self.client = client if client is not None else make_client(config, self._http)
        wants_dry_run = settings.dry_run if dry_run is None else dry_run
        self.dry_run = wants_dry_run or self.client is None
        self.executor = Executor(
            self.client, dry_run=self.dry_run, timeout=settings.api_timeout_seconds
        )
        self.guard = SendGuard(settings.guard, count_replies=self.store.count_replies)
        timeouts = {
            name: float(table["timeout_seconds"])
            for name, table in config.plugins.items()
            if "timeout_seconds" in table
        }
        self.dispatcher = Dispatcher(
            store=self.store,
            plugins=self.plugins,
            executor=self.executor,
            guard=self.guard,
            settings=settings,
            metrics=self.metrics,
            api_client=self.client,
            timeouts=timeouts,
        )
        self.stop_event = threading.Event()
        self.workers: list[Worker] = []
        self._threads: list[threading.Thread] = []
        self._listener: threading.Thread | None = None

    def new_worker(self, *, prunes: bool = False) -> Worker:
        s = self.settings
        return Worker(
            store=self.store,
            dispatcher=self.dispatcher,
            wakeup=self.wakeup,
            metrics=self.metrics,
            lease_seconds=s.lease_seconds,
            poll_seconds=s.poll_seconds,
            retention_seconds=s.retention_hours * 3600,
            dead_retention_seconds=s.dead_letter_retention_hours * 3600,
            prunes=prunes,
            owner=new_owner(),
            nice=s.worker_nice,
        )

    def start_workers(self, count: int | None = None) -> None:
        count = self.settings.workers if count is None else count
        if count and self._listener is None:
            self._listener = start_listener(self.store, self.wakeup, self.stop_event)
        for index in range(count):
            worker = self.new_worker(prunes=index == 0)
            # A daemon: past the drain grace its event has been released, and the
            # process must exit then, not when a hung API call finally returns.
            thread = threading.Thread(
                target=worker.run,
                args=(self.stop_event,),
                name=f"worker-{index}",
                daemon=True,
            )
            thread.start()
            self.workers.append(worker)
            self._threads.append(thread)

    def stop_workers(self, grace: float | None = None) -> bool:
        """Let workers finish the event in hand; past ``grace``, release it. True if
        every worker stopped in time."""
        self.stop_event.set()
        self.wakeup.notify()
        grace = self.settings.drain_seconds if grace is None else grace
        deadline = threading.Event()
        timer = threading.Timer(grace, deadline.set)
        timer.start()
        try:
            for thread in self._threads:
                while thread.is_alive() and not deadline.is_set():
                    thread.join(0.05)
        finally:
            timer.cancel()
        in_time = not any(t.is_alive() for t in self._threads)
        if not in_time:
            for worker in self.workers:
                worker.release_current()
        if self._listener is not None:
            self._listener.join(2.0)  # it checks the stop flag every second
        return in_time

    def drain(self) -> int:
        """Process every due event on the calling thread (CLI and tests)."""
        worker = self.new_worker()
        processed = 0
        while worker.run_once():
            processed += 1
        return processed

    def close(self) -> None:
        self.committer.close()
        self._http.close()
        self.store.close()
