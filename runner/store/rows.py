"""What the store reads and writes, as plain values."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runner.store.schema import events


class StoreUnavailable(Exception):
    """The database cannot be reached or written; the caller should answer 503."""


@dataclass(frozen=True)
class EventRow:
    pk: int
    event_key: str
    event_id: str | None
    delivery_id: str | None
    event_type: str
    payload: str
    scheme: str
    status: str
    attempts: int
    received_at: float
    next_attempt_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    last_error: str | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> EventRow:
        m = row._mapping
        return cls(pk=m["id"], **{k: m[k] for k in _EVENT_FIELDS})


_EVENT_FIELDS = [c.name for c in events.columns if c.name != "id"]


@dataclass(frozen=True)
class LedgerRow:
    plugin: str
    stage: str
    status: str
    attempts: int
    error: str | None
    data: dict[str, Any]
    duration_ms: float | None
    updated_at: float


@dataclass(frozen=True)
class ActionRow:
    pk: int
    event_pk: int
    plugin: str
    stage: str
    position: int
    kind: str
    params: dict[str, Any]
    idempotency_key: str
    status: str
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    created_at: float
    executed_at: float | None


@dataclass(frozen=True)
class PluginActivity:
    """One plugin's calls in the ledger over a period, for the dashboard."""

    plugin: str
    calls: dict[str, int]
    last_success_at: float | None
    last_error_at: float | None
    last_error: str | None


# An event's ledger (by plugin and stage) and its action log.
EventState = tuple[dict[tuple[str, str], "LedgerRow"], list["ActionRow"]]


@dataclass(frozen=True)
class LedgerWrite:
    """One plugin call's outcome, to be written to the ledger.

    With ``counts_attempt`` False it only moves an earlier call on (acted to
    succeeded) and keeps what that call recorded.
    """

    plugin: str
    stage: str
    status: str
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    duration_ms: float | None = None
    counts_attempt: bool = True
    # Whether the ledger has a row for this call already (saves a statement).
    exists: bool | None = None


@dataclass(frozen=True)
class NewEvent:
    """A delivery to store: the payload as received and what the ingress read of it."""

    event_key: str
    event_id: str | None
    delivery_id: str | None
    event_type: str
    payload: str
    scheme: str
    dead_reason: str | None = None


@dataclass(frozen=True)
class PlannedAction:
    """An action a plugin returned, ready to be written to the action log."""

    position: int
    kind: str
    params: dict[str, Any]
    idempotency_key: str
    inbox_id: str = ""
    thread_id: str = ""
    recipient: str = ""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _ledger_row(r: Any) -> LedgerRow:
    return LedgerRow(
        plugin=r.plugin,
        stage=r.stage,
        status=r.status,
        attempts=r.attempts,
        error=r.error,
        data=json.loads(r.data) if r.data else {},
        duration_ms=r.duration_ms,
        updated_at=r.updated_at,
    )


def _action_row(r: Any) -> ActionRow:
    return ActionRow(
        pk=r.id,
        event_pk=r.event_pk,
        plugin=r.plugin,
        stage=r.stage,
        position=r.position,
        kind=r.kind,
        params=json.loads(r.params),
        idempotency_key=r.idempotency_key,
        status=r.status,
        attempts=r.attempts,
        result=json.loads(r.result) if r.result else None,
        error=r.error,
        created_at=r.created_at,
        executed_at=r.executed_at,
    )
