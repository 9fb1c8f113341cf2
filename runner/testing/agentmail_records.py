"""What the AgentMail double records and how it answers: the wire shapes it shares
with the SDK, kept apart from the server that uses them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

__all__ = ["FailureRule", "LabelUpdate", "RecordedRequest", "SendKind", "SentEmail"]

SendKind = Literal["send", "reply", "reply_all", "forward"]

_IDEMPOTENCY_KEY_RE = re.compile(r"[A-Za-z0-9._~-]{1,256}")

_ERROR_NAMES = {
    400: "ValidationError",
    401: "UnauthorizedError",
    403: "MessageRejectedError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


@dataclass
class RecordedRequest:
    """One HTTP request as the double received it.

    ``status`` is filled in once the double has answered, so it stays None while an
    injected delay is still running.
    """

    method: str
    path: str
    """The percent-decoded segments joined with "/"; ambiguous if an id holds "/"."""
    segments: tuple[str, ...]
    """The path split on literal "/" first and then percent-decoded: unambiguous."""
    raw_path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes
    json: Any
    """The parsed JSON body, or None when the body is empty or not JSON."""
    idempotency_key: str | None
    received_at: float
    status: int | None = None


@dataclass(frozen=True)
class SentEmail:
    """One email the double "sent": a send, reply, reply-all or forward it performed.

    Replays of an idempotent request and injected failures never add one.
    """

    kind: SendKind
    inbox_id: str
    source_message_id: str | None
    """The message replied to or forwarded; None for a plain send."""
    json: dict[str, Any]
    idempotency_key: str | None
    message_id: str
    """The id the double returned for the new message."""
    thread_id: str


@dataclass(frozen=True)
class LabelUpdate:
    """One PATCH of a message's labels, with the labels it ended up with."""

    inbox_id: str
    message_id: str
    add_labels: tuple[str, ...]
    remove_labels: tuple[str, ...]
    labels: tuple[str, ...]


@dataclass
class FailureRule:
    """A pending injected failure; see :meth:`AgentMailDouble.fail`."""

    method: str
    pattern: re.Pattern[str]
    status: int | None
    remaining: int
    delay: float
    retry_after: float | None
    body: dict[str, Any] | None


@dataclass
class _Attachment:
    content: bytes
    filename: str
    content_type: str


@dataclass(frozen=True)
class _StoredAnswer:
    fingerprint: str
    status: int
    body: dict[str, Any]


@dataclass
class _Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _error(status: int, message: str, name: str | None = None, **extra: Any) -> _Answer:
    body: dict[str, Any] = {
        "name": name or _ERROR_NAMES.get(status, "Error"),
        "message": message,
    }
    if status == 400:
        # The SDK parses 400 bodies as ValidationErrorResponse, which requires it.
        body.setdefault("errors", [])
    body.update(extra)
    return _Answer(status, body)


def _as_label_list(value: Any) -> list[str]:
    # The API accepts a single label or a list of them.
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(item) for item in value]
    raise ValueError("labels must be a string or a list of strings")


def _as_address_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(item) for item in value]
    return [str(value)]


def _split_raw_path(raw_uri: str) -> tuple[str, str, tuple[str, ...]]:
    """Return (raw path, raw query, decoded segments) of a request target."""
    if not raw_uri.startswith("/"):
        # Absolute-form target ("http://host/path"): only its path matters here.
        parts = urlsplit(raw_uri)
        raw_uri = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raw_path, _, rest = raw_uri.partition("?")
    raw_query = rest.partition("#")[0]
    raw_path = raw_path.partition("#")[0]
    # Splitting before unquoting is the whole point: "%2F" inside an id must not
    # become a separator.
    segments = tuple(unquote(part) for part in raw_path.split("/")[1:])
    return raw_path, raw_query, segments
