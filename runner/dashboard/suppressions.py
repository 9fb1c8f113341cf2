"""The bounce tracker's suppression list, read from its plugin state.

The core never imports a plugin, so the list is read generically: the bounce tracker
keeps one state entry per suppressed address under a key that starts with
``suppressed:``, with a JSON value beside it (the reason, since when, the bounce type).
When that value is an object with an ``address``, that is the address shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.runtime import Runtime
    from runner.store import Store

__all__ = [
    "PLUGIN",
    "PREFIX",
    "Suppression",
    "count_suppressions",
    "list_suppressions",
    "remove_suppression",
    "suppressions_enabled",
]

PLUGIN = "bounce_tracker"
PREFIX = "suppressed:"


@dataclass(frozen=True)
class Suppression:
    key: str
    address: str
    details: Any


def suppressions_enabled(rt: Runtime) -> bool:
    """Whether the bounce tracker runs here (its table is enabled, or it is loaded)."""
    return PLUGIN in rt.config.enabled_plugins() or rt.plugins.get(PLUGIN) is not None


def count_suppressions(store: Store) -> int:
    return store.state_count(PLUGIN, PREFIX)


def list_suppressions(store: Store, search: str = "") -> list[Suppression]:
    """Suppressed addresses in order; ``search`` keeps those containing it."""
    needle = search.strip().lower()
    found = [
        _suppression(key, value) for key, value in store.state_items(PLUGIN, PREFIX)
    ]
    return [s for s in found if needle in s.address.lower() or needle in s.key]


def _suppression(state_key: str, value: Any) -> Suppression:
    key = state_key.removeprefix(PREFIX)
    shown = value.get("address") if isinstance(value, dict) else None
    return Suppression(key, shown if isinstance(shown, str) and shown else key, value)


def remove_suppression(store: Store, key: str) -> bool:
    """Take an address off the list by its key; False when it was not on it."""
    return store.state_delete(PLUGIN, PREFIX + key)
