"""Delivery: claim the oldest due events in batches, send them, record what Inngest said.

Any number of deliverers (threads in gunicorn workers, `flask outbox deliver` processes,
several hosts on PostgreSQL) can run at once: each claims a batch with a lease, and a batch
keeps its events and its event-id seed across retries so that Inngest can deduplicate a
repeat. Housekeeping dead-letters events too old to send and forgets delivered ones.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask
from sqlalchemy import and_, delete, func, select, update

from .. import metrics
from ..db import OwnDatabase
from ..inngest import (
    InngestClient,
    InngestRejected,
    InngestUnavailable,
    id_seed,
    lease_deadline,
)
from ..settings import Settings
from .model import DEAD, DELIVERED, PENDING, RELEASED, columns, free, now_ms, table, transaction
from .queries import pending_count

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 5.0
BATCH_GATHER_SECONDS = 0.1


@dataclass(frozen=True)
class Claimed:
    """Events claimed for one request to Inngest, in order, with the batch's seed."""

    ids: list[int]
    bodies: list[bytes]
    seed: str
    lease_expires_at: int  # epoch ms, as stored in claim_expires_at


def _finished(state: str, at: int, error: str | None) -> dict[str, Any]:
    """The values that end an event's delivery (delivered, or dead with its error)."""
    return {"state": state, "finished_at": at, **RELEASED, "last_error": error}


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
        claimable = free(now, due_only=not ignore_schedule)
        head = self.db.session.execute(
            select(columns.id, columns.batch_seed).where(claimable).order_by(columns.id).limit(1)
        ).first()
        self.db.session.commit()  # end the read, so the claim below starts a write at once
        if head is None:
            return None
        seed = head.batch_seed or id_seed()
        expires = now + int(self.settings.outbox_lease_seconds * 1000)
        lease = {"claimed_by": self.name, "claim_expires_at": expires, "batch_seed": seed}
        with transaction(self.db):
            if head.batch_seed:
                # A batch sent before: exactly its events again, under its seed.
                which = columns.batch_seed == head.batch_seed
            else:
                # A fresh batch: sized before the seed is written, so that the seed only
                # ever names the events it is first sent with.
                fresh = self.db.session.execute(
                    select(columns.id, columns.size)
                    .where(claimable, columns.batch_seed.is_(None))
                    .order_by(columns.id)
                    .limit(self._max_batch)
                    .with_for_update(skip_locked=True)
                ).all()
                which = and_(columns.id.in_(self._fit(fresh)), columns.batch_seed.is_(None))
            rows: list[Any] = list(
                self.db.session.execute(
                    update(table)
                    .where(which, claimable)
                    .values(**lease)
                    .returning(columns.id, columns.body, columns.size),
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
        with transaction(self.db):
            self._mark_delivered(ids)
        metrics.events_delivered(len(ids))

    def _mark_delivered(self, ids: list[int]) -> None:
        where = columns.id.in_(ids)
        if self.settings.outbox_keep_delivered <= 0:
            self.db.session.execute(delete(table).where(where))
        else:
            self.db.session.execute(
                update(table).where(where).values(**_finished(DELIVERED, now_ms(), None))
            )

    def _mark_dead(self, ids: list[int], error: str) -> None:
        self.db.session.execute(
            update(table)
            .where(columns.id.in_(ids), columns.state == PENDING)
            .values(**_finished(DEAD, now_ms(), error[:2000]), attempts=columns.attempts + 1)
        )

    def _dead(self, ids: list[int], error: str) -> None:
        if not ids:
            return
        with transaction(self.db):
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
        attempts = (
            self.db.session.scalar(select(func.max(columns.attempts)).where(columns.id.in_(ids)))
            or 0
        )
        attempt = attempts + 1
        delay = self.backoff(attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        mine = columns.claimed_by == self.name
        # Not when Inngest throttled us (429): that is about the rate, and smaller batches
        # would only mean more requests. A 5xx is split even with Retry-After (proxies and
        # load balancers answer 503 with one), still waiting as long as it asks.
        split = len(ids) > 1 and not throttled and attempt % self.settings.outbox_split_after == 0
        with transaction(self.db):
            if split:
                half = (len(ids) + 1) // 2
                for part in (ids[:half], ids[half:]):
                    self.db.session.execute(
                        update(table).where(columns.id.in_(part), mine).values(batch_seed=id_seed())
                    )
            self.db.session.execute(
                update(table)
                .where(columns.id.in_(ids), mine)
                .values(
                    attempts=columns.attempts + 1,
                    next_attempt_at=now_ms() + int(delay * 1000),
                    last_error=error[:2000],
                    **RELEASED,
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
            with transaction(self.db):  # one write: a crash must not leave the rest with the seed
                if done:
                    self._mark_delivered(done)
                self._mark_dead([bad], exc.error)
                if rest:  # a new batch, with a new seed, when next claimed
                    self.db.session.execute(
                        update(table)
                        .where(columns.id.in_(rest), columns.claimed_by == self.name)
                        .values(**RELEASED, batch_seed=None)
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
        with transaction(self.db):
            seeds = self.db.session.scalars(
                update(table)
                .where(
                    free(now, due_only=False),
                    columns.created_at < now - int(self.settings.outbox_max_age * 1000),
                )
                .values(**_finished(DEAD, now, "not delivered within OUTBOX_MAX_AGE"))
                .returning(columns.batch_seed)
            ).all()
            expired = len(seeds)
            # The younger events of those batches stay pending: as a new batch, new seed.
            partial = {seed for seed in seeds if seed is not None}
            if partial:
                self.db.session.execute(
                    update(table)
                    .where(columns.batch_seed.in_(partial), columns.state == PENDING)
                    .values(batch_seed=None)
                )
            if self.settings.outbox_keep_delivered > 0:
                self.db.session.execute(
                    delete(table).where(
                        columns.state == DELIVERED,
                        columns.finished_at < now - int(self.settings.outbox_keep_delivered * 1000),
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
                with transaction(self.db):
                    self.db.session.execute(
                        update(table)
                        .where(columns.claimed_by == self.name, columns.state == PENDING)
                        .values(**RELEASED)
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
