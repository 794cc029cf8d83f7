"""Helpers for the outbox's tests: fast retry settings, an app factory, rows, delivery steps."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask
from sqlalchemy import select

from inngest_gateway.outbox import OutboxEvent
from inngest_gateway.state import gateway_state
from service.db import db

# Short retries and leases, so a test sees several attempts within seconds.
FAST = {
    "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
    "INNGEST_GATEWAY_OUTBOX_RETRY_BASE": "50ms",
    "INNGEST_GATEWAY_OUTBOX_RETRY_MAX": "200ms",
    "INNGEST_GATEWAY_SEND_TIMEOUT": "1",
    "INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS": "2",
}


def outbox_app_factory(
    make_app: Callable[..., Flask], database_url: str, settings: dict[str, str]
) -> Callable[..., Flask]:
    """`make_app` on the test database with `settings`, which each call may override."""

    def factory(**overrides: str) -> Flask:
        return make_app(**{"DATABASE_URL": database_url, **settings, **overrides})

    return factory


def rows(app: Flask) -> list[OutboxEvent]:
    """Every stored event, oldest first, detached from the session."""
    with app.app_context():
        found = list(db.session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))
        db.session.expunge_all()
        return found


def run_once(app: Flask) -> int:
    """One step of the app's own deliverer: the number of events it handled."""
    with app.app_context():
        return gateway_state(app).deliverer.run_once()


def deliver_until(app: Flask, done: Callable[[], bool], seconds: float = 10.0) -> None:
    """Run the deliverer until `done()`, as its thread would; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"not done after {seconds}s: {rows(app)}"
        if run_once(app) == 0:
            time.sleep(0.02)
