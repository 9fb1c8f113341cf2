"""Shared pieces of the benchmarks: servers in subprocesses, a loopback load generator,
resident-memory readings. Everything runs on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECRET = "whsec_YmVuY2htYXJrLXNlY3JldC1vZi10aGUtcnVubmVyIQ=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def payload(event_id: str) -> bytes:
    """A message.received event the size of a typical short email."""
    return json.dumps(
        {
            "type": "event",
            "event_type": "message.received",
            "event_id": event_id,
            "message": {
                "inbox_id": "bench@agentmail.to",
                "thread_id": f"thd-{event_id}",
                "message_id": f"<{event_id}@bench.example>",
                "from": "Bench Sender <sender@bench.example>",
                "to": ["bench@agentmail.to"],
                "subject": "A benchmark message",
                "text": "Hello,\n\nthis is a benchmark message body.\n" * 8,
                "labels": ["received"],
            },
        }
    ).encode()


def signed_requests(count: int) -> list[tuple[bytes, dict[str, str]]]:
    """``count`` distinct message.received deliveries, signed as Svix signs them."""
    return sign_bodies([payload(uuid.uuid4().hex) for _ in range(count)])


def sign_bodies(bodies: list[bytes]) -> list[tuple[bytes, dict[str, str]]]:
    from datetime import UTC, datetime

    from svix.webhooks import Webhook

    hook = Webhook(SECRET)
    now = int(time.time())
    signed = []
    for body in bodies:
        delivery = f"msg_{uuid.uuid4().hex}"
        signature = hook.sign(delivery, datetime.fromtimestamp(now, UTC), body.decode())
        headers = {
            "svix-id": delivery,
            "svix-timestamp": str(now),
            "svix-signature": signature,
            "content-type": "application/json",
        }
        signed.append((body, headers))
    return signed


@dataclass
class Load:
    sent: int
    seconds: float
    latencies: list[float]
    failures: int

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000


def blast(
    port: int,
    requests: list[tuple[bytes, dict[str, str]]],
    *,
    concurrency: int = 32,
    rate: float | None = None,
) -> Load:
    """Send every request once over keep-alive connections.

    With ``rate`` the schedule is open-loop: latency counts from when a request was due,
    so a slow server cannot hide its queueing (no coordinated omission).
    """
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    cursor = iter(enumerate(requests))
    start = time.perf_counter() + 0.05

    def worker() -> None:
        nonlocal failures
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        bad = 0
        while True:
            with lock:
                item = next(cursor, None)
            if item is None:
                break
            index, (body, headers) = item
            due = start + index / rate if rate else time.perf_counter()
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            conn.request("POST", "/webhook", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - due)
            if response.status != 200:
                bad += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            failures += bad

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Load(len(requests), time.perf_counter() - began, latencies, failures)


def wait_healthy(port: int, timeout: float = 30.0, path: str = "/healthz") -> float:
    """Seconds until the server answers 200 on ``path``."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return time.perf_counter() - began
            conn.close()
        time.sleep(0.01)
    raise TimeoutError(f"nothing healthy on port {port} after {timeout} s")


def write_config(
    directory: Path, *, database: str, plugins: str = "", **runner: object
) -> Path:
    lines = ["[runner]", f"database = {json.dumps(database)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in runner.items()]
    path = directory / "plugins.toml"
    path.write_text("\n".join(lines) + "\n" + plugins, encoding="utf-8")
    return path


def runner_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTMAIL_", "OPENAI_"))
    }
    env["AGENTMAIL_WEBHOOK_SECRET"] = SECRET
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@contextlib.contextmanager
def process(
    args: list[str], *, env: dict[str, str], cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
    with (cwd / f"{Path(args[1]).stem}-{len(os.listdir(cwd))}.log").open("wb") as log:
        proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def report(name: str, value: float, unit: str, target: str, ok: bool) -> str:
    mark = "ok " if ok else "MISS"
    return f"[{mark}] {name:<58} {value:>10.2f} {unit:<8} target {target}"
