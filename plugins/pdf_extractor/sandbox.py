"""Run the extraction of one PDF in a child process, and stop it when over its limits.

A hostile PDF can make a parser spin or allocate without end, and a thread cannot be
stopped from outside. So each file is parsed by a fresh ``python -I extract.py``: its
address space, CPU time and file writes are capped by the child itself before it reads
the file, and the parent kills it when its wall-clock time runs out. The worker only
ever waits on a pipe.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STATUSES", "Extraction", "Limits", "extract_text"]

CHILD_SCRIPT = Path(__file__).with_name("extract.py")

STATUSES = frozenset(
    {"ok", "no_text", "encrypted", "broken", "too_complex", "timeout", "not_pdf"}
)

# The child parses untrusted input, so it inherits no API keys: only what an
# interpreter may need to start.
_INHERITED_ENVIRONMENT = ("PATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "SYSTEMROOT")


@dataclass(frozen=True)
class Limits:
    """What one extraction may use."""

    timeout_seconds: float
    memory_mb: int
    max_pages: int
    max_chars: int

    def as_argument(self) -> str:
        return json.dumps(
            {
                "max_pages": self.max_pages,
                "max_chars": self.max_chars,
                "memory_mb": self.memory_mb,
                # A backstop for a child whose parent has died: it never idles, so
                # CPU time is close to wall-clock time.
                "cpu_seconds": math.ceil(self.timeout_seconds) + 1,
            }
        )


@dataclass(frozen=True)
class Extraction:
    """The outcome of one extraction; ``status`` is one of :data:`STATUSES`."""

    status: str
    pages: int = 0
    text: str = ""
    detail: str = ""
    seconds: float = 0.0
    peak_rss_kib: int = 0


def extract_text(data: bytes, limits: Limits) -> Extraction:
    """Text of the PDF in ``data``, read by a child process within ``limits``."""
    started = time.monotonic()
    try:
        completed = subprocess.run(
            [sys.executable, "-I", str(CHILD_SCRIPT), limits.as_argument()],
            input=data,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=limits.timeout_seconds,
            env=_child_environment(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Extraction(
            "timeout",
            detail=f"stopped after {limits.timeout_seconds:g} s",
            seconds=time.monotonic() - started,
        )
    seconds = time.monotonic() - started
    if completed.returncode != 0:
        return _failed(completed.returncode, limits, seconds)
    return _parse(completed.stdout, seconds)


def _child_environment() -> dict[str, str]:
    return {k: os.environ[k] for k in _INHERITED_ENVIRONMENT if k in os.environ}


def _failed(returncode: int, limits: Limits, seconds: float) -> Extraction:
    if returncode == -signal.SIGXCPU:
        return Extraction(
            "timeout",
            detail=f"used more than {limits.timeout_seconds:g} s of CPU time",
            seconds=seconds,
        )
    if returncode < 0:
        reason = f"was killed by signal {_signal_name(-returncode)}"
    else:
        reason = f"exited with status {returncode}"
    return Extraction("broken", detail=f"the extractor {reason}", seconds=seconds)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _parse(output: bytes, seconds: float) -> Extraction:
    try:
        answer: Any = json.loads(output)
        status = answer["status"]
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        return Extraction(
            status=status,
            pages=int(answer["pages"]),
            text=str(answer["text"]),
            detail=str(answer["detail"]),
            seconds=seconds,
            peak_rss_kib=int(answer.get("peak_rss_kib", 0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        return Extraction(
            "broken",
            detail=f"the extractor gave no usable answer ({exc})",
            seconds=seconds,
        )
