"""An event's story: what arrived, what each plugin did, what was sent or stopped."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from runner.actions import action_from_dict
from runner.events import parse_payload, printable
from runner.hookspecs import STAGES
from runner.store import DEAD, EventRow, Store

__all__ = [
    "event_story",
    "format_story",
    "format_time",
    "why_unusable",
]

# How much of a payload that cannot be read is shown: enough to see what it is.
RAW_PAYLOAD_CHARS = 1000


def format_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_STAGE_ORDER = {stage: index for index, stage in enumerate(STAGES)}


def why_unusable(row: EventRow) -> str | None:
    """Why no plugin can ever process an event, if none can.

    A dead letter that never had an attempt is one the ingress found unusable (not
    JSON, no event type, an id it cannot key on): its last error says why. Any other
    event is judged by its stored payload.
    """
    if row.status == DEAD and row.attempts == 0:
        return row.last_error or "the ingress found the payload unusable"
    try:
        payload = parse_payload(row.payload)
    except ValueError as exc:
        return f"the stored payload cannot be read: {exc}"
    if not isinstance(payload, dict):
        return f"the stored payload is JSON {type(payload).__name__}, not an object"
    if not payload.get("event_type"):
        return "the payload has no event_type"
    return None


def _clip(text: str, size: int) -> str:
    return text[:size] + "..." if len(text) > size else text


def event_story(store: Store, row: EventRow) -> dict[str, Any]:
    """Everything the store knows about one event, JSON-ready."""
    try:
        payload: Any = parse_payload(row.payload)
    except ValueError:
        payload = _clip(row.payload, RAW_PAYLOAD_CHARS)
    # In the order the calls ran: stage by stage, and in order within a stage (the
    # ledger's own order is that of writing, and calls with no action are written last).
    calls = sorted(
        store.ledger_for(row.pk).values(), key=lambda c: _STAGE_ORDER.get(c.stage, 9)
    )
    return {
        "id": row.pk,
        "event_key": row.event_key,
        "event_id": row.event_id,
        "delivery_id": row.delivery_id,
        "event_type": row.event_type,
        "status": row.status,
        "verified_by": row.scheme,
        "attempts": row.attempts,
        "received_at": row.received_at,
        "next_attempt_at": row.next_attempt_at,
        "finished_at": row.finished_at,
        "last_error": row.last_error,
        "ledger": [
            {
                "plugin": c.plugin,
                "stage": c.stage,
                "status": c.status,
                "attempts": c.attempts,
                "error": c.error,
                "duration_ms": c.duration_ms,
                "data": c.data,
            }
            for c in calls
        ],
        "actions": [
            {
                "plugin": a.plugin,
                "stage": a.stage,
                "position": a.position,
                "kind": a.kind,
                "status": a.status,
                "idempotency_key": a.idempotency_key,
                "attempts": a.attempts,
                "params": _public(a.params),
                "result": a.result,
                "error": a.error,
                "executed_at": a.executed_at,
            }
            for a in store.actions_for(row.pk)
        ],
        "payload": payload,
    }


def _public(params: dict[str, Any]) -> dict[str, Any]:
    """What an action's parameters may show: secrets (tokens, webhook URLs) hidden."""
    try:
        return action_from_dict(params).public_dict()
    except (TypeError, ValueError):
        # Written by another version: show the kind only rather than guess.
        return {"kind": params.get("kind")}


def format_story(story: dict[str, Any]) -> str:
    """The story as text for a terminal."""
    lines = [
        f"event {story['event_key']}  (#{story['id']})",
        f"  type        {story['event_type'] or '-'}",
        f"  status      {story['status']}  after {story['attempts']} attempt(s)",
        f"  verified by {story['verified_by']}",
        f"  received    {format_time(story['received_at'])}",
    ]
    if story["finished_at"]:
        lines.append(f"  finished    {format_time(story['finished_at'])}")
    elif story["status"] == "pending" and story["attempts"]:
        lines.append(f"  next try    {format_time(story['next_attempt_at'])}")
    if story["last_error"]:
        lines.append(f"  error       {story['last_error']}")
    lines.append("  plugins:")
    if not story["ledger"]:
        lines.append("    (none called)")
    for call in story["ledger"]:
        duration = call["duration_ms"]
        took = f" {duration:.1f} ms" if duration is not None else ""
        line = f"    {call['plugin']}.{call['stage']}: {call['status']}{took}"
        if call["attempts"] > 1:
            line += f" ({call['attempts']} attempts)"
        lines.append(line)
        if call["error"]:
            lines.append(f"      error: {call['error']}")
        for key in call["data"]:
            lines.append(f"      put {key}")
    lines.append("  actions:")
    if not story["actions"]:
        lines.append("    (none)")
    for action in story["actions"]:
        lines.append(
            f"    {action['kind']} by {action['plugin']}: {action['status']}"
            f"  key={action['idempotency_key']}"
        )
        params = {k: v for k, v in action["params"].items() if k != "kind" and v}
        for key, value in params.items():
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"      {key}: {_clip(text, 200)}")
        if action["error"]:
            lines.append(f"      reason: {action['error']}")
        if action["result"] and action["result"].get("message_id"):
            lines.append(f"      sent as {action['result']['message_id']}")
    return "\n".join(printable(line) for line in lines)
