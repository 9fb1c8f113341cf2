"""Read-only queries for operators: listing, searching, counting events."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runner.store.rows import EventRow, PluginActivity
from runner.store.schema import DEAD, MAX_EVENT_NUMBER, PENDING, events, ledger


class StoreQueries:
    """The store's read-only listing and counting, for the CLI, dashboard, metrics."""

    dialect: str
    _read: Callable[[], AbstractContextManager[Connection]]

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

    def get_event(self, ref: str | int) -> EventRow | None:
        """An event by its row number (an int, or "#12"), else by its event id,
        delivery id or stored key; digits alone that match none of those are taken
        as a row number ("1" may well be an event id)."""
        if isinstance(ref, int):
            if ref > MAX_EVENT_NUMBER:
                return None
            return self._event_where(events.c.id == ref)
        if ref.startswith("#") and ref[1:].isdigit():
            number = _row_number(ref[1:])
            return None if number is None else self._event_where(events.c.id == number)
        found = self._event_where(
            sa.or_(
                events.c.event_key == ref,
                events.c.event_id == ref,
                events.c.delivery_id == ref,
            )
        )
        if found is None and (number := _row_number(ref)) is not None:
            found = self._event_where(events.c.id == number)
        return found

    def _event_where(self, condition: Any) -> EventRow | None:
        query = sa.select(events).where(condition).order_by(events.c.id.desc()).limit(1)
        with self._read() as conn:
            row = conn.execute(query).first()
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


def _row_number(digits: str) -> int | None:
    """``digits`` as a row number, or None when no event can have it (a number
    beyond the keys' range, or digits other than 0-9, such as "²")."""
    if not (digits.isascii() and digits.isdigit()):
        return None
    number = int(digits)
    return number if number <= MAX_EVENT_NUMBER else None
