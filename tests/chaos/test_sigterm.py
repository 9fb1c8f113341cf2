"""SIGTERM under load: the server stops within its drain grace with exit status 0, and
whatever it acknowledged is either done or back in the queue for the next process,
which finishes it with one reply per event.
"""

from __future__ import annotations

import http.client
import itertools
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runner.store import DONE, PENDING, Store
from runner.testing.agentmail_double import AgentMailDouble
from tests.chaos.processes import (
    RunnerProcess,
    body_of,
    cleanup,
    open_store,
    received_event,
    replies_by_source,
    runner_environment,
    source_of,
    statuses,
    wait_until,
    wait_until_done,
)
from tests.chaos.svix_sender import Stream, SvixSender
from tests.conftest import SECRET, sign, write_config

EVENTS = 300
DRAIN_SECONDS = 2.0
# What shutting down may take beyond the grace: closing the store and the interpreter.
EXIT_MARGIN = 1.5
SETTINGS: dict[str, Any] = {
    "workers": 2,
    "lease_seconds": 5,
    "poll_seconds": 0.2,
    "retry_base_seconds": 0.1,
    "retry_max_seconds": 0.5,
    "drain_seconds": DRAIN_SECONDS,
    "api_timeout_seconds": 10,
}


def _terminate(server: RunnerProcess) -> float:
    """SIGTERM; the seconds until the process exited with status 0."""
    started = time.monotonic()
    assert server.signal(signal.SIGTERM) == 0, server.output()[-3000:]
    return time.monotonic() - started


def _replying(double: AgentMailDouble) -> int:
    """Reply requests the double is still holding."""
    return sum(
        1 for r in double.requests if r.path.endswith("/reply") and r.status is None
    )


def _finish_after_restart(
    server: RunnerProcess,
    sending: Stream,
    store: Store,
    double: AgentMailDouble,
    payloads: list[dict[str, Any]],
) -> None:
    server.start()
    sending.join(90)
    deliveries = sending.deliveries
    assert [d.message_id for d in deliveries if not d.acknowledged] == []
    wait_until_done(store, {d.event_id for d in deliveries}, timeout=60)
    wait_until(
        lambda: all(r.status is not None for r in double.requests),
        timeout=15,
        what="the double answered every request",
    )
    assert _terminate(server) < DRAIN_SECONDS + EXIT_MARGIN
    assert replies_by_source(double) == {source_of(p): 1 for p in payloads}


@pytest.mark.slow
def test_sigterm_while_deliveries_stream_in_exits_0_in_the_grace_and_loses_nothing(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    # Replies take a moment inside AgentMail: the workers are busy when SIGTERM comes.
    double.fail("POST", r"/reply$", status=None, delay=0.2, times=40)
    config = write_config(tmp_path, runner=SETTINGS)
    server = RunnerProcess(tmp_path, runner_environment(double))
    payloads = [received_event("term", i) for i in range(EVENTS)]

    with cleanup(server) as stack, SvixSender(server.webhook, SECRET) as sender:
        server.start()
        store = open_store(config)
        stack.callback(store.close)
        sending = sender.stream(map(body_of, payloads), per_second=100)
        wait_until(lambda: _replying(double) >= 2, timeout=20, what="busy workers")
        wait_until(lambda: len(double.sent) >= 5, timeout=20, what="a few replies")
        assert sending.is_alive(), "the sender should still be sending"

        assert _terminate(server) < DRAIN_SECONDS + EXIT_MARGIN

        # Nothing is left under a lease of the process that is gone: what is not done
        # can be claimed at once by the next one.
        left = statuses(store)
        assert set(left.values()) <= {DONE, PENDING}, left
        assert DONE in left.values() and PENDING in left.values()

        _finish_after_restart(server, sending, store, double, payloads)


@pytest.mark.slow
def test_sigterm_while_replies_hang_past_the_grace_releases_them_and_exits_0_in_time(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    # The first replies hang longer than the grace and the exit together (and then go
    # out after all).
    hang = DRAIN_SECONDS + EXIT_MARGIN + 2
    double.fail("POST", r"/reply$", status=None, delay=hang, times=2)
    config = write_config(tmp_path, runner=SETTINGS)
    server = RunnerProcess(tmp_path, runner_environment(double))
    payloads = [received_event("hang", i) for i in range(20)]

    with cleanup(server) as stack, SvixSender(server.webhook, SECRET) as sender:
        server.start()
        store = open_store(config)
        stack.callback(store.close)
        sending = sender.stream(map(body_of, payloads), per_second=100)
        wait_until(lambda: _replying(double) == 2, timeout=20, what="hung replies")

        assert _terminate(server) < DRAIN_SECONDS + EXIT_MARGIN

        left = statuses(store)
        assert set(left.values()) <= {DONE, PENDING}, left
        _finish_after_restart(server, sending, store, double, payloads)


def test_every_delivery_stored_before_sigterm_is_answered_200(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    config = write_config(tmp_path, runner={"workers": 0, "http_threads": 8})
    server = RunnerProcess(tmp_path, runner_environment(double))
    answered: set[str] = set()
    mixed_up: list[str] = []
    lock = threading.Lock()
    go_on = threading.Event()
    go_on.set()

    def send(lane: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            for index in itertools.count():
                if not go_on.is_set():
                    return
                payload = received_event(f"lane{lane}", index)
                body = body_of(payload)
                connection.request("POST", "/webhook", body, sign(body))
                response = connection.getresponse()
                answer = response.read()
                if response.status == 200:
                    with lock:
                        answered.add(payload["event_id"])
                        # Its own answer, never an earlier request's sent again.
                        if json.loads(answer)["event"] != payload["event_id"]:
                            mixed_up.append(payload["event_id"])
        except (OSError, http.client.HTTPException):
            return  # the server went away under this connection
        finally:
            connection.close()

    with cleanup(server) as stack:
        server.start()
        store = open_store(config)
        stack.callback(store.close)
        lanes = [threading.Thread(target=send, args=(i,)) for i in range(16)]
        for lane in lanes:
            lane.start()
        wait_until(lambda: len(answered) >= 300, timeout=30, what="a stream")

        assert _terminate(server) < DRAIN_SECONDS + EXIT_MARGIN
        go_on.clear()
        for lane in lanes:
            lane.join(15)

        stored = set(statuses(store))
        assert mixed_up == []
        assert answered <= stored
        assert stored - answered == set()
