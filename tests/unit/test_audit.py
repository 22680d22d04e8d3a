"""The hash-chained audit log on SQLite and PostgreSQL: appends, idempotency, tamper detection."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, text

from core.audit import (
    GENESIS_HASH,
    AuditEntry,
    ChainReport,
    append,
    record_hash,
    verify_chain,
)
from core.store.db import Store
from core.store.models import AuditHeadRow, AuditRecordRow

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def entry(n: int, **overrides: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "event_id": f"keyrotor/key/test/k1#{n}",
        "at": T0 + timedelta(seconds=n),
        "actor": "workflow",
        "action": "key.rotated",
        "object_kind": "key",
        "object_id": "k1",
        "version": n,
        "reason": "scheduled",
        "details": {"grace_seconds": 3600, "emergency": False, "note": None, "by": "operator"},
    }
    fields.update(overrides)
    return AuditEntry(**fields)


def append_all(store: Store, entries: list[AuditEntry]) -> None:
    for e in entries:
        with store.write() as s:
            append(s, e)


def verify(store: Store, batch_size: int = 1000) -> ChainReport:
    with store.session() as s:
        return verify_chain(s, batch_size=batch_size)


def records(store: Store) -> list[AuditRecordRow]:
    with store.session() as s:
        return list(s.scalars(select(AuditRecordRow).order_by(AuditRecordRow.seq)))


def execute(store: Store, sql: str, **params: Any) -> None:
    """Tamper with the table directly, as an attacker with database access would."""
    with store.write() as s:
        s.execute(text(sql), params)


# -- the hash -------------------------------------------------------------------------------------


def test_record_hash_is_sha256_of_the_canonical_json() -> None:
    e = AuditEntry(
        event_id="ev-1",
        at=datetime(2025, 1, 2, 4, 4, 5, 6, tzinfo=timezone(timedelta(hours=1))),
        actor="alice",
        action="key.created",
        object_kind="key",
        object_id="k1",
        version=1,
        reason="grüße",
        details={"b": 1, "a": True, "c": None},
    )
    canonical = (
        '{"action":"key.created","actor":"alice","at":"2025-01-02T03:04:05.000006Z",'
        '"details":{"a":true,"b":1,"c":null},"event_id":"ev-1","object_id":"k1",'
        '"object_kind":"key","prev_hash":"' + "ab" * 32 + '","reason":"grüße","version":1}'
    )
    assert record_hash("ab" * 32, e) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_record_hash_depends_on_every_field_but_not_on_the_time_zone() -> None:
    base = entry(1)
    same_instant = entry(1, at=base.at.astimezone(timezone(timedelta(hours=-7))))
    assert record_hash(GENESIS_HASH, same_instant) == record_hash(GENESIS_HASH, base)
    variants = [
        entry(1, event_id="other"),
        entry(1, at=base.at + timedelta(microseconds=1)),
        entry(1, actor="mallory"),
        entry(1, action="key.revoked"),
        entry(1, object_kind="credential"),
        entry(1, object_id="k2"),
        entry(1, version=None),
        entry(1, reason="compromise"),
        entry(1, details={**base.details, "emergency": True}),
        entry(1, details={**base.details, "grace_seconds": "3600"}),
    ]
    hashes = {record_hash(GENESIS_HASH, v) for v in variants}
    assert record_hash(GENESIS_HASH, base) not in hashes
    assert len(hashes) == len(variants)
    assert record_hash("1" * 64, base) != record_hash(GENESIS_HASH, base)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"at": datetime(2025, 1, 1)}, "timezone-aware"),
        ({"details": {"ratio": 0.5}}, "must be str, int, bool or None"),
        ({"details": {"nested": {"a": 1}}}, "must be str, int, bool or None"),
        ({"event_id": ""}, "event_id must not be empty"),
        ({"action": ""}, "action must not be empty"),
        ({"actor": "x" * 201}, "actor is longer than 200"),
        ({"object_id": "x" * 65}, "object_id is longer than 64"),
        ({"version": True}, "version must be an int"),
    ],
)
def test_invalid_entries_are_rejected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        entry(1, **overrides)


def test_an_unnamed_actor_is_recorded_as_given() -> None:
    # An operator's signal may carry no actor; that must not block the transition it records.
    assert entry(1, actor="").actor == ""


def test_entry_keeps_its_own_copy_of_details() -> None:
    details: dict[str, str | int | bool | None] = {"a": 1}
    e = entry(1, details=details)
    before = record_hash(GENESIS_HASH, e)
    details["a"] = 2
    assert record_hash(GENESIS_HASH, e) == before


# -- appending ------------------------------------------------------------------------------------


def test_empty_chain_verifies(store: Store) -> None:
    assert verify(store) == ChainReport(True, 0, GENESIS_HASH, None, "")


def test_append_builds_a_valid_chain(store: Store) -> None:
    entries = [entry(n) for n in range(1, 6)]
    append_all(store, entries)

    rows = records(store)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    prev = GENESIS_HASH
    for row, e in zip(rows, entries, strict=True):
        assert row.event_id == e.event_id
        assert row.at == e.at
        assert row.details == dict(e.details)
        assert row.prev_hash == prev
        assert row.hash == record_hash(prev, e)
        prev = row.hash
    with store.session() as s:
        head = s.get_one(AuditHeadRow, 1)
        assert (head.seq, head.hash) == (5, rows[-1].hash)
    assert verify(store) == ChainReport(True, 5, rows[-1].hash, None, "")


def test_append_returns_the_sequence_number_of_the_stored_record(store: Store) -> None:
    with store.write() as s:
        assert append(s, entry(1)) == 1
        assert append(s, entry(2)) == 2
    first = records(store)[0]
    assert (first.seq, first.prev_hash, first.hash) == (
        1,
        GENESIS_HASH,
        record_hash(GENESIS_HASH, entry(1)),
    )


def test_same_event_id_twice_stores_one_record(store: Store) -> None:
    with store.write() as s:
        first = append(s, entry(1))
    with store.write() as s:
        # A retried activity, even with a later timestamp, gets the original record back.
        again = append(s, entry(1, at=T0 + timedelta(hours=1), reason="retry"))
    with store.write() as s:
        append(s, entry(2))
    assert again == first == 1
    assert records(store)[0].reason == "scheduled"
    assert [r.event_id for r in records(store)] == [entry(1).event_id, entry(2).event_id]
    assert verify(store).ok


def test_same_event_id_twice_in_one_transaction_stores_one_record(store: Store) -> None:
    with store.write() as s:
        a = append(s, entry(1))
        b = append(s, entry(1))
    assert a == b == 1
    assert len(records(store)) == 1


def test_rolled_back_append_leaves_no_gap(store: Store) -> None:
    append_all(store, [entry(1)])
    with pytest.raises(RuntimeError, match="transition failed"), store.write() as s:
        append(s, entry(2))
        raise RuntimeError("transition failed")
    append_all(store, [entry(3)])
    assert [r.seq for r in records(store)] == [1, 2]
    assert [r.event_id for r in records(store)] == [entry(1).event_id, entry(3).event_id]
    assert verify(store).ok


def test_append_outside_write_is_refused_on_sqlite(sqlite_store: Store) -> None:
    with (
        pytest.raises(RuntimeError, match=r"inside Store\.write\(\)"),
        sqlite_store.session() as s,
        s.begin(),
    ):
        append(s, entry(1))
    assert records(sqlite_store) == []


# -- tampering ------------------------------------------------------------------------------------


@pytest.fixture
def chain(store: Store) -> Store:
    append_all(store, [entry(n) for n in range(1, 7)])
    assert verify(store).ok
    return store


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "mallory"),
        ("reason", "manual"),
        ("version", 99),
        ("object_id", "k2"),
        ("event_id", "forged"),
    ],
)
def test_a_tampered_field_breaks_that_record(chain: Store, column: str, value: object) -> None:
    execute(chain, f"UPDATE audit_records SET {column} = :v WHERE seq = 3", v=value)
    report = verify(chain)
    assert (report.ok, report.first_broken_seq, report.checked) == (False, 3, 2)
    assert report.reason == "record 3: hash does not match its content"


def test_a_tampered_timestamp_breaks_that_record(chain: Store) -> None:
    with chain.write() as s:
        row = s.get_one(AuditRecordRow, 4)
        row.at = row.at + timedelta(microseconds=1)
    report = verify(chain)
    assert (report.first_broken_seq, report.reason) == (
        4,
        "record 4: hash does not match its content",
    )


def test_tampered_details_break_that_record(chain: Store) -> None:
    execute(
        chain,
        "UPDATE audit_records SET details = :v WHERE seq = 2",
        v='{"grace_seconds": 0, "emergency": false, "note": null, "by": "operator"}',
    )
    report = verify(chain)
    assert (report.first_broken_seq, report.reason) == (
        2,
        "record 2: hash does not match its content",
    )


def test_a_deleted_record_shows_as_a_gap(chain: Store) -> None:
    execute(chain, "DELETE FROM audit_records WHERE seq = 3")
    report = verify(chain)
    assert (report.ok, report.first_broken_seq, report.checked) == (False, 3, 2)
    assert report.reason == "record 3 missing (gap in sequence)"


def test_a_deleted_first_record_shows_as_a_gap(chain: Store) -> None:
    execute(chain, "DELETE FROM audit_records WHERE seq = 1")
    report = verify(chain)
    assert (report.first_broken_seq, report.reason) == (1, "record 1 missing (gap in sequence)")


def test_a_deleted_last_record_is_caught_by_the_head(chain: Store) -> None:
    execute(chain, "DELETE FROM audit_records WHERE seq = 6")
    report = verify(chain)
    assert (report.ok, report.first_broken_seq, report.checked) == (False, 6, 5)
    assert report.reason == "head points at record 6 but the last record is 5"


def test_a_changed_prev_hash_breaks_the_link(chain: Store) -> None:
    execute(chain, "UPDATE audit_records SET prev_hash = :v WHERE seq = 4", v="f" * 64)
    report = verify(chain)
    assert (report.first_broken_seq, report.reason) == (
        4,
        "record 4: prev_hash does not match record 3",
    )


def test_a_changed_first_prev_hash_breaks_the_link_to_genesis(chain: Store) -> None:
    execute(chain, "UPDATE audit_records SET prev_hash = :v WHERE seq = 1", v="f" * 64)
    report = verify(chain)
    assert (report.first_broken_seq, report.reason) == (
        1,
        "record 1: prev_hash does not match the genesis hash",
    )


def test_a_rewritten_record_with_a_recomputed_hash_breaks_the_next_link(chain: Store) -> None:
    forged = entry(3, actor="mallory")
    with chain.session() as s:
        prev = s.get_one(AuditRecordRow, 2).hash
    execute(
        chain,
        "UPDATE audit_records SET actor = 'mallory', hash = :h WHERE seq = 3",
        h=record_hash(prev, forged),
    )
    report = verify(chain)
    assert (report.first_broken_seq, report.reason) == (
        4,
        "record 4: prev_hash does not match record 3",
    )


def test_a_rewound_head_is_caught(chain: Store) -> None:
    with chain.session() as s:
        h4 = s.get_one(AuditRecordRow, 4).hash
    execute(chain, "UPDATE audit_head SET seq = 4, hash = :h", h=h4)
    report = verify(chain)
    assert (report.first_broken_seq, report.reason) == (
        5,
        "record 6 is past the head (record 4)",
    )


def test_a_head_with_the_wrong_hash_is_caught(chain: Store) -> None:
    execute(chain, "UPDATE audit_head SET hash = :h", h="e" * 64)
    report = verify(chain)
    assert (report.first_broken_seq, report.reason) == (6, "head hash does not match record 6")


def test_a_missing_head_is_caught(chain: Store) -> None:
    execute(chain, "DELETE FROM audit_head")
    report = verify(chain)
    assert (report.ok, report.first_broken_seq) == (False, 1)
    assert report.reason == "the audit head is missing but records exist"


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 6, 7])
def test_verification_in_batches_sees_breaks_at_batch_boundaries(
    chain: Store, batch_size: int
) -> None:
    assert verify(chain, batch_size=batch_size) == verify(chain)
    execute(chain, "DELETE FROM audit_records WHERE seq = 5")
    report = verify(chain, batch_size=batch_size)
    assert (report.first_broken_seq, report.reason) == (5, "record 5 missing (gap in sequence)")


def test_batch_size_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        verify(store, batch_size=0)


# -- concurrency ----------------------------------------------------------------------------------


def run_threads(count: int, target: Any) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            start.wait()
            target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_appends_form_one_unforked_chain(store: Store) -> None:
    threads, per_thread = 8, 25

    def appender(i: int) -> None:
        for n in range(per_thread):
            with store.write() as s:
                append(s, entry(n, event_id=f"t{i}-{n}", object_id=f"k{i}"))

    assert run_threads(threads, appender) == []

    rows = records(store)
    assert [r.seq for r in rows] == list(range(1, threads * per_thread + 1))
    assert {r.event_id for r in rows} == {
        f"t{i}-{n}" for i in range(threads) for n in range(per_thread)
    }
    prev_hashes = [r.prev_hash for r in rows]
    assert len(set(prev_hashes)) == len(rows)  # no two records claim the same predecessor
    assert prev_hashes == [GENESIS_HASH] + [r.hash for r in rows[:-1]]
    report = verify(store, batch_size=64)
    assert report == ChainReport(True, 200, rows[-1].hash, None, "")


def test_concurrent_appends_of_the_same_events_store_each_once(store: Store) -> None:
    def appender(_: int) -> None:
        for n in range(10):
            with store.write() as s:
                append(s, entry(n))

    assert run_threads(6, appender) == []
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditRecordRow)) == 10
    assert verify(store).ok


def test_verification_while_appending_sees_a_consistent_chain(store: Store) -> None:
    reports: list[ChainReport] = []

    def work(i: int) -> None:
        if i == 0:
            for _ in range(10):
                reports.append(verify(store, batch_size=7))
        else:
            for n in range(20):
                with store.write() as s:
                    append(s, entry(n, event_id=f"t{i}-{n}"))

    assert run_threads(4, work) == []
    assert reports and all(r.ok for r in reports), [r.reason for r in reports if not r.ok]
    assert verify(store).checked == 60
