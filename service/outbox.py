"""The outbox: accepted events are committed to the database, then delivered to Inngest.

`store` runs in the request and answers only after the commit. A `Deliverer` claims the
oldest due events in batches with a lease, sends them, and records the outcome; any number
of deliverers (threads in gunicorn workers, `flask outbox deliver` processes, several hosts
on PostgreSQL) can run at once, and a batch keeps its events and its event-id seed across
retries so that Inngest can deduplicate a repeat.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import (
    BigInteger,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from . import metrics
from .db import OwnDatabase, StatementDeadline, WriteTimeout, write_lock
from .errors import APIError, OutboxFull, OutboxUnavailable
from .events import Event
from .inngest import (
    InngestClient,
    InngestRejected,
    InngestUnavailable,
    id_seed,
    lease_deadline,
)
from .settings import Settings, parse_duration
from .state import GatewayState, gateway_state

log = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
HOUSEKEEPING_SECONDS = 5.0
BATCH_GATHER_SECONDS = 0.1
COUNT_REFRESH_SECONDS = 0.25


def now_ms() -> int:
    """Wall-clock milliseconds: rows are compared across processes and hosts."""
    return int(time.time() * 1000)


class OutboxBase(DeclarativeBase):
    """The outbox's own tables, in its own database (OUTBOX_DATABASE_URL), on its own engine."""


class OutboxEvent(OutboxBase):
    """One accepted event, from its commit until Inngest has it (or it is given up on)."""

    __tablename__ = "outbox_events"
    __table_args__ = (
        Index("ix_outbox_events_due", "state", "next_attempt_at", "id"),
        Index("ix_outbox_events_batch_seed", "batch_seed"),
    )

    # INTEGER PRIMARY KEY on SQLite is the rowid: ascending, so the id orders by arrival.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(256))
    name: Mapped[str] = mapped_column(String(256))
    body: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    created_at: Mapped[int] = mapped_column(BigInteger)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(80))
    claim_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    batch_seed: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)


# The deliverer's statements use the table, not the mapped class: it never needs ORM objects.
_table = cast(Table, OutboxEvent.__table__)
_c = _table.c


@contextlib.contextmanager
def _transaction(database: OwnDatabase) -> Iterator[None]:
    """Statements on the session, committed as one write under the database's write lock."""
    with write_lock(database.engine):
        try:
            yield
            database.session.commit()
        except BaseException:
            database.session.rollback()
            raise


# -- the write path ------------------------------------------------------------------------


def pending_count(database: OwnDatabase) -> int:
    """Events stored and not yet delivered or given up on."""
    count = database.session.scalar(
        select(func.count()).select_from(OutboxEvent).where(OutboxEvent.state == PENDING)
    )
    return int(count or 0)


RETRY_LATER = {"Retry-After": "5"}
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

    Each commit ends, committed or rolled back, within OUTBOX_WRITE_TIMEOUT: the wait for
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
                    log.error("outbox write overran OUTBOX_WRITE_TIMEOUT; refusing a post")
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
            cursor.execute(self._count, (PENDING,))
            self._known_pending = int(cursor.fetchone()[0] or 0)
            self._counted_at = time.monotonic()
        return self._known_pending

    def _prepare(self, paramstyle: str) -> None:
        """The insert and count as plain SQL in the driver's parameter style."""
        mark = "?" if paramstyle == "qmark" else "%s"
        table = OutboxEvent.__tablename__
        self._insert = (
            f"INSERT INTO {table} ({', '.join(_STORED_COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(_STORED_COLUMNS))})"
        )
        self._count = f"SELECT count(*) FROM {table} WHERE state = {mark}"

    def _commit(self, batch: list[_Store]) -> None:
        accepted: list[_Store] = []
        engine = self.db.engine
        driver_error = engine.dialect.loaded_dbapi.Error
        if not self._insert:
            self._prepare(engine.dialect.paramstyle)
        deadline = time.monotonic() + self.settings.outbox_write_timeout
        connection = None
        try:
            # The driver's own connection: SQLAlchemy's statement layer would cost more
            # than the insert on this path. Taken before the lock, within the same
            # deadline: the pool's wait (and on PostgreSQL, opening a connection) is
            # bounded by OUTBOX_WRITE_TIMEOUT (see db.engine_options), and what it used is
            # no longer left for the lock and the statements.
            connection = engine.raw_connection()
            with (
                write_lock(engine, deadline),
                StatementDeadline(engine, connection, deadline) as bound,
            ):
                cursor = connection.cursor()
                try:
                    bound.before(cursor)
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
        except (driver_error, SQLAlchemyError, WriteTimeout) as exc:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.invalidate()  # may be broken: the pool opens a fresh one
            # Everything not already refused, including items never looked at because the
            # lock or the count failed first.
            failed = [item for item in batch if item.error is None]
            log.error(
                "could not store %d event(s): %s",
                sum(len(item.rows) for item in failed),
                type(exc).__name__,
            )
            for item in failed:
                item.error = OutboxUnavailable(headers=RETRY_LATER)
        finally:
            if connection is not None:
                connection.close()  # back to the pool (rolled back if not committed)


# -- delivery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """Events claimed for one request to Inngest, in order, with the batch's seed."""

    ids: list[int]
    bodies: list[bytes]
    seed: str
    lease_expires_at: int  # epoch ms, as stored in claim_expires_at


def _free(now: int, *, due_only: bool = True) -> Any:
    """Pending, not leased to a live deliverer, and (unless draining) due."""
    free = and_(
        _c.state == PENDING,
        or_(_c.claim_expires_at.is_(None), _c.claim_expires_at < now),
    )
    return and_(free, _c.next_attempt_at <= now) if due_only else free


class Deliverer:
    """Claims, sends and settles batches of outbox events; one per process, or several."""

    def __init__(
        self, app: Flask, settings: Settings, client: InngestClient, database: OwnDatabase
    ) -> None:
        self.app = app
        self.settings = settings
        self.client = client
        self.db = database
        self.name = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._last_housekeeping = 0.0

    # -- one step ----------------------------------------------------------------------
    def run_once(self, *, ignore_schedule: bool = False, deadline: float | None = None) -> int:
        """Claim and send one batch; the number of events it held (0: nothing was due)."""
        if time.monotonic() - self._last_housekeeping > HOUSEKEEPING_SECONDS:
            self.housekeeping()
        claimed = self.claim(ignore_schedule=ignore_schedule)
        if claimed is None:
            return 0
        self.deliver(claimed, deadline=deadline)
        return len(claimed.ids)

    def claim(self, *, ignore_schedule: bool = False) -> Claimed | None:
        """Lease the next batch: the oldest due event's unfinished batch, or a fresh one."""
        now = now_ms()
        free = _free(now, due_only=not ignore_schedule)
        head = self.db.session.execute(
            select(_c.id, _c.batch_seed).where(free).order_by(_c.id).limit(1)
        ).first()
        self.db.session.commit()  # end the read, so the claim below starts a write at once
        if head is None:
            return None
        seed = head.batch_seed or id_seed()
        expires = now + int(self.settings.outbox_lease_seconds * 1000)
        lease = {"claimed_by": self.name, "claim_expires_at": expires, "batch_seed": seed}
        with _transaction(self.db):
            if head.batch_seed:
                # A batch sent before: exactly its events again, under its seed.
                which = _c.batch_seed == head.batch_seed
            else:
                # A fresh batch: sized before the seed is written, so that the seed only
                # ever names the events it is first sent with.
                fresh = self.db.session.execute(
                    select(_c.id, _c.size)
                    .where(free, _c.batch_seed.is_(None))
                    .order_by(_c.id)
                    .limit(self._max_batch)
                    .with_for_update(skip_locked=True)
                ).all()
                which = and_(_c.id.in_(self._fit(fresh)), _c.batch_seed.is_(None))
            rows: list[Any] = list(
                self.db.session.execute(
                    update(_table)
                    .where(which, free)
                    .values(**lease)
                    .returning(_c.id, _c.body, _c.size),
                ).all()
            )
        if not rows:
            return None  # another deliverer took it first
        rows.sort(key=lambda row: row.id)
        return Claimed([r.id for r in rows], [r.body.encode() for r in rows], seed, expires)

    @property
    def _max_batch(self) -> int:
        return self.settings.api_max_batch

    def _fit(self, rows: Sequence[Any]) -> list[int]:
        """The ids of the longest prefix under the batch byte budget (at least one event)."""
        budget, total, keep = self.settings.outbox_max_batch_bytes, 0, 0
        for row in rows:
            if keep and total + row.size + 1 > budget:
                break
            total += row.size + 1
            keep += 1
        return [row.id for row in rows[:keep]]

    def deliver(self, claimed: Claimed, *, deadline: float | None = None) -> None:
        """Send one claimed batch and record what Inngest said."""
        began = time.monotonic()
        try:
            self.client.send(
                claimed.bodies,
                seed=claimed.seed,
                deadline=lease_deadline(
                    claimed.lease_expires_at, self.settings.outbox_lease_seconds, deadline
                ),
                retry=False,
            )
        except InngestUnavailable as exc:
            self._retry_later(
                claimed.ids,
                str(exc),
                exc.upstream_retry_after,
                throttled=exc.upstream_status == 429,
            )
        except InngestRejected as exc:
            self._rejected(claimed, exc)
        else:
            self._delivered(claimed.ids)
            log.info(
                "delivered %d event(s) in %.0f ms",
                len(claimed.ids),
                (time.monotonic() - began) * 1000,
            )

    # -- outcomes ----------------------------------------------------------------------
    # A seed is only ever sent with the events it was first sent with (Inngest derives its
    # internal ids from the seed and the position): whatever takes events out of a batch
    # clears the seed of the rest in the same transaction, or gives each part a new one.

    def _delivered(self, ids: list[int]) -> None:
        if not ids:
            return
        with _transaction(self.db):
            self._mark_delivered(ids)
        metrics.events_delivered(len(ids))

    def _mark_delivered(self, ids: list[int]) -> None:
        where = _c.id.in_(ids)
        if self.settings.outbox_keep_delivered <= 0:
            self.db.session.execute(delete(_table).where(where))
        else:
            self.db.session.execute(
                update(_table)
                .where(where)
                .values(
                    state=DELIVERED,
                    finished_at=now_ms(),
                    claimed_by=None,
                    claim_expires_at=None,
                    last_error=None,
                )
            )

    def _mark_dead(self, ids: list[int], error: str) -> None:
        self.db.session.execute(
            update(_table)
            .where(_c.id.in_(ids), _c.state == PENDING)
            .values(
                state=DEAD,
                finished_at=now_ms(),
                claimed_by=None,
                claim_expires_at=None,
                last_error=error[:2000],
                attempts=_c.attempts + 1,
            )
        )

    def _dead(self, ids: list[int], error: str) -> None:
        if not ids:
            return
        with _transaction(self.db):
            self._mark_dead(ids, error)
        metrics.events_dead(len(ids))
        log.error("dead-lettered %d event(s): %s", len(ids), error)

    def _retry_later(
        self, ids: list[int], error: str, retry_after: float | None, *, throttled: bool = False
    ) -> None:
        """Back off; every OUTBOX_SPLIT_AFTER failed attempts, split the batch in halves.

        An event that Inngest keeps failing on (5xx, a timeout) would otherwise hold back
        the rest of its batch for good: halving it on repeated failures soon leaves the bad
        event alone, and the others are delivered. Each half is a new batch with a new seed;
        the events keep their ids.
        """
        attempts = self.db.session.scalar(select(func.max(_c.attempts)).where(_c.id.in_(ids))) or 0
        attempt = attempts + 1
        delay = self.backoff(attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        mine = _c.claimed_by == self.name
        # Not when Inngest throttled us (429): that is about the rate, and smaller batches
        # would only mean more requests. A 5xx is split even with Retry-After (proxies and
        # load balancers answer 503 with one), still waiting as long as it asks.
        split = len(ids) > 1 and not throttled and attempt % self.settings.outbox_split_after == 0
        with _transaction(self.db):
            if split:
                half = (len(ids) + 1) // 2
                for part in (ids[:half], ids[half:]):
                    self.db.session.execute(
                        update(_table).where(_c.id.in_(part), mine).values(batch_seed=id_seed())
                    )
            self.db.session.execute(
                update(_table)
                .where(_c.id.in_(ids), mine)
                .values(
                    attempts=_c.attempts + 1,
                    next_attempt_at=now_ms() + int(delay * 1000),
                    claimed_by=None,
                    claim_expires_at=None,
                    last_error=error[:2000],
                )
            )
        metrics.events_retried(len(ids))
        log.warning(
            "could not deliver %d event(s), retrying in %.1fs (attempt %d%s): %s",
            len(ids),
            delay,
            attempt,
            ", split in two batches" if split else "",
            error,
        )

    def _rejected(self, claimed: Claimed, exc: InngestRejected) -> None:
        """A 400 names the first bad event; those before it were accepted. Other 4xx: all dead."""
        if exc.status == 400 or 200 <= exc.status < 300:
            accepted = min(exc.accepted, len(claimed.ids) - 1)
            done, bad = claimed.ids[:accepted], claimed.ids[accepted]
            rest = claimed.ids[accepted + 1 :]
            with _transaction(self.db):  # one write: a crash must not leave the rest with the seed
                if done:
                    self._mark_delivered(done)
                self._mark_dead([bad], exc.error)
                if rest:  # a new batch, with a new seed, when next claimed
                    self.db.session.execute(
                        update(_table)
                        .where(_c.id.in_(rest), _c.claimed_by == self.name)
                        .values(claimed_by=None, claim_expires_at=None, batch_seed=None)
                    )
            if done:
                metrics.events_delivered(len(done))
            metrics.events_dead(1)
            log.error("dead-lettered 1 event(s): %s", exc.error)
        else:
            self._dead(claimed.ids, f"HTTP {exc.status}: {exc.error}")

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter, from OUTBOX_RETRY_BASE up to OUTBOX_RETRY_MAX."""
        ceiling: float = min(
            self.settings.outbox_retry_max, self.settings.outbox_retry_base * 2 ** (attempt - 1)
        )
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def housekeeping(self) -> None:
        """Dead-letter events older than OUTBOX_MAX_AGE; forget delivered ones kept long enough."""
        self._last_housekeeping = time.monotonic()
        now = now_ms()
        with _transaction(self.db):
            seeds = self.db.session.scalars(
                update(_table)
                .where(
                    _c.state == PENDING,
                    _c.created_at < now - int(self.settings.outbox_max_age * 1000),
                    or_(_c.claim_expires_at.is_(None), _c.claim_expires_at < now),
                )
                .values(
                    state=DEAD,
                    finished_at=now,
                    claimed_by=None,
                    claim_expires_at=None,
                    last_error="not delivered within OUTBOX_MAX_AGE",
                )
                .returning(_c.batch_seed)
            ).all()
            expired = len(seeds)
            # The younger events of those batches stay pending: as a new batch, new seed.
            partial = {seed for seed in seeds if seed is not None}
            if partial:
                self.db.session.execute(
                    update(_table)
                    .where(_c.batch_seed.in_(partial), _c.state == PENDING)
                    .values(batch_seed=None)
                )
            if self.settings.outbox_keep_delivered > 0:
                self.db.session.execute(
                    delete(_table).where(
                        _c.state == DELIVERED,
                        _c.finished_at < now - int(self.settings.outbox_keep_delivered * 1000),
                    )
                )
        if expired:
            metrics.events_dead(expired)
            log.error("dead-lettered %d event(s) older than OUTBOX_MAX_AGE", expired)

    # -- the background thread ---------------------------------------------------------
    def notify(self) -> None:
        """New events were stored: look now rather than at the next poll."""
        self._wake.set()

    def ensure_running(self) -> None:
        """Start the thread in this process, once; after a fork the child starts its own."""
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            if self._stopping.is_set() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stopping = threading.Event()
            self._thread = threading.Thread(target=self._loop, name="outbox-deliverer", daemon=True)
            self._thread.start()
            atexit.register(self.stop)
            log.info("outbox deliverer %s started", self.name)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                with self.app.app_context():
                    sent = self.run_once()
            except Exception:
                log.exception("outbox deliverer step failed")
                with self.app.app_context():
                    self.db.session.rollback()
                sent = 0
            if sent >= self.settings.api_max_batch:
                continue  # a backlog: keep going
            if sent:
                # Let a few more events arrive, so batches grow under load instead of
                # every event costing its own claim, request and delete.
                self._stopping.wait(BATCH_GATHER_SECONDS)
                continue
            self._wake.wait(self.settings.outbox_poll_seconds)
            self._wake.clear()

    def stop(self, drain_seconds: float | None = None) -> int:
        """Stop the thread, try to deliver what is stored within the drain time, hand back claims.

        Returns how many events were delivered while draining.
        """
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
            self._wake.set()
        if thread is None or self._pid != os.getpid():
            return 0
        drain = self.settings.outbox_drain_seconds if drain_seconds is None else drain_seconds
        deadline = time.monotonic() + drain
        thread.join(timeout=max(drain, 0.1) + self.settings.inngest_send_timeout)
        delivered = 0
        with self.app.app_context():
            try:
                delivered = self.drain(deadline)
            finally:
                with _transaction(self.db):
                    self.db.session.execute(
                        update(_table)
                        .where(_c.claimed_by == self.name, _c.state == PENDING)
                        .values(claimed_by=None, claim_expires_at=None)
                    )
        log.info("outbox deliverer %s stopped; delivered %d while draining", self.name, delivered)
        return delivered

    def drain(self, deadline: float) -> int:
        """Deliver stored events until none is left, a send fails, or the deadline passes."""
        delivered = 0
        before = pending_count(self.db)
        while time.monotonic() < deadline:
            claimed = self.claim(ignore_schedule=True)
            if claimed is None:
                break
            self.deliver(claimed, deadline=deadline)
            after = pending_count(self.db)
            if after >= before:
                break  # Inngest is not taking them: leave the rest for the next start
            delivered, before = delivered + before - after, after
        return delivered


# -- status, for /readyz and the CLI ---------------------------------------------------


def status(database: OwnDatabase) -> dict[str, Any]:
    """Counts by state, events in flight, and the age of the oldest pending event."""
    try:
        return _status(database)
    finally:
        database.session.remove()  # a read in a request thread: give the connection back


def _status(db: OwnDatabase) -> dict[str, Any]:
    now = now_ms()
    counts = dict(
        db.session.execute(
            select(OutboxEvent.state, func.count()).group_by(OutboxEvent.state)
        ).all()
    )
    in_flight = db.session.scalar(
        select(func.count())
        .select_from(OutboxEvent)
        .where(OutboxEvent.state == PENDING, OutboxEvent.claim_expires_at >= now)
    )
    oldest = db.session.scalar(
        select(func.min(OutboxEvent.created_at)).where(OutboxEvent.state == PENDING)
    )
    return {
        "pending": int(counts.get(PENDING, 0)),
        "in_flight": int(in_flight or 0),
        "dead": int(counts.get(DEAD, 0)),
        "delivered": int(counts.get(DELIVERED, 0)),
        "oldest_pending_age_seconds": round((now - oldest) / 1000, 3) if oldest else 0.0,
    }


def check_writable(database: OwnDatabase) -> None:
    """Raise if the database cannot take writes (read-only, locked, gone)."""
    database.session.execute(
        update(OutboxEvent).where(OutboxEvent.id == -1).values(attempts=OutboxEvent.attempts)
    )
    database.session.rollback()


# -- wiring ----------------------------------------------------------------------------


def _outbox() -> GatewayState:
    """The current app's gateway, whose outbox the commands act on."""
    return gateway_state()


outbox_cli = AppGroup("outbox", help="See and act on the events waiting for delivery.")


@outbox_cli.command("deliver")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
def deliver_command(once: bool) -> None:
    """Run a deliverer in the foreground (SIGTERM or Ctrl-C drains and stops it)."""
    worker = _outbox().deliverer
    if once:
        total = 0
        while (sent := worker.run_once()) > 0:
            total += sent
        click.echo(f"handled {total} event(s)")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.ensure_running()
    click.echo(f"deliverer {worker.name} running; SIGTERM or Ctrl-C to stop")
    while not stop.wait(1.0):
        pass
    worker.stop()


@outbox_cli.command("status")
def status_command() -> None:
    """Pending, in flight, dead, and the age of the oldest pending event."""
    for key, value in status(_outbox().outbox_db).items():
        click.echo(f"{key}: {value}")


@outbox_cli.command("retry")
@click.option("--dead", "dead", is_flag=True, help="Move dead-lettered events back to pending.")
def retry_command(dead: bool) -> None:
    """Make pending events due now; with --dead, retry the dead-lettered ones too."""
    now = now_ms()
    statement = update(OutboxEvent).values(next_attempt_at=now)
    if dead:
        statement = (
            update(OutboxEvent)
            .where(OutboxEvent.state == DEAD)
            .values(
                state=PENDING,
                next_attempt_at=now,
                attempts=0,
                batch_seed=None,
                finished_at=None,
                created_at=now,
            )
        )
    else:
        statement = statement.where(OutboxEvent.state == PENDING)
    database = _outbox().outbox_db
    with _transaction(database):
        count = database.session.execute(statement).rowcount  # type: ignore[attr-defined]
    click.echo(f"{count} event(s) due for delivery now")


@outbox_cli.command("purge")
@click.option("--dead", "dead", is_flag=True, required=True, help="Purge dead-lettered events.")
@click.option(
    "--older-than", default="0s", show_default=True, help="Only those dead this long, e.g. 7d."
)
def purge_command(dead: bool, older_than: str) -> None:
    """Delete dead-lettered events for good."""
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    cutoff = now_ms() - int(seconds * 1000)
    database = _outbox().outbox_db
    with _transaction(database):
        count = database.session.execute(
            delete(OutboxEvent).where(OutboxEvent.state == DEAD, OutboxEvent.finished_at <= cutoff)
        ).rowcount  # type: ignore[attr-defined]
    click.echo(f"purged {count} dead event(s)")
