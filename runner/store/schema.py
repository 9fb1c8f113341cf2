"""The store's tables, statuses and schema versions."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# Each release that changes the schema adds a step: MIGRATIONS[n] upgrades a database at
# version n - 1 to version n in place, so that no stored event is lost by an upgrade.
# Version 1 is the first schema and has no step.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}

# The channel on which PostgreSQL tells workers in other processes of a new event.
NOTIFY_CHANNEL = "agentmail_runner_events"

# An arbitrary constant: the advisory lock that serialises schema changes on PostgreSQL.
_SCHEMA_LOCK = 0x616D72
# Another: the one that serialises the reply caps' check-and-reserve.
_REPLY_CAPS_LOCK = 0x616D7263


def schema_version() -> int:
    """The schema version this release writes."""
    return max([1, *MIGRATIONS])


metadata = sa.MetaData()

# BIGINT keys on PostgreSQL; SQLite needs INTEGER for its rowid alias.
_Key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# The largest row number either engine's key holds (SQLite's INTEGER, PostgreSQL's
# BIGINT): a larger number names no event.
MAX_EVENT_NUMBER = 2**63 - 1

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
    sa.Index("ix_events_lease", "status", "lease_expires_at"),
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
# Action statuses. "sending" is a reply that passed the caps and is on its way: it
# counts against them until it is done (or, failed, no longer counts).
PLANNED, EXECUTED, FAILED, VETOED, RECORDED, SENDING = (
    "planned",
    "done",
    "failed",
    "vetoed",
    "recorded",
    "sending",
)


def _index_expired_leases(conn: Connection) -> None:
    """Version 2: a worker finds expired leases through an index of their own."""
    index = next(i for i in events.indexes if i.name == "ix_events_lease")
    index.create(conn, checkfirst=True)


MIGRATIONS[2] = _index_expired_leases
