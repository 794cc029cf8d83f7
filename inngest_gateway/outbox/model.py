"""The outbox table: one row per accepted event, its states, and the predicates on its leases."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    or_,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..db import OwnDatabase, write_lock

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


def now_ms() -> int:
    """Wall-clock milliseconds: rows are compared across processes and hosts."""
    return int(time.time() * 1000)


class OutboxBase(DeclarativeBase):
    """The outbox's own tables, in its own database (`outbox_database_url`), on its own engine."""


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


# Statements use the table, not the mapped class: the outbox never needs ORM objects.
table = cast(Table, OutboxEvent.__table__)
columns = table.c

# What a row's lease is set to when it is handed back (or finished).
RELEASED: dict[str, Any] = {"claimed_by": None, "claim_expires_at": None}


def unleased(now: int) -> Any:
    """Not leased to a live deliverer: never claimed, or its lease has run out."""
    return or_(columns.claim_expires_at.is_(None), columns.claim_expires_at < now)


def free(now: int, *, due_only: bool = True) -> Any:
    """Pending, not leased to a live deliverer, and (unless draining) due."""
    pending = and_(columns.state == PENDING, unleased(now))
    return and_(pending, columns.next_attempt_at <= now) if due_only else pending


# The order deliverers take due events in: the due index's own order (state, next_attempt_at,
# id), so a claim reads only the rows it takes, never sorting the whole backlog.
DUE_ORDER = (columns.next_attempt_at, columns.id)


def these(ids: Sequence[int], dialect: str) -> Any:
    """Exactly the rows with these ids, found through the primary key.

    The id range lets the planner use the key whatever its statistics say: a long list of
    ids alone can make PostgreSQL scan the whole table. There the list goes as one array
    parameter, which costs a fraction of binding a parameter per id; SQLite gains little.
    """
    listed = (
        columns.id == any_(bindparam(None, list(ids), type_=postgresql.ARRAY(BigInteger)))
        if dialect == "postgresql"
        else columns.id.in_(ids)
    )
    return and_(columns.id >= min(ids), columns.id <= max(ids), listed)


@contextlib.contextmanager
def transaction(database: OwnDatabase) -> Iterator[None]:
    """Statements on the session, committed as one write under the database's write lock."""
    with write_lock(database.engine):
        try:
            yield
            database.session.commit()
        except BaseException:
            database.session.rollback()
            raise
