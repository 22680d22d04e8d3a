"""Database access: one `Store` per database URL (SQLite by default, PostgreSQL when configured).

SQLite runs in WAL mode with foreign keys on. SQLAlchemy, not the sqlite3 driver, emits BEGIN, so
that reads are transactional and a write transaction can start with BEGIN IMMEDIATE: taking the
write lock up front avoids the "database is locked" error a deferred transaction gets when it
tries to upgrade its read lock while another connection is writing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from sqlalchemy import Connection, Engine, Executable, Row, Select, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"

# Execution option that marks connections of `Store.write()`; the SQLite "begin" hook reads it.
WRITE_TRANSACTION_OPTION: Final = "keyrotor_write_transaction"
SINGLE_READ_OPTION: Final = "keyrotor_single_read"

DEFAULT_SQLITE_BUSY_TIMEOUT_MS: Final = 5000

# Any constant works; it only has to be the same for every keyrotor process on one database.
_MIGRATION_LOCK_KEY: Final = 0x6B6579726F746F72  # "keyrotor"
POOL_SIZE: Final = 40


def newest_first(
    query: Select[Any], model: Any, *, limit: int, offset: int, after: tuple[datetime, str] | None
) -> Select[Any]:
    """`query` over `model` (which has `created_at` and `id`), newest first; `after`
    (created_at, id) continues from a cursor, stable while rows are added."""
    if after is not None:
        at, last_id = after
        query = query.where(
            (model.created_at < at) | ((model.created_at == at) & (model.id < last_id))
        )
    return query.order_by(model.created_at.desc(), model.id.desc()).offset(offset).limit(limit)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite database file at `path` (made absolute)."""
    return URL.create("sqlite", database=str(path.expanduser().resolve())).render_as_string()


def normalize_url(url: str) -> str:
    """Route PostgreSQL URLs (`postgres://`, `postgresql://`) through the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


T = TypeVar("T")


@dataclass
class _Pending:
    """A statement waiting for `Store.write_batched`, then its result or error."""

    statement: Callable[[Connection], Any]
    result: Any = None
    error: Exception | None = None
    done: bool = False


class Store:
    """Engine + session factory for one database URL.

    `session()` is for reads and for callers that manage their own transaction; every write that
    must serialise with other writers (a lifecycle transition and its audit record) goes through
    `write()`.
    """

    def __init__(
        self, url: str, *, sqlite_busy_timeout_ms: int = DEFAULT_SQLITE_BUSY_TIMEOUT_MS
    ) -> None:
        self.url: str = normalize_url(url)
        parsed = make_url(self.url)
        self.is_sqlite: bool = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.engine: Engine = _sqlite_engine(parsed, sqlite_busy_timeout_ms)
        else:
            # hide_parameters: a failed statement's text must not carry salts, hashes or sealed
            # secrets into error messages and logs
            self.engine = create_engine(
                parsed,
                pool_pre_ping=True,
                hide_parameters=True,
                # fewer kept open than on SQLite: each is a server process (max_connections)
                pool_size=POOL_SIZE // 2,
                max_overflow=POOL_SIZE // 2,
            )
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._single_reads = self.engine.execution_options(**{SINGLE_READ_OPTION: True})
        self._write_lock: AbstractContextManager[object] = (
            threading.Lock() if self.is_sqlite else nullcontext()
        )
        self._write_sessions = sessionmaker(
            bind=self.engine.execution_options(**{WRITE_TRANSACTION_OPTION: True}),
            expire_on_commit=False,
        )
        self._batch = threading.Condition()
        self._pending: list[_Pending] = []
        self._committing = False

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, fit for logs and error messages."""
        return make_url(self.url).render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Store({self.safe_url!r})"

    def read_one(self, statement: Executable, params: Mapping[str, Any]) -> Row[Any] | None:
        """The first row `statement` answers, read outside a transaction: the use path's
        lookups are one statement each, which SQLite then runs without a BEGIN and a ROLLBACK
        around it (PostgreSQL's driver begins its own either way)."""
        with self._single_reads.connect() as connection:
            return connection.execute(statement, params).first()

    def session(self) -> Session:
        """A new session (not begun); use it as a context manager and commit yourself."""
        return self._sessions()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in a write transaction: commits on success, rolls back on error.

        On SQLite the transaction begins with BEGIN IMMEDIATE, so concurrent writers queue on the
        database lock (up to the busy timeout) instead of failing; on PostgreSQL it is an
        ordinary READ COMMITTED transaction and writers serialise on row locks.
        """
        # SQLite has one writer at a time and its busy handler sleeps in steps of up to 100 ms
        # while it waits; queueing this process's writers on a lock hands the database over
        # at once (other processes still queue on the busy timeout).
        with self._write_lock, self._write_sessions() as session, session.begin():
            yield session

    def write_retried(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a write transaction, and run it again whole when PostgreSQL rolled
        the transaction back for a deadlock (up to DEADLOCK_ATTEMPTS runs): two processes can
        lock the same rows in opposite orders. `work` must be safe to run again."""
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            try:
                with self.write() as session:
                    return work(session.connection())
            except DBAPIError as e:
                if attempt == DEADLOCK_ATTEMPTS or not _deadlock(e):
                    raise
        raise AssertionError("unreachable")

    def write_batched(self, statement: Callable[[Connection], T]) -> T:
        """Run `statement` in a write transaction shared with the statements other threads
        submit meanwhile (group commit): one commit, so one fsync, for every statement that
        arrived while the previous commit ran. Each statement still runs on its own, in order,
        and answers exactly (a conditional UPDATE sees every earlier one); a failure fails
        every statement of its transaction, which is rolled back. For the small writes of
        the hot paths (use counts with exact limits)."""
        mine = _Pending(statement)
        with self._batch:
            self._pending.append(mine)
            while not mine.done and self._committing:
                self._batch.wait()
            if not mine.done:  # nobody is committing: commit everything pending
                batch, self._pending = self._pending, []
                self._committing = True
        if not mine.done:
            try:

                def run(connection: Connection) -> None:
                    for item in batch:
                        item.result = item.statement(connection)

                self.write_retried(run)
            except Exception as e:
                for item in batch:
                    item.error = e
            finally:
                with self._batch:
                    for item in batch:
                        item.done = True
                    self._committing = False
                    self._batch.notify_all()
        if mine.error is not None:
            raise mine.error
        return cast(T, mine.result)

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest Alembic revision (or to `revision`); a no-op when it
        is already there.

        Runs in one transaction that first takes a database-wide lock (an advisory lock on
        PostgreSQL, the write lock on SQLite), so that processes starting together migrate once.
        """
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.connect() as connection:
            connection = connection.execution_options(**{WRITE_TRANSACTION_OPTION: True})
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                    )
                config.attributes["connection"] = connection
                command.upgrade(config, revision)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _sqlite_engine(url: URL, busy_timeout_ms: int) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    # no pre-ping: a SQLite "connection" is a file handle that cannot go stale
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if in_memory:
        # Every connection to ":memory:" is a new database: share one connection instead.
        kwargs["poolclass"] = StaticPool
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        # As many pooled connections as the API has worker threads (anyio's default 40): an
        # overflow connection is opened, set up (WAL, pragmas) and closed again per request.
        kwargs |= {"pool_size": POOL_SIZE, "max_overflow": 10}
    engine = create_engine(url, hide_parameters=True, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        assert isinstance(dbapi_connection, sqlite3.Connection)
        # The driver must not emit BEGIN on its own; `_on_begin` does.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another connection may hold.
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not in_memory:
                _switch_to_wal(cursor, busy_timeout_ms)
                # FULL is the default; keep it explicit: a committed audit record must survive
                # power loss, which WAL's popular NORMAL setting does not promise.
                cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get(SINGLE_READ_OPTION, False):
            return  # one statement is atomic on its own (`Store.read_one`)
        immediate = options.get(WRITE_TRANSACTION_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _switch_to_wal(cursor: sqlite3.Cursor, busy_timeout_ms: int) -> None:
    """Switch a database to WAL (a persistent, once-per-database change).

    Switching needs exclusive access and SQLite answers "database is locked" at once, without
    its busy handler, while another connection has the new database open: retry until the
    busy timeout, as the handler would. Once one connection has switched, it is a no-op.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


DEADLOCK_ATTEMPTS = 3


def _deadlock(e: DBAPIError) -> bool:
    """PostgreSQL's deadlock_detected (40P01) or serialization_failure (40001)."""
    return getattr(e.orig, "sqlstate", None) in ("40P01", "40001")
