"""Fixtures shared by the suite: a runner on a temporary SQLite store, aimed at the
loopback AgentMail double, with helpers to deliver signed webhooks to it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.config import Config, load_config
from runner.runtime import Runtime
from runner.testing.agentmail_double import AgentMailDouble
from runner.verify import Verifier

CORPUS = Path(__file__).parent / "corpus"
PAYLOADS = sorted(
    p for p in CORPUS.glob("*.json") if p.name != "standard-webhooks-vector.json"
)

# A fixed test secret (base64 of 24 bytes); never a real endpoint's.
SECRET = "whsec_dGVzdC1zZWNyZXQtZm9yLXRoZS1ydW5uZXItdGVzdHM="

TEMPLATES = """
[plugins.autoresponder]
[[plugins.autoresponder.templates]]
to = "support@*"
text = "Support: thanks for your email about '{subject}'."
[[plugins.autoresponder.templates]]
to = "*"
text = "Thanks for your email about '{subject}'."
"""


def load_payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORPUS / name).read_text(encoding="utf-8"))
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# The engine the suite runs on: SQLite files by default; with
# AGENTMAIL_RUNNER_TEST_ENGINE=postgresql, a fresh schema per test on the server that
# AGENTMAIL_RUNNER_TEST_POSTGRES names (.ci/run runs the suite both ways). Read at
# import: the environment fixture below hides AGENTMAIL_* variables from the tests.
POSTGRES_URL = os.environ.get("AGENTMAIL_RUNNER_TEST_POSTGRES", "")
ENGINE = os.environ.get("AGENTMAIL_RUNNER_TEST_ENGINE", "sqlite")
if ENGINE not in ("sqlite", "postgresql"):
    raise RuntimeError(f"AGENTMAIL_RUNNER_TEST_ENGINE={ENGINE}: sqlite or postgresql")
if ENGINE == "postgresql" and not POSTGRES_URL:
    raise RuntimeError(
        "AGENTMAIL_RUNNER_TEST_ENGINE=postgresql needs AGENTMAIL_RUNNER_TEST_POSTGRES "
        '(start one with: eval "$(.ci/postgres start /tmp/amr-pg)")'
    )
# Per test session, so that two sessions on one server leave each other's schemas be.
_SCHEMA_PREFIX = f"amr_test_{os.getpid()}_"


def postgres_schema_url(name: str) -> str:
    """A URL on the test server whose tables live in a fresh schema ``name``."""
    import psycopg

    schema = _SCHEMA_PREFIX + hashlib.sha1(name.encode()).hexdigest()[:16]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


_schemas: dict[str, str] = {}


def database_for(directory: Path) -> str:
    """The database setting for a test working in ``directory`` (the same one every
    time it is asked within a session: a test may look at what its runner wrote)."""
    if ENGINE == "postgresql":
        key = str(directory)
        if key not in _schemas:
            _schemas[key] = postgres_schema_url(key)
        return _schemas[key]
    return str(directory / "runner.db")


@pytest.fixture(scope="session", autouse=True)
def _drop_test_schemas() -> Iterator[None]:
    yield
    if ENGINE != "postgresql":
        return
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        names = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
            (_SCHEMA_PREFIX + "%",),
        ).fetchall()
        for (name,) in names:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


def write_config(
    directory: Path, plugins: str = TEMPLATES, runner: dict[str, Any] | None = None
) -> Path:
    """A plugins.toml in ``directory`` with a ``[runner]`` table and plugin tables."""
    settings = {"database": database_for(directory), **(runner or {})}
    lines = ["[runner]"]
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path = directory / "plugins.toml"
    path.write_text("\n".join(lines) + "\n" + plugins, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's AgentMail or OpenAI settings."""
    for name in list(os.environ):
        if name.startswith(("AGENTMAIL_", "OPENAI_")):
            monkeypatch.delenv(name)
    # Nothing in the suite may reach a real API: aim the SDKs at a closed port.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")


@pytest.fixture(autouse=True)
def _restore_package_logger() -> Iterator[None]:
    """The CLI sets the level of the package's logger; no test sees another's."""
    logger = logging.getLogger("agentmail_runner")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


@pytest.fixture
def double() -> Iterator[AgentMailDouble]:
    with AgentMailDouble() as d:
        yield d


@pytest.fixture
def signer() -> Verifier:
    return Verifier([SECRET])


def sign(body: bytes, delivery_id: str | None = None) -> dict[str, str]:
    return Verifier([SECRET]).sign(
        body, delivery_id=delivery_id or f"msg_{uuid.uuid4().hex}"
    )


RuntimeFactory = Callable[..., Runtime]


@pytest.fixture
def make_runtime(tmp_path: Path, double: AgentMailDouble) -> Iterator[RuntimeFactory]:
    """Build runtimes on a temporary store, aimed at the double; closed at the end."""
    made: list[Runtime] = []

    def factory(
        plugins: str = TEMPLATES,
        *,
        extra_plugins: tuple[tuple[str, object], ...] = (),
        api: bool = True,
        dry_run: bool | None = None,
        **runner: Any,
    ) -> Runtime:
        settings: dict[str, Any] = {
            "webhook_secrets": [SECRET],
            "retry_base_seconds": 0.01,
            "retry_max_seconds": 0.05,
            "poll_seconds": 0.05,
            **runner,
        }
        if api:
            settings["api_key"] = double.api_key
            settings["api_base_url"] = double.url
        path = write_config(tmp_path, plugins, settings)
        config = load_config(path, environ={})
        rt = Runtime(config, extra_plugins=extra_plugins, dry_run=dry_run)
        made.append(rt)
        return rt

    yield factory
    for rt in made:
        rt.stop_workers(grace=5)
        rt.close()


def deliver(
    rt: Runtime,
    payload: dict[str, Any] | bytes,
    *,
    headers: dict[str, str] | None = None,
    signed: bool = True,
    delivery_id: str | None = None,
) -> Any:
    """POST a payload to the runtime's /webhook through Flask's test client."""
    from runner.ingress import create_app

    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    all_headers = sign(body, delivery_id) if signed else {}
    all_headers.update(headers or {})
    client = create_app(rt).test_client()
    return client.post(
        "/webhook",
        data=body,
        headers=all_headers,
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )


class LiveServer:
    """The runner's real server (waitress and workers) on a loopback port."""

    def __init__(self, rt: Runtime, workers: int | None = None) -> None:
        from runner.server import make_server

        self.rt = rt
        self.server = make_server(rt, host="127.0.0.1", port=0)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        rt.start_workers(workers)
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.close()
        self.server.task_dispatcher.shutdown()
        self._thread.join(5)
        self.rt.stop_workers(grace=5)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def start(rt: Runtime, workers: int | None = None) -> LiveServer:
        server = LiveServer(rt, workers)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def config_for(path: Path) -> Config:
    return load_config(path, environ={})


def store_event(rt: Runtime, payload: dict[str, Any], now: float | None = None) -> int:
    """Store a payload as the ingress would, without signing and posting it."""
    pk = rt.store.insert_event(
        event_key=payload.get("event_id") or str(uuid.uuid4()),
        event_id=payload.get("event_id"),
        delivery_id=None,
        event_type=payload["event_type"],
        payload=json.dumps(payload),
        scheme="test",
        now=now,
    )
    assert pk is not None
    return pk


def run_attempt(rt: Runtime) -> None:
    """Wait until the next event is due, then let a worker take one attempt at it."""
    due = rt.store.next_due()
    if due is not None:
        time.sleep(max(0.0, due - time.time()))
    assert rt.new_worker().run_once()
