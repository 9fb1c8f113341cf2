"""Run the runner: the web side on waitress, the workers on threads, a clean drain.

On SIGTERM (or Ctrl-C) the server stops accepting, lets requests in flight finish
storing, then gives the workers ``drain_seconds`` to finish the event in hand. What is
not finished by then is released back to the queue, or, if the process dies first,
claimed again when its lease expires. Nothing acknowledged is lost either way.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

from runner.ingress import create_app
from runner.runtime import Runtime

__all__ = ["serve", "work"]

log = logging.getLogger("agentmail_runner")


def _on_signal(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    # Only a flag: the server's loop checks it between two turns. Raising from here
    # would end the loop wherever it happened to be, for instance after a response
    # was sent and before waitress noted it, which then sends it a second time.
    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            return
        stop.set()
        log.info("received %s, draining", signal.Signals(signum).name)

    return handler


def _install_handlers(stop: threading.Event) -> None:
    handler = _on_signal(stop)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def make_server(rt: Runtime, *, host: str, port: int) -> Any:
    """A waitress server for the runner's app (not yet running)."""
    from waitress import create_server

    app = create_app(rt)
    options: dict[str, Any] = dict(
        threads=rt.settings.http_threads,
        # waitress buffers the whole body before the app sees it; stop large ones there.
        # It counts chunked framing (size lines, CRLFs) against this limit too, so it
        # gets headroom; the handler enforces the exact cap on the decoded body.
        max_request_body_size=2 * rt.settings.max_body_bytes + 65536,
        # A few idle or trickling clients must not lock everyone out: many open
        # connections allowed, and a silent one closed long before Svix's 15 s are
        # up twice. A proxy in front (docs/deploy.md) is the defence in depth.
        connection_limit=rt.settings.max_connections,
        channel_timeout=rt.settings.connection_timeout_seconds,
        # waitress looks for idle connections every cleanup_interval (30 s by
        # default), so one could stay open up to twice its timeout.
        cleanup_interval=_cleanup_interval(rt.settings.connection_timeout_seconds),
        ident="agentmail-runner",
        clear_untrusted_proxy_headers=True,
        **_one_write_per_response(),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "send_bytes", DeprecationWarning)
        return create_server(app, host=host, port=port, **options)


def _cleanup_interval(timeout: float) -> int:
    """How often to close idle connections: a tenth of the timeout (at least 1 s)."""
    return max(1, round(timeout / 10))


def _one_write_per_response() -> dict[str, int]:
    """waitress options that send a short response's head and body in one write.

    By default waitress sends the head as soon as it is built and the body after it:
    two packets, and a wake-up of the client for each. Buffering what a request
    writes until it is done (or 18,000 bytes) halves that, and under load saves about
    a tenth of the CPU the server spends on a webhook. waitress has deprecated the
    option without a replacement; without it, responses are only split again.
    """
    from waitress.adjustments import Adjustments

    return {"send_bytes": 18000} if hasattr(Adjustments, "send_bytes") else {}


# How long the server's loop waits for sockets in one turn, and so how soon it sees
# that a signal asked it to stop.
_TURN_SECONDS = 0.1


def _turn(server: Any, timeout: float) -> None:
    """One turn of waitress's loop: wait up to ``timeout`` for sockets, serve them."""
    from waitress import wasyncore

    wasyncore.loop(
        timeout=timeout, map=server._map, use_poll=server.adj.asyncore_use_poll, count=1
    )


def _run_until(server: Any, stop: threading.Event) -> None:
    """waitress's loop, one turn at a time, until ``stop`` is set."""
    while not stop.is_set():
        _turn(server, _TURN_SECONDS)


def _send_finished_answers(server: Any, seconds: float = 2.0) -> None:
    """Send the answers of the requests that finished while the server stopped.

    Once the loop has stopped, waitress's threads finish the requests in hand, but
    sending what they wrote is the loop's job: without a few more turns of it, an
    event stored during the drain would never be acknowledged (the sender would only
    send it again). No further request is read meanwhile.
    """
    from waitress.channel import HTTPChannel

    server.accepting = False
    channels = [c for c in server._map.values() if isinstance(c, HTTPChannel)]
    for channel in channels:
        channel.will_close = True
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(
        c.connected and c.total_outbufs_len for c in channels
    ):
        _turn(server, 0.05)


def serve(rt: Runtime, *, host: str, port: int, workers: int | None = None) -> int:
    """Web and workers in one process until SIGTERM; the exit status."""
    stop = threading.Event()
    server = make_server(rt, host=host, port=port)
    rt.start_workers(workers)
    _install_handlers(stop)
    log.info(
        "listening on http://%s:%s/webhook with %d worker(s)%s",
        f"[{host}]" if ":" in host else host,
        server.effective_port,
        len(rt.workers),
        " in DRY-RUN (no action is executed)" if rt.dry_run else "",
    )
    try:
        _run_until(server, stop)
    finally:
        # The request threads finish what they hold; what is queued is dropped
        # unanswered and unstored, and will be delivered again.
        server.task_dispatcher.shutdown()
        _send_finished_answers(server)
        server.close()
        in_time = rt.stop_workers()
        log.info(
            "stopped%s",
            "" if in_time else "; unfinished events were released to the queue",
        )
    return 0


def work(rt: Runtime, *, workers: int | None = None) -> int:
    """Workers only (``agentmail-runner worker``) until SIGTERM."""
    stop = threading.Event()
    _install_handlers(stop)
    rt.start_workers(workers)
    log.info(
        "%d worker(s) started%s", len(rt.workers), " in DRY-RUN" if rt.dry_run else ""
    )
    try:
        stop.wait()
    finally:
        in_time = rt.stop_workers()
        log.info("stopped%s", "" if in_time else "; unfinished events released")
    return 0
