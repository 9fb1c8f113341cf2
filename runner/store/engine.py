"""Engines: SQLite in WAL mode with one writer per process, or PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


def database_url(value: str) -> str:
    """A SQLAlchemy URL from a database setting: a URL, or a path to a SQLite file."""
    if "://" in value:
        if value.startswith("postgres://"):
            value = "postgresql://" + value.removeprefix("postgres://")
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value
    return f"sqlite:///{Path(value).expanduser()}"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL (None for another engine or in memory)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (
        None,
        "",
        ":memory:",
    ):
        return None
    return Path(parsed.database)


_sqlite_lock = threading.Lock()


def _make_engine(url: str) -> Engine:
    # A database error names its statement but never its values: they hold message
    # text, drafted replies and addresses, and such errors end up in the logs.
    if not url.startswith("sqlite"):
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            hide_parameters=True,
        )

    engine = sa.create_engine(
        url,
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=16,
        max_overflow=16,
        hide_parameters=True,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy's BEGIN is then the only transaction control: it can be IMMEDIATE.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        with _sqlite_lock:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # With foreign keys on, a write inside BEGIN keeps a statement journal; in
        # memory, rather than in a new temporary file for every transaction.
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Straight to the driver: these run before every transaction, and going
        # through SQLAlchemy's execution path costs more than SQLite does.
        options = conn.get_execution_options()
        db: Any = conn.connection.driver_connection
        if options.get("amr_read_only"):
            db.execute("BEGIN")
            return
        level = "FULL" if options.get("amr_durable") else "NORMAL"
        info = conn.connection.info
        if info.get("synchronous") != level:
            db.execute(f"PRAGMA synchronous={level}")
            info["synchronous"] = level
        # Take the write lock up front: two deferred transactions that both upgrade to
        # writers would otherwise fail with "database is locked" instead of waiting.
        db.execute("BEGIN IMMEDIATE")

    return engine
