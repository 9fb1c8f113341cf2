"""Events and failing events over time, laid out as SVG shapes for a template.

The geometry is computed here so the template only places rectangles and labels; the
page needs no script and no chart library.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

__all__ = ["WINDOWS", "Bar", "Chart", "Tick", "Window", "bucket_start", "build_chart"]


@dataclass(frozen=True)
class Window:
    name: str
    seconds: int
    bucket_seconds: int
    label_format: str


WINDOWS = {
    w.name: w
    for w in (
        Window("6h", 6 * 3600, 15 * 60, "%H:%M"),
        Window("24h", 24 * 3600, 3600, "%H:%M"),
        Window("7d", 7 * 24 * 3600, 6 * 3600, "%a %d"),
    )
}

WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 28
LABEL_EVERY = 4


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    received_y: float
    received_height: float
    failing_y: float
    failing_height: float
    title: str


@dataclass(frozen=True)
class Tick:
    position: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    received: int
    failing: int


def bucket_start(window: Window, now: float | None = None) -> float:
    """When the window's first bucket starts, so that the last one holds ``now``."""
    now = time.time() if now is None else now
    buckets = window.seconds // window.bucket_seconds
    current = math.floor(now / window.bucket_seconds) * window.bucket_seconds
    return float(current - (buckets - 1) * window.bucket_seconds)


def _scale_top(largest: int) -> tuple[int, int]:
    """A round top for the y axis and the step between its ticks (about four)."""
    step = 1
    while step * 4 < largest:
        step = _next_step(step)
    return max(1, math.ceil(largest / step) * step), step


def _next_step(step: int) -> int:
    """1, 2, 5, 10, 20, 50, ..."""
    return step * 5 // 2 if str(step).startswith("2") else step * 2


def build_chart(
    counts: dict[int, tuple[int, int]], window: Window, *, start: float
) -> Chart:
    """Bars for each bucket of ``counts`` ({bucket: (received, failing)})."""
    buckets = window.seconds // window.bucket_seconds
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    largest = max((received for received, _ in counts.values()), default=0)
    top, step = _scale_top(largest)
    slot = plot_width / buckets
    baseline = TOP + plot_height

    bars = []
    for index in range(buckets):
        received, failing = counts.get(index, (0, 0))
        received_height = plot_height * received / top
        failing_height = plot_height * failing / top
        began = start + index * window.bucket_seconds
        bars.append(
            Bar(
                x=LEFT + index * slot + 1,
                width=max(slot - 2, 1),
                received_y=baseline - received_height,
                received_height=received_height,
                failing_y=baseline - failing_height,
                failing_height=failing_height,
                title=(
                    f"{_utc(began, '%Y-%m-%d %H:%M')} UTC: {received} event(s), "
                    f"{failing} failing"
                ),
            )
        )
    y_ticks = [
        Tick(baseline - plot_height * value / top, str(value))
        for value in range(0, top + 1, step)
    ]
    x_ticks = [
        Tick(
            LEFT + index * slot,
            _utc(start + index * window.bucket_seconds, window.label_format),
        )
        for index in range(0, buckets, LABEL_EVERY)
    ]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=WIDTH - RIGHT,
        top=TOP,
        bottom=baseline,
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        received=sum(r for r, _ in counts.values()),
        failing=sum(f for _, f in counts.values()),
    )


def _utc(ts: float, pattern: str) -> str:
    return time.strftime(pattern, time.gmtime(ts))
