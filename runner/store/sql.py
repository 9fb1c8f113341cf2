"""The statements of the hot path, built once, and the writes they share."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runner.store.rows import EventState, LedgerWrite, _action_row, _dumps, _ledger_row
from runner.store.schema import (
    PENDING,
    RUNNING,
    actions,
    events,
    ledger,
    schema_meta,
)


# The statements of the hot path, built once: constructing SQLAlchemy expressions costs
# more than executing them on SQLite.
def _event_state(conn: Connection, event_pk: int) -> EventState:
    calls = conn.execute(_LEDGER_OF, {"b_pk": event_pk}).all()
    # Actions are recorded with the call that planned them: no call, no action.
    planned = conn.execute(_ACTIONS_OF, {"b_pk": event_pk}).all() if calls else []
    return (
        {(r.plugin, r.stage): _ledger_row(r) for r in calls},
        [_action_row(r) for r in planned],
    )


def _claim_statement(status: str, when: Any) -> Any:
    """Claim the first event of ``status`` whose ``when`` has passed.

    One status per statement, so that the (status, time) index yields the next event
    without sorting the whole backlog, as an OR of both would make it.
    """
    due = (
        sa.select(events.c.id)
        .where(events.c.status == status, when <= sa.bindparam("b_now"))
        .order_by(when, events.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        events.update()
        .where(events.c.id == due)
        .values(
            status=RUNNING,
            lease_owner=sa.bindparam("b_owner"),
            lease_expires_at=sa.bindparam("b_expires"),
            attempts=events.c.attempts + 1,
        )
        .returning(*events.c)
    )


# A lease that expired (its worker died) is taken before new work; then what is due.
_CLAIM_EXPIRED = _claim_statement(RUNNING, events.c.lease_expires_at)
_CLAIM_DUE = _claim_statement(PENDING, events.c.next_attempt_at)
_LEDGER_OF = (
    sa.select(ledger)
    .where(ledger.c.event_pk == sa.bindparam("b_pk"))
    .order_by(ledger.c.id)
)
_ACTIONS_OF = (
    sa.select(actions)
    .where(actions.c.event_pk == sa.bindparam("b_pk"))
    .order_by(actions.c.id)
)
_LEDGER_CALL = (
    ledger.c.event_pk == sa.bindparam("b_pk"),
    ledger.c.plugin == sa.bindparam("b_plugin"),
    ledger.c.stage == sa.bindparam("b_stage"),
)
_LEDGER_MOVE = (
    ledger.update()
    .where(*_LEDGER_CALL)
    .values(
        status=sa.bindparam("b_status"),
        error=sa.bindparam("b_error"),
        updated_at=sa.bindparam("b_now"),
    )
)
_LEDGER_VALUES: dict[str, Any] = {
    "status": sa.bindparam("b_status"),
    "error": sa.bindparam("b_error"),
    "data": sa.bindparam("b_data"),
    "duration_ms": sa.bindparam("b_duration"),
    "updated_at": sa.bindparam("b_now"),
}
_LEDGER_BUMP = (
    ledger.update()
    .where(*_LEDGER_CALL)
    .values(attempts=ledger.c.attempts + 1, **_LEDGER_VALUES)
)
_LEDGER_INSERT = ledger.insert().values(
    event_pk=sa.bindparam("b_pk"),
    plugin=sa.bindparam("b_plugin"),
    stage=sa.bindparam("b_stage"),
    attempts=1,
    **_LEDGER_VALUES,
)
_FINISH_STATEMENTS: dict[tuple[str, ...], Any] = {}


def _finish_statement(keys: tuple[str, ...]) -> Any:
    """The UPDATE that ends a held lease, setting ``keys`` (built once per set)."""
    stmt = _FINISH_STATEMENTS.get(keys)
    if stmt is None:
        stmt = (
            events.update()
            .where(
                events.c.id == sa.bindparam("b_pk"),
                events.c.status == RUNNING,
                events.c.lease_owner == sa.bindparam("b_holder"),
            )
            .values({k: sa.bindparam(f"b_{k}") for k in keys})
        )
        _FINISH_STATEMENTS[keys] = stmt
    return stmt


def _write_ledger(
    conn: Connection, event_pk: int, calls: Sequence[LedgerWrite], now: float
) -> None:
    for call in calls:
        params: dict[str, Any] = {
            "b_pk": event_pk,
            "b_plugin": call.plugin,
            "b_stage": call.stage,
            "b_status": call.status,
            "b_error": call.error,
            "b_now": now,
        }
        if not call.counts_attempt:
            conn.execute(_LEDGER_MOVE, params)
            continue
        params["b_data"] = _dumps(call.data) if call.data else None
        params["b_duration"] = call.duration_ms
        bumped = call.exists is not False and conn.execute(_LEDGER_BUMP, params)
        if not (bumped and bumped.rowcount):
            conn.execute(_LEDGER_INSERT, params)


def _stored_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table("schema_meta"):
        return None
    found = conn.execute(
        sa.select(schema_meta.c.value).where(schema_meta.c.key == "version")
    ).scalar()
    return None if found is None else int(found)


def _insert_rows_sqlite(raw: Any, rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Insert event rows durably on a pooled SQLite connection, in one statement; the
    (event_key, id) of each row stored, none for keys already there.

    One statement outside BEGIN is its own transaction, committed (with an fsync, at
    synchronous=FULL) by the step that returns its last row. Inside BEGIN the same
    insert would need a statement journal, which SQLite writes to a temporary file.
    """
    db = raw.driver_connection
    if raw.info.get("synchronous") != "FULL":
        db.execute("PRAGMA synchronous=FULL")
        raw.info["synchronous"] = "FULL"
    statement = _sqlite_insert(tuple(rows[0]), len(rows))
    values = [value for row in rows for value in row.values()]
    found: list[tuple[str, int]] = db.execute(statement, values).fetchall()
    return found


@functools.lru_cache(maxsize=256)
def _sqlite_insert(columns: tuple[str, ...], count: int) -> str:
    """One multi-row INSERT of ``count`` events, skipping keys already stored."""
    row = "(" + ", ".join("?" * len(columns)) + ")"
    return (
        f"INSERT INTO {events.name} ({', '.join(columns)}) "
        f"VALUES {', '.join([row] * count)} "
        "ON CONFLICT (event_key) DO NOTHING RETURNING event_key, id"
    )
