"""Short PostgreSQL reads that end by their deadline, whatever the network does.

`statement_timeout` is the server's, so it cannot fire when the server no longer hears us;
TCP keepalives and `tcp_user_timeout` notice a vanished host, but not a link that holds its
connections and forwards nothing (a hung proxy or middlebox acknowledges every packet). So
each read runs on a helper thread while the caller waits for it until the deadline, and at
the deadline the read's socket is shut down: the driver fails at once and the connection is
thrown away. The caller's request thread is never held past the deadline, and a helper
thread never waits on a dead link for longer than it either.
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError, StatementError

from .db import postgres_connect_args

log = logging.getLogger(__name__)

T = TypeVar("T")
# One connection per helper thread: a read never waits for the pool behind another one.
WORKERS = 8


class ReadTimeout(TimeoutError):
    """The read did not end by its deadline; its connection was cut."""


class _Cut:
    """The socket a read is using, shut down by the caller if the deadline comes first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.done = False  # the caller gave up: the read must not start, or must end
        self.released = False  # the read is over: nothing left to cut

    def hold(self, fd: int) -> bool:
        """The read is about to use `fd`; False if the caller has given up already."""
        with self._lock:
            if self.done:
                return False
            self._fd = fd
            return True

    def release(self) -> bool:
        """The read is done with its socket; True if the socket was cut meanwhile."""
        with self._lock:
            self._fd = None
            self.released = True
            return self.done

    def cut(self) -> None:
        """Give up: shut down the socket in use, so the read fails now instead of waiting."""
        with self._lock:
            self.done = True
            if self._fd is None:
                return
            try:
                # A duplicate of the descriptor shares its socket: shutting it down wakes the
                # driver's wait with an error, and the driver's own descriptor stays its own.
                with socket.socket(fileno=os.dup(self._fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the driver: nothing to cut
                pass


class Watchdog:
    """Shuts down the socket of a statement still running at its deadline: one thread a process.

    For work that must stay on its own thread (a commit whose outcome its caller must know):
    `arm(fd, deadline)` before the statements, `release()` on the returned cut after them;
    `release()` says whether the socket was shut down meanwhile (the connection is then dead).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: list[tuple[float, int, _Cut]] = []
        self._count = 0
        self._pid = 0

    def after_fork(self) -> None:
        """In a forked child: the parent's thread is not here, and its lock may be held."""
        self._cond = threading.Condition()
        self._armed = []
        self._pid = 0

    def arm(self, fd: int, deadline: float) -> _Cut:
        """Cut `fd` at `deadline` (monotonic) unless released first."""
        cut = _Cut()
        cut.hold(fd)
        with self._cond:
            if self._pid != os.getpid():  # the first use in this process
                self._pid = os.getpid()
                threading.Thread(target=self._watch, name="socket-watchdog", daemon=True).start()
            self._count += 1
            heapq.heappush(self._armed, (deadline, self._count, cut))
            if self._armed[0][2] is cut:
                self._cond.notify()
        return cut

    def _watch(self) -> None:
        pid = os.getpid()
        with self._cond:
            while self._pid == pid:
                now = time.monotonic()
                while self._armed and (self._armed[0][0] <= now or self._armed[0][2].released):
                    _, _, cut = heapq.heappop(self._armed)
                    if not cut.released:
                        cut.cut()
                wait = self._armed[0][0] - now if self._armed else None
                self._cond.wait(wait if wait is None else max(wait, 0.001))


watchdog = Watchdog()
os.register_at_fork(after_in_child=watchdog.after_fork)


class BoundedReads:
    """Reads on a PostgreSQL database of their own engine, each ending within `timeout`.

    `run(read)` calls `read(driver_connection)` on a helper thread, inside a read-only
    transaction that is rolled back afterwards, and returns its result; it raises ReadTimeout
    at the deadline, or SQLAlchemy's DBAPIError for a driver error. The engine's pool does no
    pre-ping, since a ping on a hung link would wait before the socket could be cut: a
    pooled connection that turns out to be closed is replaced once, within the same deadline.
    The engine and the threads are made lazily in each process (a fork starts afresh).
    """

    def __init__(self, url: str, timeout: float, *, statement_timeout: bool = True) -> None:
        self.url = url
        self.timeout = timeout
        self.statement_timeout = statement_timeout
        self._lock = threading.Lock()
        self._pid = 0
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None

    def _own(self) -> tuple[Engine, ThreadPoolExecutor]:
        with self._lock:
            if self._engine is None or self._executor is None or self._pid != os.getpid():
                if self._engine is not None:  # inherited through fork: leave the parent's
                    self._engine.dispose(close=False)
                self._engine = create_engine(
                    self.url,
                    pool_pre_ping=False,
                    pool_size=WORKERS,
                    max_overflow=0,
                    pool_timeout=self.timeout,
                    connect_args=postgres_connect_args(self.timeout, self.url),
                )
                self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="bounded-read")
                self._pid = os.getpid()
            return self._engine, self._executor

    @property
    def engine(self) -> Engine:
        """This process's engine."""
        return self._own()[0]

    def run(self, read: Callable[[Any], T]) -> T:
        """`read(connection)` within the timeout, or ReadTimeout with the connection cut."""
        engine, executor = self._own()
        deadline = time.monotonic() + self.timeout
        cut = _Cut()
        future: Future[T] = executor.submit(self._read, engine, read, cut, deadline)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except (FutureTimeout, CancelledError):
            future.cancel()
            cut.cut()
            raise ReadTimeout(f"no answer within {self.timeout:g}s") from None

    def _read(self, engine: Engine, read: Callable[[Any], T], cut: _Cut, deadline: float) -> T:
        dialect = engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        for attempt in (1, 2):
            if cut.done:
                raise ReadTimeout("gave up before the read began")
            try:
                connection = engine.raw_connection()
            except dbapi_error as error:
                raise self._wrap(engine, error) from error
            try:
                driver: Any = connection.driver_connection
                if not cut.hold(driver.fileno()):
                    raise ReadTimeout("gave up before the read began")
                try:
                    result = self._transaction(driver, read, deadline)
                except dbapi_error as error:
                    was_cut = cut.release()
                    disconnected = was_cut or dialect.is_disconnect(error, driver, None)
                    if disconnected:
                        connection.invalidate()
                    # A pooled connection the server closed meanwhile: once more, anew.
                    if disconnected and not was_cut and attempt == 1:
                        continue
                    raise self._wrap(engine, error) from error
                if cut.release():
                    connection.invalidate()  # its socket was shut down as the read ended
                return result
            finally:
                connection.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _transaction(self, driver: Any, read: Callable[[Any], T], deadline: float) -> T:
        """Run `read` in a read-only transaction that the server also ends at the deadline."""
        try:
            with driver.cursor() as cursor:
                cursor.execute("SET TRANSACTION READ ONLY")
                if self.statement_timeout:
                    left = max(1, int((deadline - time.monotonic()) * 1000))
                    cursor.execute("SELECT set_config('statement_timeout', %s, true)", (str(left),))
            return read(driver)
        finally:
            if not driver.closed:
                try:
                    driver.rollback()  # nothing to keep; ends the transaction
                except Exception:  # noqa: BLE001 - the caller sees the read's own error
                    log.debug("rollback after a read failed", exc_info=True)

    @staticmethod
    def _wrap(engine: Engine, error: Exception) -> StatementError:
        """The driver's error as SQLAlchemy raises it (OperationalError, ProgrammingError...)."""
        dialect = engine.dialect
        return DBAPIError.instance(
            None,
            None,
            error,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            dialect=dialect,
            connection_invalidated=True,
        )

    def dispose(self) -> None:
        """Close this process's connections and threads."""
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            if self._executor is not None and self._pid == os.getpid():
                self._executor.shutdown(wait=False, cancel_futures=True)
            self._engine = self._executor = None
