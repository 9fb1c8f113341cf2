"""The failed-verification limiter: burst, refill, independence, summaries, memory."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from runner.ratelimit import FailureLimiter


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_burst_is_allowed_then_refused(clock: FakeClock) -> None:
    limiter = FailureLimiter(per_minute=30, burst=5, clock=clock)
    assert [limiter.hit("203.0.113.9") for _ in range(7)] == [True] * 5 + [False] * 2


def test_the_defaults_allow_twenty_then_refuse(clock: FakeClock) -> None:
    limiter = FailureLimiter(clock=clock)
    assert all(limiter.hit("a") for _ in range(20))
    assert not limiter.hit("a")


def test_tokens_refill_at_the_configured_rate(clock: FakeClock) -> None:
    limiter = FailureLimiter(per_minute=30, burst=2, clock=clock)
    assert limiter.hit("a")
    assert limiter.hit("a")
    assert not limiter.hit("a")
    clock.advance(1.9)  # 30 a minute: one token every 2 s
    assert not limiter.hit("a")
    clock.advance(0.1)
    assert limiter.hit("a")
    assert not limiter.hit("a")


def test_refill_is_capped_at_the_burst(clock: FakeClock) -> None:
    limiter = FailureLimiter(per_minute=60, burst=3, clock=clock)
    for _ in range(3):
        limiter.hit("a")
    clock.advance(3600)
    assert [limiter.hit("a") for _ in range(4)] == [True, True, True, False]


def test_a_clock_stepping_back_mints_no_tokens(clock: FakeClock) -> None:
    limiter = FailureLimiter(per_minute=60, burst=1, clock=clock)
    assert limiter.hit("a")
    clock.advance(-10)
    assert not limiter.hit("a")
    clock.advance(10)  # back where it was: nothing has been earned yet
    assert not limiter.hit("a")
    clock.advance(1)
    assert limiter.hit("a")


def test_clients_are_independent(clock: FakeClock) -> None:
    limiter = FailureLimiter(per_minute=1, burst=2, clock=clock)
    assert limiter.hit("a")
    assert limiter.hit("a")
    assert not limiter.hit("a")
    assert limiter.hit("b")
    assert limiter.hit("b")
    assert not limiter.hit("b")
    assert limiter.hit("2001:db8::1")


def test_suppressed_counts_refusals_and_resets(clock: FakeClock) -> None:
    limiter = FailureLimiter(per_minute=60, burst=1, clock=clock)
    assert limiter.suppressed("a") == 0
    assert limiter.hit("a")
    assert limiter.suppressed("a") == 0
    for _ in range(4):
        assert not limiter.hit("a")
    assert limiter.hit("b")
    assert not limiter.hit("b")
    assert limiter.suppressed("a") == 4
    assert limiter.suppressed("a") == 0
    assert limiter.suppressed("b") == 1
    clock.advance(1)
    assert limiter.hit("a")
    assert not limiter.hit("a")
    assert limiter.suppressed("a") == 1


def test_suppressed_for_an_unknown_client_tracks_nothing(clock: FakeClock) -> None:
    limiter = FailureLimiter(burst=1, max_clients=1, clock=clock)
    assert limiter.hit("a")
    assert limiter.suppressed("stranger") == 0
    # Asking about a stranger did not take a's place.
    assert not limiter.hit("a")


def test_the_least_recently_used_client_is_evicted(clock: FakeClock) -> None:
    limiter = FailureLimiter(per_minute=1, burst=1, max_clients=2, clock=clock)
    assert limiter.hit("a")
    assert limiter.hit("b")
    assert not limiter.hit("a")  # a is now the most recently used
    assert limiter.hit("c")  # evicts b, not a
    assert not limiter.hit("a")
    assert limiter.hit("b")  # b was forgotten: a fresh bucket (and evicts c)
    assert limiter.hit("c")


def test_memory_is_bounded_by_max_clients(clock: FakeClock) -> None:
    limiter = FailureLimiter(burst=1, max_clients=50, clock=clock)
    for n in range(5000):
        limiter.hit(f"198.51.{n // 256}.{n % 256}")
    # No public size: look inside, since the bound is the whole point.
    assert len(limiter._buckets) == 50


def test_hits_from_many_threads_never_exceed_the_burst(clock: FakeClock) -> None:
    limiter = FailureLimiter(per_minute=60, burst=100, clock=clock)
    allowed: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        results = [limiter.hit("flood") for _ in range(500)]
        with lock:
            allowed.extend(results)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 100
    assert limiter.suppressed("flood") == 8 * 500 - 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_minute": 0}, "per_minute"),
        ({"per_minute": -1}, "per_minute"),
        ({"per_minute": float("nan")}, "per_minute"),
        ({"per_minute": float("inf")}, "per_minute"),
        ({"burst": 0}, "burst"),
        ({"max_clients": 0}, "max_clients"),
    ],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FailureLimiter(**kwargs)


def test_exhausted_says_whether_the_budget_is_spent_without_counting(
    clock: FakeClock,
) -> None:
    limiter = FailureLimiter(per_minute=60, burst=2, clock=clock)
    assert not limiter.exhausted("a")
    assert [limiter.hit("a"), limiter.hit("a")] == [True, True]

    assert [limiter.exhausted("a") for _ in range(3)] == [True] * 3
    assert not limiter.exhausted("b")
    clock.advance(1)  # one failure's worth of refill
    assert not limiter.exhausted("a")
    assert limiter.hit("a")
    assert limiter.exhausted("a")
