"""The outbox: posts are stored before the answer, then delivered to the stand-in Inngest.

Each test runs on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import make_url

from inngest_gateway import outbox
from inngest_gateway.outbox import DEAD, DELIVERED, PENDING
from inngest_gateway.outbox.deliverer import POSTS_ACTIVE_SECONDS
from inngest_gateway.state import gateway_state
from tests.conftest import assert_envelope
from tests.outboxes import FAST, deliver_until, outbox_app_factory, rows, run_once
from tests.standin import InngestStandIn


@pytest.fixture
def make_outbox_app(make_app: Callable[..., Flask], database_url: str) -> Callable[..., Flask]:
    return outbox_app_factory(make_app, database_url, FAST)


@pytest.fixture
def app(make_outbox_app: Callable[..., Flask]) -> Flask:
    return make_outbox_app()


def another_deliverer(app: Flask) -> outbox.Deliverer:
    """A deliverer besides the app's own, as another process would run."""
    state = gateway_state(app)
    return outbox.Deliverer(app, state.settings, state.client, state.outbox_db)


def cli(app: Flask, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=["inngest-gateway", "outbox", *args])
    assert result.exit_code == 0, result.output
    return result


def test_post_is_stored_then_delivered_exactly(app: Flask, inngest: InngestStandIn) -> None:
    client = app.test_client()

    response = client.post("/api", json={"name": "app/x", "data": {"n": 1}, "id": "e-1"})

    assert response.status_code == 202
    (event_id,) = response.get_json()["ids"]  # derived from "e-1" (tests/test_event_ids.py)
    assert inngest.received == []  # acknowledged from the database, not from Inngest
    (stored,) = rows(app)
    assert (stored.event_id, stored.name, stored.state) == (event_id, "app/x", PENDING)

    assert run_once(app) == 1

    (received,) = inngest.received
    (event,) = received.events
    assert event == json.loads(stored.body)
    assert event["id"] == event_id and event["data"]["n"] == 1
    assert (
        rows(app) == []
    )  # INNGEST_GATEWAY_OUTBOX_KEEP_DELIVERED=0 removes delivered events at once


def test_form_post_is_303_in_outbox_mode(app: Flask, inngest: InngestStandIn) -> None:
    response = app.test_client().post("/api", data={"name": "app/x", "next": "/thanks"})

    assert response.status_code == 303
    assert response.headers["Location"] == "/thanks"
    assert len(rows(app)) == 1


def test_batch_is_stored_in_one_transaction_and_sent_in_one_request(
    app: Flask, inngest: InngestStandIn
) -> None:
    response = app.test_client().post("/api", json=[{"data": {"i": i}} for i in range(5)])

    assert response.status_code == 202
    ids = response.get_json()["ids"]
    assert [r.event_id for r in rows(app)] == ids
    deliver_until(app, lambda: len(inngest.accepted) == 5)
    assert len(inngest.received) == 1
    assert inngest.accepted_ids() == ids


def test_events_accepted_while_inngest_is_down_arrive_when_it_returns(
    app: Flask, inngest: InngestStandIn
) -> None:
    inngest.stop()
    client = app.test_client()
    ids = [client.post("/api", json={"data": {"i": i}}).get_json()["ids"][0] for i in range(3)]

    assert run_once(app) == 3
    stored = rows(app)
    assert [r.state for r in stored] == [PENDING] * 3
    assert all(r.attempts == 1 and r.last_error for r in stored)

    inngest.server.start()
    deliver_until(app, lambda: rows(app) == [])
    assert sorted(inngest.accepted_ids()) == sorted(ids)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_retryable_answers_are_retried_with_the_same_ids_and_seed(
    app: Flask, inngest: InngestStandIn, status: int
) -> None:
    inngest.fail_next(2, status)
    app.test_client().post("/api", json=[{"data": {"i": 0}}, {"data": {"i": 1}}])

    deliver_until(app, lambda: len(inngest.accepted) == 2)

    assert [r.status for r in inngest.received] == [status, status, 200]
    assert len({r.seed for r in inngest.received}) == 1
    assert len({r.body for r in inngest.received}) == 1
    assert rows(app) == []


def test_retry_after_is_honoured(app: Flask, inngest: InngestStandIn) -> None:
    inngest.fail_next(1, 429, retry_after="3")
    app.test_client().post("/api", json={})

    before = int(time.time() * 1000)
    run_once(app)

    (stored,) = rows(app)
    assert stored.next_attempt_at >= before + 3000
    assert run_once(app) == 0  # not due yet


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_other_4xx_go_to_dead_letter(app: Flask, inngest: InngestStandIn, status: int) -> None:
    inngest.fail_next(1, status, body={"status": status, "error": f"refused with {status}"})
    app.test_client().post("/api", json={"id": "doomed"})

    run_once(app)

    (stored,) = rows(app)
    assert stored.state == DEAD
    assert f"refused with {status}" in (stored.last_error or "")
    assert len(inngest.received) == 1
    assert run_once(app) == 0


def test_partial_acceptance_delivers_the_accepted_and_retries_the_rest(
    app: Flask, inngest: InngestStandIn
) -> None:
    inngest.max_event_bytes = 2000  # a smaller plan than the service's own limit
    batch = [
        {"id": "a", "data": {}},
        {"id": "b", "data": {}},
        {"id": "big", "data": {"x": "y" * 3000}},
        {"id": "c", "data": {}},
    ]
    response = app.test_client().post("/api", json=batch)
    assert response.status_code == 202
    a, b, big, c = response.get_json()["ids"]

    run_once(app)

    assert inngest.accepted_ids() == [a, b]
    assert [(r.event_id, r.state) for r in rows(app)] == [(big, DEAD), (c, PENDING)]
    assert "too large" in (rows(app)[0].last_error or "")

    deliver_until(app, lambda: c in inngest.accepted_ids())
    assert inngest.received[-1].seed != inngest.received[0].seed  # a new batch for the rest
    assert [(r.event_id, r.state) for r in rows(app)] == [(big, DEAD)]


def test_backlog_limit_answers_503_and_accepts_nothing_of_the_post(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(INNGEST_GATEWAY_OUTBOX_MAX_PENDING="3")
    client = app.test_client()
    assert client.post("/api", json=[{}, {}]).status_code == 202

    response = client.post("/api", json=[{}, {}])

    body = assert_envelope(response, 503, "outbox_full")
    assert int(response.headers["Retry-After"]) >= 1
    assert "try again" in body["message"]
    assert len(rows(app)) == 2
    assert client.post("/api", json={}).status_code == 202


@contextlib.contextmanager
def unwritable(make_outbox_app: Callable[..., Flask], database_url: str) -> Iterator[Flask]:
    """An app on a database that answers reads and refuses every write.

    SQLite: another connection holds the exclusive lock. PostgreSQL: a throwaway database
    (named after the test database) whose transactions are read-only by default.
    """
    if database_url.startswith("sqlite:///"):
        app = make_outbox_app(INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT="1")
        holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=0)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield app
        finally:
            holder.rollback()
            holder.close()
        return
    url = make_url(database_url)
    name = f"{url.database}_readonly_{uuid.uuid4().hex[:8]}"
    throwaway = url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            make_outbox_app(DATABASE_URL=throwaway)  # creates the tables while it still can
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            yield make_outbox_app(DATABASE_URL=throwaway)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_database_that_cannot_take_the_write_answers_503(
    make_outbox_app: Callable[..., Flask], database_url: str, inngest: InngestStandIn
) -> None:
    with unwritable(make_outbox_app, database_url) as app:
        response = app.test_client().post("/api", json={"id": "not-stored"})
        ready = app.test_client().get("/readyz")
        stored = rows(app)

    assert_envelope(response, 503, "outbox_unavailable")
    assert response.headers["Retry-After"] == "5"
    assert_envelope(ready, 503, "not_ready")
    assert stored == []


def test_events_older_than_the_max_age_go_to_dead_letter(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(INNGEST_GATEWAY_OUTBOX_MAX_AGE="1")
    inngest.stop()
    app.test_client().post("/api", json={"id": "old"})
    time.sleep(1.1)

    with app.app_context():
        gateway_state(app).deliverer.housekeeping()

    (stored,) = rows(app)
    assert stored.state == DEAD
    assert "INNGEST_GATEWAY_OUTBOX_MAX_AGE" in (stored.last_error or "")


def test_delivered_events_are_kept_when_asked(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(INNGEST_GATEWAY_OUTBOX_KEEP_DELIVERED="1h")
    (kept,) = app.test_client().post("/api", json={"id": "kept"}).get_json()["ids"]

    run_once(app)

    (stored,) = rows(app)
    assert (stored.event_id, stored.state) == (kept, DELIVERED)
    assert stored.finished_at is not None


def test_an_expired_lease_lets_another_deliverer_send_the_same_batch(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS="1", INNGEST_GATEWAY_SEND_TIMEOUT="0.5"
    )
    ids = app.test_client().post("/api", json=[{"id": "x"}, {"id": "y"}]).get_json()["ids"]
    crashed = another_deliverer(app)
    survivor = another_deliverer(app)
    with app.app_context():
        claimed = crashed.claim()  # then its worker dies before sending
        assert claimed is not None
        assert survivor.claim() is None  # leased

        time.sleep(1.1)
        again = survivor.claim()

    assert again is not None
    assert (again.ids, again.seed) == (claimed.ids, claimed.seed)
    with app.app_context():
        survivor.deliver(again)
    assert inngest.accepted_ids() == ids
    assert inngest.received[0].seed == claimed.seed


@pytest.mark.parametrize("taken_by", ["another deliverer", "another sender of the same deliverer"])
def test_a_claim_taken_over_is_not_sent_nor_released_by_its_first_holder(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn, taken_by: str
) -> None:
    """A sender whose lease ran out while it was held up (a pause, a slow database) and
    whose batch was claimed again meanwhile must leave that claim alone: sending, settling
    or releasing it would let a third sender send the batch again."""
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS="1", INNGEST_GATEWAY_SEND_TIMEOUT="0.5"
    )
    ids = app.test_client().post("/api", json=[{"id": "x"}, {"id": "y"}]).get_json()["ids"]
    first = another_deliverer(app)
    # Senders of one deliverer are threads that share its name.
    second = first if taken_by == "another sender of the same deliverer" else another_deliverer(app)
    third = another_deliverer(app)
    with app.app_context():
        stale = first.claim()
        assert stale is not None
        time.sleep(1.1)  # the first holder's lease runs out before it sends
        fresh = second.claim()
        assert fresh is not None and (fresh.ids, fresh.seed) == (stale.ids, stale.seed)

        assert first.claim(ignore_schedule=True) is None  # no second claim on it
        first.deliver(stale)  # the first holder goes on with the claim it had
        held = rows(app)
        assert inngest.received == []  # it did not send
        assert [(r.claimed_by, r.claim_expires_at) for r in held] == [
            (second.name, fresh.lease_expires_at)
        ] * 2  # nor handed back, nor rescheduled, the claim that holds them now
        assert [(r.attempts, r.last_error) for r in held] == [(0, None)] * 2
        assert third.claim(ignore_schedule=True) is None

        second.deliver(fresh)

    assert inngest.accepted_ids() == ids
    assert len(inngest.received) == 1
    assert rows(app) == []


def test_concurrent_deliverers_send_each_event_once(app: Flask, inngest: InngestStandIn) -> None:
    client = app.test_client()
    ids = []
    for start in range(0, 300, 30):
        ids += client.post(
            "/api", json=[{"data": {"i": i}} for i in range(start, start + 30)]
        ).get_json()["ids"]
    workers = [another_deliverer(app) for _ in range(3)]
    errors: list[BaseException] = []

    def work(deliverer: outbox.Deliverer) -> None:
        try:
            with app.app_context():
                while deliverer.run_once() > 0:
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    deliver_until(app, lambda: rows(app) == [])
    assert sorted(inngest.accepted_ids()) == sorted(ids)  # each exactly once


def test_background_thread_delivers_and_stop_drains(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    # After a failure the thread waits 10 s to retry, so only the drain can deliver it.
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER="true",
        INNGEST_GATEWAY_OUTBOX_POLL_SECONDS="0.05",
        INNGEST_GATEWAY_OUTBOX_RETRY_BASE="20s",
        INNGEST_GATEWAY_OUTBOX_RETRY_MAX="20s",
    )
    client = app.test_client()

    first = client.post("/api", json={"id": "first"}).get_json()["ids"]  # starts the thread
    deadline = time.monotonic() + 10
    while inngest.accepted_ids() != first:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    inngest.fail_next(1000, 503)  # Inngest falters; the event waits in the outbox
    second = client.post("/api", json={"id": "second"}).get_json()["ids"]
    deadline = time.monotonic() + 10
    while not inngest.received or inngest.received[-1].status != 503:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    inngest.reset()  # and recovers just as the service is told to stop

    delivered = gateway_state(app).deliverer.stop(drain_seconds=5)

    assert delivered == 1
    assert inngest.accepted_ids() == second
    assert rows(app) == []


def test_stop_hands_back_what_it_could_not_deliver(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """A batch the deliverer claimed and never sent (a sender that failed between its claim
    and its send) is free for another process as soon as the deliverer stops, not when its
    lease runs out."""
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS="60", INNGEST_GATEWAY_OUTBOX_POLL_SECONDS="0.05"
    )
    (kept,) = app.test_client().post("/api", json={"id": "kept-for-later"}).get_json()["ids"]
    deliverer = gateway_state(app).deliverer
    with app.app_context():
        unsent = deliverer.claim()
    assert unsent is not None
    deliverer.ensure_running()
    time.sleep(0.2)  # its senders poll: the claimed batch is not theirs to send
    assert inngest.received == []

    assert deliverer.stop(drain_seconds=0.5) == 0  # leased, so not the drain's to send

    (stored,) = rows(app)
    assert (stored.event_id, stored.state, stored.claimed_by) == (kept, PENDING, None)
    assert stored.claim_expires_at is None
    with app.app_context():
        successor = another_deliverer(app)
        again = successor.claim()
        assert again is not None and (again.ids, again.seed) == (unsent.ids, unsent.seed)
        successor.deliver(again)
    assert inngest.accepted_ids() == [kept]
    assert rows(app) == []


def test_readyz_reports_depth_and_age(app: Flask, inngest: InngestStandIn) -> None:
    inngest.stop()
    client = app.test_client()
    client.post("/api", json=[{}, {}])
    time.sleep(0.2)

    body = client.get("/readyz").get_json()

    assert body["status"] == "ok"
    assert body["outbox"]["pending"] == 2
    assert body["outbox"]["oldest_pending_age_seconds"] >= 0.2


def test_operator_commands(app: Flask, inngest: InngestStandIn) -> None:
    inngest.fail_next(1, 404, body={"status": 404, "error": "Event key not found"})
    inngest_down_later = [{"id": "p1"}, {"id": "p2"}]
    ids = app.test_client().post("/api", json={"id": "dead-1"}).get_json()["ids"]
    run_once(app)  # dead-lettered by the 404
    inngest.stop()
    ids += app.test_client().post("/api", json=inngest_down_later).get_json()["ids"]
    run_once(app)  # pending, backing off

    status = cli(app, "status").output
    assert "pending: 2" in status and "dead: 1" in status
    assert "oldest_pending_age_seconds:" in status

    assert "0 dead event(s)" in cli(app, "purge", "--dead", "--older-than", "1h").output
    assert "2 event(s) due" in cli(app, "retry").output
    assert "1 event(s) due" in cli(app, "retry", "--dead").output
    inngest.server.start()
    assert "handled 3 event(s)" in cli(app, "deliver", "--once").output
    assert sorted(inngest.accepted_ids()) == sorted(ids)
    assert "pending: 0" in cli(app, "status").output


def test_status_counts_leased_events_as_in_flight_until_the_lease_runs_out(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS="1", INNGEST_GATEWAY_SEND_TIMEOUT="0.5"
    )  # a 1 s lease
    client = app.test_client()
    client.post("/api", json=[{"id": "a"}, {"id": "b"}])
    with app.app_context():
        claimed = another_deliverer(app).claim()  # leased, never sent: as if its process died
    assert claimed is not None and len(claimed.ids) == 2
    client.post("/api", json={"id": "c"})  # never claimed

    leased = cli(app, "status").output
    time.sleep(1.2)
    expired = cli(app, "status").output

    assert "pending: 3" in leased and "in_flight: 2" in leased
    assert "pending: 3" in expired and "in_flight: 0" in expired
    assert inngest.received == []


def test_purge_removes_old_dead_letters(app: Flask, inngest: InngestStandIn) -> None:
    inngest.fail_next(1, 400, body={"ids": [], "status": 400, "error": "bad"})
    app.test_client().post("/api", json={"id": "gone"})
    run_once(app)

    assert "purged 1 dead event(s)" in cli(app, "purge", "--dead").output
    assert rows(app) == []
    result = app.test_cli_runner().invoke(
        args=["inngest-gateway", "outbox", "purge", "--dead", "--older-than", "soon"]
    )
    assert result.exit_code == 2
    assert "duration" in result.output


def test_sync_mode_still_answers_after_inngest(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(INNGEST_GATEWAY_DELIVERY_MODE="sync")

    response = app.test_client().post("/api", json={"id": "now"})

    assert response.status_code == 200
    assert inngest.accepted_ids() == response.get_json()["ids"]
    assert rows(app) == []


def test_batches_hold_up_to_outbox_batch_size_events_whatever_api_max_batch(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(INNGEST_GATEWAY_API_MAX_BATCH="2", INNGEST_GATEWAY_OUTBOX_BATCH_SIZE="5")
    client = app.test_client()
    ids = []
    for i in range(6):
        ids += client.post("/api", json=[{"data": {"i": i}}, {"data": {"i": i}}]).get_json()["ids"]

    assert [run_once(app) for _ in range(4)] == [5, 5, 2, 0]

    assert [len(r.events) for r in inngest.received] == [5, 5, 2]
    assert inngest.accepted_ids() == ids  # oldest first, in order within each batch
    assert len({r.seed for r in inngest.received}) == 3
    assert rows(app) == []


@pytest.mark.parametrize(
    ("over", "batches"),
    [(-1, [2, 1]), (0, [2, 1]), (1, [1, 1, 1])],
    ids=["a-byte-under", "exactly-the-budget", "a-byte-over"],
)
def test_a_batch_stops_at_outbox_max_batch_bytes(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn, over: int, batches: list[int]
) -> None:
    """The budget is the request body's size: the events, a comma between each, `[` and `]`."""
    posted = [{"data": {"pad": "x" * 430}} for _ in range(3)]
    first = make_outbox_app()  # stores them; the budget is set from their sizes below
    ids = first.test_client().post("/api", json=posted).get_json()["ids"]
    sizes = [r.size for r in rows(first)]
    two = sizes[0] + sizes[1] + 3  # the body of the first two events as one batch
    budget = two - over  # the body is `over` bytes past the budget (negative: under it)
    assert budget >= 1024  # the smallest budget the setting takes
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_MAX_BATCH_BYTES=str(budget), INNGEST_GATEWAY_OUTBOX_BATCH_SIZE="100"
    )

    deliver_until(app, lambda: rows(app) == [])

    assert [len(r.events) for r in inngest.received] == batches
    bodies = [len(r.body) for r in inngest.received]
    assert max(bodies) <= budget, (bodies, budget)
    if batches[0] == 2:
        assert bodies[0] == two
    assert inngest.accepted_ids() == ids


def test_an_event_larger_than_outbox_max_batch_bytes_goes_alone(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_MAX_BATCH_BYTES="1024", INNGEST_GATEWAY_OUTBOX_BATCH_SIZE="100"
    )
    small = {"data": {"pad": "x" * 150}}
    posted = [small, small, {"data": {"pad": "y" * 2000}}, small]
    ids = app.test_client().post("/api", json=posted).get_json()["ids"]
    sizes = [r.size for r in rows(app)]
    assert sizes[0] + sizes[1] + 3 <= 1024 < sizes[2] + 2

    deliver_until(app, lambda: rows(app) == [])

    # Oldest first: the big one ends the first batch, then goes in a request of its own.
    assert [len(r.events) for r in inngest.received] == [2, 1, 1]
    bodies = [len(r.body) for r in inngest.received]
    assert bodies == [sizes[0] + sizes[1] + 3, sizes[2] + 2, sizes[3] + 2]
    assert inngest.accepted_ids() == ids


def test_a_deliverer_sends_outbox_concurrency_batches_at_once(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_BATCH_SIZE="2",
        INNGEST_GATEWAY_OUTBOX_CONCURRENCY="2",
        INNGEST_GATEWAY_OUTBOX_POLL_SECONDS="0.05",
        INNGEST_GATEWAY_SEND_TIMEOUT="10",
        INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS="30",
    )
    ids = app.test_client().post("/api", json=[{"id": f"e{i}"} for i in range(4)]).get_json()["ids"]
    inngest.stall_next(2, 30)  # take each batch's events, then hold the answer
    deliverer = gateway_state(app).deliverer
    deliverer.ensure_running()
    try:
        # One sender at a time would wait for the first answer (held for 10 s, its send's
        # budget) before sending the second batch.
        deadline = time.monotonic() + 5
        while len(inngest.received) < 2:
            assert time.monotonic() < deadline, "the second batch waited for the first"
            time.sleep(0.02)
        held = list(inngest.received)
        assert {r.state for r in rows(app)} == {PENDING}  # neither answer is in yet

        inngest.reset()  # the held answers go out now
        deadline = time.monotonic() + 10
        while rows(app):
            assert time.monotonic() < deadline, rows(app)
            time.sleep(0.02)
    finally:
        deliverer.stop(drain_seconds=0)

    sent = [event["id"] for r in held for event in r.events]
    assert sorted(sent) == sorted(ids)  # each event in one batch only
    assert [len(r.events) for r in held] == [2, 2]
    assert len({r.seed for r in held}) == 2


def test_without_a_backlog_one_sender_gathers_the_posts(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """The senders after the first work only while claims come back full.

    Under a trickle of posts, a second sender would otherwise claim, send and delete each
    handful of events on its own: the cost of delivery would grow with the senders, not
    with the events.
    """
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_BATCH_SIZE="10",
        INNGEST_GATEWAY_OUTBOX_CONCURRENCY="2",
        INNGEST_GATEWAY_OUTBOX_POLL_SECONDS="0.05",
        INNGEST_GATEWAY_SEND_TIMEOUT="10",
        INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS="30",
    )
    client = app.test_client()
    first = client.post("/api", json={"id": "first"}).get_json()["ids"]
    inngest.stall_next(1, 30)  # take the first batch, then hold its answer
    deliverer = gateway_state(app).deliverer
    deliverer.ensure_running()
    try:
        deadline = time.monotonic() + 5
        while not inngest.received:
            assert time.monotonic() < deadline, "the first batch was not sent"
            time.sleep(0.02)
        second = client.post("/api", json={"id": "second"}).get_json()["ids"]
        time.sleep(1.0)  # ten gathers and twenty polls of an idle second sender
        assert len(inngest.received) == 1, "a second sender took a batch without a backlog"
        held = list(inngest.received)

        inngest.reset()  # the held answer goes out; the first sender takes the second post
        deadline = time.monotonic() + 10
        while rows(app):
            assert time.monotonic() < deadline, rows(app)
            time.sleep(0.02)
    finally:
        deliverer.stop(drain_seconds=0)

    assert [event["id"] for event in held[0].events] == first
    assert [event["id"] for r in inngest.received for event in r.events] == second


def test_while_posts_arrive_one_sender_drains_a_backlog_in_smaller_batches(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """The site first: while posts keep arriving, a backlog is drained by one sender of the
    process in batches of at most 250 events; once they stop, by every sender in full ones."""
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_BATCH_SIZE="1000",
        INNGEST_GATEWAY_OUTBOX_CONCURRENCY="2",
        INNGEST_GATEWAY_OUTBOX_POLL_SECONDS="0.05",
        INNGEST_GATEWAY_SEND_TIMEOUT="10",
        INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS="30",
    )
    client = app.test_client()
    backlog: list[str] = []
    for n in range(30):
        posted = client.post("/api", json=[{"id": f"b{n}-{i}"} for i in range(100)])
        backlog += posted.get_json()["ids"]
    inngest.delay = 0.1  # a batch is in flight for a while: two senders would overlap
    stop = threading.Event()
    trickle: list[str] = []
    stored_at: list[float] = []  # when each trickle post was answered

    def keep_posting() -> None:
        poster = app.test_client()
        for n in range(1000):  # 20 s at the most
            if stop.wait(0.02):
                return
            trickle.extend(poster.post("/api", json={"id": f"t{n}"}).get_json()["ids"])
            stored_at.append(time.monotonic())

    thread = threading.Thread(target=keep_posting)
    thread.start()
    deliverer = gateway_state(app).deliverer
    try:
        deadline = time.monotonic() + 10
        while len(stored_at) < 3:  # posts are arriving when the deliverer starts
            assert time.monotonic() < deadline, "the trickle of posts did not start"
            time.sleep(0.01)
        started = time.monotonic()
        deliverer.ensure_running()
        deadline = time.monotonic() + 10
        while len(inngest.received) < 4:
            assert time.monotonic() < deadline, "the backlog was not drained while posting"
            time.sleep(0.02)
        while_posting = list(inngest.received)
        at_once_while_posting = inngest.most_in_flight
        measured = time.monotonic()
        stop.set()
        thread.join(10)
        deadline = time.monotonic() + 20
        while rows(app):
            assert time.monotonic() < deadline, len(rows(app))
            time.sleep(0.05)
    finally:
        stop.set()
        deliverer.stop(drain_seconds=0)

    assert not thread.is_alive()
    assert max(len(r.events) for r in while_posting) <= 250
    # "While posts arrive" is the deliverer's own measure: a post stored within the last
    # POSTS_ACTIVE_SECONDS. A machine too busy to run the trickle for that long has
    # stopped posting by that measure, and a second sender may rightly join.
    times = [t for t in stored_at if t < measured] + [measured]
    times = times[sum(t <= started for t in times) - 1 :]  # from the last post before the start
    longest_gap = max(b - a for a, b in itertools.pairwise(times))
    assert at_once_while_posting == 1 or longest_gap > POSTS_ACTIVE_SECONDS, longest_gap
    after = inngest.received[len(while_posting) :]
    assert max(len(r.events) for r in after) > 250  # full batches once the posts stopped
    assert sorted(inngest.accepted_ids()) == sorted(backlog + trickle)


def test_a_failed_batch_goes_behind_events_due_before_its_retry(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_RETRY_BASE="1s", INNGEST_GATEWAY_OUTBOX_RETRY_MAX="1s"
    )
    client = app.test_client()
    first = client.post("/api", json={"id": "first"}).get_json()["ids"]
    inngest.fail_next(1, 503)
    assert run_once(app) == 1  # retried in 0.5 to 1 s
    later = client.post("/api", json={"id": "later"}).get_json()["ids"]
    retried, fresh = rows(app)
    assert fresh.next_attempt_at < retried.next_attempt_at
    while outbox.now_ms() <= retried.next_attempt_at:  # both due
        time.sleep(0.05)

    assert run_once(app) == 1
    assert inngest.accepted_ids() == later
    assert run_once(app) == 1
    assert inngest.accepted_ids() == later + first
    assert len({r.seed for r in inngest.received[::2]}) == 1  # the retry kept its seed
