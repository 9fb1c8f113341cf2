"""Limit how often one client may fail webhook verification.

Forged or misconfigured requests are logged and answered 401 until a client has used
up its budget; after that they are answered 429 and not logged one by one, so a flood
cannot fill the logs or keep the server busy writing them. The caller verifies first
and consults the limiter only when verification failed, so an authentic delivery is
never refused however many failures its address has racked up.

Each client has a token bucket: ``burst`` tokens, refilled at ``per_minute``. Buckets
live in a bounded LRU map; when a flood from many addresses pushes a client out, that
client simply starts again with a full bucket, which keeps memory bounded at the cost
of a fresh burst for it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["FailureLimiter"]


class _Bucket:
    __slots__ = ("suppressed", "tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated
        self.suppressed = 0


class FailureLimiter:
    """Per-client token buckets for failed verifications; safe to share across
    threads."""

    def __init__(
        self,
        *,
        per_minute: float = 30,
        burst: int = 20,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(per_minute) and per_minute > 0):
            raise ValueError("per_minute must be a positive number")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, client: str) -> bool:
        """Record one failure from ``client``.

        True while the client is within its budget (log the failure, answer 401);
        False once it is over (answer 429 and log nothing for this request: the count
        is kept for :meth:`suppressed`).
        """
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = _Bucket(self._burst, now)
                self._buckets[client] = bucket
                if len(self._buckets) > self._max_clients:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(client)
                self._refill(bucket, now)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return True
            bucket.suppressed += 1
            return False

    def exhausted(self, client: str) -> bool:
        """Whether ``client`` has used up its budget; counts nothing."""
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                return False
            self._refill(bucket, self._clock())
            return bucket.tokens < 1.0

    def _refill(self, bucket: _Bucket, now: float) -> None:
        # A clock that steps backwards (a test's fake one) must not mint tokens for
        # time already paid for.
        if now > bucket.updated:
            refill = (now - bucket.updated) * self._rate
            bucket.tokens = min(self._burst, bucket.tokens + refill)
            bucket.updated = now

    def suppressed(self, client: str) -> int:
        """How many failures from ``client`` went unlogged since the last call; resets
        the count to 0 so that the caller can log one summary line."""
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                return 0
            count = bucket.suppressed
            bucket.suppressed = 0
            return count
