"""The event a webhook delivers, parsed tolerantly and exposed read-only.

AgentMail's payloads have changed shape over time: ``from`` is a string today, a list of
``{name, email}`` objects in older documents, and empty fields are omitted rather than
null. Everything here accepts each shape and keeps the raw payload, unknown keys
included, so that a plugin can always reach what the runner did not model.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.headerregistry import HeaderRegistry
from html.parser import HTMLParser
from types import MappingProxyType
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "Address",
    "Attachment",
    "Event",
    "Message",
    "html_to_text",
    "matches_event_type",
    "nested_too_deep",
    "parse_addresses",
    "parse_payload",
    "printable",
]

_headers = HeaderRegistry()


@dataclass(frozen=True)
class Address:
    """One mailbox: its address and the display name, if any."""

    email: str
    name: str = ""

    def __str__(self) -> str:
        if self.name:
            return f"{self.name} <{self.email}>"
        return self.email

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2].lower()

    @property
    def local_part(self) -> str:
        return self.email.rpartition("@")[0]


def parse_addresses(value: Any) -> tuple[Address, ...]:
    """Parse a string, a list of strings or a list of ``{name, email}`` objects.

    Strings go through the RFC 5322 parser of the ``email`` package, so a display name
    with a comma in quotes stays one address. Entries that hold no address are skipped.
    """
    if isinstance(value, str | Mapping):
        value = [value]
    if not isinstance(value, list | tuple):
        return ()  # null, a number: no address, not an error
    found: list[Address] = []
    for item in value:
        if isinstance(item, Mapping):
            email = str(item.get("email") or item.get("address") or "").strip()
            if email:
                found.append(Address(email=email, name=str(item.get("name") or "")))
        elif isinstance(item, str) and item.strip():
            found.extend(_parse_address_string(item))
    return tuple(found)


def _parse_address_string(text: str) -> list[Address]:
    try:
        header = _headers("To", text)
        parsed = [
            Address(email=a.addr_spec, name=a.display_name)
            for a in header.addresses  # type: ignore[attr-defined]
            if a.addr_spec and a.addr_spec != "<>"
        ]
    except Exception:  # the parser is lenient, but a bad header must not cost an event
        parsed = []
    if parsed:
        return parsed
    bare = text.strip().strip("<>").strip()
    return [Address(email=bare)] if "@" in bare else []


class _TextExtractor(HTMLParser):
    _skip = frozenset({"script", "style", "head", "title"})
    _breaks = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._skip:
            self._skipping += 1
        elif tag in self._breaks:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._skip and self._skipping:
            self._skipping -= 1
        elif tag in self._breaks:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


# C0 (line breaks and tabs included), DEL and C1: what a terminal may take as a command.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: each control character shown as an
    escape such as ``\\x1b``.

    Subjects, addresses and event ids come from whoever sent the mail; printed raw,
    an escape sequence in them could recolour the terminal, set its title or move the
    cursor over what the operator reads. Line breaks are escaped too, so that a value
    cannot pass for lines of its own.
    """
    return _CONTROL.sub(lambda found: f"\\x{ord(found[0]):02x}", text)


def html_to_text(markup: str) -> str:
    """Readable text from an HTML body: tags dropped, scripts and styles skipped."""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # malformed markup still yields whatever text was read
        pass
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    # The parser has already decoded entities (convert_charrefs): decoding again would
    # turn a literal "&lt;" in the mail into "<".
    return "\n".join(line for line in lines if line)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A plain, mutable JSON-ready copy of a frozen payload."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


class _Headers(Mapping[str, str]):
    """Message headers with case-insensitive look-up."""

    def __init__(self, raw: Any) -> None:
        items: Iterable[tuple[Any, Any]] = (
            raw.items() if isinstance(raw, Mapping) else ()
        )
        self._items = {str(k).lower(): (str(k), _header_value(v)) for k, v in items}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items


def _header_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Attachment:
    """Attachment metadata; the content is fetched through the API when needed."""

    attachment_id: str
    filename: str
    content_type: str
    size: int | None
    inline: bool

    @classmethod
    def from_payload(cls, raw: Mapping[str, Any]) -> Attachment:
        disposition = str(raw.get("content_disposition") or "").lower()
        size = raw.get("size")
        return cls(
            attachment_id=str(raw.get("attachment_id") or raw.get("id") or ""),
            filename=str(raw.get("filename") or ""),
            content_type=str(raw.get("content_type") or ""),
            size=size if isinstance(size, int) else None,
            inline=bool(raw.get("inline")) or disposition == "inline",
        )


class Message:
    """The ``message`` object of a ``message.received`` event (and its variants)."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    # The address fields are parsed once per message: parsing costs about half a
    # millisecond an address, and a delivery may list tens of thousands.

    def _str(self, key: str) -> str:
        value = self.raw.get(key)
        return "" if value is None else str(value)

    @property
    def inbox_id(self) -> str:
        return self._str("inbox_id")

    @property
    def thread_id(self) -> str:
        return self._str("thread_id")

    @property
    def message_id(self) -> str:
        return self._str("message_id")

    @functools.cached_property
    def sender(self) -> Address | None:
        raw = self.raw.get("from")
        if raw is None:
            raw = self.raw.get("from_")
        found = parse_addresses(raw)
        return found[0] if found else None

    @functools.cached_property
    def to(self) -> tuple[Address, ...]:
        return parse_addresses(self.raw.get("to"))

    @functools.cached_property
    def cc(self) -> tuple[Address, ...]:
        return parse_addresses(self.raw.get("cc"))

    @functools.cached_property
    def bcc(self) -> tuple[Address, ...]:
        return parse_addresses(self.raw.get("bcc"))

    @functools.cached_property
    def reply_to(self) -> tuple[Address, ...]:
        return parse_addresses(self.raw.get("reply_to"))

    @property
    def subject(self) -> str:
        return self._str("subject")

    @property
    def text(self) -> str:
        return self._str("text")

    @property
    def html(self) -> str:
        return self._str("html")

    @property
    def extracted_text(self) -> str:
        return self._str("extracted_text")

    @property
    def body_text(self) -> str:
        """The new content: ``extracted_text``, else ``text``, else the HTML as text."""
        return self.extracted_text or self.text or html_to_text(self.html)

    @property
    def labels(self) -> tuple[str, ...]:
        raw = self.raw.get("labels")
        return (
            tuple(str(label) for label in raw) if isinstance(raw, list | tuple) else ()
        )

    @property
    def headers(self) -> Mapping[str, str]:
        return _Headers(self.raw.get("headers"))

    @property
    def in_reply_to(self) -> str:
        return self._str("in_reply_to")

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        raw = self.raw.get("attachments")
        if not isinstance(raw, list | tuple):
            return ()
        return tuple(Attachment.from_payload(a) for a in raw if isinstance(a, Mapping))

    @property
    def body_missing(self) -> bool:
        """True when the payload carries no body at all (large bodies are omitted)."""
        return not (self.extracted_text or self.text or self.html)


# The key of each event type's object, for those that carry one besides "message".
_OBJECT_KEYS = (
    "message",
    "send",
    "delivery",
    "bounce",
    "complaint",
    "reject",
    "domain",
)


class Event:
    """One AgentMail event, read-only. ``payload`` is the whole body as delivered."""

    def __init__(self, payload: Mapping[str, Any], *, delivery_id: str = "") -> None:
        self.payload: Mapping[str, Any] = _freeze(payload)
        self.delivery_id = delivery_id

    @property
    def event_id(self) -> str:
        value = self.payload.get("event_id")
        return str(value) if value else ""

    @property
    def event_type(self) -> str:
        return str(self.payload.get("event_type") or "")

    @property
    def message(self) -> Message | None:
        raw = self.payload.get("message")
        return Message(raw) if isinstance(raw, Mapping) else None

    @property
    def thread(self) -> Mapping[str, Any]:
        raw = self.payload.get("thread")
        return raw if isinstance(raw, Mapping) else MappingProxyType({})

    @property
    def object(self) -> Mapping[str, Any]:
        """The event's own object: ``message``, ``bounce``, ``delivery``..."""
        for key in _OBJECT_KEYS:
            raw = self.payload.get(key)
            if isinstance(raw, Mapping):
                return raw
        return MappingProxyType({})

    @property
    def inbox_id(self) -> str:
        return str(self.object.get("inbox_id") or "")

    @property
    def thread_id(self) -> str:
        return str(self.object.get("thread_id") or "")

    def matches(self, pattern: str) -> bool:
        return matches_event_type(self.event_type, pattern)

    def __repr__(self) -> str:
        return f"<Event {self.event_type or '?'} {self.event_id or self.delivery_id}>"


def matches_event_type(event_type: str, pattern: str) -> bool:
    """Whether a dotted event type matches a subscription such as ``message.*``.

    ``*`` alone matches everything; ``message.*`` matches ``message.received`` and
    ``message.received.spam``; other wildcards follow shell rules.
    """
    if pattern in ("*", event_type):
        return True
    if pattern.endswith(".*") and "*" not in pattern[:-2]:
        return event_type.startswith(pattern[:-1])
    return fnmatch.fnmatchcase(event_type, pattern)


# A \u escape of a UTF-16 surrogate (JSON allows one alone; no encoder can write it)
# or of NUL (PostgreSQL's text cannot hold it).
_UNTEXT_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")

# The deepest nesting read, as at the ingress, which keeps deeper bodies as dead
# letters: far beyond any real payload, and far from exhausting Python's stack in the
# code that walks an event (freezing it, plugins, JSON encoders).
MAX_DEPTH = 64


def parse_payload(text: str) -> Any:
    """A stored payload as JSON, with every lone surrogate and NUL replaced by U+FFFD.

    ``"\\ud800"`` without its pair is valid JSON but not text: plugins could read it,
    and every write of what they derived from it (the ledger, an email, a log line)
    would fail. ``"\\u0000"`` is text, but PostgreSQL refuses it in every text column
    (an address, a thread id), so both engines see the same. Raises ValueError when
    ``text`` is not JSON or nests deeper than ``MAX_DEPTH`` levels.
    """
    too_deep = f"JSON nested deeper than {MAX_DEPTH} levels"
    try:
        value = json.loads(text)
    except RecursionError as exc:  # the decoder gives up near a thousand levels
        raise ValueError(too_deep) from exc
    if nested_too_deep(text, value):
        raise ValueError(too_deep)
    if _UNTEXT_ESCAPE.search(text) is None:
        return value
    return _as_text(value)


def nested_too_deep(text: str, value: Any) -> bool:
    """Whether ``value``, the JSON decoded from ``text``, nests deeper than
    ``MAX_DEPTH`` levels (walked without recursion)."""
    # Each level opens a bracket: a text with few of them needs no walk.
    if text.count("{") + text.count("[") <= MAX_DEPTH:
        return False
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            pending.extend((v, depth + 1) for v in item)
    return False


def _as_text(value: Any) -> Any:
    """``value`` with U+FFFD for each lone surrogate and each NUL in its strings."""
    if isinstance(value, str):
        text = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    if isinstance(value, dict):
        return {_as_text(k): _as_text(v) for k, v in value.items()}
    return value
