"""The outbox: accepted events are committed to the database, then delivered to Inngest.

`store` runs in the request and answers only after the commit. A `Deliverer` claims the
oldest due events in batches with a lease, sends them, and records the outcome; any number
of deliverers (threads in gunicorn workers, `flask outbox deliver` processes, several hosts
on PostgreSQL) can run at once, and a batch keeps its events and its event-id seed across
retries so that Inngest can deduplicate a repeat.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import (
    BigInteger,
    Index,
    Integer,
    String,
    Text,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from .db import db
from .errors import APIError
from .events import Event
from .inngest import InngestClient, InngestRejected, InngestUnavailable, id_seed
from .settings import Settings, parse_duration

log = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
HOUSEKEEPING_SECONDS = 5.0


def now_ms() -> int:
    """Wall-clock milliseconds: rows are compared across processes and hosts."""
    return int(time.time() * 1000)


class OutboxEvent(db.Model):  # type: ignore[name-defined,misc]
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


class OutboxFull(APIError):
    status_code, code = 503, "outbox_full"
    message = "Too many events are waiting for delivery; try again shortly."


class OutboxUnavailable(APIError):
    status_code, code = 503, "outbox_unavailable"
    message = "The event could not be stored; try again shortly."


# -- the write path ------------------------------------------------------------------------


def pending_count() -> int:
    """Events stored and not yet delivered or given up on."""
    count = db.session.scalar(
        select(func.count()).select_from(OutboxEvent).where(OutboxEvent.state == PENDING)
    )
    return int(count or 0)


def store(events: Sequence[Event], settings: Settings) -> None:
    """Commit the events, all or none, or raise a 503 error; nothing is half-accepted."""
    retry = {"Retry-After": "5"}
    try:
        if pending_count() + len(events) > settings.outbox_max_pending:
            raise OutboxFull(headers=retry)
        now = now_ms()
        db.session.execute(
            insert(OutboxEvent),
            [
                {
                    "event_id": event.id,
                    "name": event.name,
                    "body": event.body.decode(),
                    "size": len(event.body),
                    "state": PENDING,
                    "created_at": now,
                    "next_attempt_at": now,
                    "attempts": 0,
                }
                for event in events
            ],
        )
        db.session.commit()
    except SQLAlchemyError as exc:
        db.session.rollback()
        log.error("could not store %d event(s): %s", len(events), type(exc).__name__)
        raise OutboxUnavailable(headers=retry) from None
    except OutboxFull:
        db.session.rollback()
        log.warning("outbox full: refusing %d event(s)", len(events))
        raise


# -- delivery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """Events claimed for one request to Inngest, in order, with the batch's seed."""

    ids: list[int]
    bodies: list[bytes]
    seed: str


def _free(now: int, *, due_only: bool = True) -> Any:
    """Pending, not leased to a live deliverer, and (unless draining) due."""
    free = and_(
        OutboxEvent.state == PENDING,
        or_(OutboxEvent.claim_expires_at.is_(None), OutboxEvent.claim_expires_at < now),
    )
    return and_(free, OutboxEvent.next_attempt_at <= now) if due_only else free


class Deliverer:
    """Claims, sends and settles batches of outbox events; one per process, or several."""

    def __init__(self, app: Flask, client: InngestClient) -> None:
        self.app = app
        self.settings: Settings = app.extensions["settings"]
        self.client = client
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
        head = db.session.execute(
            select(OutboxEvent.id, OutboxEvent.batch_seed)
            .where(free)
            .order_by(OutboxEvent.id)
            .limit(1)
        ).first()
        db.session.commit()  # end the read, so the claim below starts a write at once
        if head is None:
            return None
        seed = head.batch_seed or id_seed()
        if head.batch_seed:
            which = OutboxEvent.batch_seed == head.batch_seed
        else:
            fresh = (
                select(OutboxEvent.id)
                .where(free, OutboxEvent.batch_seed.is_(None))
                .order_by(OutboxEvent.id)
                .limit(self._max_batch)
                .with_for_update(skip_locked=True)
            )
            which = OutboxEvent.id.in_(fresh)
        rows: list[Any] = list(
            db.session.execute(
                update(OutboxEvent)
                .where(which, free)
                .values(
                    claimed_by=self.name,
                    claim_expires_at=now + int(self.settings.outbox_lease_seconds * 1000),
                    batch_seed=seed,
                )
                .returning(OutboxEvent.id, OutboxEvent.body, OutboxEvent.size),
                execution_options={"synchronize_session": False},
            ).all()
        )
        db.session.commit()
        if not rows:
            return None  # another deliverer took it first
        rows.sort(key=lambda row: row.id)
        if not head.batch_seed:
            rows = self._fit(rows)
        return Claimed([r.id for r in rows], [r.body.encode() for r in rows], seed)

    @property
    def _max_batch(self) -> int:
        return self.settings.api_max_batch

    def _fit(self, rows: list[Any]) -> list[Any]:
        """Keep the longest prefix under the batch byte budget; hand the rest back."""
        budget, total, keep = self.settings.outbox_max_batch_bytes, 0, 0
        for row in rows:
            if keep and total + row.size + 1 > budget:
                break
            total += row.size + 1
            keep += 1
        if keep < len(rows):
            self._release([r.id for r in rows[keep:]], forget_batch=True)
        return rows[:keep]

    def deliver(self, claimed: Claimed, *, deadline: float | None = None) -> None:
        """Send one claimed batch and record what Inngest said."""
        began = time.monotonic()
        try:
            self.client.send(claimed.bodies, seed=claimed.seed, deadline=deadline, retry=False)
        except InngestUnavailable as exc:
            self._retry_later(claimed.ids, str(exc), exc.upstream_retry_after)
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
    def _delivered(self, ids: list[int]) -> None:
        if not ids:
            return
        where = OutboxEvent.id.in_(ids)
        if self.settings.outbox_keep_delivered <= 0:
            db.session.execute(delete(OutboxEvent).where(where))
        else:
            db.session.execute(
                update(OutboxEvent)
                .where(where)
                .values(
                    state=DELIVERED,
                    finished_at=now_ms(),
                    claimed_by=None,
                    claim_expires_at=None,
                    last_error=None,
                )
            )
        db.session.commit()

    def _dead(self, ids: list[int], error: str) -> None:
        if not ids:
            return
        db.session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(ids), OutboxEvent.state == PENDING)
            .values(
                state=DEAD,
                finished_at=now_ms(),
                claimed_by=None,
                claim_expires_at=None,
                last_error=error[:2000],
                attempts=OutboxEvent.attempts + 1,
            )
        )
        db.session.commit()
        log.error("dead-lettered %d event(s): %s", len(ids), error)

    def _release(self, ids: list[int], *, forget_batch: bool = False) -> None:
        values: dict[str, Any] = {"claimed_by": None, "claim_expires_at": None}
        if forget_batch:
            values["batch_seed"] = None
        db.session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(ids), OutboxEvent.claimed_by == self.name)
            .values(**values)
        )
        db.session.commit()

    def _retry_later(self, ids: list[int], error: str, retry_after: float | None) -> None:
        attempts = (
            db.session.scalar(select(func.max(OutboxEvent.attempts)).where(OutboxEvent.id.in_(ids)))
            or 0
        )
        delay = self.backoff(attempts + 1)
        if retry_after is not None:
            delay = max(delay, retry_after)
        db.session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(ids), OutboxEvent.claimed_by == self.name)
            .values(
                attempts=OutboxEvent.attempts + 1,
                next_attempt_at=now_ms() + int(delay * 1000),
                claimed_by=None,
                claim_expires_at=None,
                last_error=error[:2000],
            )
        )
        db.session.commit()
        log.warning(
            "could not deliver %d event(s), retrying in %.1fs (attempt %d): %s",
            len(ids),
            delay,
            attempts + 1,
            error,
        )

    def _rejected(self, claimed: Claimed, exc: InngestRejected) -> None:
        """A 400 names the first bad event; those before it were accepted. Other 4xx: all dead."""
        if exc.status == 400 or 200 <= exc.status < 300:
            accepted = min(exc.accepted, len(claimed.ids) - 1)
            self._delivered(claimed.ids[:accepted])
            self._dead([claimed.ids[accepted]], exc.error)
            rest = claimed.ids[accepted + 1 :]
            if rest:
                self._release(rest, forget_batch=True)
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
        expired = db.session.execute(
            update(OutboxEvent)
            .where(
                OutboxEvent.state == PENDING,
                OutboxEvent.created_at < now - int(self.settings.outbox_max_age * 1000),
                or_(OutboxEvent.claim_expires_at.is_(None), OutboxEvent.claim_expires_at < now),
            )
            .values(
                state=DEAD,
                finished_at=now,
                claimed_by=None,
                claim_expires_at=None,
                last_error="not delivered within OUTBOX_MAX_AGE",
            )
        ).rowcount  # type: ignore[attr-defined]
        if self.settings.outbox_keep_delivered > 0:
            db.session.execute(
                delete(OutboxEvent).where(
                    OutboxEvent.state == DELIVERED,
                    OutboxEvent.finished_at < now - int(self.settings.outbox_keep_delivered * 1000),
                )
            )
        db.session.commit()
        if expired:
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
                    busy = self.run_once() > 0
            except Exception:
                log.exception("outbox deliverer step failed")
                with self.app.app_context():
                    db.session.rollback()
                busy = False
            if not busy:
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
                db.session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.claimed_by == self.name, OutboxEvent.state == PENDING)
                    .values(claimed_by=None, claim_expires_at=None)
                )
                db.session.commit()
        log.info("outbox deliverer %s stopped; delivered %d while draining", self.name, delivered)
        return delivered

    def drain(self, deadline: float) -> int:
        """Deliver stored events until none is left, a send fails, or the deadline passes."""
        delivered = 0
        while time.monotonic() < deadline:
            before = pending_count()
            claimed = self.claim(ignore_schedule=True)
            if claimed is None:
                break
            self.deliver(claimed, deadline=deadline)
            if pending_count() >= before:
                break  # Inngest is not taking them: leave the rest for the next start
            delivered += before - pending_count()
        return delivered


# -- status, for /readyz and the CLI ---------------------------------------------------


def status() -> dict[str, Any]:
    """Counts by state, events in flight, and the age of the oldest pending event."""
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


def check_writable() -> None:
    """Raise if the database cannot take writes (read-only, locked, gone)."""
    db.session.execute(
        update(OutboxEvent).where(OutboxEvent.id == -1).values(attempts=OutboxEvent.attempts)
    )
    db.session.rollback()


# -- wiring ----------------------------------------------------------------------------


def deliverer(app: Flask | None = None) -> Deliverer:
    """The app's deliverer."""
    the_app = app or current_app
    found: Deliverer = the_app.extensions["outbox"]
    return found


def start_delivery(app: Flask) -> None:
    """Run the deliverer thread in this process, if this process should have one."""
    settings: Settings = app.extensions["settings"]
    if settings.delivery_mode == "outbox" and settings.outbox_embedded_deliverer:
        deliverer(app).ensure_running()


def stop_delivery(app: Flask) -> None:
    """Stop this process's deliverer and drain within OUTBOX_DRAIN_SECONDS."""
    if "outbox" in app.extensions:
        deliverer(app).stop()


outbox_cli = AppGroup("outbox", help="See and act on the events waiting for delivery.")


@outbox_cli.command("deliver")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
def deliver_command(once: bool) -> None:
    """Run a deliverer in the foreground (SIGTERM or Ctrl-C drains and stops it)."""
    worker = deliverer()
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
    for key, value in status().items():
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
    count = db.session.execute(statement).rowcount  # type: ignore[attr-defined]
    db.session.commit()
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
    count = db.session.execute(
        delete(OutboxEvent).where(OutboxEvent.state == DEAD, OutboxEvent.finished_at <= cutoff)
    ).rowcount  # type: ignore[attr-defined]
    db.session.commit()
    click.echo(f"purged {count} dead event(s)")


def init_app(app: Flask, client: InngestClient) -> None:
    """Create the app's deliverer, start it with the first request, register `flask outbox`.

    Nothing starts here: under gunicorn the app may be built before the fork, and a
    thread started then would not exist in the workers. gunicorn.conf.py starts it in
    each worker; elsewhere (`flask run`) the first request does.
    """
    app.extensions["outbox"] = Deliverer(app, client)
    app.cli.add_command(outbox_cli)
    app.before_request(lambda: start_delivery(app))
