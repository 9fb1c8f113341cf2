"""The store: dedup, leases, pruning, plugin state and the schema version."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from runner import store as st
from runner.store import (
    DEAD,
    DONE,
    PENDING,
    RUNNING,
    PlannedAction,
    Store,
    StoreUnavailable,
)
from tests.conftest import database_for

HOUR = 3600.0
T0 = 1_800_000_000.0  # a fixed "now" for tests that pass explicit times


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(database_for(tmp_path))
    yield s
    s.close()


def add_event(store: Store, key: str, *, now: float = T0) -> int | None:
    return store.insert_event(
        event_key=key,
        event_id=key,
        delivery_id=f"msg_{key}",
        event_type="message.received",
        payload='{"event_type": "message.received"}',
        scheme="svix",
        now=now,
    )


def finish(store: Store, key: str, *, at: float, dead: bool = False) -> int:
    """Store an event and take it to done (or dead) at ``at``, with a ledger row
    and an action, as a worker would."""
    pk = add_event(store, key, now=at)
    assert pk is not None
    assert store.claim("w", 60, now=at) is not None
    store.record_call(
        pk,
        plugin="p",
        stage="act",
        status="acted",
        error=None,
        data={"k": "v"},
        duration_ms=1.0,
        planned=[PlannedAction(0, "add_labels", {"kind": "add_labels"}, f"key-{key}")],
        now=at,
    )
    if dead:
        assert store.bury(pk, "w", "gave up", now=at)
    else:
        assert store.complete(pk, "w", now=at)
    return pk


# -- dedup -----------------------------------------------------------------------------


def test_a_store_error_names_the_statement_but_not_the_values(store: Store) -> None:
    marker = "Thanks for your email about the invoice"
    with pytest.raises(sa.exc.DBAPIError) as raised, store.engine.connect() as conn:
        conn.execute(
            sa.text("SELECT * FROM no_such_table WHERE x = :text"), {"text": marker}
        )

    assert "no_such_table" in str(raised.value)
    assert marker not in str(raised.value)


def test_a_duplicate_event_key_is_not_stored_again(store: Store) -> None:
    first = add_event(store, "evt-1")

    assert isinstance(first, int)
    assert add_event(store, "evt-1") is None
    assert store.count_by_status() == {PENDING: 1}


def test_concurrent_inserts_of_one_key_store_it_exactly_once(tmp_path: Path) -> None:
    path = database_for(tmp_path)
    stores = [Store(path) for _ in range(4)]  # as if in several processes
    barrier = threading.Barrier(16)
    results: list[int | None] = []
    lock = threading.Lock()

    def insert(index: int) -> None:
        target = stores[index % len(stores)]
        barrier.wait()
        for key in ("same", f"own-{index}"):
            pk = add_event(target, key)
            with lock:
                results.append(pk if key == "same" else -1)

    threads = [threading.Thread(target=insert, args=(i,)) for i in range(16)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        same = [r for r in results if r != -1]
        assert len(same) == 16
        assert len([r for r in same if r is not None]) == 1
        assert stores[0].count_by_status() == {PENDING: 17}
    finally:
        for s in stores:
            s.close()


# -- claims and leases -----------------------------------------------------------------


def test_a_claim_takes_the_due_event_under_a_lease_and_counts_the_attempt(
    store: Store,
) -> None:
    pk = add_event(store, "evt-1")

    row = store.claim("worker-a", 300, now=T0)

    assert row is not None
    assert (row.pk, row.status, row.lease_owner) == (pk, RUNNING, "worker-a")
    assert row.lease_expires_at == T0 + 300
    assert row.attempts == 1
    assert store.claim("worker-b", 300, now=T0 + 299) is None


def test_an_event_not_yet_due_is_not_claimed(store: Store) -> None:
    add_event(store, "evt-1", now=T0 + 10)

    assert store.claim("worker-a", 300, now=T0) is None
    assert store.claim("worker-a", 300, now=T0 + 10) is not None


def test_an_expired_lease_is_claimed_by_another_owner(store: Store) -> None:
    pk = add_event(store, "evt-1")
    assert store.claim("worker-a", 300, now=T0) is not None

    row = store.claim("worker-b", 300, now=T0 + 301)

    assert row is not None
    assert (row.pk, row.lease_owner, row.attempts) == (pk, "worker-b", 2)


def test_the_old_owner_cannot_renew_or_complete_a_lease_it_lost(store: Store) -> None:
    pk = add_event(store, "evt-1")
    assert store.claim("worker-a", 300, now=T0) is not None
    assert store.renew_lease(pk, "worker-a", 300, now=T0 + 100)
    assert store.claim("worker-b", 300, now=T0 + 401) is not None

    assert not store.renew_lease(pk, "worker-a", 300, now=T0 + 402)
    assert not store.complete(pk, "worker-a")
    assert not store.bury(pk, "worker-a", "no")
    assert not store.reschedule(pk, "worker-a", next_attempt_at=T0, error="no")

    row = store.get_event(pk)
    assert row is not None
    assert (row.status, row.lease_owner) == (RUNNING, "worker-b")
    assert store.complete(pk, "worker-b")


def test_a_renewed_lease_is_not_claimed_by_another_owner(store: Store) -> None:
    pk = add_event(store, "evt-1")
    assert store.claim("worker-a", 300, now=T0) is not None

    assert store.renew_lease(pk, "worker-a", 300, now=T0 + 250)

    assert store.claim("worker-b", 300, now=T0 + 301) is None
    assert store.claim("worker-b", 300, now=T0 + 551) is not None


def test_release_gives_the_event_back_without_counting_the_attempt(
    store: Store,
) -> None:
    pk = add_event(store, "evt-1")
    assert store.claim("worker-a", 300, now=T0) is not None

    assert store.release(pk, "worker-a")

    row = store.get_event(pk)
    assert row is not None
    assert (row.status, row.attempts, row.lease_owner) == (PENDING, 0, None)
    again = store.claim("worker-b", 300, now=T0)
    assert again is not None
    assert again.attempts == 1
    assert not store.release(pk, "worker-a")


# -- pruning ---------------------------------------------------------------------------


def test_prune_forgets_finished_events_past_retention_and_their_ledger_and_actions(
    store: Store,
) -> None:
    now = T0 + 1000 * HOUR
    old_done = finish(store, "old-done", at=now - 100 * HOUR)
    young_done = finish(store, "young-done", at=now - 50 * HOUR)
    old_dead = finish(store, "old-dead", at=now - 800 * HOUR, dead=True)
    young_dead = finish(store, "young-dead", at=now - 100 * HOUR, dead=True)
    old_pending = add_event(store, "old-pending", now=now - 900 * HOUR)

    removed = store.prune(
        retention_seconds=72 * HOUR, dead_retention_seconds=720 * HOUR, now=now
    )

    assert removed == 2
    assert store.get_event(old_done) is None
    assert store.get_event(old_dead) is None
    for pk in (old_done, old_dead):
        assert store.ledger_for(pk) == {}
        assert store.actions_for(pk) == []
    for pk, status in ((young_done, DONE), (young_dead, DEAD)):
        row = store.get_event(pk)
        assert row is not None
        assert row.status == status
        assert list(store.ledger_for(pk)) == [("p", "act")]
        assert len(store.actions_for(pk)) == 1
    assert old_pending is not None
    pending = store.get_event(old_pending)
    assert pending is not None
    assert pending.status == PENDING


def test_a_pruned_key_can_be_stored_again(store: Store) -> None:
    finish(store, "evt-1", at=T0)
    assert add_event(store, "evt-1", now=T0 + HOUR) is None

    store.prune(
        retention_seconds=72 * HOUR,
        dead_retention_seconds=720 * HOUR,
        now=T0 + 73 * HOUR,
    )

    assert add_event(store, "evt-1", now=T0 + 73 * HOUR) is not None


def test_prune_keeps_a_running_event_whatever_its_age(store: Store) -> None:
    pk = add_event(store, "evt-1", now=T0)
    assert store.claim("w", 300, now=T0) is not None

    store.prune(retention_seconds=1, dead_retention_seconds=1, now=T0 + 1000 * HOUR)

    row = store.get_event(pk)
    assert row is not None
    assert row.status == RUNNING


# -- plugin state ----------------------------------------------------------------------


def test_plugin_state_keeps_json_values_per_plugin(store: Store) -> None:
    assert store.state_get("bounces", "a@x") is None

    store.state_set("bounces", "a@x", {"count": 1, "kinds": ["Permanent"]})
    store.state_set("bounces", "a@x", {"count": 2, "kinds": ["Permanent"]})
    store.state_set("other", "a@x", "theirs")

    assert store.state_get("bounces", "a@x") == {"count": 2, "kinds": ["Permanent"]}
    assert store.state_get("other", "a@x") == "theirs"


def test_plugin_state_items_are_sorted_and_filtered_by_a_literal_prefix(
    store: Store,
) -> None:
    for key in ("s:b@x", "s:a@x", "s_%:c@x", "t:a@x"):
        store.state_set("p", key, key.upper())
    store.state_set("q", "s:z@x", "not mine")

    assert store.state_items("p", "s:") == [("s:a@x", "S:A@X"), ("s:b@x", "S:B@X")]
    assert store.state_items("p", "s_%") == [("s_%:c@x", "S_%:C@X")]
    assert [k for k, _ in store.state_items("p")] == [
        "s:a@x",
        "s:b@x",
        "s_%:c@x",
        "t:a@x",
    ]


def test_plugin_state_delete_says_whether_the_key_was_there(store: Store) -> None:
    store.state_set("p", "k", 1)

    assert store.state_delete("p", "k") is True
    assert store.state_delete("p", "k") is False
    assert store.state_get("p", "k") is None


# -- the schema ------------------------------------------------------------------------


def stored_version(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(
            sa.select(st.schema_meta.c.value).where(st.schema_meta.c.key == "version")
        ).scalar()


def test_the_schema_version_is_recorded_and_a_reopened_store_keeps_it(
    tmp_path: Path,
) -> None:
    path = database_for(tmp_path)
    first = Store(path)
    assert add_event(first, "evt-1") is not None
    first.close()

    second = Store(path)
    try:
        assert stored_version(second) == str(st.schema_version())
        assert add_event(second, "evt-1") is None
    finally:
        second.close()


def test_a_database_with_a_newer_schema_refuses_to_start(tmp_path: Path) -> None:
    path = database_for(tmp_path)
    store = Store(path)
    newer = st.schema_version() + 1
    with store.engine.begin() as conn:
        conn.execute(
            st.schema_meta.update()
            .where(st.schema_meta.c.key == "version")
            .values(value=str(newer))
        )
    store.close()

    message = (
        f"the database has schema version {newer}, newer than this release's "
        f"{st.schema_version()}: upgrade agentmail-runner"
    )
    with pytest.raises(StoreUnavailable, match=re.escape(message)):
        Store(path).close()


def test_an_event_id_of_digits_is_found_as_an_event_id_and_a_hash_means_a_row(
    tmp_path: Path,
) -> None:
    store = Store(database_for(tmp_path))
    first = add_event(store, "evt-a")
    second = add_event(store, str(first))  # an event whose id is "1" (or so)
    assert first is not None and second is not None

    by_id = store.get_event(str(first))
    by_row = store.get_event(f"#{first}")
    fallback = store.get_event(str(second))

    assert by_id is not None and by_id.pk == second
    assert by_row is not None and by_row.pk == first
    assert fallback is not None and fallback.pk == second
    store.close()
