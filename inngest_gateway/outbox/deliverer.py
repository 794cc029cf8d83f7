"""Delivery: claim the oldest due events in batches, send them, record what Inngest said.

Any number of deliverers (threads in gunicorn workers, `flask inngest-gateway outbox deliver`
processes, several hosts on PostgreSQL) can run at once, each sending
INNGEST_GATEWAY_OUTBOX_CONCURRENCY batches at a time from threads of its own: each claims a
batch with a lease, and a batch
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
from sqlalchemy import and_, delete, func, select, text, update

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
from .model import (
    DEAD,
    DELIVERED,
    DUE_ORDER,
    PENDING,
    RELEASED,
    columns,
    free,
    now_ms,
    table,
    these,
    transaction,
)
from .queries import pending_count

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 5.0
BATCH_GATHER_SECONDS = 0.1
# While posts keep arriving, a backlog is drained with at most this share of a core (the
# sender's own CPU time, measured per batch), by one sender of the process: the site stays
# fast while it catches up. Posts count as arriving for a while after the last one.
DRAIN_SHARE_WHILE_POSTING = 0.5
POSTS_ACTIVE_SECONDS = 0.25
# ... and in smaller batches, so that no claim or delete holds the posts' writes up for long.
BATCH_WHILE_POSTING = 250


@dataclass(frozen=True)
class Claimed:
    """Events claimed for one request to Inngest, in order, with the batch's seed."""

    ids: list[int]
    bodies: list[bytes]
    seed: str
    lease_expires_at: int  # epoch ms, as stored in claim_expires_at
    # The claim stopped at INNGEST_GATEWAY_OUTBOX_BATCH_SIZE or
    # INNGEST_GATEWAY_OUTBOX_MAX_BATCH_BYTES: more may be due now.
    more: bool = False


def _finished(state: str, at: int, error: str | None) -> dict[str, Any]:
    """The values that end an event's delivery (delivered, or dead with its error)."""
    return {"state": state, "finished_at": at, **RELEASED, "last_error": error}


def _deliverer_name() -> str:
    """This host, this process and a random part: claims are leased under this name."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Deliverer:
    """Claims, sends and settles batches of outbox events; one per process, or several."""

    def __init__(
        self, app: Flask, settings: Settings, client: InngestClient, database: OwnDatabase
    ) -> None:
        self.app = app
        self.settings = settings
        self.client = client
        self.db = database
        self.name = _deliverer_name()
        self._wake = threading.Event()
        # Set while claims come back full: the senders after the first work only then.
        self._backlog = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pid = 0
        self._lock = threading.Lock()
        self._housekeeping_lock = threading.Lock()
        self._last_housekeeping = 0.0
        self._last_post = float("-inf")

    # -- one step ----------------------------------------------------------------------
    def run_once(self, *, ignore_schedule: bool = False, deadline: float | None = None) -> int:
        """Claim and send one batch; the number of events it held (0: nothing was due)."""
        claimed = self._step(ignore_schedule=ignore_schedule, deadline=deadline)
        return 0 if claimed is None else len(claimed.ids)

    def _step(
        self, *, ignore_schedule: bool = False, deadline: float | None = None
    ) -> Claimed | None:
        """Housekeeping when due, then claim and send one batch; the batch, if there was one."""
        if not self.db.ensure_schema():  # made at the first use, not when the app is loaded
            return None
        if time.monotonic() - self._last_housekeeping > HOUSEKEEPING_SECONDS:
            # One sender thread does it; the others go on sending.
            if self._housekeeping_lock.acquire(blocking=False):
                try:
                    if time.monotonic() - self._last_housekeeping > HOUSEKEEPING_SECONDS:
                        self.housekeeping()
                finally:
                    self._housekeeping_lock.release()
        claimed = self.claim(ignore_schedule=ignore_schedule)
        if claimed is not None and claimed.more:
            self._backlog.set()  # before the send: another sender can claim meanwhile
        else:
            self._backlog.clear()
        if claimed is not None:
            self.deliver(claimed, deadline=deadline)
        return claimed

    def claim(self, *, ignore_schedule: bool = False) -> Claimed | None:
        """Lease the next batch: the oldest due event's unfinished batch, or a fresh one."""
        now = now_ms()
        claimable = free(now, due_only=not ignore_schedule)
        head = self.db.session.execute(
            select(columns.id, columns.batch_seed).where(claimable).order_by(*DUE_ORDER).limit(1)
        ).first()
        self.db.session.commit()  # end the read, so the claim below starts a write at once
        if head is None:
            return None
        seed = head.batch_seed or id_seed()
        expires = now + int(self.settings.outbox_lease_seconds * 1000)
        lease = {"claimed_by": self.name, "claim_expires_at": expires, "batch_seed": seed}
        more = True  # a batch sent before: look again at once, for the events behind it
        with transaction(self.db):
            if head.batch_seed:
                # A batch sent before: exactly its events again, under its seed.
                which = and_(columns.batch_seed == head.batch_seed, claimable)
            else:
                # A fresh batch: sized before the seed is written, so that the seed only
                # ever names the events it is first sent with.
                self._read_in_index_order()
                size = self.settings.outbox_batch_size
                if self._posting():
                    size = min(size, BATCH_WHILE_POSTING)
                fresh = self.db.session.execute(
                    select(columns.id, columns.size)
                    .where(claimable, columns.batch_seed.is_(None))
                    .order_by(*DUE_ORDER)
                    .limit(size)
                    .with_for_update(skip_locked=True)
                ).all()
                ids, more = self._fit(fresh, size)
                if not ids:
                    return None
                # Read under lock (PostgreSQL: FOR UPDATE; SQLite: the write lock every
                # writer holds), so still claimable: the key alone finds them.
                which = self._these(ids)
            rows: list[Any] = list(
                self.db.session.execute(
                    update(table)
                    .where(which)
                    .values(**lease)
                    .returning(columns.id, columns.body, columns.size),
                ).all()
            )
        if not rows:
            return None  # another deliverer took it first
        rows.sort(key=lambda row: row.id)
        return Claimed([r.id for r in rows], [r.body.encode() for r in rows], seed, expires, more)

    def _these(self, ids: Sequence[int]) -> Any:
        return these(ids, self.db.engine.dialect.name)

    def _read_in_index_order(self) -> None:
        """PostgreSQL: read the due rows in the due index's order, never sort the backlog.

        Without fresh statistics (a backlog built up faster than autovacuum analyses the
        table, or autovacuum off) the planner takes the backlog for a few rows, reads all
        of it and sorts it to find the first batch; for the rest of this transaction it
        walks the index instead, which reads only the rows it takes.
        """
        if self.db.engine.dialect.name == "postgresql":
            self.db.session.execute(text("SET LOCAL enable_sort = off"))

    def _fit(self, rows: Sequence[Any], size: int) -> tuple[list[int], bool]:
        """The ids of the longest prefix whose request body fits the byte budget (at least
        one event), and whether a limit (the budget, or the `size` rows asked for) stopped it.
        """
        # The body is a JSON array: `[`, then each event followed by `,` or, the last, `]`.
        budget, total, keep = self.settings.outbox_max_batch_bytes, 1, 0
        for row in rows:
            if keep and total + row.size + 1 > budget:
                break
            total += row.size + 1
            keep += 1
        full = keep < len(rows) or len(rows) >= size
        return [row.id for row in rows[:keep]], full

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
                claimed,
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
        where = self._these(ids)
        if self.settings.outbox_keep_delivered <= 0:
            self.db.session.execute(delete(table).where(where))
        else:
            self.db.session.execute(
                update(table).where(where).values(**_finished(DELIVERED, now_ms(), None))
            )

    def _mark_dead(self, ids: list[int], error: str) -> None:
        self.db.session.execute(
            update(table)
            .where(self._these(ids), columns.state == PENDING)
            .values(**_finished(DEAD, now_ms(), error[:2000]), attempts=columns.attempts + 1)
        )

    def _dead(self, ids: list[int], error: str) -> None:
        if not ids:
            return
        with transaction(self.db):
            self._mark_dead(ids, error)
        metrics.events_dead(len(ids))
        log.error("dead-lettered %d event(s): %s", len(ids), error)

    def _held(self, claimed: Claimed) -> Any:
        """The rows still under this claim: neither handed back nor claimed again since.

        A deliverer's name alone is not enough: its senders share it, and one of them may
        have claimed the batch again after this claim's lease ran out.
        """
        return and_(
            columns.claimed_by == self.name,
            columns.claim_expires_at == claimed.lease_expires_at,
        )

    def _retry_later(
        self,
        claimed: Claimed,
        error: str,
        retry_after: float | None,
        *,
        throttled: bool = False,
    ) -> None:
        """Back off; every `outbox_split_after` failed attempts, split the batch in halves.

        An event that Inngest keeps failing on (5xx, a timeout) would otherwise hold back
        the rest of its batch for good: halving it on repeated failures soon leaves the bad
        event alone, and the others are delivered. Each half is a new batch with a new seed;
        the events keep their ids.
        """
        ids = claimed.ids
        most = select(func.max(columns.attempts)).where(self._these(ids))
        attempts = self.db.session.scalar(most) or 0
        attempt = attempts + 1
        delay = self.backoff(attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        mine = self._held(claimed)
        # Not when Inngest throttled us (429): that is about the rate, and smaller batches
        # would only mean more requests. A 5xx is split even with Retry-After (proxies and
        # load balancers answer 503 with one), still waiting as long as it asks.
        split = len(ids) > 1 and not throttled and attempt % self.settings.outbox_split_after == 0
        with transaction(self.db):
            if split:
                half = (len(ids) + 1) // 2
                for part in (ids[:half], ids[half:]):
                    self.db.session.execute(
                        update(table).where(self._these(part), mine).values(batch_seed=id_seed())
                    )
            released = self.db.session.execute(
                update(table)
                .where(self._these(ids), mine)
                .values(
                    attempts=columns.attempts + 1,
                    next_attempt_at=now_ms() + int(delay * 1000),
                    last_error=error[:2000],
                    **RELEASED,
                )
            ).rowcount  # type: ignore[attr-defined]
        if not released:
            # Its lease ran out and the batch was claimed again: that claim settles it.
            log.warning(
                "could not deliver %d event(s), and they were claimed again meanwhile: %s",
                len(ids),
                error,
            )
            return
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
                        .where(self._these(rest), self._held(claimed))
                        .values(**RELEASED, batch_seed=None)
                    )
            if done:
                metrics.events_delivered(len(done))
            metrics.events_dead(1)
            log.error("dead-lettered 1 event(s): %s", exc.error)
        else:
            self._dead(claimed.ids, f"HTTP {exc.status}: {exc.error}")

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter, from the retry base up to the retry max (seconds)."""
        ceiling: float = min(
            self.settings.outbox_retry_max, self.settings.outbox_retry_base * 2 ** (attempt - 1)
        )
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def housekeeping(self) -> None:
        """Dead-letter events past their max age; forget delivered ones kept long enough."""
        self._last_housekeeping = time.monotonic()
        now = now_ms()
        with transaction(self.db):
            seeds = self.db.session.scalars(
                update(table)
                .where(
                    free(now, due_only=False),
                    columns.created_at < now - int(self.settings.outbox_max_age * 1000),
                )
                .values(
                    **_finished(DEAD, now, "not delivered within INNGEST_GATEWAY_OUTBOX_MAX_AGE")
                )
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
            log.error(
                "dead-lettered %d event(s) older than INNGEST_GATEWAY_OUTBOX_MAX_AGE", expired
            )

    # -- the background thread ---------------------------------------------------------
    def notify(self) -> None:
        """New events were stored: look now rather than at the next poll."""
        self._last_post = time.monotonic()
        self._wake.set()

    def _posting(self) -> bool:
        """Whether this process stored posted events just now (its requests come first)."""
        return time.monotonic() - self._last_post < POSTS_ACTIVE_SECONDS

    def _yield_to_posts(self, cpu_seconds: float) -> None:
        """After a backlog batch: while posts arrive, rest so the batch's CPU is its share."""
        if cpu_seconds > 0 and self._posting():
            rest = cpu_seconds * (1 / DRAIN_SHARE_WHILE_POSTING - 1)
            self._stopping.wait(min(rest, 1.0))

    def _running(self) -> bool:
        return self._pid == os.getpid() and any(thread.is_alive() for thread in self._threads)

    def ensure_running(self) -> None:
        """Start the sender threads in this process, once; after a fork the child starts its own."""
        if self._running():
            return
        with self._lock:
            if self._running():
                return
            if self._stopping.is_set() and self._pid == os.getpid():
                return
            if self.name.rsplit(":", 2)[1] != str(os.getpid()):
                # Forked from the process that made it (gunicorn's preloading master, say):
                # a name of its own, so that siblings never take each other's claims.
                self.name = _deliverer_name()
            self._pid = os.getpid()
            self._stopping = threading.Event()
            self._backlog.clear()
            self._threads = [
                threading.Thread(
                    target=self._loop, args=(n == 1,), name=f"outbox-deliverer-{n}", daemon=True
                )
                for n in range(1, self.settings.outbox_concurrency + 1)
            ]
            for thread in self._threads:
                thread.start()
            atexit.register(self.stop)
            log.info(
                "outbox deliverer %s started, sending %d batch(es) at once",
                self.name,
                len(self._threads),
            )

    def _loop(self, first: bool = True) -> None:
        """One sender thread: claim, send, settle, as long as events are due; then wait.

        The first sender of a process works whenever events are due; the others only while
        there is a backlog (a claim came back full) and no posts are arriving. While posts
        arrive, the first sender drains a backlog with at most DRAIN_SHARE_WHILE_POSTING of
        a core, so that the posts keep most of the CPU. Under a steady trickle of posts one
        sender gathers them into batches, instead of several senders each paying for a
        claim, a request and a delete per handful of events.
        """
        stopping = self._stopping
        while not stopping.is_set():
            if not first and not self._backlog.is_set():
                self._backlog.wait(self.settings.outbox_poll_seconds)
                continue
            if not first and self._posting():
                stopping.wait(POSTS_ACTIVE_SECONDS)  # one sender drains while posts arrive
                continue
            cpu = time.thread_time()
            try:
                with self.app.app_context():
                    claimed = self._step()
            except Exception:
                log.exception("outbox deliverer step failed")
                with self.app.app_context():
                    self.db.session.rollback()
                claimed = None
            if claimed is not None and claimed.more:
                self._yield_to_posts(time.thread_time() - cpu)
                continue  # a backlog: keep going
            if claimed is not None:
                # Let a few more events arrive, so batches grow under load instead of
                # every event costing its own claim, request and delete.
                stopping.wait(BATCH_GATHER_SECONDS)
                continue
            self._wake.wait(self.settings.outbox_poll_seconds)
            self._wake.clear()

    def stop(self, drain_seconds: float | None = None) -> int:
        """Stop the senders, try to deliver what is stored within the drain time, hand back claims.

        Returns how many events were delivered while draining.
        """
        with self._lock:
            threads, self._threads = self._threads, []
            self._stopping.set()
            self._wake.set()
            self._backlog.set()  # senders waiting for a backlog see the stop at once
        if not threads or self._pid != os.getpid():
            return 0
        drain = self.settings.outbox_drain_seconds if drain_seconds is None else drain_seconds
        deadline = time.monotonic() + drain
        # A thread in the middle of a send finishes it (within INNGEST_GATEWAY_SEND_TIMEOUT).
        joined = time.monotonic() + max(drain, 0.1) + self.settings.inngest_send_timeout
        for thread in threads:
            thread.join(timeout=max(joined - time.monotonic(), 0))
        if not self.db.schema_ready:
            return 0  # never reached its table (still to be made): nothing claimed, nothing to send
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
