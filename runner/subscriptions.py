"""AgentMail's event types, and which of them a set of plugin subscriptions selects.

Plugins subscribe with patterns (``message.*``, ``*``), but AgentMail's webhook and
WebSocket subscriptions take exact event types. Patterns are expanded against the
types AgentMail sends; an exact type that is not in the list is kept as written, so a
type newer than this release can still be asked for by name.
"""

from __future__ import annotations

from collections.abc import Iterable

from runner.events import matches_event_type

__all__ = ["AGENTMAIL_EVENT_TYPES", "expand_subscriptions"]

AGENTMAIL_EVENT_TYPES: tuple[str, ...] = (
    "message.received",
    "message.received.spam",
    "message.received.blocked",
    "message.received.unauthenticated",
    "message.sent",
    "message.delivered",
    "message.bounced",
    "message.complained",
    "message.rejected",
    "domain.verified",
)


def expand_subscriptions(patterns: Iterable[str]) -> list[str]:
    """The exact event types the patterns select, in AgentMail's order."""
    patterns = list(patterns)
    selected = [
        event_type
        for event_type in AGENTMAIL_EVENT_TYPES
        if any(matches_event_type(event_type, p) for p in patterns)
    ]
    for pattern in patterns:
        if not _is_wildcard(pattern) and pattern not in selected:
            selected.append(pattern)
    return selected


def _is_wildcard(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")
