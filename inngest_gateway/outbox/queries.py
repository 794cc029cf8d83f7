"""What the outbox holds, read one way for everyone: the CLI, `/readyz`, metrics, the writer.

Each question is asked by one function here; `status` puts them together for the callers
that show the outbox's state (`flask inngest-gateway outbox status`, `/readyz`, the metrics scrape).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Dialect, Select, and_, func, select, update

from ..db import OwnDatabase
from .model import DEAD, DELIVERED, PENDING, columns, now_ms, table, unleased

# Events stored and not yet delivered or given up on: the outbox's depth.
PENDING_COUNT: Select[int] = select(func.count()).select_from(table).where(columns.state == PENDING)


def pending_count(database: OwnDatabase) -> int:
    """Events stored and not yet delivered or given up on."""
    return int(database.session.scalar(PENDING_COUNT) or 0)


def pending_count_sql(dialect: Dialect) -> str:
    """`pending_count` as plain SQL without parameters, for a driver's own cursor."""
    # The only value is the constant PENDING, so inlining it is safe.
    return str(PENDING_COUNT.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def state_counts(database: OwnDatabase) -> dict[str, int]:
    """How many events are pending, delivered (and kept) and dead-lettered."""
    rows = database.session.execute(
        select(columns.state, func.count()).group_by(columns.state)
    ).all()
    counts = {state: int(count) for state, count in rows}
    return {state: counts.get(state, 0) for state in (PENDING, DELIVERED, DEAD)}


def in_flight_count(database: OwnDatabase, now: int) -> int:
    """Pending events leased to a live deliverer: being sent right now."""
    count = database.session.scalar(
        select(func.count())
        .select_from(table)
        .where(and_(columns.state == PENDING, ~unleased(now)))
    )
    return int(count or 0)


def oldest_pending_age(database: OwnDatabase, now: int) -> float:
    """Seconds since the oldest pending event was stored; 0 when none is pending."""
    oldest = database.session.scalar(
        select(func.min(columns.created_at)).where(columns.state == PENDING)
    )
    return round((now - oldest) / 1000, 3) if oldest else 0.0


def status(database: OwnDatabase) -> dict[str, Any]:
    """Counts by state, events in flight, and the age of the oldest pending event."""
    database.ensure_schema()  # an outbox nobody has posted to yet: all zero
    try:
        now = now_ms()
        counts = state_counts(database)
        return {
            "pending": counts[PENDING],
            "in_flight": in_flight_count(database, now),
            "dead": counts[DEAD],
            "delivered": counts[DELIVERED],
            "oldest_pending_age_seconds": oldest_pending_age(database, now),
        }
    finally:
        database.session.remove()  # a read in a request thread: give the connection back


def check_writable(database: OwnDatabase) -> None:
    """Raise if the database cannot take writes (read-only, locked, gone)."""
    database.session.execute(
        update(table).where(columns.id == -1).values(attempts=columns.attempts)
    )
    database.session.rollback()
