"""The outbox's own metrics: its depth and its oldest pending event's age, read per scrape."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from ..metrics import PREFIX
from ..state import gateway_state
from . import queries

log = logging.getLogger(__name__)


class OutboxCollector(Collector):
    """The outbox's depth and oldest pending event's age, read from the database per scrape."""

    def collect(self) -> Iterable[Metric]:
        database = gateway_state().outbox_db
        try:
            if not database.ensure_schema():
                return
            status = queries.status(database)
        except SQLAlchemyError as exc:
            database.session.remove()
            log.warning("outbox metrics unavailable: %s", type(exc).__name__)
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_outbox_pending_events",
            "Events stored and not yet delivered or given up on (the outbox depth).",
            value=status["pending"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_outbox_dead_events",
            "Dead-lettered events kept in the outbox.",
            value=status["dead"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when none is pending).",
            value=status["oldest_pending_age_seconds"],
        )
