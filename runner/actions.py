"""What a plugin may ask the runner to do.

Plugins never call send or reply themselves: a hook returns these values, the runner
records them before anything leaves the machine, and then executes each one once, with
an idempotency key, after the send guard has had its say.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "Action",
    "AddLabels",
    "Forward",
    "HttpPost",
    "RemoveLabels",
    "Reply",
    "Send",
    "action_from_dict",
]


@dataclass(frozen=True, kw_only=True)
class Action:
    """Base of every action. ``kind`` names it in the action log."""

    kind: ClassVar[str] = ""
    sends_email: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {"kind": self.kind, **_jsonable(data)}

    def recipients(self) -> tuple[str, ...]:
        """Addresses this action would send to, before any reply-to resolution."""
        return ()

    def public_dict(self) -> dict[str, Any]:
        """``to_dict`` without anything secret, for showing in logs, CLI and pages."""
        return self.to_dict()

    def describe(self) -> str:
        return self.kind


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


@dataclass(frozen=True, kw_only=True)
class Reply(Action):
    """Reply in the thread of the event's message.

    ``to`` empty means the sender (or the message's Reply-To); ``reply_all`` copies the
    other recipients as AgentMail does.
    """

    kind: ClassVar[str] = "reply"
    sends_email: ClassVar[bool] = True
    text: str
    html: str | None = None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    reply_all: bool = False
    labels: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "to", _strings(self.to))
        object.__setattr__(self, "cc", _strings(self.cc))
        object.__setattr__(self, "labels", _strings(self.labels))

    def recipients(self) -> tuple[str, ...]:
        return self.to + self.cc

    def describe(self) -> str:
        return f"reply ({len(self.text)} chars)"


@dataclass(frozen=True, kw_only=True)
class Send(Action):
    """Send a new message from ``inbox_id`` (default: the event's inbox)."""

    kind: ClassVar[str] = "send"
    sends_email: ClassVar[bool] = True
    to: tuple[str, ...]
    subject: str
    text: str
    html: str | None = None
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    inbox_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("to", "cc", "bcc", "labels"):
            object.__setattr__(self, name, _strings(getattr(self, name)))

    def recipients(self) -> tuple[str, ...]:
        return self.to + self.cc + self.bcc

    def describe(self) -> str:
        return f"send to {', '.join(self.to)}: {self.subject!r}"


@dataclass(frozen=True, kw_only=True)
class Forward(Action):
    """Forward the event's message to other addresses."""

    kind: ClassVar[str] = "forward"
    sends_email: ClassVar[bool] = True
    to: tuple[str, ...]
    subject: str | None = None
    text: str | None = None
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "to", _strings(self.to))
        object.__setattr__(self, "labels", _strings(self.labels))

    def recipients(self) -> tuple[str, ...]:
        return self.to

    def describe(self) -> str:
        return f"forward to {', '.join(self.to)}"


@dataclass(frozen=True, kw_only=True)
class AddLabels(Action):
    """Add labels to the event's message."""

    kind: ClassVar[str] = "add_labels"
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _strings(self.labels))

    def describe(self) -> str:
        return f"add labels {', '.join(self.labels)}"


@dataclass(frozen=True, kw_only=True)
class RemoveLabels(Action):
    """Remove labels from the event's message."""

    kind: ClassVar[str] = "remove_labels"
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _strings(self.labels))

    def describe(self) -> str:
        return f"remove labels {', '.join(self.labels)}"


@dataclass(frozen=True, kw_only=True)
class HttpPost(Action):
    """POST a JSON document to an endpoint that the plugin's configuration names.

    The runner adds an ``Idempotency-Key`` header; ``headers`` may carry a token read
    from the plugin's configuration. Redirects are not followed.
    """

    kind: ClassVar[str] = "http_post"
    url: str
    json: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    endpoint: str = ""

    def describe(self) -> str:
        return f"POST to {self.endpoint or _origin(self.url)}"

    def public_dict(self) -> dict[str, Any]:
        # A Slack webhook's path is its secret; a header may carry a token.
        shown = self.to_dict()
        shown["url"] = _origin(self.url)
        shown["headers"] = {name: "***" for name in self.headers}
        return shown


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    hidden = "/***" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{parts.hostname or ''}{hidden}"


_KINDS: dict[str, type[Action]] = {
    cls.kind: cls for cls in (Reply, Send, Forward, AddLabels, RemoveLabels, HttpPost)
}


def action_from_dict(data: Mapping[str, Any]) -> Action:
    """Rebuild an action from its ``to_dict`` form (as kept in the action log)."""
    fields = dict(data)
    kind = fields.pop("kind", None)
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown action kind {kind!r}")
    return cls(**fields)
