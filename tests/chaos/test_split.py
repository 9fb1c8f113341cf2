"""The scale-out split: one ``web`` process in front, two ``worker`` processes behind,
sharing one store. Killing a web and a worker with SIGKILL mid-run, and starting them
again, loses no acknowledged event and sends no reply twice.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from runner.testing.agentmail_double import AgentMailDouble
from tests.chaos.processes import (
    RunnerProcess,
    body_of,
    cleanup,
    open_store,
    received_event,
    replies_by_source,
    reply_keys_by_source,
    runner_environment,
    source_of,
    wait_until,
    wait_until_done,
)
from tests.chaos.svix_sender import SvixSender
from tests.conftest import SECRET, write_config

EVENTS = 300
SEND_RATE = 30.0  # so that sending lasts about 10 s
KILLS_AT = (2.5, 6.0)  # seconds into the sending
SETTINGS = {
    "workers": 2,
    "lease_seconds": 5,
    "poll_seconds": 0.2,  # SQLite has no cross-process wake-up: workers poll
    "retry_base_seconds": 0.1,
    "retry_max_seconds": 0.5,
    "drain_seconds": 2,
}


@pytest.mark.slow
def test_killing_a_web_and_a_worker_mid_run_loses_no_event_and_doubles_no_reply(
    tmp_path: Path, double: AgentMailDouble
) -> None:
    config = write_config(tmp_path, runner=SETTINGS)
    env = runner_environment(double)
    web = RunnerProcess(tmp_path, env, "web")
    workers = [RunnerProcess(tmp_path, env, "worker", name=f"worker-{n}") for n in "ab"]
    payloads = [received_event("split", i) for i in range(EVENTS)]

    with cleanup(web, *workers) as stack, SvixSender(web.webhook, SECRET) as sender:
        for process in (web, *workers):
            process.start()
        store = open_store(config)
        stack.callback(store.close)
        sending = sender.stream(
            map(body_of, payloads), concurrency=8, per_second=SEND_RATE
        )

        # Twice, a web and a worker die together while events stream in.
        started = time.monotonic()
        for worker, at in zip(workers, KILLS_AT, strict=True):
            time.sleep(max(0.0, started + at - time.monotonic()))
            assert sending.is_alive(), "the sender should still be sending"
            assert double.sent, "the workers should be replying"
            assert web.kill() == -signal.SIGKILL
            assert worker.kill() == -signal.SIGKILL
            web.start(wait=False)
            worker.start(wait=False)
            web.wait_ready()
            worker.wait_ready()

        sending.join(90)
        deliveries = sending.deliveries
        assert [d.message_id for d in deliveries if not d.acknowledged] == []
        acknowledged = {d.event_id for d in deliveries}
        assert len(acknowledged) == EVENTS
        wait_until_done(store, acknowledged, timeout=60)
        wait_until(
            lambda: all(r.status is not None for r in double.requests),
            timeout=10,
            what="the double answered every request",
        )
        for process in (web, *workers):
            assert process.signal(signal.SIGTERM) == 0

    assert replies_by_source(double) == {source_of(p): 1 for p in payloads}
    keys = reply_keys_by_source(double)
    assert {source for source, k in keys.items() if len(k) != 1} == set()
