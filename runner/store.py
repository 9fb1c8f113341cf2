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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

__all__ = [
    "ActionRow",
    "EventRow",
    "LedgerRow",
    "PluginActivity",
    "Store",
    "StoreUnavailable",
    "database_url",
]

log = logging.getLogger("agentmail_runner.store")

# Each release that changes the schema adds a step: MIGRATIONS[n] upgrades a database at
# version n - 1 to version n in place, so that no stored event is lost by an upgrade.
# Version 1 is the first schema and has no step.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}

# The channel on which PostgreSQL tells workers in other processes of a new event.
NOTIFY_CHANNEL = "agentmail_runner_events"

# An arbitrary constant: the advisory lock that serialises schema changes on PostgreSQL.
_SCHEMA_LOCK = 0x616D72


def schema_version() -> int:
    """The schema version this release writes."""
    return max([1, *MIGRATIONS])


metadata = sa.MetaData()

# BIGINT keys on PostgreSQL; SQLite needs INTEGER for its rowid alias.
_Key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", _Key, primary_key=True, autoincrement=True),
    sa.Column("event_key", sa.String(320), nullable=False, unique=True),
    sa.Column("event_id", sa.String(300)),
    sa.Column("delivery_id", sa.String(300)),
    sa.Column("event_type", sa.String(200), nullable=False, default=""),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("scheme", sa.String(20), nullable=False, default=""),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(120)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("finished_at", sa.Float),
    sa.Index("ix_events_claim", "status", "next_attempt_at"),
    sa.Index("ix_events_received", "received_at"),
)

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", _Key, primary_key=True, autoincrement=True),
    sa.Column(
        "event_pk", _Key, sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("plugin", sa.String(200), nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("data", sa.Text),
    sa.Column("duration_ms", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("event_pk", "plugin", "stage", name="uq_ledger_call"),
)

actions = sa.Table(
    "actions",
    metadata,
    sa.Column("id", _Key, primary_key=True, autoincrement=True),
    sa.Column(
        "event_pk", _Key, sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("plugin", sa.String(200), nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.String(256), nullable=False, unique=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("inbox_id", sa.String(320)),
    sa.Column("thread_id", sa.String(320)),
    sa.Column("recipient", sa.String(320)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("executed_at", sa.Float),
    sa.Index("ix_actions_event", "event_pk"),
    sa.Index("ix_actions_thread", "thread_id", "kind", "status"),
    sa.Index("ix_actions_recipient", "recipient", "kind", "status"),
)

plugin_state = sa.Table(
    "plugin_state",
    metadata,
    sa.Column("plugin", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(500), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

schema_meta = sa.Table(
    "schema_meta",
    metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)

# Event statuses. "pending" waits for next_attempt_at; "running" holds a lease.
PENDING, RUNNING, DONE, DEAD = "pending", "running", "done", "dead"
# Action statuses.
PLANNED, EXECUTED, FAILED, VETOED, RECORDED = (
    "planned",
    "done",
    "failed",
    "vetoed",
    "recorded",
)


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


def database_url(value: str) -> str:
    """A SQLAlchemy URL from a database setting: a URL, or a path to a SQLite file."""
    if "://" in value:
        if value.startswith("postgres://"):
            value = "postgresql://" + value.removeprefix("postgres://")
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value
    return f"sqlite:///{Path(value).expanduser()}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class Store:
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
            .returning(events.c.id, events.c.event_key)
        )
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
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(str(exc.orig)) from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction: on SQLite (WAL) it runs beside the writer."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(amr_read_only=True)
                with conn.begin():
                    yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(str(exc.orig)) from exc

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
        with self._tx(durable=True) as conn:
            found = conn.execute(self._insert_events, rows).all()
            stored = {key: pk for pk, key in found}
            if any(e.dead_reason is None and e.event_key in stored for e in batch):
                self._notify(conn)
        result: list[int | None] = []
        for e in batch:
            result.append(stored.pop(e.event_key, None))
        return result

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
        with self._tx() as conn:
            row = conn.execute(_CLAIM, params).first()
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
        fixed their cause. False when the event is neither dead nor failing.
        """
        now = time.time() if now is None else now
        failing = sa.and_(events.c.status == PENDING, events.c.last_error.is_not(None))
        with self._tx(durable=True) as conn:
            result = conn.execute(
                events.update()
                .where(
                    events.c.id == event_pk,
                    sa.or_(events.c.status == DEAD, failing),
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

    def select_events(
        self, *, status: str | None = None, event_type: str | None = None
    ) -> list[tuple[int, str]]:
        """(row number, status) of every matching event, oldest first; no payloads,
        so that selecting many events stays cheap."""
        query = sa.select(events.c.id, events.c.status).order_by(events.c.id)
        if status:
            query = query.where(events.c.status == status)
        if event_type:
            query = query.where(events.c.event_type == event_type)
        with self._read() as conn:
            return [(int(r.id), str(r.status)) for r in conn.execute(query).all()]

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
        """Replies sent (or recorded in dry-run) since a time, in a thread or to one."""
        query = sa.select(sa.func.count()).where(
            actions.c.kind == "reply",
            actions.c.status.in_([EXECUTED, RECORDED]),
            actions.c.executed_at >= since,
        )
        if thread_id is not None:
            query = query.where(actions.c.thread_id == thread_id)
        if recipient is not None:
            query = query.where(actions.c.recipient == recipient)
        with self._read() as conn:
            return int(conn.execute(query).scalar() or 0)

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

    def get_event(self, ref: str | int) -> EventRow | None:
        """An event by its row number, event id, delivery id or stored key."""
        query = sa.select(events)
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            query = query.where(events.c.id == int(ref))
        else:
            query = query.where(
                sa.or_(
                    events.c.event_key == ref,
                    events.c.event_id == ref,
                    events.c.delivery_id == ref,
                )
            )
        with self._read() as conn:
            row = conn.execute(query.order_by(events.c.id.desc()).limit(1)).first()
        return EventRow.from_row(row) if row is not None else None

    def list_events(
        self,
        *,
        limit: int = 50,
        status: str | None = None,
        event_type: str | None = None,
        before: int | None = None,
        search: str | None = None,
    ) -> list[EventRow]:
        """Newest first; ``search`` finds text in the keys, the type or the payload."""
        query = sa.select(events).order_by(events.c.id.desc()).limit(limit)
        if status:
            query = query.where(events.c.status == status)
        if event_type:
            query = query.where(events.c.event_type == event_type)
        if before:
            query = query.where(events.c.id < before)
        if search:
            query = query.where(
                sa.or_(
                    *(
                        column.icontains(search, autoescape=True)
                        for column in (
                            events.c.event_key,
                            events.c.delivery_id,
                            events.c.event_type,
                            events.c.payload,
                        )
                    )
                )
            )
        with self._read() as conn:
            return [EventRow.from_row(r) for r in conn.execute(query).all()]

    def count_by_status(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(events.c.status, sa.func.count()).group_by(events.c.status)
            ).all()
        return {str(status): int(n) for status, n in rows}

    def event_types(self) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(events.c.event_type).distinct().order_by(events.c.event_type)
            ).all()
        return [str(r.event_type) for r in rows if r.event_type]

    def event_counts(
        self, *, since: float, bucket_seconds: float
    ) -> dict[int, tuple[int, int]]:
        """Events received per time bucket since ``since``: {bucket: (all, failing)}.

        An event is failing when it is a dead letter or its last attempt failed.
        """
        offset = (events.c.received_at - since) / bucket_seconds
        if self.dialect == "sqlite":
            bucket = sa.cast(offset, sa.Integer)  # truncation: offset is not negative
        else:
            bucket = sa.cast(sa.func.floor(offset), sa.Integer)
        failing = sa.or_(events.c.status == DEAD, events.c.last_error.is_not(None))
        query = (
            sa.select(
                bucket.label("bucket"),
                sa.func.count().label("received"),
                sa.func.sum(sa.case((failing, 1), else_=0)).label("failing"),
            )
            .where(events.c.received_at >= since)
            .group_by(bucket)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return {int(r.bucket): (int(r.received), int(r.failing or 0)) for r in rows}

    def plugin_activity(self, *, since: float) -> list[PluginActivity]:
        """Each plugin's ledger since ``since``: calls by status, last success, last
        error."""
        failed = ledger.c.status.in_(["failed", "permanent"])  # the dispatcher's
        recent = ledger.c.updated_at >= since
        latest_error = (
            sa.select(ledger.c.plugin, sa.func.max(ledger.c.updated_at).label("at"))
            .where(recent, failed)
            .group_by(ledger.c.plugin)
            .subquery()
        )
        with self._read() as conn:
            counts = conn.execute(
                sa.select(ledger.c.plugin, ledger.c.status, sa.func.count())
                .where(recent)
                .group_by(ledger.c.plugin, ledger.c.status)
            ).all()
            successes = dict(
                conn.execute(
                    sa.select(ledger.c.plugin, sa.func.max(ledger.c.updated_at))
                    .where(recent, ~failed)
                    .group_by(ledger.c.plugin)
                ).all()
            )
            same = sa.and_(
                ledger.c.plugin == latest_error.c.plugin,
                ledger.c.updated_at == latest_error.c.at,
            )
            errors = conn.execute(
                sa.select(ledger.c.plugin, ledger.c.updated_at, ledger.c.error)
                .join(latest_error, same)
                .where(failed)
            ).all()
        calls: dict[str, dict[str, int]] = {}
        for plugin, status, n in counts:
            calls.setdefault(plugin, {})[status] = int(n)
        last_error = {r.plugin: (r.updated_at, r.error) for r in errors}
        return [
            PluginActivity(
                plugin=plugin,
                calls=by_status,
                last_success_at=successes.get(plugin),
                last_error_at=last_error.get(plugin, (None, None))[0],
                last_error=last_error.get(plugin, (None, None))[1],
            )
            for plugin, by_status in sorted(calls.items())
        ]

    def oldest_due(self, *, now: float | None = None) -> float | None:
        """When the oldest event still waiting became due (for queue lag)."""
        now = time.time() if now is None else now
        with self._read() as conn:
            return conn.execute(
                sa.select(sa.func.min(events.c.next_attempt_at)).where(
                    events.c.status == PENDING, events.c.next_attempt_at <= now
                )
            ).scalar()

    def next_due(self) -> float | None:
        with self._read() as conn:
            return conn.execute(
                sa.select(sa.func.min(events.c.next_attempt_at)).where(
                    events.c.status == PENDING
                )
            ).scalar()

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


# The statements of the hot path, built once: constructing SQLAlchemy expressions costs
# more than executing them on SQLite.
def _event_state(conn: Connection, event_pk: int) -> EventState:
    calls = conn.execute(_LEDGER_OF, {"b_pk": event_pk}).all()
    planned = conn.execute(_ACTIONS_OF, {"b_pk": event_pk}).all()
    return (
        {(r.plugin, r.stage): _ledger_row(r) for r in calls},
        [_action_row(r) for r in planned],
    )


def _claim_statement() -> Any:
    now: Any = sa.bindparam("b_now")
    due = (
        sa.select(events.c.id)
        .where(
            sa.or_(
                sa.and_(events.c.status == PENDING, events.c.next_attempt_at <= now),
                sa.and_(events.c.status == RUNNING, events.c.lease_expires_at < now),
            )
        )
        .order_by(events.c.next_attempt_at, events.c.id)
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


_CLAIM = _claim_statement()
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


_sqlite_lock = threading.Lock()


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)

    engine = sa.create_engine(
        url,
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=16,
        max_overflow=16,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy's BEGIN is then the only transaction control: it can be IMMEDIATE.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        with _sqlite_lock:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("amr_read_only"):
            conn.exec_driver_sql("BEGIN")
            return
        level = "FULL" if options.get("amr_durable") else "NORMAL"
        info = conn.connection.info
        if info.get("synchronous") != level:
            conn.exec_driver_sql(f"PRAGMA synchronous={level}")
            info["synchronous"] = level
        # Take the write lock up front: two deferred transactions that both upgrade to
        # writers would otherwise fail with "database is locked" instead of waiting.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
