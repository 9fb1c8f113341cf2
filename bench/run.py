"""Run every benchmark and print each figure next to its target.

    .venv/bin/python bench/run.py            # everything, a few minutes
    .venv/bin/python bench/run.py --quick    # smaller counts, for a smoke run
    .venv/bin/python bench/run.py ingest e2e # only some

The machine is shared and noisy, so what is compared is measured side by side in the
same run (a ratio), never against a number written down on another day. PostgreSQL
figures need AGENTMAIL_RUNNER_BENCH_POSTGRES (a database URL on loopback); without it
they are skipped and say so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h

Results = list[str]


def bench_ingest(scratch: Path, quick: bool, out: Results) -> None:
    """Verified + stored webhooks per second, against the bare receiver."""
    count = 1500 if quick else 6000
    bare_port, plain_port, runner_port = h.free_port(), h.free_port(), h.free_port()
    config = h.write_config(
        scratch, database=str(scratch / "ingest.db"), workers=0, http_threads=32
    )
    env = h.runner_env()
    bare_cmd = [
        sys.executable,
        str(h.ROOT / "bench" / "bare_receiver.py"),
        str(bare_port),
    ]
    plain_cmd = [*bare_cmd[:2], str(plain_port), "--no-flask"]
    serve_cmd = [
        str(h.BIN / "agentmail-runner"),
        "--log-level",
        "warning",
        "--config",
        str(config),
        "serve",
        "--listen",
        f"127.0.0.1:{runner_port}",
        "--workers",
        "0",
    ]
    ports = {"bare": bare_port, "plain": plain_port, "serve": runner_port}
    with (
        h.process(bare_cmd, env=env, cwd=scratch),
        h.process(plain_cmd, env=env, cwd=scratch),
        h.process(serve_cmd, env=env, cwd=scratch),
    ):
        for port in ports.values():
            h.wait_healthy(port)
        # Warm all, then alternate rounds so drift on a shared machine hits all alike.
        for port in ports.values():
            h.blast(port, h.signed_requests(300))
        rates: dict[str, list[float]] = {name: [] for name in ports}
        for _ in range(3):
            for name, port in ports.items():
                result = h.blast(port, h.signed_requests(count // 3))
                assert result.failures == 0, f"requests to {name} failed"
                rates[name].append(result.rate)
        bare_rate, plain_rate, runner_rate = (
            max(rates["bare"]),
            max(rates["plain"]),
            max(rates["serve"]),
        )
        ratio = runner_rate / bare_rate
        out.append(
            h.report(
                "ingest: bare receiver (verify only)", bare_rate, "req/s", "-", True
            )
        )
        out.append(
            h.report(
                "ingest: serve (verify + durable store)",
                runner_rate,
                "req/s",
                "-",
                True,
            )
        )
        out.append(
            h.report("ingest: serve / bare", ratio, "ratio", ">= 0.80", ratio >= 0.8)
        )
        # For context: serve answers the webhook before Flask's dispatch, which is a
        # good part of the bare receiver's cost. Against a bare receiver that does the
        # same, the ratio is the cost of the durable store alone.
        out.append(
            h.report(
                "ingest: bare receiver without Flask's dispatch",
                plain_rate,
                "req/s",
                "-",
                True,
            )
        )
        out.append(
            h.report(
                "ingest: serve / bare without Flask's dispatch",
                runner_rate / plain_rate,
                "ratio",
                "-",
                True,
            )
        )

        duration = 4 if quick else 10
        steady = h.blast(
            runner_port, h.signed_requests(500 * duration), concurrency=16, rate=500
        )
        out.append(
            h.report(
                "ingest at 500 req/s: p50 acknowledgement", steady.p50, "ms", "-", True
            )
        )
        p99 = steady.percentile(99)
        out.append(
            h.report(
                "ingest at 500 req/s: p99 acknowledgement",
                p99,
                "ms",
                "<= 20",
                p99 <= 20,
            )
        )


class NoopPlugin:
    """Subscribes to everything and does nothing: the dispatch overhead alone."""

    from runner import hookimpl

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["*"]

    @hookimpl
    def act(self, event: Any, context: Any) -> None:
        return None


class SlowPlugin:
    """An I/O-bound plugin: each event waits on a 20 ms call."""

    from runner import hookimpl

    @hookimpl
    def subscriptions(self) -> list[str]:
        return ["*"]

    @hookimpl
    def act(self, event: Any, context: Any) -> None:
        time.sleep(0.02)


def _runtime(database: str, plugin: object, **runner: Any) -> Any:
    from runner.config import Config, RunnerSettings
    from runner.runtime import Runtime

    settings = RunnerSettings(
        database=database, webhook_secrets=[h.SECRET], poll_seconds=0.2, **runner
    )
    return Runtime(Config(runner=settings), extra_plugins=(("bench", plugin),))


def _store_events(rt: Any, count: int) -> None:
    from runner.ingress import accept_delivery

    for body, headers in h.signed_requests(count):
        accept_delivery(rt, body, headers["svix-id"], "svix")


def _wait_done(rt: Any, count: int, timeout: float = 600) -> float:
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        if rt.store.count_by_status().get("done", 0) >= count:
            return time.perf_counter() - began
        # Counting competes with the workers for the interpreter: not too often.
        time.sleep(0.25)
    raise TimeoutError("events did not finish")


def bench_e2e(scratch: Path, quick: bool, out: Results) -> None:
    """Events per second through a no-op plugin, from stored to done."""
    count = 2000 if quick else 10_000
    rt = _runtime(str(scratch / "e2e.db"), NoopPlugin(), workers=2)
    try:
        _store_events(rt, count)
        rt.start_workers()
        seconds = _wait_done(rt, count)
    finally:
        rt.stop_workers(grace=10)
        rt.close()
    rate = count / seconds
    out.append(
        h.report(
            f"end to end on SQLite: {count} events, no-op plugin",
            rate,
            "events/s",
            ">= 1000",
            rate >= 1000,
        )
    )

    postgres = os.environ.get("AGENTMAIL_RUNNER_BENCH_POSTGRES")
    if not postgres:
        out.append(
            "[skip] worker processes on PostgreSQL: set AGENTMAIL_RUNNER_BENCH_POSTGRES"
        )
        return
    io_count = 200 if quick else 600
    one = _workers_on_postgres(postgres, io_count, processes=1)
    two = _workers_on_postgres(postgres, io_count, processes=2)
    out.append(
        h.report(
            "PostgreSQL, I/O-bound plugin: 1 worker process", one, "events/s", "-", True
        )
    )
    out.append(
        h.report(
            "PostgreSQL, I/O-bound plugin: 2 worker processes / 1",
            two / one,
            "ratio",
            ">= 1.8",
            two / one >= 1.8,
        )
    )


def _worker_process(database: str, stop_after: int) -> None:
    rt = _runtime(database, SlowPlugin(), workers=1)
    rt.start_workers(1)
    try:
        while rt.store.count_by_status().get("done", 0) < stop_after:
            time.sleep(0.05)
    finally:
        rt.stop_workers(grace=10)
        rt.close()


def _workers_on_postgres(url: str, count: int, processes: int) -> float:
    import multiprocessing

    import sqlalchemy as sa

    from runner.store import Store, metadata

    store = Store(url)
    with store.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(sa.delete(table))
    store.close()
    rt = _runtime(url, SlowPlugin(), workers=0)
    _store_events(rt, count)
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_worker_process, args=(url, count))
        for _ in range(processes)
    ]
    began = time.perf_counter()
    for child in children:
        child.start()
    _wait_done(rt, count)
    seconds = time.perf_counter() - began
    for child in children:
        child.join(30)
    rt.close()
    return count / seconds


def bench_memory(scratch: Path, quick: bool, out: Results) -> None:
    """Resident size after many events against after a few."""
    small, large = (500, 10_000) if quick else (1000, 100_000)
    rt = _runtime(str(scratch / "memory.db"), NoopPlugin(), workers=2)
    readings: dict[int, float] = {}
    try:
        rt.start_workers()
        done = 0
        for target in (small, large):
            while done < target:
                step = min(1000, target - done)
                _store_events(rt, step)
                done += step
                _wait_done(rt, done)
            gc.collect()
            readings[target] = h.rss_mib(os.getpid())
    finally:
        rt.stop_workers(grace=10)
        rt.close()
    growth = readings[large] - readings[small]
    out.append(
        h.report(
            f"memory: RSS after {large} events - after {small}",
            growth,
            "MiB",
            "<= 5",
            growth <= 5,
        )
    )


def bench_startup(scratch: Path, quick: bool, out: Results) -> None:
    """`serve` to a healthy /healthz, and `plugins` listing time."""
    port = h.free_port()
    env = h.runner_env()
    cmd = [
        str(h.BIN / "agentmail-runner"),
        "--config",
        str(h.ROOT / "plugins.toml"),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    env["AGENTMAIL_RUNNER_DATABASE"] = str(scratch / "startup.db")
    began = time.perf_counter()
    with h.process(cmd, env=env, cwd=scratch):
        h.wait_healthy(port)
        ready = time.perf_counter() - began
    out.append(
        h.report(
            "start-up: serve (repo plugins.toml) to healthy /healthz",
            ready,
            "s",
            "<= 2",
            ready <= 2,
        )
    )
    began = time.perf_counter()
    subprocess.run(
        [
            str(h.BIN / "agentmail-runner"),
            "--config",
            str(h.ROOT / "plugins.toml"),
            "plugins",
        ],
        env=env,
        cwd=scratch,
        check=True,
        capture_output=True,
    )
    listing = time.perf_counter() - began
    out.append(
        h.report("start-up: `plugins` listing", listing, "s", "<= 1.5", listing <= 1.5)
    )
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, runner.cli, runner.loader; "
            "from runner.config import load_config; from runner.loader import load; "
            f"load(load_config({str(h.ROOT / 'plugins.toml')!r})); "
            "print(sorted(m for m in ('openai', 'pypdf') if m in sys.modules))",
        ],
        env=env,
        cwd=scratch,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    out.append(
        f"[{'ok ' if heavy == '[]' else 'MISS'}] start-up: heavy modules imported "
        f"by loading the plugins: {heavy} (target [])"
    )


def bench_isolation(scratch: Path, quick: bool, out: Results) -> None:
    """Ingest rate while workers read PDFs, against the idle ingest rate."""
    from runner.store import Store
    from runner.testing.agentmail_double import AgentMailDouble
    from tests.plugins.pdfs import text_pdf

    count = 1500 if quick else 4000
    pdf = text_pdf(
        [[f"Invoice line {i} of page {p}" for i in range(60)] for p in range(40)]
    )
    port = h.free_port()
    config = h.write_config(
        scratch,
        database=str(scratch / "isolation.db"),
        plugins="[plugins.pdf_extractor]\n",
        workers=2,
    )
    with AgentMailDouble() as double:
        pdf_events = []
        for i in range(count // 10):
            event_id = f"pdf-{i}"
            body = json.loads(h.payload(event_id))
            message = body["message"]
            message["attachments"] = [
                {
                    "attachment_id": "att-1",
                    "filename": "invoice.pdf",
                    "content_type": "application/pdf",
                    "size": len(pdf),
                }
            ]
            double.add_attachment(
                message["inbox_id"], message["message_id"], "att-1", pdf, "invoice.pdf"
            )
            pdf_events.append(json.dumps(body).encode())
        env = h.runner_env(
            AGENTMAIL_API_KEY=double.api_key, AGENTMAIL_BASE_URL=double.url
        )
        cmd = [
            str(h.BIN / "agentmail-runner"),
            "--log-level",
            "warning",
            "--config",
            str(config),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
        ]
        with h.process(cmd, env=env, cwd=scratch):
            h.wait_healthy(port)
            h.blast(port, h.signed_requests(300))
            idle = h.blast(port, h.signed_requests(count)).rate
            store = Store(str(scratch / "isolation.db"))
            _wait_idle(store)
            h.blast(port, h.sign_bodies(pdf_events))
            double.wait_for(lambda: len(double.requests) >= 4, timeout=30)
            busy = h.blast(port, h.signed_requests(count)).rate
            reading = store.count_by_status().get("pending", 0)
            store.close()
    ratio = busy / idle
    out.append(
        h.report(
            "isolation: ingest while reading PDFs / idle",
            ratio,
            "ratio",
            ">= 0.90",
            ratio >= 0.9,
        )
    )
    out.append(
        f"       (idle {idle:.0f} req/s, busy {busy:.0f} req/s; "
        f"{reading} events still queued behind the PDFs at the end)"
    )


def _wait_idle(store: Any, timeout: float = 120) -> None:
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        counts = store.count_by_status()
        if not counts.get("pending") and not counts.get("running"):
            return
        time.sleep(0.1)
    raise TimeoutError("the workers did not catch up")


BENCHMARKS: dict[str, Callable[[Path, bool, Results], None]] = {
    "ingest": bench_ingest,
    "e2e": bench_e2e,
    "memory": bench_memory,
    "isolation": bench_isolation,
    "startup": bench_startup,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; "
            f"the names: {', '.join(BENCHMARKS)}"
        )
    results: Results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"amr-bench-{name}-") as scratch:
            began = time.perf_counter()
            BENCHMARKS[name](Path(scratch), args.quick, results)
            print(
                f"-- {name} took {time.perf_counter() - began:.1f} s", file=sys.stderr
            )
    print("\n".join(results))
    return 0 if not any(line.startswith("[MISS") for line in results) else 1


if __name__ == "__main__":
    sys.exit(main())
