"""A webhook sender that behaves like Svix, the service that delivers AgentMail's
webhooks, on a compressed clock.

Svix signs every attempt afresh (a new ``svix-timestamp`` and signature) under the same
``svix-id``, counts anything but a 2xx answer, a refused connection and a timeout as a
failure, and tries again on a schedule (immediately, 5 s, 5 min, 30 min, 2 h, 5 h,
10 h, 10 h). Here the schedule is seconds, so a test can send many events while the
runner is being killed and still see every delivery through. Signatures come from the
``svix`` library itself, not from the runner's own signer.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from svix.webhooks import Webhook as SvixWebhook

__all__ = ["COMPRESSED_SCHEDULE", "Attempt", "Delivery", "Stream", "SvixSender"]

# Seconds to wait before each attempt: Svix's schedule, squeezed into ~30 s.
COMPRESSED_SCHEDULE: tuple[float, ...] = (
    0.0,
    0.2,
    0.5,
    1.0,
    2.0,
    2.0,
    3.0,
    3.0,
    4.0,
    5.0,
    5.0,
    5.0,
)


@dataclass(frozen=True)
class Attempt:
    """One try: the status answered, or the transport error when none came."""

    status: int | None
    error: str | None = None
    body: Any = None


@dataclass
class Delivery:
    """One message (one ``svix-id``) and every attempt to deliver it."""

    message_id: str
    body: bytes
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def event_id(self) -> str:
        payload = json.loads(self.body)
        return str(payload["event_id"])

    @property
    def acknowledged(self) -> bool:
        return any(_success(a.status) for a in self.attempts)


def _success(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


@dataclass
class Stream:
    """Deliveries running in the background; ``deliveries`` fills in at the end."""

    thread: threading.Thread
    deliveries: list[Delivery] = field(default_factory=list)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the sender was still sending after {timeout:g} s")


class SvixSender:
    """Delivers signed webhooks to one URL and retries each until a 2xx answer."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        schedule: Sequence[float] = COMPRESSED_SCHEDULE,
        timeout: float = 5.0,
        connections: int = 16,
    ) -> None:
        self.url = url
        self.schedule = tuple(schedule)
        self._signer = SvixWebhook(secret)
        self._stop = threading.Event()
        self._streams: list[Stream] = []
        self._http = httpx.Client(
            timeout=timeout,
            follow_redirects=False,  # Svix counts a redirect as a failure
            limits=httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections
            ),
        )

    def close(self) -> None:
        """Stop retrying, let attempts in flight end, and close the connections."""
        self._stop.set()
        for stream in self._streams:
            stream.thread.join(30)
        self._http.close()

    def __enter__(self) -> SvixSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def headers(self, body: bytes, message_id: str) -> dict[str, str]:
        """Svix's three headers for one attempt, signed now."""
        seconds = int(time.time())
        when = datetime.fromtimestamp(seconds, tz=UTC)
        return {
            "content-type": "application/json",
            "svix-id": message_id,
            "svix-timestamp": str(seconds),
            "svix-signature": self._signer.sign(message_id, when, body.decode()),
        }

    def attempt(self, body: bytes, message_id: str) -> Attempt:
        """One POST, freshly signed; never raises for what the network does."""
        return self.post(body, self.headers(body, message_id))

    def post(self, body: bytes, headers: dict[str, str]) -> Attempt:
        """One POST with these headers: the answer, or the transport error."""
        try:
            response = self._http.post(self.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            return Attempt(status=None, error=type(exc).__name__)
        try:
            answer = response.json()
        except ValueError:
            answer = response.text
        return Attempt(status=response.status_code, body=answer)

    def deliver(self, body: bytes, message_id: str | None = None) -> Delivery:
        """Send one message on the schedule until it is acknowledged or the schedule
        runs out."""
        delivery = Delivery(message_id or f"msg_{uuid.uuid4().hex}", body)
        for wait in self.schedule:
            if self._stop.wait(wait):
                break
            attempt = self.attempt(body, delivery.message_id)
            delivery.attempts.append(attempt)
            if _success(attempt.status):
                break
        return delivery

    def deliver_all(
        self,
        bodies: Iterable[bytes],
        *,
        concurrency: int = 8,
        per_second: float | None = None,
    ) -> list[Delivery]:
        """Deliver many messages at once, as Svix does, the n-th first sent no sooner
        than n / ``per_second`` seconds in; the deliveries in the order given."""
        started = time.monotonic()

        def paced(item: tuple[int, bytes]) -> Delivery:
            index, body = item
            if per_second:
                self._stop.wait(started + index / per_second - time.monotonic())
            return self.deliver(body)

        with ThreadPoolExecutor(concurrency, thread_name_prefix="svix") as pool:
            return list(pool.map(paced, enumerate(bodies)))

    def stream(
        self,
        bodies: Iterable[bytes],
        *,
        concurrency: int = 8,
        per_second: float | None = None,
    ) -> Stream:
        """:meth:`deliver_all` on a background thread."""
        items = list(bodies)
        deliveries: list[Delivery] = []
        thread = threading.Thread(
            target=lambda: deliveries.extend(
                self.deliver_all(items, concurrency=concurrency, per_second=per_second)
            ),
            name="svix-sender",
        )
        stream = Stream(thread, deliveries)
        self._streams.append(stream)
        thread.start()
        return stream
