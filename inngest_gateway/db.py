"""The extension's own database engines (the outbox's), apart from any Flask-SQLAlchemy of the host.

SQLite or PostgreSQL; pool and connection options that bound a write, SQLite's write lock,
and per-statement deadlines. Schemas are created on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event, exc, inspect, make_url
from sqlalchemy.orm import Session, scoped_session, sessionmaker

log = logging.getLogger(__name__)


SQLITE_BUSY_TIMEOUT_MS = 5000


def sqlite_pragmas(synchronous: str) -> Any:
    """WAL lets readers and one writer work at once.

    In WAL mode a committed transaction survives the process being killed with either
    `synchronous` setting; FULL also makes it survive a power loss or an OS crash, at the
    cost of an fsync per commit.
    """

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def _switch_to_wal(cursor: Any) -> None:
    """PRAGMA journal_mode=WAL, waiting as the busy timeout would for another connection's.

    Processes opening a new database file at once (gunicorn's workers) each switch it; SQLite
    answers the losers "database is locked" at once, without its busy handler. Once the file
    is in WAL mode the pragma changes nothing and takes no lock.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class WriteTimeout(TimeoutError):
    """A write did not get its lock, or its statements did not finish, by its deadline."""


def _flock_until(fd: int, deadline: float | None) -> None:
    """flock, giving up at `deadline` (monotonic): flock itself cannot time out, so poll."""
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    pause = 0.0002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WriteTimeout("the write lock was not free in time") from None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.002)


class _SQLiteWriteLock:
    """One writer at a time across threads and processes, woken as soon as the lock frees.

    SQLite's own busy handler polls with sleeps of up to 100 ms, which under concurrent
    writers leaves the database idle while they sleep; an flock'd file queues them instead.
    With a deadline the file lock is polled every few milliseconds instead, so that a stuck
    writer elsewhere costs a bounded wait.
    """

    def __init__(self) -> None:
        self._threads = threading.Lock()
        self._files: dict[tuple[int, str], int] = {}

    def after_fork(self) -> None:
        """In a forked child: the parent's threads are gone, and a lock one of them held
        would stay held for good. The file half is per process already (a child opens its
        own description, and waits for the parent's flock like any other process)."""
        self._threads = threading.Lock()

    @contextlib.contextmanager
    def hold(self, path: str, deadline: float | None = None) -> Iterator[None]:
        if deadline is None:
            self._threads.acquire()
        elif not self._threads.acquire(timeout=max(deadline - time.monotonic(), 0)):
            raise WriteTimeout("the write lock was not free in time")
        try:
            key = (os.getpid(), path)  # a child after fork opens its own description
            fd = self._files.get(key)
            if fd is None:
                fd = self._files[key] = os.open(f"{path}.write-lock", os.O_RDWR | os.O_CREAT, 0o600)
            _flock_until(fd, deadline)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


_sqlite_lock = _SQLiteWriteLock()


@contextlib.contextmanager
def write_lock(engine: Engine, deadline: float | None = None) -> Iterator[None]:
    """Hold around a write transaction: serialises SQLite writers; nothing on other databases.

    With a `deadline` (a `time.monotonic()` value), raise WriteTimeout if the lock is
    not ours by then.
    """
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        with _sqlite_lock.hold(str(url.database), deadline):
            yield
    else:
        yield


def create_tables_at_once(engine: Engine, create: Callable[[], None]) -> None:
    """Run `create` (a create_all) with other processes doing the same (gunicorn's workers).

    SQLite: under the write lock, one process at a time, so that the next finds the tables
    made (racing, the loser got "table already exists" or "database is locked"). The first
    connection, which makes the folder and switches the file to WAL, comes before: the
    lock's file lives beside the database. PostgreSQL: the loser's CREATE fails on the
    winner's catalog rows, and checking again finds the tables. Raises WriteTimeout if the
    lock stays taken past SQLite's busy timeout.
    """
    with engine.connect():
        pass
    with write_lock(engine, time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000):
        try:
            create()
        except (exc.IntegrityError, exc.ProgrammingError):
            create()  # another process was creating them too


class StatementDeadline:
    """Bounds the statements of one transaction on a raw driver connection by a deadline.

    SQLite: its busy handler waits no longer than the time left, and a progress handler
    interrupts a statement still running at the deadline. PostgreSQL: `lock_timeout` and
    `statement_timeout` for the transaction (SET LOCAL), set to the time left before each
    statement. Either way the transaction fails, and is rolled back, instead of running on.
    """

    def __init__(self, engine: Engine, connection: Any, deadline: float) -> None:
        self.connection = connection
        self.deadline = deadline
        self.sqlite = engine.dialect.name == "sqlite"

    def _left_ms(self) -> int:
        left = int((self.deadline - time.monotonic()) * 1000)
        if left <= 0:
            raise WriteTimeout("the write did not finish in time")
        return left

    def __enter__(self) -> StatementDeadline:
        if self.sqlite:
            driver = self.connection.driver_connection
            driver.execute(f"PRAGMA busy_timeout={self._left_ms()}")
            driver.set_progress_handler(lambda: time.monotonic() > self.deadline, 1000)
        return self

    def before(self, cursor: Any) -> None:
        """Call before each statement: the time left bounds it (PostgreSQL)."""
        left = str(self._left_ms())
        if not self.sqlite:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true), "
                "set_config('statement_timeout', %s, true)",
                (left, left),
            )

    def __exit__(self, *_: object) -> None:
        if self.sqlite:
            # Never raise from here: the transaction's outcome is already decided.
            try:
                driver = self.connection.driver_connection
                driver.set_progress_handler(None, 0)
                driver.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            except Exception:  # noqa: BLE001 - a connection we cannot reset is not reused
                with contextlib.suppress(Exception):
                    self.connection.invalidate()


def database_url(configured: str | None, instance_path: str) -> str:
    """The configured URL (PostgreSQL through psycopg 3), or a SQLite file under `instance/`."""
    if configured:
        for prefix in ("postgres://", "postgresql://"):
            if configured.startswith(prefix):
                return "postgresql+psycopg://" + configured.removeprefix(prefix)
        return configured
    os.makedirs(instance_path, exist_ok=True)
    return f"sqlite:///{os.path.join(instance_path, 'gateway.db')}"


def _make_sqlite_folder(dialect: Any, _record: Any, cargs: Any, _cparams: Any) -> None:
    """Make a SQLite file's folder at its first connection, not when the engine is made."""
    path = cargs[0] if cargs else None
    if isinstance(path, str) and path not in ("", ":memory:") and not path.startswith("file:"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


class OwnDatabase:
    """An engine and a thread-scoped session of our own, apart from any Flask-SQLAlchemy.

    A host app may have its own Flask-SQLAlchemy (one per app); this one touches nothing of
    it. Sessions are per thread: callers end theirs with `session.remove()` when done. After
    a fork the child drops the parent's pooled connections without closing them. With
    `make_folder`, a SQLite file's folder is made at the first connection (a folder chosen
    by us, not one an operator configured, whose absence means the database is not there).
    """

    def __init__(
        self,
        url: str,
        metadata: MetaData,
        *,
        sqlite_synchronous: str,
        write_timeout: float | None = None,
        make_folder: bool = False,
        create_tables: bool = True,
    ) -> None:
        sqlite = url.startswith("sqlite")
        # No pre-ping: the outbox's writer cuts a hung commit's socket, and retries a
        # connection the server closed (`Writer._commit`); the deliverer retries anyway.
        self.engine = create_engine(url, **engine_options(url, write_timeout, pre_ping=False))
        if sqlite:
            event.listen(self.engine, "connect", sqlite_pragmas(sqlite_synchronous))
            if make_folder:
                event.listen(self.engine, "do_connect", _make_sqlite_folder)
        self.session: scoped_session[Session] = scoped_session(sessionmaker(bind=self.engine))
        self.metadata = metadata
        self.create_tables = create_tables
        self.schema_ready = False
        self._said_missing = False
        _forked.add(self)

    def ensure_schema(self) -> bool:
        """Create the tables once per process; False (and logged) while the database is down."""
        if self.schema_ready:
            return True
        try:
            if not self.create_tables:
                return self._tables_exist()
            create_tables_at_once(self.engine, lambda: self.metadata.create_all(self.engine))
        except (exc.SQLAlchemyError, WriteTimeout) as error:
            log.warning("database unavailable, schema not checked yet: %s", type(error).__name__)
            return False
        self.schema_ready = True
        return True

    def create_all(self) -> None:
        """Create the tables that are missing (`flask inngest-gateway outbox create`)."""
        self.metadata.create_all(self.engine)
        self.schema_ready = True

    def _tables_exist(self) -> bool:
        """In a database whose tables someone else makes (the app's migrations): are they there?"""
        names = set(inspect(self.engine).get_table_names())
        missing = sorted(name for name in self.metadata.tables if name not in names)
        if missing:
            if not self._said_missing:
                self._said_missing = True
                log.error(
                    "the app's database has no %s table: run the app's migrations (it is in "
                    "db.metadata) or `flask inngest-gateway outbox create`",
                    ", ".join(missing),
                )
            return False
        self.schema_ready = True
        return True

    def after_fork(self) -> None:
        """In a forked child: forget the parent's connections and sessions, never close them."""
        self.engine.dispose(close=False)
        self.session.registry.clear()

    def dispose(self) -> None:
        """Close the sessions of this thread and every pooled connection."""
        self.session.remove()
        self.engine.dispose()


_forked: weakref.WeakSet[OwnDatabase] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _sqlite_lock.after_fork()
    for database in list(_forked):
        database.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def engine_options(
    url: str, write_timeout: float | None = None, *, pre_ping: bool = True
) -> dict[str, Any]:
    """Pool and connection options, so that getting a connection cannot outlast a write.

    With `write_timeout` (INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT): waiting for a free connection of
    the pool
    ends after it, instead of SQLAlchemy's 30 s. On PostgreSQL, opening a connection gives
    up after it too (libpq's `connect_timeout`, whole seconds, at least 2), and TCP
    keepalives and `tcp_user_timeout` make a server that vanished without closing the
    connection (a crash, a network partition) an error within seconds rather than a wait
    for the operating system's defaults (minutes to hours): `statement_timeout` cannot fire
    on a server that no longer answers.

    Without `pre_ping` the pool hands out connections unchecked: for engines whose users cut
    a hung connection's socket themselves (`reads.watchdog`), which a ping could not be, and
    try once more when the server had closed it.
    """
    sqlite = url.startswith("sqlite")
    # A server can drop idle connections; a SQLite file cannot.
    options: dict[str, Any] = {"pool_pre_ping": pre_ping and not sqlite}
    if write_timeout is None:
        if url.startswith("postgresql"):
            options["connect_args"] = no_prepared_statements(url)
        return options
    in_memory = sqlite and make_url(url).database in (None, "", ":memory:")
    if not in_memory:  # an in-memory database has a single static connection, no queue
        options["pool_timeout"] = write_timeout
    if url.startswith("postgresql"):
        options["connect_args"] = postgres_connect_args(write_timeout, url)
    return options


def no_prepared_statements(url: str) -> dict[str, Any]:
    """psycopg's option that turns off its prepared statements; nothing for other drivers.

    psycopg (3) prepares a statement on the server once it has run five times on a
    connection. Behind PgBouncer in transaction mode (before 1.21, or without
    max_prepared_statements) the next transaction may run on another server connection,
    where that statement does not exist, or exists under the same name: every such post
    failed. Statements here are small, so planning them each time costs the server
    microseconds. psycopg2 prepares nothing, and refuses the option.
    """
    return {"prepare_threshold": None} if make_url(url).get_driver_name() == "psycopg" else {}


def postgres_connect_args(timeout: float, url: str) -> dict[str, Any]:
    """psycopg options bounding a connection attempt and noticing a vanished server.

    libpq counts `connect_timeout` in whole seconds, 2 at least; keepalives and
    `tcp_user_timeout` end a connection to a host that is gone (not one behind a hung proxy,
    which acknowledges every packet: `reads` cuts those). No prepared statements: a
    connection pooler in transaction mode may run each transaction on another server
    connection.
    """
    seconds = max(2, math.ceil(timeout))
    return {
        **no_prepared_statements(url),
        "connect_timeout": seconds,
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": seconds * 1000,
    }
