"""Text extraction from one PDF, run in a child process under hard limits.

The plugin runs this file as a script (``python -I extract.py LIMITS``), writes the
PDF to its standard input and reads one JSON object from its standard output:
``{"status", "pages", "text", "detail", "peak_rss_kib"}``. LIMITS is a JSON object
with ``max_pages``, ``max_chars``, ``memory_mb`` and ``cpu_seconds``.

Only the standard library and pypdf are imported, so the script needs nothing else
of the project on its path. Every limit is set before the first byte of the file is
read: a file that asks for more memory than allowed meets a MemoryError, one that
spins forever is stopped by its CPU limit even if the plugin that started it is gone.
"""

from __future__ import annotations

import io
import json
import logging
import os
import resource
import sys
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pypdf import PdfReader

# Acrobat accepts a header anywhere in the first kilobyte, after junk; so does this.
HEADER_WINDOW = 1024
_DETAIL_CHARS = 300


def confine(memory_mb: int, cpu_seconds: int) -> None:
    """Cap this process's address space, CPU time, file writes and core dumps."""
    address_space = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    # SIGXCPU at the soft limit; the hard limit one second later is SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Reading PDFs is background work: the webhook ingress must keep answering.
    os.nice(10)


def outcome(
    status: str, *, pages: int = 0, text: str = "", detail: str = ""
) -> dict[str, Any]:
    return {
        "status": status,
        "pages": pages,
        "text": text,
        "detail": detail[:_DETAIL_CHARS],
    }


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def extract(data: bytes, *, max_pages: int, max_chars: int) -> dict[str, Any]:
    """Read ``data`` as a PDF; never raises except MemoryError."""
    if b"%PDF-" not in data[:HEADER_WINDOW]:
        return outcome("not_pdf", detail="no %PDF- header in the first kilobyte")

    from pypdf import PasswordType, PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError

    try:
        reader = PdfReader(io.BytesIO(data))
        unlocked = not reader.is_encrypted or (
            reader.decrypt("") != PasswordType.NOT_DECRYPTED
        )
        if not unlocked:
            return outcome("encrypted", detail="the file needs a password")
        total = len(reader.pages)
    except (FileNotDecryptedError, DependencyError) as exc:
        return outcome("encrypted", detail=describe(exc))
    except LimitReachedError as exc:
        return outcome("too_complex", detail=describe(exc))
    except MemoryError:
        raise
    except Exception as exc:  # pypdf meets hostile input with any exception type
        return outcome("broken", detail=describe(exc))
    return read_pages(reader, total, max_pages=max_pages, max_chars=max_chars)


def read_pages(
    reader: PdfReader, total: int, *, max_pages: int, max_chars: int
) -> dict[str, Any]:
    """Text of the first ``max_pages`` pages, at most ``max_chars`` of it."""
    from pypdf.errors import DependencyError, LimitReachedError

    texts: list[str] = []
    length = 0
    failures: list[tuple[str, str]] = []
    for index in range(min(total, max_pages)):
        if length >= max_chars:
            break
        try:
            text = reader.pages[index].extract_text() or ""
        except MemoryError:
            raise
        except LimitReachedError as exc:
            failures.append(("too_complex", f"page {index + 1}: {describe(exc)}"))
            continue
        except DependencyError as exc:  # AES without the cryptography package
            failures.append(("encrypted", f"page {index + 1}: {describe(exc)}"))
            continue
        except Exception as exc:  # one unreadable page must not cost the others
            failures.append(("broken", f"page {index + 1}: {describe(exc)}"))
            continue
        text = text.strip()
        if text:
            texts.append(text)
            length += len(text) + 2

    notes = [detail for _, detail in failures]
    if total > max_pages:
        notes.insert(0, f"read the first {max_pages} of {total} pages")
    joined = "\n\n".join(texts)
    if len(joined) > max_chars:
        joined = joined[:max_chars]
        notes.append(f"text cut at {max_chars} characters")
    if joined:
        return outcome("ok", pages=total, text=joined, detail="; ".join(notes))
    if failures:
        return outcome(failures[0][0], pages=total, detail="; ".join(notes))
    return outcome(
        "no_text", pages=total, detail="no text layer (a scan or a drawing?)"
    )


def peak_rss_kib() -> int:
    """This process's peak resident memory, or 0 where the system does not say.

    Read from /proc rather than getrusage, whose figure survives exec and so may be
    the parent's.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0  # the figure only informs the log
    return 0


def main(argv: list[str]) -> int:
    limits = json.loads(argv[1])
    confine(int(limits["memory_mb"]), int(limits["cpu_seconds"]))
    # Hostile files can provoke endless warnings; only the JSON answer may come out.
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    try:
        data = sys.stdin.buffer.read()
        result = extract(
            data, max_pages=int(limits["max_pages"]), max_chars=int(limits["max_chars"])
        )
    except MemoryError:
        result = outcome(
            "too_complex",
            detail=f"needed more than the {limits['memory_mb']} MB of memory allowed",
        )
    result["peak_rss_kib"] = peak_rss_kib()
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
