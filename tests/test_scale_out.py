"""Many workers on one store: claims never overlap, other processes are woken, and a
schema upgrade keeps every stored event. Runs on the suite's engine (SQLite or
PostgreSQL); the cross-process wake-up needs PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from runner import store as st
from tests.conftest import ENGINE, database_for, deliver, load_payload


def _fill(store: st.Store, count: int) -> None:
    for i in range(count):
        store.insert_event(
            event_key=f"evt-{i}",
            event_id=f"evt-{i}",
            delivery_id=None,
            event_type="message.received",
            payload="{}",
            scheme="svix",
        )


def test_concurrent_claims_never_hand_one_event_to_two_workers(tmp_path: Path):
    store = st.Store(database_for(tmp_path))
    _fill(store, 60)
    claimed: dict[str, list[int]] = {}

    def claimer(owner: str) -> None:
        mine = claimed.setdefault(owner, [])
        while (row := store.claim(owner, 60)) is not None:
            mine.append(row.pk)
            store.complete(row.pk, owner)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    everything = [pk for pks in claimed.values() for pk in pks]
    assert sorted(everything) == sorted(set(everything))
    assert len(everything) == 60
    assert store.count_by_status() == {"done": 60}
    store.close()


@pytest.mark.skipif(
    ENGINE != "postgresql", reason="only PostgreSQL wakes workers in other processes"
)
def test_a_worker_elsewhere_is_woken_by_notify_not_by_polling(make_runtime, double):
    web = make_runtime(workers=0)
    elsewhere = make_runtime(poll_seconds=30)  # polling alone would take 30 s
    elsewhere.start_workers(1)
    time.sleep(0.5)  # let the listener connect

    started = time.monotonic()
    assert deliver(web, load_payload("message-received.json")).status_code == 200
    double.wait_for(lambda: double.sent, timeout=10)

    assert time.monotonic() - started < 5
    assert len(double.sent) == 1


def test_an_upgrade_in_place_keeps_every_stored_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    url = database_for(tmp_path)
    old = st.Store(url)
    _fill(old, 5)
    old.close()

    def add_priority(conn: sa.Connection) -> None:
        conn.execute(sa.text("ALTER TABLE events ADD COLUMN priority INTEGER"))

    following = st.schema_version() + 1
    monkeypatch.setitem(st.MIGRATIONS, following, add_priority)
    upgraded = st.Store(url)

    with upgraded.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT value FROM schema_meta")).scalar()
        columns = {c["name"] for c in sa.inspect(conn).get_columns("events")}
    assert version == str(following)
    assert "priority" in columns
    assert [r.event_key for r in upgraded.list_events()] == [
        f"evt-{i}" for i in reversed(range(5))
    ]
    upgraded.close()


def test_a_store_newer_than_the_release_refuses_to_start(tmp_path: Path):
    url = database_for(tmp_path)
    store = st.Store(url)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_meta SET value = '99'"))
    store.close()

    with pytest.raises(st.StoreUnavailable, match="schema version 99, newer than"):
        st.Store(url)


def test_a_version_1_store_gains_the_lease_index_and_keeps_its_events(
    tmp_path: Path,
):
    url = database_for(tmp_path)
    old = st.Store(url)
    _fill(old, 3)
    with old.engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_events_lease"))
        conn.execute(sa.text("UPDATE schema_meta SET value = '1'"))
    old.close()

    upgraded = st.Store(url)

    with upgraded.engine.connect() as conn:
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("events")}
        version = conn.execute(sa.text("SELECT value FROM schema_meta")).scalar()
    assert "ix_events_lease" in indexes
    assert version == "2"
    assert len(upgraded.list_events()) == 3
    upgraded.close()


def test_an_expired_lease_is_claimed_before_newer_due_work(tmp_path: Path):
    store = st.Store(database_for(tmp_path))
    _fill(store, 2)
    first = store.claim("dies", 10)
    assert first is not None

    again = store.claim("survivor", 10, now=first.lease_expires_at + 1)

    assert again is not None
    assert (again.pk, again.attempts) == (first.pk, 2)
    store.close()
