"""The write path: each request's events committed to the outbox before the answer.

`Writer.store` runs in the request and returns only after the commit; the requests of a
process share their commits (group commit), so only one connection per process competes
for the database's write lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Dialect, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..db import OwnDatabase, StatementDeadline, WriteTimeout, write_lock
from ..errors import APIError, OutboxFull, OutboxUnavailable
from ..events import Event
from ..reads import watchdog
from ..settings import Settings
from .model import PENDING, OutboxEvent, now_ms
from .queries import pending_count_sql

log = logging.getLogger(__name__)

COUNT_REFRESH_SECONDS = 0.25

RETRY_LATER = {"Retry-After": "5"}
# How long after INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT a commit's socket is shut down, if it is
# still waiting.
CUT_GRACE_SECONDS = 0.5
_STORED_COLUMNS = (
    "event_id",
    "name",
    "body",
    "size",
    "state",
    "created_at",
    "next_attempt_at",
    "attempts",
)


@dataclass(eq=False)
class _Store:
    """One request's events, waiting for a commit; the writer's lock guards the flags."""

    rows: list[tuple[Any, ...]]
    wake: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    leads: bool = False
    error: APIError | None = None


class Writer:
    """Commits the stores of all request threads of a process together (group commit).

    A request that finds no commit under way leads: it commits its own events and whatever
    other requests queued meanwhile, in one transaction, then hands the lead to the first
    request that queued during its commit. Only one connection per process competes for the
    database's write lock, and each request still answers only after its own commit.

    Each commit ends, committed or rolled back, within INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT: the
    wait for
    the write lock and every statement are bounded by that deadline. So a request waits at
    most for the commit under way and then its own, and answers with the real outcome: a
    503 only for events that are not, and will never be, stored.
    """

    def __init__(self, settings: Settings, database: OwnDatabase) -> None:
        self.settings = settings
        self.db = database
        self._lock = threading.Lock()
        self._queue: list[_Store] = []
        self._leading = False
        self._known_pending = 0
        self._counted_at = 0.0
        self._insert = self._count = ""  # plain SQL, made for the dialect on first use

    def store(self, events: Sequence[Event]) -> None:
        """Commit the events, all or none, or raise a 503 error; nothing is half-accepted."""
        now = now_ms()
        item = _Store(
            [
                (event.id, event.name, event.body.decode(), len(event.body), PENDING, now, now, 0)
                for event in events
            ]
        )
        with self._lock:
            self._queue.append(item)
            if not self._leading:
                self._leading = item.leads = True
        self._await(item)
        if item.error is not None:
            raise item.error

    def _await(self, item: _Store) -> None:
        """Until the item's commit has ended, leading one commit when handed the lead."""
        # The commit under way and then ours: past this, a commit overran its deadline.
        give_up = time.monotonic() + 2 * self.settings.outbox_write_timeout + 1.0
        while True:
            with self._lock:
                if item.finished:
                    return
                lead, item.wake = item.leads, threading.Event()
                if not lead and time.monotonic() > give_up and item in self._queue:
                    # No commit has taken it, so none ever will: the 503 is true.
                    self._queue.remove(item)
                    item.error = OutboxUnavailable(headers=RETRY_LATER)
                    log.error(
                        "outbox write overran INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT; refusing a post"
                    )
                    return
                wake = item.wake
            if lead:
                self._lead()
                return
            # Once in a commit, the commit's own deadline bounds this wait.
            wake.wait(max(give_up - time.monotonic(), 0.05))

    def _lead(self) -> None:
        """Commit what is queued (our own item included), then hand the lead on."""
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        except Exception:  # never leave a request waiting
            log.exception("outbox write failed")
            for item in batch:
                item.error = item.error or OutboxUnavailable(headers=RETRY_LATER)
        finally:
            with self._lock:
                for item in batch:
                    item.finished = True
                    item.wake.set()
                if self._queue:
                    successor = self._queue[0]
                    successor.leads = True
                    successor.wake.set()
                else:
                    self._leading = False

    def _pending(self, cursor: Any, adding: int) -> int:
        """The backlog, counted again when the last count is old or the limit is near.

        Deliverers only shrink it, so between counts our own inserts keep it an upper bound.
        """
        stale = time.monotonic() - self._counted_at > COUNT_REFRESH_SECONDS
        near = self._known_pending + adding > self.settings.outbox_max_pending * 0.9
        if stale or near:
            cursor.execute(self._count)
            self._known_pending = int(cursor.fetchone()[0] or 0)
            self._counted_at = time.monotonic()
        return self._known_pending

    def _prepare(self, dialect: Dialect) -> None:
        """The insert (in the driver's parameter style) and the pending count, as plain SQL."""
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        table = OutboxEvent.__tablename__
        self._insert = (
            f"INSERT INTO {table} ({', '.join(_STORED_COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(_STORED_COLUMNS))})"
        )
        self._count = pending_count_sql(dialect)

    def _commit(self, batch: list[_Store]) -> None:
        engine = self.db.engine
        if not self._insert:
            self._prepare(engine.dialect)
        deadline = time.monotonic() + self.settings.outbox_write_timeout
        # A pooled connection the server closed since (the pool does no pre-ping on
        # PostgreSQL: see db.engine_options) fails before anything is written: once more.
        if self._attempt(engine, batch, deadline, retry_stale=True):
            self._attempt(engine, batch, deadline, retry_stale=False)

    def _attempt(
        self, engine: Engine, batch: list[_Store], deadline: float, *, retry_stale: bool
    ) -> bool:
        """One try at the commit; True if it should be tried again on a fresh connection."""
        accepted: list[_Store] = []
        driver_error = engine.dialect.loaded_dbapi.Error
        connection = cut = None
        written = False
        try:
            # The driver's own connection: SQLAlchemy's statement layer would cost more
            # than the insert on this path. Taken before the lock, within the same
            # deadline: the pool's wait (and on PostgreSQL, opening a connection) is
            # bounded by INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT (see db.engine_options), and what it
            # used is
            # no longer left for the lock and the statements.
            connection = engine.raw_connection()
            if engine.dialect.name == "postgresql":
                # statement_timeout is the server's: on a link that forwards nothing only
                # shutting the socket down ends the wait (a little after, so that the
                # server's own timeout, with its clean error, comes first when it can).
                driver: Any = connection.driver_connection
                cut = watchdog.arm(driver.fileno(), deadline + CUT_GRACE_SECONDS)
            with (
                write_lock(engine, deadline),
                StatementDeadline(engine, connection, deadline) as bound,
            ):
                cursor = connection.cursor()
                try:
                    bound.before(cursor)
                    written = True  # past the first statement: the connection was alive
                    pending = self._pending(cursor, sum(len(item.rows) for item in batch))
                    for item in batch:
                        if pending + len(item.rows) > self.settings.outbox_max_pending:
                            item.error = OutboxFull(headers=RETRY_LATER)
                            log.warning("outbox full: refusing %d event(s)", len(item.rows))
                        else:
                            accepted.append(item)
                            pending += len(item.rows)
                    rows = [row for item in accepted for row in item.rows]
                    if rows:
                        bound.before(cursor)
                        cursor.executemany(self._insert, rows)
                    connection.commit()
                finally:
                    cursor.close()
                self._known_pending = pending
            if cut is not None and cut.release():
                connection.invalidate()  # committed as its socket was being shut down
        except (driver_error, SQLAlchemyError, WriteTimeout) as exc:
            was_cut = cut is not None and cut.release()
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.invalidate()  # may be broken: the pool opens a fresh one
            stale = (
                retry_stale
                and not written
                and not was_cut
                and isinstance(exc, driver_error)
                and connection is not None
                and engine.dialect.is_disconnect(exc, connection.driver_connection, None)
                and time.monotonic() < deadline
            )
            if stale:
                return True
            # Everything not already refused, including items never looked at because the
            # lock or the count failed first.
            failed = [item for item in batch if item.error is None]
            log.error(
                "could not store %d event(s): %s",
                sum(len(item.rows) for item in failed),
                "no answer from the database in time" if was_cut else type(exc).__name__,
            )
            for item in failed:
                item.error = OutboxUnavailable(headers=RETRY_LATER)
        finally:
            if connection is not None:
                connection.close()  # back to the pool (rolled back if not committed)
        return False
