"""Runner processes that chaos tests start, kill and start again, and what they share:
the store, the AgentMail double, and the events sent to them.

A process is restarted on the same port and the same store, as a supervisor would do
after a crash; its output is appended to one log per role so that a failure can be
read afterwards.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from runner.config import load_config
from runner.store import DONE, Store, events
from runner.testing.agentmail_double import AgentMailDouble
from tests.conftest import SECRET, free_port, load_payload

__all__ = [
    "AGENTMAIL_RUNNER",
    "RunnerProcess",
    "body_of",
    "cleanup",
    "open_store",
    "received_event",
    "replies_by_source",
    "reply_keys_by_source",
    "runner_environment",
    "source_of",
    "statuses",
    "wait_until",
    "wait_until_done",
]

AGENTMAIL_RUNNER = str(Path(sys.executable).with_name("agentmail-runner"))

_TEMPLATE = load_payload("message-received.json")


def runner_environment(double: AgentMailDouble, **extra: str) -> dict[str, str]:
    """A runner subprocess's environment: the double's API, the suite's secret, and
    none of the developer's own settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AGENTMAIL_", "OPENAI_"))
    }
    env.update(
        AGENTMAIL_API_KEY=double.api_key,
        AGENTMAIL_BASE_URL=double.url,
        AGENTMAIL_WEBHOOK_SECRET=SECRET,
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
    )
    env.update(extra)
    return env


def received_event(run: str, index: int) -> dict[str, Any]:
    """A message.received event of its own: own event id, message, thread and
    sender, so that the send guard's per-thread and per-sender caps never bite."""
    payload = copy.deepcopy(_TEMPLATE)
    payload["event_id"] = f"evt-{run}-{index:05d}"
    message = payload["message"]
    message.update(
        message_id=f"<{run}.{index}@chaos.example.org>",
        thread_id=f"thread-{run}-{index}",
        subject=f"Question {index}",
    )
    message["from"] = message["from_"] = f"Person {index} <person{index}@example.org>"
    message["headers"] = {"Message-ID": message["message_id"]}
    payload["thread"].update(
        thread_id=message["thread_id"], last_message_id=message["message_id"]
    )
    return payload


def source_of(payload: dict[str, Any]) -> str:
    """The message a reply to this event answers."""
    return str(payload["message"]["message_id"])


def replies_by_source(double: AgentMailDouble) -> Counter[str | None]:
    """How many replies the double actually sent to each message."""
    return Counter(e.source_message_id for e in double.sent if e.kind == "reply")


def reply_keys_by_source(double: AgentMailDouble) -> dict[str, set[str | None]]:
    """The idempotency keys of every reply request, retries included, by the message
    replied to."""
    keys: dict[str, set[str | None]] = defaultdict(set)
    for request in double.requests:
        if request.segments[-1:] == ("reply",):
            keys[request.segments[-2]].add(request.idempotency_key)
    return dict(keys)


def open_store(config: Path) -> Store:
    """The store that the runner processes configured by ``config`` share."""
    settings = load_config(config, environ={}).runner
    return Store(settings.database)


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, step: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(step)


def statuses(store: Store) -> dict[str, str]:
    """Every stored event's status, by its key (the event id)."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.event_key, events.c.status)).all()
    return {str(key): str(status) for key, status in rows}


def wait_until_done(store: Store, event_ids: Iterable[str], *, timeout: float) -> None:
    """Wait until every one of these events is done in the store."""
    wanted = set(event_ids)

    def missing() -> set[str]:
        found = statuses(store)
        return {key for key in wanted if found.get(key) != DONE}

    try:
        wait_until(lambda: not missing(), timeout=timeout, what="events done")
    except AssertionError:
        left = sorted(missing())
        rows = [store.get_event(key) for key in left[:5]]
        described = [
            (r.event_key, r.status, r.attempts, r.last_error) if r else None
            for r in rows
        ]
        raise AssertionError(
            f"{len(left)} acknowledged event(s) not done within {timeout:g} s: "
            f"{described}; by status {store.count_by_status()}"
        ) from None


class RunnerProcess:
    """One ``agentmail-runner`` process (``serve``, ``web`` or ``worker``) that can be
    killed and started again on the same port."""

    def __init__(
        self,
        cwd: Path,
        env: dict[str, str],
        command: str = "serve",
        *,
        port: int | None = None,
        args: tuple[str, ...] = (),
        name: str | None = None,
    ) -> None:
        self.cwd = cwd
        self.env = env
        self.command = command
        self.args = args
        self.listens = command in ("serve", "web")
        self.port = (port or free_port()) if self.listens else None
        self.log = cwd / f"{name or command}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook(self) -> str:
        return f"{self.url}/webhook"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> RunnerProcess:
        if self.alive:
            raise RuntimeError(f"{self.command} is already running")
        argv = [AGENTMAIL_RUNNER, "--config", str(self.cwd / "plugins.toml")]
        argv += [self.command, *self.args]
        if self.listens:
            argv += ["--listen", f"127.0.0.1:{self.port}"]
        with self.log.open("ab") as sink:
            sink.write(f"--- start {self.starts + 1}\n".encode())
            sink.flush()
            self.process = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        self.starts += 1
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /healthz answers (``serve``, ``web``) or the workers have said they
        started (``worker``)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as http:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise AssertionError(f"{self.command} exited:\n{self.output()}")
                if self._ready(http):
                    return
                time.sleep(0.05)
        raise AssertionError(f"{self.command} did not get ready:\n{self.output()}")

    def _ready(self, http: httpx.Client) -> bool:
        if not self.listens:
            return "worker(s) started" in self.output().rpartition("--- start")[2]
        try:
            return http.get(f"{self.url}/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def signal(self, signum: int, timeout: float = 30.0) -> int:
        """Send ``signum`` and wait for the exit status."""
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout)

    def kill(self) -> int:
        return self.signal(signal.SIGKILL)

    def close(self) -> None:
        """Kill the process if it still runs (the finally of every test)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def output(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


@contextmanager
def cleanup(*processes: RunnerProcess) -> Iterator[ExitStack]:
    """Kill every process on the way out, whatever happened."""
    with ExitStack() as stack:
        for process in processes:
            stack.callback(process.close)
        yield stack


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()
