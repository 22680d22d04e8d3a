"""Store: migrations match the models, SQLite settings, datetimes, write transactions."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Index, MetaData, String, delete, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, StatementError

from core.store.db import Store, normalize_url, sqlite_url
from core.store.models import AdminKeyRow, Base, ImportedLookupRow, KeyRow, KeyVersionRow

EXPECTED_TABLES = {
    "keys",
    "key_versions",
    "audit_records",
    "audit_head",
    "events",
    "admin_keys",
    "credentials",
    "credential_versions",
    "warnings",
    "webhooks",
    "webhook_deliveries",
    "bulk_operations",
    "bulk_targets",
    "policy_versions",
    "master_key_retirements",
    "rate_limit_windows",
    "archived_credentials",
    "imported_lookups",
    "store_secrets",
}
NOW = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def schema_diff(store: Store, metadata: MetaData = Base.metadata) -> list[Any]:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def admin_key(id_: str, created_at: datetime = NOW) -> AdminKeyRow:
    return AdminKeyRow(
        id=id_,
        name=id_,
        role="admin",
        salt=b"s",
        secret_hash=b"h",
        pepper_id="mk-test",
        created_at=created_at,
    )


def key_row(id_: str) -> KeyRow:
    return KeyRow(
        id=id_,
        environment="test",
        type="aes",
        algorithm="AES-256-GCM",
        provider="local",
        status="active",
        workflow_id=f"keyrotor/key/test/{id_}",
        created_at=NOW,
        updated_at=NOW,
    )


def version_row(key_id: str, number: int) -> KeyVersionRow:
    return KeyVersionRow(
        key_id=key_id,
        number=number,
        state="active",
        algorithm="AES-256-GCM",
        provider="local",
        created_at=NOW,
        rotate_at=NOW,
        warn_at=NOW,
        hard_expiry=NOW,
        state_changed_at=NOW,
    )


def count(store: Store, row: type[Base]) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(row)) or 0


# -- migrations ---------------------------------------------------------------------------------


def test_migrate_creates_exactly_the_model_schema(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert tables == EXPECTED_TABLES | {"alembic_version"}
    assert schema_diff(store) == []


def test_schema_comparison_detects_drift(store: Store) -> None:
    """The comparison above is not vacuous: a changed model shows up as a difference."""
    drifted = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["keys"].c.name.type = String(201)
    Index("ix_admin_keys_name", drifted.tables["admin_keys"].c.name)
    kinds = {
        diff[0] if isinstance(diff, tuple) else diff[0][0] for diff in schema_diff(store, drifted)
    }
    assert kinds == {"modify_type", "add_index"}


def test_migrate_twice_is_a_no_op(store: Store) -> None:
    with store.write() as s:
        s.add(admin_key("a1"))
    store.migrate()
    assert schema_diff(store) == []
    assert count(store, AdminKeyRow) == 1
    with store.session() as s:
        assert s.scalars(text("SELECT version_num FROM alembic_version")).all() == ["0013"]


def test_concurrent_migrations_on_a_new_database_migrate_once(database_url: str) -> None:
    stores = [Store(database_url) for _ in range(4)]
    errors: list[BaseException] = []

    def run(s: Store) -> None:
        try:
            s.migrate()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert schema_diff(stores[0]) == []
    finally:
        for s in stores:
            s.dispose()


def test_imports_stored_before_migration_0013_are_marked_unkeyed(database_url: str) -> None:
    """Their lookup ids were an unkeyed hash: 0013 marks them so, and verification keeps
    looking presented keys up that way (core.api_credentials)."""
    store = Store(database_url)
    try:
        store.migrate("0012")
        with store.write() as s:
            s.execute(
                text(
                    "INSERT INTO imported_lookups (lookup_id, credential_id, imported_at)"
                    " VALUES ('before0013', 'cred_before', :at)"
                ),
                {"at": NOW},
            )
        store.migrate()
        with store.write() as s:
            s.add(
                ImportedLookupRow(
                    lookup_id="after0013", credential_id="cred_after", imported_at=NOW
                )
            )
        with store.session() as s:
            keyed = dict(
                s.execute(select(ImportedLookupRow.lookup_id, ImportedLookupRow.keyed)).all()
            )
        assert keyed == {"before0013": False, "after0013": True}
    finally:
        store.dispose()


# -- SQLite settings ----------------------------------------------------------------------------


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_busy_timeout(sqlite_store: Store) -> None:
    with sqlite_store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


def test_sqlite_creates_the_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "keyrotor.db"
    s = Store(sqlite_url(path))
    try:
        s.migrate()
        assert path.is_file()
    finally:
        s.dispose()


def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(IntegrityError), store.write() as s:
        s.add(version_row("no-such-key", 1))
    with store.write() as s:
        s.add(key_row("k1"))
        s.flush()
        s.add(version_row("k1", 1))
    with store.write() as s:
        s.execute(delete(KeyRow).where(KeyRow.id == "k1"))
    assert count(store, KeyVersionRow) == 0  # ON DELETE CASCADE


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgres://keyrotor:s3cret@db.example:5432/keyrotor",
        "postgresql://keyrotor:s3cret@db.example:5432/keyrotor",
        "postgresql+psycopg://keyrotor:s3cret@db.example:5432/keyrotor",
    ],
)
def test_postgres_urls_use_psycopg_and_hide_the_password(url: str) -> None:
    s = Store(url)  # creating the engine does not connect
    try:
        assert s.url == "postgresql+psycopg://keyrotor:s3cret@db.example:5432/keyrotor"
        assert s.engine.dialect.driver == "psycopg"
        assert s.safe_url == "postgresql+psycopg://keyrotor:***@db.example:5432/keyrotor"
        assert "s3cret" not in repr(s)
    finally:
        s.dispose()


def test_sqlite_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_url(Path("data/k.db")) == f"sqlite:///{tmp_path}/data/k.db"
    assert normalize_url(sqlite_url(Path("data/k.db"))) == f"sqlite:///{tmp_path}/data/k.db"


# -- datetimes ----------------------------------------------------------------------------------


def test_aware_datetimes_round_trip_as_utc(store: Store) -> None:
    plus_two = datetime(2025, 6, 1, 14, 30, 15, 654321, tzinfo=timezone(timedelta(hours=2)))
    with store.write() as s:
        s.add(admin_key("a1", created_at=plus_two))
    with store.session() as s:
        got = s.scalars(select(AdminKeyRow.created_at)).one()
    assert got == plus_two
    assert got.tzinfo is UTC
    assert got.replace(tzinfo=None) == datetime(2025, 6, 1, 12, 30, 15, 654321)


def test_datetimes_compare_in_utc_in_queries(store: Store) -> None:
    base = datetime(2025, 1, 1, 12, tzinfo=UTC)
    with store.write() as s:
        s.add(admin_key("early", created_at=base))
        # 13:00+05:00 is 08:00Z, earlier than `base` though its wall-clock time is later.
        s.add(
            admin_key(
                "earlier", created_at=datetime(2025, 1, 1, 13, tzinfo=timezone(timedelta(hours=5)))
            )
        )
    with store.session() as s:
        ids = s.scalars(select(AdminKeyRow.id).order_by(AdminKeyRow.created_at)).all()
        later = s.scalars(
            select(AdminKeyRow.id).where(AdminKeyRow.created_at > base - timedelta(hours=1))
        ).all()
    assert ids == ["earlier", "early"]
    assert later == ["early"]


def test_naive_datetimes_are_rejected(store: Store) -> None:
    with pytest.raises(StatementError, match="naive datetime") as caught, store.write() as s:
        s.add(admin_key("a1", created_at=datetime(2025, 1, 1)))
    assert isinstance(caught.value.orig, ValueError)
    assert count(store, AdminKeyRow) == 0


# -- write transactions -------------------------------------------------------------------------


def test_write_commits_on_success(store: Store) -> None:
    with store.write() as s:
        s.add(admin_key("a1"))
        s.add(admin_key("a2"))
    with store.session() as s:
        assert s.scalars(select(AdminKeyRow.id).order_by(AdminKeyRow.id)).all() == ["a1", "a2"]


def test_write_rolls_back_on_error(store: Store) -> None:
    with store.write() as s:
        s.add(admin_key("kept"))

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.write() as s:
        s.add(admin_key("lost"))
        s.flush()  # the row reached the database inside the transaction
        assert s.scalar(select(func.count()).select_from(AdminKeyRow)) == 2
        raise Boom
    with store.session() as s:
        assert s.scalars(select(AdminKeyRow.id)).all() == ["kept"]


def test_objects_stay_readable_after_commit(store: Store) -> None:
    with store.write() as s:
        row = admin_key("a1")
        s.add(row)
    assert row.name == "a1"  # expire_on_commit=False: no reload from a closed session


def _database_path(store: Store) -> str:
    path = make_url(store.url).database
    assert path
    return path


def test_sqlite_write_takes_the_write_lock_at_begin(sqlite_store: Store) -> None:
    other = sqlite3.connect(_database_path(sqlite_store), timeout=0, isolation_level=None)
    try:
        with sqlite_store.session() as s:
            s.execute(select(AdminKeyRow)).all()  # a read-only transaction: no write lock
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        with sqlite_store.write() as s:
            s.execute(select(AdminKeyRow)).all()  # only a read so far, yet the lock is held
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_sqlite_concurrent_writers_queue_instead_of_failing(sqlite_store: Store) -> None:
    """Read-then-write transactions from many threads: none gets "database is locked"."""
    with sqlite_store.write() as s:
        s.add(key_row("k1"))
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(20):
                with sqlite_store.write() as s:
                    key = s.get_one(KeyRow, "k1")
                    current = key.current_version
                    time.sleep(0.0005)  # widen the read-modify-write window
                    key.current_version = current + 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=bump) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sqlite_store.session() as s:
        assert s.get_one(KeyRow, "k1").current_version == 120  # no lost update


# --- group commit (Store.write_batched) -------------------------------------------------------


def test_batched_writes_are_exact_and_share_commits(store: Store) -> None:
    """64 threads take one use each of a budget of 40 at once: exactly 40 succeed, the budget
    ends at 0, and the uses in flight together shared commits."""
    from sqlalchemy import event

    with store.write() as s:
        s.execute(text("CREATE TABLE budget (id INTEGER PRIMARY KEY, remaining INTEGER)"))
        s.execute(text("INSERT INTO budget VALUES (1, 40)"))
    take = text(
        "UPDATE budget SET remaining = remaining - 1 WHERE id = 1 AND remaining > 0"
        " RETURNING remaining"
    )
    commits = 0

    def count(_: Any) -> None:
        nonlocal commits
        commits += 1

    event.listen(store.engine, "commit", count)
    start = threading.Barrier(64)
    answers: list[int | None] = []

    def use() -> None:
        start.wait()
        answers.append(store.write_batched(lambda db: db.execute(take).scalar_one_or_none()))

    threads = [threading.Thread(target=use) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    event.remove(store.engine, "commit", count)
    assert sorted(a for a in answers if a is not None) == list(range(40))  # 39, 38, ..., 0
    assert answers.count(None) == 24
    with store.session() as s:
        assert s.scalar(text("SELECT remaining FROM budget")) == 0
    assert commits < 64, commits  # a commit per use would be 64


def test_a_failed_batched_write_raises_and_the_next_one_runs(store: Store) -> None:
    with pytest.raises(StatementError):
        store.write_batched(lambda db: db.execute(text("UPDATE no_such_table SET x = 1")))
    assert store.write_batched(lambda db: db.execute(text("SELECT 7")).scalar_one()) == 7


def test_batches_that_deadlock_are_run_again(database_url: str) -> None:
    # Two processes' group commits lock the same two rows in opposite orders: PostgreSQL
    # rolls one back (deadlock_detected) and write_batched runs it again, so both count once.
    # (On SQLite writers take turns, so there is nothing to roll back.)
    stores = [Store(database_url), Store(database_url)]
    stores[0].migrate()
    bump = text(
        "INSERT INTO rate_limit_windows (client, resets_at, hits) VALUES (:c, 1e12, 1)"
        " ON CONFLICT (client) DO UPDATE SET hits = rate_limit_windows.hits + 1"
    )
    with stores[0].write() as s:
        for client in ("x", "y"):
            s.execute(bump, {"c": client})
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def both(first: str, then: str) -> Any:
        def statement(db: Any) -> None:
            db.execute(bump, {"c": first})
            try:
                barrier.wait(timeout=2)  # both hold their first row now (the retry: no one)
            except threading.BrokenBarrierError:
                pass
            db.execute(bump, {"c": then})

        return statement

    def run(store: Store, first: str, then: str) -> None:
        try:
            store.write_batched(both(first, then))
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=(stores[0], "x", "y")),
        threading.Thread(target=run, args=(stores[1], "y", "x")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with stores[0].engine.connect() as db:
        hits = dict(db.execute(text("SELECT client, hits FROM rate_limit_windows")).all())
    assert hits == {"x": 3, "y": 3}
    for store in stores:
        store.dispose()
