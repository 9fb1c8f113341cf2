"""The inbox is the queue: events, leases, the per-plugin ledger, actions, plugin state.

One store holds the truth, written with SQLAlchemy Core so that one schema serves
SQLite (the embedded default, WAL) and PostgreSQL. An event is committed before the
webhook is acknowledged; workers claim it with a lease that expires if they die; the
ledger records each plugin call so that a retry re-runs only what did not succeed; the
action log records each intended action, with its idempotency key, before it executes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runner.store.engine import _make_engine, database_url, sqlite_file
from runner.store.queries import StoreQueries
from runner.store.rows import (
    ActionRow,
    EventRow,
    EventState,
    LedgerRow,
    LedgerWrite,
    NewEvent,
    PlannedAction,
    PluginActivity,
    StoreUnavailable,
    _action_row,
    _dumps,
    _ledger_row,
)
from runner.store.schema import (
    _REPLY_CAPS_LOCK,
    _SCHEMA_LOCK,
    DEAD,
    DONE,
    EXECUTED,
    FAILED,
    MAX_EVENT_NUMBER,
    MIGRATIONS,
    NOTIFY_CHANNEL,
    PENDING,
    PLANNED,
    RECORDED,
    RUNNING,
    SENDING,
    VETOED,
    actions,
    events,
    ledger,
    metadata,
    plugin_state,
    schema_meta,
    schema_version,
)
from runner.store.sql import (
    _CLAIM_DUE,
    _CLAIM_EXPIRED,
    _event_state,
    _finish_statement,
    _insert_rows_sqlite,
    _stored_version,
    _write_ledger,
)

__all__ = [
    "DEAD",
    "DONE",
    "EXECUTED",
    "FAILED",
    "MAX_EVENT_NUMBER",
    "MIGRATIONS",
    "NOTIFY_CHANNEL",
    "PENDING",
    "PLANNED",
    "RECORDED",
    "RUNNING",
    "SENDING",
    "VETOED",
    "ActionRow",
    "EventRow",
    "EventState",
    "LedgerRow",
    "LedgerWrite",
    "NewEvent",
    "PlannedAction",
    "PluginActivity",
    "Store",
    "StoreUnavailable",
    "database_url",
    "metadata",
    "missing_file",
    "schema_version",
]

log = logging.getLogger("agentmail_runner.store")

# What a store that cannot be reached raises: through SQLAlchemy, or from SQLite's
# driver where the store calls it directly (the ingest insert, BEGIN).
_UNAVAILABLE = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(str(getattr(exc, "orig", None) or exc))


def _undo_dry_run(conn: Connection, event_pk: int, now: float) -> None:
    """Plan again what a dry run only recorded, and reopen the calls that planned it."""
    conn.execute(
        actions.update()
        .where(actions.c.event_pk == event_pk, actions.c.status == RECORDED)
        .values(status=PLANNED)
    )
    replanned = sa.exists().where(
        actions.c.event_pk == event_pk,
        actions.c.plugin == ledger.c.plugin,
        actions.c.stage == ledger.c.stage,
        actions.c.status == PLANNED,
    )
    conn.execute(
        ledger.update()
        .where(ledger.c.event_pk == event_pk, ledger.c.status == "succeeded", replanned)
        .values(status="acted", updated_at=now)
    )


def missing_file(database: str) -> str | None:
    """The file a SQLite database setting names, when there is none yet: commands
    that only look at or change stored events say so rather than create it."""
    path = sqlite_file(database_url(database))
    return str(path.absolute()) if path is not None and not path.exists() else None


def _count_replies(
    conn: Connection,
    since: float,
    thread_id: str | None,
    recipient: str | None,
    excluding: int | None = None,
) -> int:
    query = sa.select(sa.func.count()).where(
        actions.c.kind == "reply",
        actions.c.status.in_([EXECUTED, RECORDED, SENDING]),
        actions.c.executed_at >= since,
    )
    if thread_id is not None:
        query = query.where(actions.c.thread_id == thread_id)
    if recipient is not None:
        query = query.where(actions.c.recipient == recipient)
    if excluding is not None:
        query = query.where(actions.c.id != excluding)
    return int(conn.execute(query).scalar() or 0)


class Store(StoreQueries):
    """All reads and writes of the runner's state."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = database_url(url)
        self.engine = _make_engine(self.url)
        self.dialect = self.engine.dialect.name
        # Built once and executed with many parameter sets: SQLAlchemy then sends one
        # multi-row INSERT from its compiled cache instead of compiling each batch.
        self._insert_events = (
            self._insert(events)
            .on_conflict_do_nothing(index_elements=["event_key"])
            .returning(events.c.event_key, events.c.id)
        )
        self._next_expiry_check = 0.0
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )
        if create:
            try:
                self.create_schema()
            except BaseException:
                self.engine.dispose()
                raise

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self, *, durable: bool = False) -> Iterator[Connection]:
        """A write transaction.

        ``durable`` commits survive power loss, not only a killed process: on SQLite
        they fsync the log, which also makes every earlier commit durable. Take it for
        what others rely on (an acknowledged delivery, an action about to be sent,
        plugin state); a lost claim or completion only means doing again, under the
        same idempotency keys, what was already done.

        On SQLite, one writer at a time per process: waiting on this lock is fair and
        immediate, where SQLite's own busy handler sleeps in steps of up to 100 ms.
        """
        try:
            with self._write_lock, self.engine.connect() as conn:
                conn.execution_options(amr_durable=durable)
                with conn.begin():
                    yield conn
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction: on SQLite (WAL) it runs beside the writer."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(amr_read_only=True)
                with conn.begin():
                    yield conn
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    def create_schema(self) -> None:
        """Create the tables, or upgrade an older schema in place; one transaction."""
        target = schema_version()
        with self._tx() as conn:
            if self.dialect == "postgresql":
                # Several processes may start at once; one creates or upgrades.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            found = _stored_version(conn)
            if found is None:
                metadata.create_all(conn)
                conn.execute(
                    schema_meta.insert().values(key="version", value=str(target))
                )
                return
            if found > target:
                raise StoreUnavailable(
                    f"the database has schema version {found}, newer than this "
                    f"release's {target}: upgrade agentmail-runner"
                )
            for version in range(found + 1, target + 1):
                log.warning("upgrading the store's schema to version %d", version)
                MIGRATIONS[version](conn)
            metadata.create_all(conn)
            if found != target:
                conn.execute(
                    schema_meta.update()
                    .where(schema_meta.c.key == "version")
                    .values(value=str(target))
                )

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(sa.select(1))

    # -- ingress ---------------------------------------------------------------

    def insert_event(
        self,
        *,
        event_key: str,
        event_id: str | None,
        delivery_id: str | None,
        event_type: str,
        payload: str,
        scheme: str,
        dead_reason: str | None = None,
        now: float | None = None,
    ) -> int | None:
        """Store a delivered event; None when its key is already stored."""
        new = NewEvent(
            event_key=event_key,
            event_id=event_id,
            delivery_id=delivery_id,
            event_type=event_type,
            payload=payload,
            scheme=scheme,
            dead_reason=dead_reason,
        )
        return self.insert_events([new], now=now)[0]

    def insert_events(
        self, batch: Sequence[NewEvent], *, now: float | None = None
    ) -> list[int | None]:
        """Store delivered events in one durable transaction (one fsync for all).

        Returns each event's row number, or None for a duplicate: a key already
        stored, or one that an earlier entry of the same batch carries.
        """
        now = time.time() if now is None else now
        rows = [
            {
                "event_key": e.event_key,
                "event_id": e.event_id,
                "delivery_id": e.delivery_id,
                "event_type": e.event_type,
                "payload": e.payload,
                "scheme": e.scheme,
                "status": DEAD if e.dead_reason else PENDING,
                "attempts": 0,
                "received_at": now,
                "next_attempt_at": now,
                "last_error": e.dead_reason,
                "finished_at": now if e.dead_reason else None,
            }
            for e in batch
        ]
        if self.dialect == "sqlite":
            stored = dict(self._insert_on_sqlite(rows))
        else:
            with self._tx(durable=True) as conn:
                found = conn.execute(self._insert_events, rows).all()
                stored = {key: pk for key, pk in found}
                if any(e.dead_reason is None and e.event_key in stored for e in batch):
                    self._notify(conn)
        result: list[int | None] = []
        for e in batch:
            result.append(stored.pop(e.event_key, None))
        return result

    def _insert_on_sqlite(self, rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
        """The ingest's insert on SQLite, through the driver.

        Every webhook waits for this statement, and SQLAlchemy's execution path costs
        more per delivery than SQLite's insert and commit. The connection still comes
        from the engine's pool (same pragmas, same disposal) and the same writer lock
        is held; the transaction is the durable kind.
        """
        try:
            with self._write_lock:
                raw = self.engine.raw_connection()
                try:
                    return _insert_rows_sqlite(raw, rows)
                finally:
                    raw.close()
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    def _notify(self, conn: Connection) -> None:
        """Wake workers in other processes (PostgreSQL delivers it at commit)."""
        if self.dialect == "postgresql":
            conn.execute(sa.text(f"NOTIFY {NOTIFY_CHANNEL}"))

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    # -- claims and leases -----------------------------------------------------

    def claim(
        self, owner: str, lease_seconds: float, *, now: float | None = None
    ) -> EventRow | None:
        """Take the next due event (or one whose lease expired) under a new lease."""
        claimed = self.claim_with_state(owner, lease_seconds, now=now)
        return claimed[0] if claimed is not None else None

    def claim_with_state(
        self, owner: str, lease_seconds: float, *, now: float | None = None
    ) -> tuple[EventRow, EventState] | None:
        """``claim``, and the event's ledger and action log read in the same
        transaction (what a worker needs next, without a second round trip)."""
        now = time.time() if now is None else now
        params = {"b_now": now, "b_owner": owner, "b_expires": now + lease_seconds}
        # Leases last at least seconds, so looking for expired ones once a second is
        # soon enough, and spares every other claim a statement.
        look_for_expired = now >= self._next_expiry_check
        if look_for_expired:
            self._next_expiry_check = now + 1.0
        with self._tx() as conn:
            row = None
            if look_for_expired:
                row = conn.execute(_CLAIM_EXPIRED, params).first()
            if row is None:
                row = conn.execute(_CLAIM_DUE, params).first()
            if row is None:
                return None
            state = _event_state(conn, row._mapping["id"])
        return EventRow.from_row(row), state

    def renew_lease(
        self,
        event_pk: int,
        owner: str,
        lease_seconds: float,
        *,
        now: float | None = None,
    ) -> bool:
        """Extend a lease; False when it was lost (expired and claimed by another)."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            result = conn.execute(
                events.update()
                .where(self._held(event_pk, owner))
                .values(lease_expires_at=now + lease_seconds)
            )
            return bool(result.rowcount)

    def _held(self, event_pk: int, owner: str) -> Any:
        return sa.and_(
            events.c.id == event_pk,
            events.c.status == RUNNING,
            events.c.lease_owner == owner,
        )

    # complete, reschedule and bury end an attempt. ``ledger`` carries the calls the
    # attempt did not have to record at once (those that planned no action): they are
    # written in the same transaction, and only while the lease is still held.

    def complete(
        self,
        event_pk: int,
        owner: str,
        *,
        ledger: Sequence[LedgerWrite] = (),
        now: float | None = None,
    ) -> bool:
        now = time.time() if now is None else now
        return self._finish(
            event_pk, owner, ledger, status=DONE, last_error=None, finished_at=now
        )

    def reschedule(
        self,
        event_pk: int,
        owner: str,
        *,
        next_attempt_at: float,
        error: str,
        ledger: Sequence[LedgerWrite] = (),
    ) -> bool:
        return self._finish(
            event_pk,
            owner,
            ledger,
            status=PENDING,
            next_attempt_at=next_attempt_at,
            last_error=error,
        )

    def bury(
        self,
        event_pk: int,
        owner: str,
        reason: str,
        *,
        ledger: Sequence[LedgerWrite] = (),
        now: float | None = None,
    ) -> bool:
        """Move an event to the dead-letter list."""
        now = time.time() if now is None else now
        return self._finish(
            event_pk, owner, ledger, status=DEAD, last_error=reason, finished_at=now
        )

    def release(self, event_pk: int, owner: str) -> bool:
        """Give a lease back untouched (shutdown): the attempt does not count."""
        return self._finish(
            event_pk,
            owner,
            (),
            status=PENDING,
            attempts=sa.func.max(events.c.attempts - 1, 0)
            if self.dialect == "sqlite"
            else sa.func.greatest(events.c.attempts - 1, 0),
        )

    def _finish(
        self,
        event_pk: int,
        owner: str,
        calls: Sequence[LedgerWrite],
        **values: Any,
    ) -> bool:
        values.update(lease_owner=None, lease_expires_at=None)
        with self._tx() as conn:
            if any(isinstance(v, sa.ColumnElement) for v in values.values()):
                stmt = events.update().where(self._held(event_pk, owner)).values(values)
                result = conn.execute(stmt)
            else:
                params = {f"b_{k}": v for k, v in values.items()}
                params.update(b_pk=event_pk, b_holder=owner)
                result = conn.execute(_finish_statement(tuple(sorted(values))), params)
            if result.rowcount and calls:
                _write_ledger(conn, event_pk, calls, time.time())
            return bool(result.rowcount)

    def requeue(self, event_pk: int, *, now: float | None = None) -> bool:
        """Put a dead letter (or a finished event) back in the queue for a new try."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            result = conn.execute(
                events.update()
                .where(events.c.id == event_pk, events.c.status.in_([DEAD, DONE]))
                .values(
                    status=PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    finished_at=None,
                )
            )
            if result.rowcount:
                self._notify(conn)
            return bool(result.rowcount)

    # -- operator commands: retry, replay, drop --------------------------------

    def retry_event(self, event_pk: int, *, now: float | None = None) -> bool:
        """Queue a dead letter, or an event waiting to be retried, again at once.

        The ledger is kept, so what succeeded is not repeated. Calls and actions that
        failed for good get another chance: whoever asks for a retry has presumably
        fixed their cause. A finished event whose actions a dry run only recorded is
        queued too, and those actions are executed. False for anything else.
        """
        now = time.time() if now is None else now
        failing = sa.and_(events.c.status == PENDING, events.c.last_error.is_not(None))
        recorded = sa.and_(
            events.c.status == DONE,
            sa.exists().where(
                actions.c.event_pk == events.c.id, actions.c.status == RECORDED
            ),
        )
        with self._tx(durable=True) as conn:
            result = conn.execute(
                events.update()
                .where(
                    events.c.id == event_pk,
                    sa.or_(events.c.status == DEAD, failing, recorded),
                )
                .values(
                    status=PENDING, attempts=0, next_attempt_at=now, finished_at=None
                )
            )
            if not result.rowcount:
                return False
            # The dispatcher's words: a "permanent" call and a "rejected" action are
            # never tried again, a "failed" one is.
            conn.execute(
                ledger.update()
                .where(ledger.c.event_pk == event_pk, ledger.c.status == "permanent")
                .values(status="failed", updated_at=now)
            )
            conn.execute(
                actions.update()
                .where(actions.c.event_pk == event_pk, actions.c.status == "rejected")
                .values(status=FAILED)
            )
            _undo_dry_run(conn, event_pk, now)
            self._notify(conn)
            return True

    def replay_event(
        self, event_pk: int, prefix: str, *, now: float | None = None
    ) -> int | None:
        """Store a finished event again as ``PREFIX:KEY``, to be processed afresh.

        Idempotency keys derive from the event key, so every action of the copy is a
        new request to AgentMail; ``prefix`` must make the key new. The original, its
        ledger and its dedup key stay as they were. None when the event is not done
        or dead.
        """
        now = time.time() if now is None else now
        with self._tx(durable=True) as conn:
            original = conn.execute(
                sa.select(events).where(
                    events.c.id == event_pk, events.c.status.in_([DONE, DEAD])
                )
            ).first()
            if original is None:
                return None
            pk: int | None = conn.execute(
                events.insert()
                .values(
                    event_key=f"{prefix}:{original.event_key}"[:320],
                    event_id=original.event_id,
                    delivery_id=original.delivery_id,
                    event_type=original.event_type,
                    payload=original.payload,
                    scheme="replay",
                    status=PENDING,
                    attempts=0,
                    received_at=now,
                    next_attempt_at=now,
                )
                .returning(events.c.id)
            ).scalar()
            self._notify(conn)
            return pk

    def drop_dead_letter(self, event_pk: int) -> bool:
        """Delete a dead letter with its ledger and actions; False if it is not one.

        Its dedup key goes with it: AgentMail delivering the event again would be
        accepted as new.
        """
        dead = sa.and_(events.c.id == event_pk, events.c.status == DEAD)
        with self._tx(durable=True) as conn:
            if conn.execute(sa.select(events.c.id).where(dead)).first() is None:
                return False
            conn.execute(actions.delete().where(actions.c.event_pk == event_pk))
            conn.execute(ledger.delete().where(ledger.c.event_pk == event_pk))
            conn.execute(events.delete().where(dead))
            return True

    # -- ledger and actions ----------------------------------------------------

    def ledger_for(self, event_pk: int) -> dict[tuple[str, str], LedgerRow]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(ledger)
                .where(ledger.c.event_pk == event_pk)
                .order_by(ledger.c.id)
            ).all()
        return {(r.plugin, r.stage): _ledger_row(r) for r in rows}

    def record_call(
        self,
        event_pk: int,
        *,
        plugin: str,
        stage: str,
        status: str,
        error: str | None,
        data: dict[str, Any],
        duration_ms: float,
        planned: Sequence[PlannedAction] = (),
        now: float | None = None,
    ) -> None:
        """Record one plugin call and its intended actions in one transaction."""
        now = time.time() if now is None else now
        call = LedgerWrite(
            plugin=plugin,
            stage=stage,
            status=status,
            error=error,
            data=data,
            duration_ms=duration_ms,
        )
        with self._tx(durable=bool(planned)) as conn:
            _write_ledger(conn, event_pk, [call], now)
            for action in planned:
                conn.execute(
                    self._insert(actions)
                    .values(
                        event_pk=event_pk,
                        plugin=plugin,
                        stage=stage,
                        position=action.position,
                        kind=action.kind,
                        params=_dumps(action.params),
                        idempotency_key=action.idempotency_key,
                        status=PLANNED,
                        attempts=0,
                        inbox_id=action.inbox_id,
                        thread_id=action.thread_id,
                        recipient=action.recipient,
                        created_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["idempotency_key"])
                )

    def set_ledger_status(
        self, event_pk: int, plugin: str, stage: str, status: str, error: str | None
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                ledger.update()
                .where(
                    ledger.c.event_pk == event_pk,
                    ledger.c.plugin == plugin,
                    ledger.c.stage == stage,
                )
                .values(status=status, error=error, updated_at=time.time())
            )

    def event_state(self, event_pk: int) -> EventState:
        """An event's ledger and action log, read together."""
        with self._read() as conn:
            return _event_state(conn, event_pk)

    def actions_for(self, event_pk: int) -> list[ActionRow]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(actions)
                .where(actions.c.event_pk == event_pk)
                .order_by(actions.c.id)
            ).all()
        return [_action_row(r) for r in rows]

    def finish_action(
        self,
        action_pk: int,
        *,
        status: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        now: float | None = None,
    ) -> None:
        now = time.time() if now is None else now
        with self._tx() as conn:
            conn.execute(
                actions.update()
                .where(actions.c.id == action_pk)
                .values(
                    status=status,
                    attempts=actions.c.attempts + 1,
                    result=_dumps(result) if result is not None else None,
                    error=error,
                    executed_at=now,
                )
            )

    def count_replies(
        self,
        *,
        since: float,
        thread_id: str | None = None,
        recipient: str | None = None,
    ) -> int:
        """Replies sent, on their way, or recorded in dry-run since a time, in a
        thread or to one recipient."""
        with self._read() as conn:
            return _count_replies(conn, since, thread_id, recipient)

    def reserve_reply(
        self,
        action_pk: int,
        over_cap: Callable[[Callable[..., int]], str | None],
        *,
        now: float | None = None,
    ) -> str | None:
        """Check a reply against the caps and, when it passes, mark it as sending; one
        check at a time across every worker and process, so that replies sent at the
        same time cannot all pass a cap that only one more of them fits under.

        ``over_cap`` is given ``count_replies`` (without this action) and returns why
        the reply may not go, or None. Returns that reason.
        """
        now = time.time() if now is None else now
        with self._tx(durable=True) as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_REPLY_CAPS_LOCK)))

            def count(
                *,
                since: float,
                thread_id: str | None = None,
                recipient: str | None = None,
            ) -> int:
                return _count_replies(conn, since, thread_id, recipient, action_pk)

            reason = over_cap(count)
            if reason is None:
                conn.execute(
                    actions.update()
                    .where(actions.c.id == action_pk)
                    .values(status=SENDING, executed_at=now)
                )
            return reason

    # -- plugin state ----------------------------------------------------------

    def state_get(self, plugin: str, key: str) -> Any:
        with self._read() as conn:
            raw = conn.execute(
                sa.select(plugin_state.c.value).where(
                    plugin_state.c.plugin == plugin, plugin_state.c.key == key
                )
            ).scalar()
        return None if raw is None else json.loads(raw)

    def state_set(self, plugin: str, key: str, value: Any) -> None:
        stmt = self._insert(plugin_state).values(
            plugin=plugin, key=key, value=_dumps(value), updated_at=time.time()
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["plugin", "key"],
            set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
        )
        with self._tx(durable=True) as conn:
            conn.execute(stmt)

    def state_delete(self, plugin: str, key: str) -> bool:
        with self._tx(durable=True) as conn:
            result = conn.execute(
                plugin_state.delete().where(
                    plugin_state.c.plugin == plugin, plugin_state.c.key == key
                )
            )
            return bool(result.rowcount)

    def state_count(self, plugin: str, prefix: str = "") -> int:
        query = sa.select(sa.func.count()).where(
            plugin_state.c.plugin == plugin,
            plugin_state.c.key.startswith(prefix, autoescape=True),
        )
        with self._read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def state_items(self, plugin: str, prefix: str = "") -> list[tuple[str, Any]]:
        query = sa.select(plugin_state.c.key, plugin_state.c.value).where(
            plugin_state.c.plugin == plugin
        )
        if prefix:
            query = query.where(plugin_state.c.key.startswith(prefix, autoescape=True))
        with self._read() as conn:
            rows = conn.execute(query.order_by(plugin_state.c.key)).all()
        return [(r.key, json.loads(r.value)) for r in rows]

    # -- reading and housekeeping ----------------------------------------------

    def prune(
        self,
        *,
        retention_seconds: float,
        dead_retention_seconds: float,
        now: float | None = None,
    ) -> int:
        """Forget finished events (and so their dedup keys) past their retention."""
        now = time.time() if now is None else now
        old = sa.or_(
            sa.and_(
                events.c.status == DONE,
                events.c.finished_at < now - retention_seconds,
            ),
            sa.and_(
                events.c.status == DEAD,
                events.c.finished_at < now - dead_retention_seconds,
            ),
        )
        with self._tx() as conn:
            doomed = sa.select(events.c.id).where(old).scalar_subquery()
            conn.execute(actions.delete().where(actions.c.event_pk.in_(doomed)))
            conn.execute(ledger.delete().where(ledger.c.event_pk.in_(doomed)))
            result = conn.execute(events.delete().where(old))
            return int(result.rowcount)
