"""`agentmail-runner listen`: AgentMail's WebSocket as ingress, through the real SDK,
against a loopback WebSocket double that speaks the same protocol."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentmail import AgentMail, AgentMailEnvironment
from click.testing import CliRunner

from runner.cli import cli
from runner.listen import Listener, ListenError
from runner.runtime import Runtime
from runner.testing.agentmail_double import AgentMailDouble
from runner.testing.websocket_double import Subscription, WebSocketDouble
from tests.conftest import deliver, free_port, load_payload, write_config

AGENTMAIL_RUNNER = str(Path(sys.executable).with_name("agentmail-runner"))


@pytest.fixture
def sockets(double: AgentMailDouble) -> Iterator[WebSocketDouble]:
    with WebSocketDouble(api_key=double.api_key) as ws:
        yield ws


@pytest.fixture
def sdk_client(
    double: AgentMailDouble, sockets: WebSocketDouble
) -> Iterator[AgentMail]:
    environment = AgentMailEnvironment(http=double.url, websockets=sockets.url)
    with httpx.Client() as http:
        yield AgentMail(
            api_key=double.api_key, environment=environment, httpx_client=http
        )


class Running:
    """A listener on its own thread, and the runner's workers."""

    def __init__(self, rt: Runtime, listener: Listener) -> None:
        self.rt = rt
        self.listener = listener
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="listener")

    def _run(self) -> None:
        try:
            self.listener.run(self.stop)
        except BaseException as exc:  # handed to the test below
            self.errors.append(exc)

    def start(self) -> Running:
        self.rt.start_workers(1)
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.rt.stop_workers(grace=5)


@pytest.fixture
def listening(
    make_runtime: Callable[..., Runtime], sdk_client: AgentMail
) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(**options: Any) -> Running:
        rt = make_runtime()
        options.setdefault("event_types", ["message.received"])
        listener = Listener(rt, sdk_client, backoff_base=0.05, **options)
        running = Running(rt, listener).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


def test_an_event_over_the_websocket_is_stored_and_answered(listening, sockets, double):
    running = listening()
    sockets.wait_for_subscriptions(1)
    payload = load_payload("message-received.json")

    assert sockets.publish(payload) == 1

    double.wait_for(lambda: double.sent, timeout=10)
    [reply] = double.sent
    assert reply.source_message_id == payload["message"]["message_id"]
    row = running.rt.store.get_event(payload["event_id"])
    assert row is not None and row.scheme == "websocket"


def test_the_subscription_asks_for_the_plugins_event_types_and_inboxes(
    listening, sockets
):
    listening(
        event_types=["message.received", "message.bounced"],
        inbox_ids=["helpdesk@agentmail.to"],
    )

    sockets.wait_for_subscriptions(1)

    assert sockets.subscriptions == [
        Subscription(
            event_types=("message.received", "message.bounced"),
            inbox_ids=("helpdesk@agentmail.to",),
        )
    ]


def test_an_event_by_webhook_and_by_socket_is_processed_once(
    listening, sockets, double
):
    running = listening()
    sockets.wait_for_subscriptions(1)
    payload = load_payload("message-received.json")

    assert deliver(running.rt, payload).get_json()["status"] == "accepted"
    double.wait_for(lambda: double.sent, timeout=10)
    sockets.publish(payload)
    second = load_payload("message-received-html-only.json")
    sockets.publish(second)
    double.wait_for(lambda: len(double.sent) >= 2, timeout=10)

    assert sorted(e.source_message_id for e in double.sent) == sorted(
        [payload["message"]["message_id"], second["message"]["message_id"]]
    )
    assert running.rt.store.get_event(payload["event_id"]).scheme != "websocket"


def test_a_dropped_connection_is_opened_again_and_events_keep_flowing(
    listening, sockets, double, caplog
):
    caplog.set_level(logging.WARNING, "agentmail_runner.listen")
    listening()
    sockets.wait_for_subscriptions(1)

    assert sockets.drop_connections() == 1
    sockets.wait_for_subscriptions(2)
    sockets.publish(load_payload("message-received.json"))

    double.wait_for(lambda: double.sent, timeout=10)
    assert sockets.subscriptions[0] == sockets.subscriptions[1]
    assert "WebSocket connection lost" in caplog.text
    assert "reconnecting in" in caplog.text


def test_reconnection_backs_off_while_agentmail_is_unreachable(
    make_runtime, double, caplog
):
    caplog.set_level(logging.WARNING, "agentmail_runner.listen")
    rt = make_runtime()
    nobody = f"ws://127.0.0.1:{free_port()}"
    with httpx.Client() as http:
        environment = AgentMailEnvironment(http=double.url, websockets=nobody)
        client = AgentMail(
            api_key=double.api_key, environment=environment, httpx_client=http
        )
        listener = Listener(
            rt, client, event_types=["message.received"], backoff_base=0.02
        )
        stop = threading.Event()
        thread = threading.Thread(target=listener.run, args=(stop,))
        thread.start()
        double.wait_for(lambda: caplog.text.count("reconnecting in") >= 5)
        stop.set()
        thread.join(5)

    delays = [float(m) for m in re.findall(r"reconnecting in ([\d.]+) s", caplog.text)]
    assert delays == sorted(delays)
    assert delays[4] > delays[0]
    assert "ConnectionRefusedError" in caplog.text


def test_frames_are_stored_exactly_as_agentmail_sent_them(listening, sockets, double):
    running = listening()
    sockets.wait_for_subscriptions(1)
    payload = load_payload("message-received.json")
    payload["a_future_field"] = {"kept": True}
    text = json.dumps(payload, indent=1)

    sockets.publish(text)

    double.wait_for(lambda: double.sent, timeout=10)
    assert running.rt.store.get_event(payload["event_id"]).payload == text


def test_frames_that_are_not_events_are_not_stored(listening, sockets, double, caplog):
    caplog.set_level(logging.WARNING, "agentmail_runner.listen")
    running = listening()
    sockets.wait_for_subscriptions(1)

    assert sockets.broadcast("not json at all") == 1
    sockets.broadcast(json.dumps(["an", "array"]))
    sockets.broadcast(json.dumps({"type": "presence", "inbox_ids": []}))
    sockets.broadcast(b"\x00\x01")
    sockets.publish(load_payload("message-received.json"))

    double.wait_for(
        lambda: running.rt.store.count_by_status() == {"done": 1}, timeout=10
    )
    assert "ignored a WebSocket frame that is not JSON" in caplog.text
    assert "ignored a WebSocket frame that is not a JSON object" in caplog.text


def test_an_error_from_agentmail_is_logged(listening, sockets, double, caplog):
    caplog.set_level(logging.ERROR, "agentmail_runner.listen")
    listening()
    sockets.wait_for_subscriptions(1)

    error = {"type": "error", "name": "RateLimitError", "message": "slow down"}
    sockets.broadcast(json.dumps(error))

    double.wait_for(lambda: "RateLimitError" in caplog.text)
    assert (
        "AgentMail sent an error over the WebSocket: RateLimitError: slow down"
        in caplog.text
    )


def test_a_refused_api_key_stops_with_the_fix(make_runtime, double):
    rt = make_runtime()
    with (
        WebSocketDouble(api_key="another-key") as refusing,
        httpx.Client() as http,
    ):
        environment = AgentMailEnvironment(http=double.url, websockets=refusing.url)
        client = AgentMail(
            api_key=double.api_key, environment=environment, httpx_client=http
        )
        listener = Listener(rt, client, event_types=["message.received"])

        with pytest.raises(ListenError, match="check AGENTMAIL_API_KEY") as caught:
            listener.run(threading.Event())

    assert "AgentMail refused the WebSocket (401)" in str(caught.value)


# -- the command -------------------------------------------------------------------


def invoke(config: Path, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        ["--config", str(config), "listen", *args],
        env={"AGENTMAIL_API_KEY": None, "AGENTMAIL_WEBSOCKET_URL": None},
        catch_exceptions=False,
    )


def test_listen_needs_an_api_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(write_config(tmp_path))

    assert result.exit_code == 2
    assert (
        "error: listen needs AGENTMAIL_API_KEY: the WebSocket is opened with it"
        in result.output
    )


def test_listen_refuses_an_unencrypted_socket_to_another_host(
    tmp_path, monkeypatch, double
):
    monkeypatch.chdir(tmp_path)
    config = write_config(
        tmp_path, runner={"api_key": double.api_key, "api_base_url": double.url}
    )

    result = invoke(config, "--websocket-url", "ws://events.example.com")

    assert result.exit_code == 2
    assert (
        "error: --websocket-url ws://events.example.com: the API key would travel "
        "unencrypted; use wss://" in result.output
    )


def test_listen_command_processes_socket_events_and_stops_on_sigterm(
    tmp_path, double, sockets
):
    config = write_config(
        tmp_path,
        runner={
            "api_key": double.api_key,
            "api_base_url": double.url,
            "poll_seconds": 0.05,
        },
    )
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AGENTMAIL_", "OPENAI_"))
    }
    process = subprocess.Popen(
        [
            AGENTMAIL_RUNNER,
            "--config",
            str(config),
            "listen",
            "--websocket-url",
            sockets.url,
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sockets.wait_for_subscriptions(1, timeout=30)
        sockets.publish(load_payload("message-received.json"))
        double.wait_for(lambda: double.sent, timeout=15)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, err
    assert "subscribed to message.received" in err
    assert "accepted (websocket)" in err
    assert "received SIGTERM, stopping" in err
