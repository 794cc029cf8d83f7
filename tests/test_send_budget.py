"""The outbox deliverer under slow failure: it gives up within its budget and before its
lease runs out, and the retry carries the same events, ids and seed.

Each test runs on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set; Inngest is the
stand-in on 127.0.0.1, made to stall or trickle its answer after taking the events.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import update

from inngest_gateway.outbox import PENDING, OutboxEvent, now_ms
from inngest_gateway.state import gateway_state
from tests.outboxes import FAST, deliver_until, outbox_app_factory, rows
from tests.standin import InngestStandIn

SETTINGS = {**FAST, "INNGEST_GATEWAY_OUTBOX_RETRY_MAX": "100ms"}


@pytest.fixture
def make_outbox_app(make_app: Callable[..., Flask], database_url: str) -> Callable[..., Flask]:
    return outbox_app_factory(make_app, database_url, SETTINGS)


def post(app: Flask, events: list[dict[str, object]]) -> list[str]:
    response = app.test_client().post("/api", json=events)
    assert response.status_code == 202, response.get_data(as_text=True)
    return list(response.get_json()["ids"])


def deliver_until_empty(app: Flask, seconds: float = 10.0) -> None:
    deliver_until(app, lambda: not rows(app), seconds)


def assert_same_batch_every_time(inngest: InngestStandIn, ids: list[str]) -> None:
    """Every request carried the same body and seed: Inngest derives the same internal ids
    and sees the same event ids, so for it the batch arrived once."""
    first = inngest.received[0]
    for attempt in inngest.received:
        assert attempt.seed == first.seed
        assert attempt.body == first.body
        assert [event["id"] for event in json.loads(attempt.body)] == ids


@pytest.mark.timeout(40)
@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickled_answer_does_not_hold_the_deliverer_past_its_budget_or_lease(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn, part: str
) -> None:
    app = make_outbox_app()
    ids = post(app, [{"data": {"i": 0}}, {"data": {"i": 1}}])
    inngest.trickle_next(1, part, seconds=6)

    started = time.monotonic()
    with app.app_context():
        assert gateway_state(app).deliverer.run_once() == 2
    elapsed = time.monotonic() - started

    assert elapsed < 1 + 1, f"{elapsed:.1f}s with a 1 s budget and a 2 s lease"
    stored = rows(app)
    assert [(r.state, r.attempts, r.claimed_by) for r in stored] == [(PENDING, 1, None)] * 2
    assert inngest.accepted_ids() == ids  # taken before the trickle

    deliver_until_empty(app)
    assert len(inngest.received) == 2
    assert_same_batch_every_time(inngest, ids)


@pytest.mark.timeout(40)
def test_a_read_timeout_after_acceptance_is_retried_with_the_same_ids_and_seed(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app()
    ids = post(app, [{"id": "a", "data": {}}, {"id": "b", "data": {}}])
    inngest.stall_next(1, 5)

    started = time.monotonic()
    with app.app_context():
        gateway_state(app).deliverer.run_once()
    elapsed = time.monotonic() - started

    assert elapsed < 1 + 1
    assert [(r.state, r.attempts) for r in rows(app)] == [(PENDING, 1)] * 2
    deliver_until_empty(app)

    first, retry = inngest.received
    assert [e["id"] for e in retry.events] == [e["id"] for e in first.events] == ids
    assert retry.seed == first.seed
    assert inngest.accepted_ids() == ids + ids  # twice on the wire, once for Inngest
    assert_same_batch_every_time(inngest, ids)


@pytest.mark.timeout(40)
def test_the_deliverer_stops_sending_before_its_lease_runs_out(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """A claim that took long (a slow database) leaves less lease than INNGEST_GATEWAY_SEND_TIMEOUT:
    the send ends before the lease does, so no other deliverer can take the batch over
    while this one is still sending it."""
    app = make_outbox_app(
        INNGEST_GATEWAY_SEND_TIMEOUT="5", INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS="10"
    )
    post(app, [{"id": "late", "data": {}}])
    inngest.trickle_next(1, "body", seconds=8)

    with app.app_context():
        deliverer = gateway_state(app).deliverer
        claimed = deliverer.claim()
        assert claimed is not None
        assert claimed.lease_expires_at == rows(app)[0].claim_expires_at
        # As if the claim had taken 8.5 of the lease's 10 s: 1.5 s are left, of the lease
        # the sender holds and the one stored alike.
        lease_left = dataclasses.replace(claimed, lease_expires_at=now_ms() + 1500)
        deliverer.db.session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(claimed.ids))
            .values(claim_expires_at=lease_left.lease_expires_at)
        )
        deliverer.db.session.commit()
        started = time.monotonic()
        deliverer.deliver(lease_left)
        elapsed = time.monotonic() - started

    assert elapsed < 1.5, f"still sending {elapsed:.1f}s into a lease with 1.5 s left"
    (stored,) = rows(app)
    assert (stored.state, stored.attempts, stored.claimed_by) == (PENDING, 1, None)


@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    ("raw", "content_type"),
    [(b"", None), (b"<html><body>Bad gateway page, status 200</body></html>", "text/html")],
    ids=["empty", "html"],
)
def test_a_2xx_that_is_not_inngests_json_is_retried_not_counted_as_delivered(
    make_outbox_app: Callable[..., Flask],
    inngest: InngestStandIn,
    raw: bytes,
    content_type: str | None,
) -> None:
    app = make_outbox_app()
    ids = post(app, [{"id": "x", "data": {}}])
    inngest.answer_next_raw(1, 200, raw, content_type)

    with app.app_context():
        gateway_state(app).deliverer.run_once()

    (stored,) = rows(app)
    assert (stored.state, stored.attempts) == (PENDING, 1)
    assert "without a JSON body" in (stored.last_error or "")
    deliver_until_empty(app)
    assert [r.status for r in inngest.received] == [200, 200]
    assert inngest.accepted_ids() == ids
    assert_same_batch_every_time(inngest, ids)
