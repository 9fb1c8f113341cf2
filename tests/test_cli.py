"""The ``agentmail-runner`` command: what an operator types and what it answers.

Commands that return are driven in-process through click's CliRunner; commands that
serve run as real subprocesses on a loopback port, stopped with signals.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from dotenv import dotenv_values
from svix.webhooks import Webhook as SvixWebhook

from runner import Event, PermanentError, hookimpl
from runner.cli import cli
from runner.store import EventRow, Store
from runner.testing.agentmail_double import AgentMailDouble
from runner.verify import Verifier
from tests.conftest import (
    PAYLOADS,
    SECRET,
    RuntimeFactory,
    database_for,
    deliver,
    free_port,
    load_payload,
    sign,
    write_config,
)

AGENTMAIL_RUNNER = str(Path(sys.executable).with_name("agentmail-runner"))

# Every variable the command reads or `.env` may set; unset unless a test says so,
# and restored after each in-process run.
RUNNER_VARIABLES = (
    "AGENTMAIL_WEBHOOK_SECRET",
    "AGENTMAIL_API_KEY",
    "AGENTMAIL_BASE_URL",
    "AGENTMAIL_RUNNER_DATABASE",
    "AGENTMAIL_RUNNER_CONFIG",
    "AGENTMAIL_RUNNER_LOG_JSON",
)

RECEIVED = [
    p for p in PAYLOADS if load_payload(p.name)["event_type"] == "message.received"
]


# -- helpers: in-process runs ------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in an empty directory (no stray plugins.toml or .env), and leave the
    logger level as it was: the command sets it for the whole process."""
    monkeypatch.chdir(tmp_path)
    logger = logging.getLogger("agentmail_runner")
    level = logger.level
    yield
    logger.setLevel(level)


def invoke(*args: str, **env: str) -> Result:
    environment: dict[str, str | None] = dict.fromkeys(RUNNER_VARIABLES)
    environment.update(env)
    return CliRunner().invoke(cli, list(args), env=environment, catch_exceptions=False)


# -- helpers: subprocesses ---------------------------------------------------------


def runner_environment(**extra: str) -> dict[str, str]:
    """The environment of a runner subprocess: none of the developer's settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AGENTMAIL_", "OPENAI_"))
    }
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"
    env.update(extra)
    return env


def api_environment(double: AgentMailDouble) -> dict[str, str]:
    return runner_environment(
        AGENTMAIL_WEBHOOK_SECRET=SECRET,
        AGENTMAIL_API_KEY=double.api_key,
        AGENTMAIL_BASE_URL=double.url,
    )


@dataclass
class Serving:
    """A runner process listening on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def webhook(self) -> str:
        return f"{self.url}/webhook"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout)


@contextmanager
def serving(
    cwd: Path, env: dict[str, str], command: tuple[str, ...] = ("serve",)
) -> Iterator[Serving]:
    """Start ``agentmail-runner COMMAND`` and wait until /healthz answers; the process
    is killed on the way out if the test has not stopped it."""
    port = free_port()
    log = cwd / f"{command[0]}-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [AGENTMAIL_RUNNER, *command, "--listen", f"127.0.0.1:{port}"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    server = Serving(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_until_healthy(server)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _wait_until_healthy(server: Serving, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as http:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise AssertionError(f"the runner exited early:\n{server.output()}")
            try:
                if http.get(f"{server.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"the runner did not answer /healthz:\n{server.output()}")


def run_command(
    cwd: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTMAIL_RUNNER, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for_event(
    directory: Path, event_id: str, status: str, timeout: float = 15.0
) -> EventRow:
    """Watch the store of a runner working in ``directory`` until the event reaches
    ``status``."""
    store = Store(database_for(directory))
    try:
        deadline = time.monotonic() + timeout
        while True:
            row = store.get_event(event_id)
            if row is not None and row.status == status:
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"event {event_id} is {row and row.status}")
            time.sleep(0.05)
    finally:
        store.close()


def seed_received_messages(double: AgentMailDouble) -> None:
    """What AgentMail holds for the corpus's received mail, so replies join threads."""
    for path in RECEIVED:
        message = load_payload(path.name)["message"]
        double.add_message(message["inbox_id"], message)


def expected_reply(payload: dict[str, Any]) -> str:
    """The text the suite's templates give a corpus message."""
    message = payload["message"]
    if message["inbox_id"].startswith("support@"):
        return f"Support: thanks for your email about '{message['subject']}'."
    return f"Thanks for your email about '{message['subject']}'."


def assert_one_templated_reply_per_received_message(double: AgentMailDouble) -> None:
    assert len(double.sent) == len(RECEIVED)
    by_source = {email.source_message_id: email for email in double.sent}
    for path in RECEIVED:
        payload = load_payload(path.name)
        message = payload["message"]
        email = by_source[message["message_id"]]
        assert email.kind == "reply"
        assert email.inbox_id == message["inbox_id"]
        assert email.thread_id == message["thread_id"]
        assert email.json["text"] == expected_reply(payload)


# -- serve refuses to start without a usable secret --------------------------------


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (
            SECRET + "\n",
            "error: AGENTMAIL_WEBHOOK_SECRET has stray whitespace (a trailing "
            "newline?): copy the secret again without it",
        ),
        (
            "whsec_this is not base64!",
            "error: AGENTMAIL_WEBHOOK_SECRET starts with whsec_ but the rest is not "
            "valid base64: copy the endpoint's signing secret again, exactly as the "
            "dashboard shows it",
        ),
        (
            None,
            "error: no webhook secret is configured: set AGENTMAIL_WEBHOOK_SECRET to "
            "the endpoint's whsec_ signing secret, or [runner] webhook_secrets in "
            "plugins.toml",
        ),
    ],
    ids=["trailing-newline", "not-base64", "missing"],
)
def test_serve_without_a_usable_secret_exits_naming_the_setting_and_the_fix(
    tmp_path: Path, secret: str | None, message: str
) -> None:
    write_config(tmp_path)
    port = free_port()
    env = {} if secret is None else {"AGENTMAIL_WEBHOOK_SECRET": secret}

    result = invoke("serve", "--listen", f"127.0.0.1:{port}", **env)

    assert result.exit_code == 2
    assert result.stderr.strip() == message
    # Refused before the store was opened or the port bound.
    assert not (tmp_path / "runner.db").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


# -- serve as a process ------------------------------------------------------------


def test_serve_without_an_api_key_says_it_runs_in_dry_run_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    write_config(tmp_path)
    env = runner_environment(AGENTMAIL_WEBHOOK_SECRET=SECRET)

    with serving(tmp_path, env) as server:
        code = server.stop(signal.SIGTERM)

    assert code == 0
    output = server.output()
    assert "DRY-RUN (no AGENTMAIL_API_KEY): actions are recorded, nothing is sent" in (
        output
    )
    assert "with 2 worker(s) in DRY-RUN (no action is executed)" in output
    assert "received SIGTERM, draining" in output


def test_serve_with_no_worker_warns_that_nothing_will_be_processed(
    tmp_path: Path,
) -> None:
    write_config(tmp_path, runner={"workers": 0})
    env = runner_environment(AGENTMAIL_WEBHOOK_SECRET=SECRET)

    with serving(tmp_path, env) as server:
        assert server.stop(signal.SIGTERM) == 0

    assert (
        "no worker: events are stored and acknowledged but not processed by this "
        "process; run `agentmail-runner worker` on the same database"
    ) in server.output()


def test_sigterm_lets_the_event_in_hand_finish_and_exits_0_within_the_grace(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    write_config(tmp_path, runner={"drain_seconds": 10, "poll_seconds": 0.1})
    # The reply takes two seconds, so SIGTERM arrives while a worker is sending it.
    double.fail("POST", r"/reply$", status=None, delay=2)
    payload = load_payload("message-received.json")
    body = json.dumps(payload).encode()

    with serving(tmp_path, api_environment(double)) as server:
        assert httpx.post(server.webhook, content=body, headers=sign(body)).is_success
        double.wait_for(lambda: any(r.path.endswith("/reply") for r in double.requests))
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=15)
        took = time.monotonic() - started

    assert code == 0
    assert took < 10
    assert len(double.sent) == 1
    row = wait_for_event(tmp_path, payload["event_id"], "done", 1)
    assert row.attempts == 1
    assert "unfinished events were released" not in server.output()


def test_receive_url_of_every_corpus_file_then_again_gives_one_reply_per_message(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    """The whole loop as an operator runs it: serve, receive each file, look back."""
    write_config(tmp_path, runner={"poll_seconds": 0.1})
    seed_received_messages(double)
    env = api_environment(double)

    with serving(tmp_path, env) as server:
        for path in PAYLOADS:
            done = run_command(
                tmp_path, env, "receive", str(path), "--url", server.webhook
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("200 "), done.stdout
            assert json.loads(done.stdout[4:])["status"] == "accepted"
        for path in PAYLOADS:
            wait_for_event(tmp_path, load_payload(path.name)["event_id"], "done")
        assert_one_templated_reply_per_received_message(double)

        # The same command again, in-process this time to keep the test quick.
        for path in PAYLOADS:
            again = invoke(
                "receive",
                str(path),
                "--url",
                server.webhook,
                AGENTMAIL_WEBHOOK_SECRET=SECRET,
            )
            assert again.exit_code == 0, again.output
            assert json.loads(again.stdout[4:])["status"] == "duplicate"
        # Give the workers time to do anything they (wrongly) might.
        time.sleep(0.5)
        assert_one_templated_reply_per_received_message(double)

        garbage = tmp_path / "garbage.json"
        garbage.write_bytes(b"not json")
        dead = invoke(
            "receive",
            str(garbage),
            "--url",
            server.webhook,
            AGENTMAIL_WEBHOOK_SECRET=SECRET,
        )
        assert dead.exit_code == 1
        assert json.loads(dead.stdout[4:])["status"] == "dead_letter"
        assert dead.stderr == (
            "error: the event became a dead letter: `events show` on the runner "
            "says why\n"
        )
        assert server.stop(signal.SIGTERM) == 0

    payload = load_payload("message-received.json")
    [email] = [
        e
        for e in double.sent
        if e.source_message_id == payload["message"]["message_id"]
    ]
    shown = run_command(tmp_path, env, "events", "show", payload["event_id"])
    assert shown.returncode == 0, shown.stderr
    story = shown.stdout
    assert f"event {payload['event_id']}" in story
    assert "status      done  after 1 attempt(s)" in story
    assert "verified by svix" in story
    assert "autoresponder.act: succeeded" in story
    assert f"reply by autoresponder: done  key={email.idempotency_key}" in story
    assert f"text: {expected_reply(payload)}" in story
    assert f"sent as {email.message_id}" in story


def test_a_delivery_signed_by_the_svix_library_over_plain_http_gets_its_reply(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    write_config(tmp_path, runner={"poll_seconds": 0.1})
    seed_received_messages(double)
    svix = SvixWebhook(SECRET)

    def svix_headers(body: bytes) -> dict[str, str]:
        delivery_id = f"msg_{uuid.uuid4().hex}"
        now = datetime.now(tz=UTC)
        return {
            "svix-id": delivery_id,
            "svix-timestamp": str(int(now.timestamp())),
            "svix-signature": svix.sign(delivery_id, now, body.decode("utf-8")),
            "content-type": "application/json",
        }

    with serving(tmp_path, api_environment(double)) as server, httpx.Client() as http:
        for round_, status in ((1, "accepted"), (2, "duplicate")):
            for path in PAYLOADS:
                body = path.read_bytes()
                response = http.post(
                    server.webhook, content=body, headers=svix_headers(body)
                )
                assert response.status_code == 200, (round_, path.name, response.text)
                assert response.json()["status"] == status
            for path in PAYLOADS:
                event_id = load_payload(path.name)["event_id"]
                wait_for_event(tmp_path, event_id, "done")
        assert server.stop(signal.SIGTERM) == 0

    assert_one_templated_reply_per_received_message(double)


# -- receive in-process -----------------------------------------------------------


def test_receive_dry_run_prints_the_intended_reply_and_stores_nothing(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    write_config(tmp_path)
    corpus = Path(__file__).parent / "corpus" / "message-received.json"
    payload = load_payload("message-received.json")

    result = invoke(
        "receive",
        "--dry-run",
        str(corpus),
        AGENTMAIL_WEBHOOK_SECRET=SECRET,
        AGENTMAIL_API_KEY=double.api_key,
        AGENTMAIL_BASE_URL=double.url,
    )

    assert result.exit_code == 0, result.output
    assert "reply by autoresponder: recorded" in result.stdout
    assert f"text: {expected_reply(payload)}" in result.stdout
    assert double.requests == []
    store = Store(database_for(tmp_path))
    try:
        assert store.get_event(payload["event_id"]) is None
    finally:
        store.close()


def test_receive_in_process_stores_the_event_and_sends_the_reply(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    write_config(tmp_path)
    corpus = Path(__file__).parent / "corpus" / "message-received.json"
    payload = load_payload("message-received.json")
    env = {
        "AGENTMAIL_WEBHOOK_SECRET": SECRET,
        "AGENTMAIL_API_KEY": double.api_key,
        "AGENTMAIL_BASE_URL": double.url,
    }

    # A dry run first must not make the real delivery look like a duplicate.
    assert invoke("receive", "--dry-run", str(corpus), **env).exit_code == 0
    result = invoke("receive", str(corpus), **env)

    assert result.exit_code == 0, result.output
    assert 'ingress answered 200 {"status": "accepted", "event": ' in result.stderr
    [email] = double.sent
    assert email.json["text"] == expected_reply(payload)
    assert f"reply by autoresponder: done  key={email.idempotency_key}" in result.stdout
    store = Store(database_for(tmp_path))
    try:
        row = store.get_event(payload["event_id"])
        assert row is not None and row.status == "done"
    finally:
        store.close()


# -- plugins, config ---------------------------------------------------------------


def test_plugins_json_lists_the_enabled_autoresponder_and_installed_ones_as_not_enabled(
    tmp_path: Path,
) -> None:
    write_config(tmp_path)

    result = invoke("plugins", "--json")

    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    autoresponder = rows["autoresponder"]
    assert autoresponder["enabled"] is True
    assert autoresponder["error"] is None
    assert autoresponder["distribution"] == "agentmail-runner"
    assert {"act", "config_schema", "subscriptions"} <= set(autoresponder["hooks"])
    assert autoresponder["subscriptions"] == ["message.received"]
    # Installed through the entry-point group, but without a [plugins.NAME] table.
    for name in ("bounce_tracker", "pdf_extractor", "router"):
        assert rows[name]["enabled"] is False
        assert rows[name]["error"] is None
        assert rows[name]["hooks"] == []


def test_plugins_text_tells_how_to_enable_an_installed_plugin(tmp_path: Path) -> None:
    write_config(tmp_path)

    result = invoke("plugins")

    assert result.exit_code == 0, result.output
    assert "autoresponder 0.1.0  [enabled]" in result.stdout
    assert "router  [not enabled]" in result.stdout
    assert "enable it with a [plugins.router] table in plugins.toml" in result.stdout


@pytest.mark.parametrize(
    ("command", "value", "allowed"),
    [("serve", "-3", "0<=x<=64"), ("worker", "0", "1<=x<=64")],
)
def test_a_worker_count_out_of_range_is_refused(
    tmp_path: Path, command: str, value: str, allowed: str
) -> None:
    write_config(tmp_path)

    result = invoke(command, "--workers", value, AGENTMAIL_WEBHOOK_SECRET=SECRET)

    assert result.exit_code == 2
    assert f"Invalid value for '--workers': {value} is not in the range {allowed}." in (
        result.stderr
    )


def test_a_worker_with_no_worker_threads_configured_refuses_to_start(
    tmp_path: Path,
) -> None:
    write_config(tmp_path, runner={"workers": 0})

    result = invoke("worker")

    assert result.exit_code == 2
    assert result.stderr == (
        "error: [runner] workers is 0, so this worker would process nothing: "
        "pass --workers N or set [runner] workers\n"
    )


def test_config_check_accepts_a_good_configuration(tmp_path: Path) -> None:
    path = write_config(tmp_path)

    result = invoke("config", "check", AGENTMAIL_WEBHOOK_SECRET=SECRET)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"ok: {path.name}; plugins: autoresponder",
        "note: no AGENTMAIL_API_KEY, so serve runs in dry-run",
    ]


def test_config_check_names_the_plugin_the_misspelled_key_and_the_fix(
    tmp_path: Path,
) -> None:
    write_config(
        tmp_path,
        plugins='[plugins.autoresponder]\ntempltes = [{ to = "*", text = "Hi" }]\n',
    )

    result = invoke("config", "check", AGENTMAIL_WEBHOOK_SECRET=SECRET)

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "error: [plugins.autoresponder] templtes: Extra inputs are not permitted "
        "(remove it, or check its spelling; the keys are: "
    )
    assert "templates" in line.rpartition("the keys are: ")[2].rstrip(")").split(", ")


def test_config_check_names_plugin_problems_even_when_the_runner_table_is_wrong(
    tmp_path: Path,
) -> None:
    write_config(
        tmp_path,
        runner={"workers": -1},
        plugins='[plugins.autoresponder]\ntempltes = [{ to = "*", text = "Hi" }]\n',
    )

    result = invoke("config", "check", AGENTMAIL_WEBHOOK_SECRET=SECRET)

    assert result.exit_code == 1
    runner_line, plugin_line = result.stderr.splitlines()
    assert runner_line.startswith("error: [runner] workers: ")
    assert plugin_line.startswith("error: [plugins.autoresponder] templtes: ")


def test_config_check_reports_a_missing_secret(tmp_path: Path) -> None:
    write_config(tmp_path)

    result = invoke("config", "check")

    assert result.exit_code == 1
    assert "error: no webhook secret is configured: set AGENTMAIL_WEBHOOK_SECRET" in (
        result.stderr
    )


def test_config_show_redacts_every_secret(tmp_path: Path) -> None:
    write_config(tmp_path)
    api_key = "am_live_key_that_must_not_show"

    result = invoke(
        "config", "show", AGENTMAIL_WEBHOOK_SECRET=SECRET, AGENTMAIL_API_KEY=api_key
    )

    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["runner"]["webhook_secrets"] == ["***"]
    assert shown["runner"]["api_key"] == "***"
    assert shown["plugins"]["autoresponder"]["enabled"] is True
    assert SECRET not in result.output
    assert SECRET.removeprefix("whsec_") not in result.output
    assert api_key not in result.output


# -- events, init ------------------------------------------------------------------


def test_events_list_shows_stored_events_newest_first(tmp_path: Path) -> None:
    write_config(tmp_path)
    corpus = Path(__file__).parent / "corpus"
    invoke(
        "receive", str(corpus / "message-sent.json"), AGENTMAIL_WEBHOOK_SECRET=SECRET
    )
    invoke(
        "receive",
        str(corpus / "message-delivered.json"),
        AGENTMAIL_WEBHOOK_SECRET=SECRET,
    )

    text = invoke("events", "list")
    as_json = invoke("events", "list", "--json")

    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == 2
    assert "message.delivered" in lines[0] and "done" in lines[0]
    assert "message.sent" in lines[1]
    listed = json.loads(as_json.stdout)
    assert [e["event_key"] for e in listed] == [
        load_payload("message-delivered.json")["event_id"],
        load_payload("message-sent.json")["event_id"],
    ]
    assert {e["status"] for e in listed} == {"done"}


def test_events_list_on_an_empty_store_says_so(tmp_path: Path) -> None:
    write_config(tmp_path)
    Store(database_for(tmp_path)).close()

    result = invoke("events", "list")

    assert result.exit_code == 0
    assert result.stdout == "no events\n"


@pytest.mark.parametrize(
    "command",
    [
        ("events", "list"),
        ("events", "show", "#1"),
        ("events", "retry", "#1"),
        ("dlq", "list"),
    ],
)
def test_a_command_on_a_store_that_does_not_exist_says_so_and_creates_nothing(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    # No plugins.toml: the default store, agentmail-runner.db here, was never made.
    result = invoke(*command)

    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: no event store at {tmp_path / 'agentmail-runner.db'}: nothing has "
        "been received with this configuration yet."
    )
    assert list(tmp_path.iterdir()) == []


def test_events_list_refuses_a_status_that_does_not_exist(tmp_path: Path) -> None:
    write_config(tmp_path)

    result = invoke("events", "list", "--status", "bogus")

    assert result.exit_code == 2
    assert "'bogus' is not one of 'pending', 'running', 'done', 'dead'" in result.stderr


def test_events_show_of_an_unknown_id_fails_clearly(tmp_path: Path) -> None:
    write_config(tmp_path)
    Store(database_for(tmp_path)).close()

    result = invoke("events", "show", "evt-that-never-came")

    assert result.exit_code == 1
    assert result.stderr == "error: no event evt-that-never-came\n"


def test_init_writes_a_private_env_file_once(tmp_path: Path) -> None:
    first = invoke("init")

    env_file = tmp_path / ".env"
    assert first.exit_code == 0, first.output
    assert first.stdout == "wrote a local webhook signing secret to .env\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    written = env_file.read_text(encoding="utf-8")
    [line] = [
        x for x in written.splitlines() if x.startswith("AGENTMAIL_WEBHOOK_SECRET=")
    ]
    Verifier([line.partition("=")[2]])  # a usable whsec_ secret

    second = invoke("init")

    assert second.exit_code == 0
    assert second.stdout == (
        "AGENTMAIL_WEBHOOK_SECRET is already set; .env left as it is\n"
    )
    assert env_file.read_text(encoding="utf-8") == written


def test_init_writes_another_env_file_even_when_dot_env_has_a_secret(
    tmp_path: Path,
) -> None:
    assert invoke("init").exit_code == 0

    result = invoke("init", "--env-file", "staging.env")

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "wrote a local webhook signing secret to staging.env\n"
        "the runner reads ./.env by itself; load staging.env into the environment "
        "to use it, for example: set -a; . staging.env; set +a\n"
    )
    assert "AGENTMAIL_WEBHOOK_SECRET=whsec_" in (tmp_path / "staging.env").read_text()


def test_init_fills_in_an_empty_secret_and_names_a_directory_it_cannot_write(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("AGENTMAIL_WEBHOOK_SECRET=\n", encoding="utf-8")

    filled = invoke("init")
    missing = invoke("init", "--env-file", "no/such/dir/.env")

    assert filled.exit_code == 0, filled.output
    assert dotenv_values(tmp_path / ".env")["AGENTMAIL_WEBHOOK_SECRET"].startswith(
        "whsec_"
    )
    assert missing.exit_code == 1
    assert missing.stderr == (
        "error: cannot write no/such/dir/.env: No such file or directory\n"
    )


def test_a_plugin_command_missing_because_the_config_is_broken_says_why(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path, '[plugins.router]\n[[plugins.router.rules]]\nname = "x"\n'
    )

    result = run_command(
        tmp_path, runner_environment(), "--config", str(config), "route", "explain"
    )

    assert result.returncode == 2
    assert "No such command 'route'." in result.stderr
    assert "the configuration does not load: [plugins.router] rules.0" in result.stderr


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("127.0.0.1:http", "write HOST:PORT, for example 127.0.0.1:3000"),
        ("127.0.0.1:65536", "the port must be at most 65535"),
    ],
)
def test_serve_refuses_a_listen_address_it_cannot_use_as_written(
    tmp_path: Path, listen: str, problem: str
) -> None:
    write_config(tmp_path)

    result = invoke("serve", "--listen", listen)

    assert result.exit_code != 0
    assert f"--listen {listen}: {problem}" in result.stderr


# -- events that no plugin can process -----------------------------------------------

# Authentic, under the size cap, and far deeper than Python's JSON decoder can go.
DEEP = b"[" * 200_000 + b"]" * 200_000

UNUSABLE = {
    "nested-too-deep": (DEEP, "the body is JSON nested deeper than 64 levels"),
    "not-json": (
        b"not json",
        "the body is not JSON: Expecting value: line 1 column 1 (char 0)",
    ),
    "not-utf-8": (
        b'{"event_type": "message.received", "note": "\xff"}',
        "the body is not UTF-8 text",
    ),
    "no-event-type": (b'{"event_id": "evt-untyped"}', "the payload has no event_type"),
    "event-id-not-text": (
        b'{"event_id": 7, "event_type": "message.received"}',
        "the event_id is JSON int, not a string",
    ),
}


class Refuser:
    """Fails every new message for good, so that it becomes a dead letter after an
    attempt (one that a retry may well fix)."""

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["message.received"]

    @hookimpl
    def act(self, event: Event, context: Any) -> None:
        raise PermanentError("the audit mailbox is not configured")


def stored(rt: Any, pk: int) -> tuple[str, str | None]:
    row = rt.store.get_event(pk)
    assert row is not None
    return row.status, row.last_error


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "in-process"])
@pytest.mark.parametrize("name", ["nested-too-deep", "not-json"])
def test_receive_of_a_payload_that_becomes_a_dead_letter_fails_with_the_reason(
    tmp_path: Path, name: str, dry_run: bool
) -> None:
    write_config(tmp_path)
    body, reason = UNUSABLE[name]
    payload = tmp_path / "payload.json"
    payload.write_bytes(body)

    result = invoke(
        "receive",
        *(["--dry-run"] if dry_run else []),
        str(payload),
        AGENTMAIL_WEBHOOK_SECRET=SECRET,
    )

    assert result.exit_code == 1
    assert 'ingress answered 200 {"status": "dead_letter", ' in result.stderr
    assert "  status      dead  after 0 attempt(s)" in result.stdout
    assert result.stderr.endswith(f"error: the event became a dead letter: {reason}\n")


def test_events_show_of_a_payload_too_deep_to_read_shows_it_as_clipped_text(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    assert deliver(rt, DEEP).get_json()["status"] == "dead_letter"

    text = invoke("events", "show", "#1")
    as_json = invoke("events", "show", "#1", "--json")

    assert text.exit_code == 0, text.output
    assert "  error       the body is JSON nested deeper than 64 levels" in text.stdout
    assert as_json.exit_code == 0, as_json.output
    story = json.loads(as_json.stdout)
    assert story["payload"] == "[" * 1000 + "..."
    assert story["last_error"] == "the body is JSON nested deeper than 64 levels"


@pytest.mark.parametrize("name", list(UNUSABLE))
def test_dlq_retry_refuses_a_dead_letter_no_plugin_can_process_and_queues_nothing(
    make_runtime: RuntimeFactory, name: str
) -> None:
    rt = make_runtime(extra_plugins=(("refuser", Refuser()),))
    deliver(rt, load_payload("message-received.json"))
    rt.drain()
    body, reason = UNUSABLE[name]
    assert deliver(rt, body).get_json()["status"] == "dead_letter"
    before = [stored(rt, 1), stored(rt, 2)]

    result = invoke("dlq", "retry", "#1", "#2")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: event #2 cannot be retried: no plugin can process it ({reason}); "
        "`agentmail-runner dlq drop #2` deletes it\n"
    )
    assert [stored(rt, 1), stored(rt, 2)] == before
    assert before[1] == ("dead", reason)


def test_events_retry_refuses_a_dead_letter_no_plugin_can_process(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    deliver(rt, DEEP)

    result = invoke("events", "retry", "#1")

    assert result.exit_code == 1
    assert result.stderr == (
        "error: event #1 cannot be retried: no plugin can process it (the body is "
        "JSON nested deeper than 64 levels); `agentmail-runner dlq drop #1` deletes "
        "it\n"
    )
    assert stored(rt, 1) == ("dead", "the body is JSON nested deeper than 64 levels")


def test_dlq_retry_all_skips_dead_letters_no_plugin_can_process_and_queues_the_rest(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(extra_plugins=(("refuser", Refuser()),))
    deliver(rt, load_payload("message-received.json"))
    rt.drain()
    deliver(rt, b"not json")

    result = invoke("dlq", "retry", "--all")

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "skipped 1 event(s) that no plugin can process: #2\n"
        "queued 1 event(s) again: #1\n"
    )
    assert stored(rt, 1)[0] == "pending"
    assert stored(rt, 2)[0] == "dead"


def test_replay_refuses_an_event_no_plugin_can_process_and_stores_nothing(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    deliver(rt, DEEP)

    result = invoke("events", "replay", "#1", "--yes")

    assert result.exit_code == 1
    assert result.stderr == (
        "error: event #1 cannot be replayed: no plugin can process it (the body is "
        "JSON nested deeper than 64 levels); `agentmail-runner dlq drop #1` deletes "
        "it\n"
    )
    assert rt.store.count_by_status() == {"dead": 1}


def test_replay_all_dead_letters_skips_those_no_plugin_can_process(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(extra_plugins=(("refuser", Refuser()),))
    deliver(rt, load_payload("message-received.json"))
    rt.drain()
    deliver(rt, b'{"event_id": "evt-untyped"}')

    result = invoke("events", "replay", "--all", "--status", "dead", "--yes")

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "skipped 1 event(s) that no plugin can process: #2\n"
        "replayed 1 event(s) as new events: #3\n"
    )
    assert rt.store.count_by_status() == {"dead": 2, "pending": 1}


# -- text from mail on the terminal ----------------------------------------------------

HOSTILE = "\x1b[31mRED\x1b[0m\x1b]0;TITLE\x07"
SHOWN = "\\x1b[31mRED\\x1b[0m\\x1b]0;TITLE\\x07"


def test_text_output_shows_control_characters_from_mail_as_escapes(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime(dry_run=True)
    payload = load_payload("message-received.json")
    payload["event_id"] = "evt-\x9b2J"
    payload["message"]["subject"] = HOSTILE
    deliver(rt, payload)
    deliver(rt, {"event_id": f"evt-dead-{HOSTILE}"})
    rt.drain()

    listed = invoke("events", "list")
    shown = invoke("events", "show", "#1")
    dead = invoke("dlq", "list")

    for result in (listed, shown, dead):
        assert result.exit_code == 0, result.output
        assert not set(result.output) & {"\x1b", "\x07", "\x9b"}
    assert "evt-\\x9b2J" in listed.stdout
    assert f"evt-dead-{SHOWN}" in listed.stdout
    assert f"text: Thanks for your email about '{SHOWN}'." in shown.stdout
    assert dead.stdout.splitlines()[0].endswith(f"evt-dead-{SHOWN}")


def test_log_lines_show_control_characters_from_mail_as_escapes(
    tmp_path: Path,
) -> None:
    write_config(tmp_path)
    payload = tmp_path / "untyped.json"
    payload.write_text(json.dumps({"event_id": f"evt-{HOSTILE}"}), encoding="utf-8")

    result = run_command(
        tmp_path,
        runner_environment(AGENTMAIL_WEBHOOK_SECRET=SECRET),
        "receive",
        "--dry-run",
        str(payload),
    )

    assert result.returncode == 1
    assert not set(result.stderr) & {"\x1b", "\x07"}
    assert (
        f"ERROR agentmail_runner.ingress: event evt-{SHOWN}: authentic but unusable, "
        "kept as a dead letter: the payload has no event_type"
    ) in result.stderr


@pytest.mark.parametrize(
    "command",
    [("events", "list"), ("events", "show", "#1"), ("dlq", "list")],
)
def test_json_output_escapes_control_characters_and_keeps_the_text(
    make_runtime: RuntimeFactory, command: tuple[str, ...]
) -> None:
    rt = make_runtime(dry_run=True)
    deliver(rt, {"event_id": f"evt-{HOSTILE}"})

    result = invoke(*command, "--json")

    assert result.exit_code == 0, result.output
    assert not set(result.output) & {"\x1b", "\x07"}
    assert "\\u001b[31mRED" in result.stdout
    listed = json.loads(result.stdout)
    events = listed if isinstance(listed, list) else [listed]
    assert [e["event_key"] for e in events] == [f"evt-{HOSTILE}"]


# -- numbers out of range --------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    ["#99999999999999999999999", "99999999999999999999999", "#9223372036854775808"],
)
def test_events_show_of_a_number_no_event_can_have_says_there_is_none(
    make_runtime: RuntimeFactory, ref: str
) -> None:
    make_runtime()

    result = invoke("events", "show", ref)

    assert result.exit_code == 1
    assert result.stderr == f"error: no event {ref}\n"


def test_digits_too_large_for_a_number_still_find_the_event_they_are_the_id_of(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    deliver(
        rt, {"event_id": "99999999999999999999999", "event_type": "domain.verified"}
    )

    result = invoke("events", "show", "99999999999999999999999")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("event 99999999999999999999999  (#1)")


def test_retry_of_a_number_no_event_can_have_names_it(
    make_runtime: RuntimeFactory,
) -> None:
    make_runtime()

    result = invoke("events", "retry", "#99999999999999999999999")

    assert result.exit_code == 1
    assert result.stderr == (
        "error: no event #99999999999999999999999: name it by #number, event id or "
        "delivery id\n"
    )


@pytest.mark.parametrize("command", [("events", "list"), ("dlq", "list")])
@pytest.mark.parametrize("limit", ["-1", "0", "10001", "100000000000000000000"])
def test_list_commands_refuse_a_limit_out_of_range(
    make_runtime: RuntimeFactory, command: tuple[str, ...], limit: str
) -> None:
    make_runtime()

    result = invoke(*command, "--limit", limit)

    assert result.exit_code == 2
    assert (
        f"Invalid value for '--limit': {limit} is not in the range 1<=x<=10000."
        in result.stderr
    )


def test_events_list_limit_shows_that_many_of_the_newest_events(
    make_runtime: RuntimeFactory,
) -> None:
    rt = make_runtime()
    for n in range(3):
        deliver(rt, {"event_id": f"evt-{n}", "event_type": "domain.verified"})

    result = invoke("events", "list", "--limit", "1")

    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith("#3 ") and line.endswith("evt-2")
