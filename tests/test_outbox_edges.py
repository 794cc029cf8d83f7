"""The outbox at its edges: a stalled write, an event Inngest never takes, batches that shrink.

Each test runs on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import create_engine

from inngest_gateway.db import write_lock
from inngest_gateway.outbox import DEAD, PENDING, OutboxEvent, now_ms
from inngest_gateway.state import gateway_state
from tests.outboxes import FAST, deliver_until, outbox_app_factory, rows, run_once
from tests.processes import BIN, ROOT, clean_env
from tests.proxy import silent_server
from tests.standin import Fault, InngestStandIn, Received

WRITE_TIMEOUT = 1.0
STALL_LIMIT = 40.0  # longer than any request may wait, whatever the code under test


@pytest.fixture
def make_outbox_app(make_app: Callable[..., Flask], database_url: str) -> Callable[..., Flask]:
    return outbox_app_factory(make_app, database_url, FAST)


def event_ids(record: Received) -> list[str]:
    payload = json.loads(record.body)
    return [event["id"] for event in (payload if isinstance(payload, list) else [payload])]


def labels(record: Received) -> list[str]:
    """The labels the test gave its events (event ids are derived by the service)."""
    payload = json.loads(record.body)
    return [
        event["data"]["label"] for event in (payload if isinstance(payload, list) else [payload])
    ]


def row_label(row: OutboxEvent) -> str:
    label: str = json.loads(row.body)["data"]["label"]
    return label


def labelled(label: str) -> dict[str, Any]:
    """An event whose client id and data both carry `label`."""
    return {"id": label, "data": {"label": label}}


def assert_each_seed_has_one_set_of_events(received: list[Received]) -> None:
    """Inngest derives internal ids from the seed and the position: a seed is one batch."""
    sets: dict[str | None, list[str]] = {}
    for record in received:
        assert record.seed is not None
        ids = event_ids(record)
        assert sets.setdefault(record.seed, ids) == ids, f"seed {record.seed} sent with {ids}"


@contextlib.contextmanager
def write_stall(database_url: str) -> Iterator[None]:
    """Hold the outbox's write path from outside, as a stuck writer would.

    SQLite: the service's own cross-process write lock. PostgreSQL: a table lock that blocks
    every statement on the outbox.
    """
    if database_url.startswith("sqlite:///"):
        fd = os.open(database_url.removeprefix("sqlite:///") + ".write-lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
    else:
        with psycopg.connect(database_url) as connection:
            connection.execute("LOCK TABLE outbox_events IN ACCESS EXCLUSIVE MODE")
            try:
                yield
            finally:
                connection.rollback()


@pytest.mark.timeout(STALL_LIMIT + 60)
def test_a_stalled_write_answers_503_only_for_events_never_stored(
    make_outbox_app: Callable[..., Flask], database_url: str, inngest: InngestStandIn
) -> None:
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT=str(WRITE_TIMEOUT),
        INNGEST_GATEWAY_RATELIMIT_ENABLED="false",
    )
    assert app.test_client().post("/api", json=labelled("before")).status_code == 202
    answers: dict[str, tuple[int, str | None, float]] = {}
    answered = [0] * 6
    lock = threading.Lock()
    stop = threading.Event()

    def post(number: int) -> None:
        client = app.test_client()
        sequence = 0
        while not stop.is_set():
            event_id = f"stall-{number}-{sequence}"
            sequence += 1
            began = time.monotonic()
            response = client.post("/api", json=labelled(event_id))
            body = response.get_json()
            with lock:
                answers[event_id] = (
                    response.status_code,
                    body.get("code"),
                    time.monotonic() - began,
                )
                answered[number] += 1

    threads = [threading.Thread(target=post, args=(n,), daemon=True) for n in range(6)]
    with write_stall(database_url):
        for thread in threads:
            thread.start()
        # Until every poster has its answer: a leader that is never bounded never answers.
        limit = time.monotonic() + STALL_LIMIT
        while time.monotonic() < limit and not all(answered[n] >= 2 for n in range(6)):
            time.sleep(0.05)
        stalled = dict(answers)
    time.sleep(1.0)  # the write path is free again: posts are stored
    stop.set()
    joined_by = time.monotonic() + STALL_LIMIT  # one deadline for all, under the test's timeout
    for thread in threads:
        thread.join(timeout=max(0.0, joined_by - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a post never got its answer"
    time.sleep(2 * WRITE_TIMEOUT)  # a commit still under way would have ended by now

    stored = {row_label(r) for r in rows(app)}
    assert stalled, "no post was answered while the write was stalled"
    assert {status for status, _, _ in stalled.values()} == {503}
    for event_id, (status, code, _) in answers.items():
        assert (status, code) in ((202, None), (503, "outbox_unavailable")), event_id
        if status == 202:
            assert event_id in stored, f"{event_id} answered 202 but is not stored"
        else:
            assert event_id not in stored, f"{event_id} answered 503 but was stored"
    assert any(status == 202 for status, _, _ in answers.values())  # the stall ended
    # Each answer came within two write timeouts (its own commit and the one before it).
    assert max(seconds for _, _, seconds in stalled.values()) < 2 * WRITE_TIMEOUT + 3


class PoisonedInngest(InngestStandIn):
    """The stand-in, failing every request that carries one event, as a bug in Inngest would."""

    def __init__(self, poison: str, answer: Fault | None = None) -> None:
        super().__init__()
        self.poison = poison
        self.answer = answer or Fault(500)

    def _respond(self, record: Received, fault: Fault | None) -> Any:
        if self.poison in labels(record):
            fault = self.answer
        return super()._respond(record, fault)


@pytest.fixture
def poisoned() -> Iterator[PoisonedInngest]:
    standin = PoisonedInngest("e3").start()
    yield standin
    standin.stop()


@pytest.mark.timeout(60)
def test_a_batch_that_keeps_failing_is_split_until_the_bad_event_is_alone(
    make_outbox_app: Callable[..., Flask], poisoned: PoisonedInngest
) -> None:
    app = make_outbox_app(INNGEST_BASE_URL=poisoned.url, INNGEST_GATEWAY_OUTBOX_SPLIT_AFTER="2")
    names = [f"e{i}" for i in range(8)]
    response = app.test_client().post("/api", json=[labelled(name) for name in names])
    assert response.status_code == 202
    ids = response.get_json()["ids"]

    deliver_until(app, lambda: len(poisoned.accepted) == 7, seconds=30)

    assert sorted(poisoned.accepted_ids()) == sorted(set(ids) - {ids[3]})  # ids unchanged
    assert [(row_label(r), r.event_id, r.state) for r in rows(app)] == [("e3", ids[3], PENDING)]
    assert event_ids(poisoned.received[0]) == ids  # first sent as the batch it was stored in
    # It keeps being retried, alone.
    deliver_until(app, lambda: labels(poisoned.received[-1]) == ["e3"])
    # Every second failure split the batch in halves: 8, 4, 2, then the bad event alone.
    failed_sizes = [len(event_ids(r)) for r in poisoned.received if r.status == 500]
    assert failed_sizes == [8, 8, 4, 4, 2, 2, 1]
    assert_each_seed_has_one_set_of_events(poisoned.received)

    # Alone, it goes to dead letter at INNGEST_GATEWAY_OUTBOX_MAX_AGE (here a deliverer configured
    # for 1 s).
    time.sleep(1.1)
    short_lived = make_outbox_app(INNGEST_BASE_URL=poisoned.url, INNGEST_GATEWAY_OUTBOX_MAX_AGE="1")
    with short_lived.app_context():
        gateway_state(short_lived).deliverer.housekeeping()
    assert [(row_label(r), r.state) for r in rows(app)] == [("e3", DEAD)]


@pytest.mark.timeout(60)
def test_a_batch_failing_with_503_and_retry_after_is_still_split(
    make_outbox_app: Callable[..., Flask],
) -> None:
    """A proxy or load balancer in front of Inngest answers 503 with Retry-After: that is a
    failure like any 5xx, so the bad event is still isolated, and the delay still honoured."""
    unavailable = Fault(503, headers={"Retry-After": "1"})
    standin = PoisonedInngest("p2", answer=unavailable).start()
    try:
        app = make_outbox_app(INNGEST_BASE_URL=standin.url, INNGEST_GATEWAY_OUTBOX_SPLIT_AFTER="1")
        names = [f"p{i}" for i in range(4)]
        response = app.test_client().post("/api", json=[labelled(name) for name in names])
        assert response.status_code == 202
        ids = response.get_json()["ids"]

        started = time.monotonic()
        assert run_once(app) == 4
        (due,) = {r.next_attempt_at for r in rows(app)}
        assert due - now_ms() > 500  # Retry-After: 1 is honoured, not the 50 ms backoff
        deliver_until(app, lambda: len(standin.accepted) == 3, seconds=30)

        assert sorted(standin.accepted_ids()) == sorted(set(ids) - {ids[2]})
        assert [(row_label(r), r.state) for r in rows(app)] == [("p2", PENDING)]
        # Split on each failure (INNGEST_GATEWAY_OUTBOX_SPLIT_AFTER=1): 4, 2, then the bad event
        # alone.
        failed_sizes = [len(event_ids(r)) for r in standin.received if r.status == 503]
        assert failed_sizes == [4, 2, 1]
        # Each retry came after the second Inngest asked for.
        assert time.monotonic() - started >= 2.0
        assert_each_seed_has_one_set_of_events(standin.received)
    finally:
        standin.stop()


def test_a_batch_throttled_with_retry_after_is_not_split(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """Inngest asking to wait is about the rate, not one event: splitting would add requests."""
    app = make_outbox_app(INNGEST_GATEWAY_OUTBOX_SPLIT_AFTER="1")
    inngest.fail_next(3, 429, retry_after="0")
    app.test_client().post("/api", json=[labelled("t1"), labelled("t2")])

    deliver_until(app, lambda: len(inngest.accepted) == 2)

    statuses = [r.status for r in inngest.received]
    # A 200 whose answer came too late for the 1 s budget (a loaded machine) is sent again,
    # as the same batch: what matters is that it was never split.
    assert statuses[:4] == [429, 429, 429, 200] and set(statuses[4:]) <= {200}, statuses
    assert {tuple(labels(r)) for r in inngest.received} == {("t1", "t2")}
    assert len({tuple(event_ids(r)) for r in inngest.received}) == 1
    assert len({r.seed for r in inngest.received}) == 1


def test_expiry_leaves_no_seed_on_the_rest_of_its_batch(
    make_outbox_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_outbox_app(INNGEST_GATEWAY_OUTBOX_MAX_AGE="3")
    client = app.test_client()
    posted = time.monotonic()
    client.post("/api", json=labelled("old"))
    time.sleep(1.5)
    young = client.post("/api", json=[labelled("young-1"), labelled("young-2")])
    inngest.fail_next(1, 500)
    assert run_once(app) == 3  # one batch: old, young-1, young-2, failed once
    first_seed = inngest.received[0].seed
    time.sleep(max(posted + 3.2 - time.monotonic(), 0))

    with app.app_context():
        gateway_state(
            app
        ).deliverer.housekeeping()  # "old" is past INNGEST_GATEWAY_OUTBOX_MAX_AGE, the others not

    assert [(row_label(r), r.state) for r in rows(app)] == [
        ("old", DEAD),
        ("young-1", PENDING),
        ("young-2", PENDING),
    ]
    deliver_until(app, lambda: len(inngest.accepted) == 2)
    assert inngest.accepted_ids() == young.get_json()["ids"]
    assert labels(inngest.received[-1]) == ["young-1", "young-2"]
    assert inngest.received[-1].seed != first_seed
    assert_each_seed_has_one_set_of_events(inngest.received)


@pytest.mark.timeout(STALL_LIMIT + 30)
def test_an_exhausted_connection_pool_answers_503_within_two_write_timeouts(
    make_outbox_app: Callable[..., Flask],
) -> None:
    """Every connection of the pool is taken (slow requests elsewhere in the process): the
    wait for one is part of the write's time, not SQLAlchemy's 30 s default."""
    app = make_outbox_app(
        INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT=str(WRITE_TIMEOUT),
        INNGEST_GATEWAY_RATELIMIT_ENABLED="false",
    )
    client = app.test_client()
    assert client.post("/api", json=labelled("before")).status_code == 202
    answer: list[tuple[int, str | None, float]] = []

    def post() -> None:
        began = time.monotonic()
        response = client.post("/api", json=labelled("starved"))
        seconds = time.monotonic() - began
        answer.append((response.status_code, response.get_json().get("code"), seconds))

    with app.app_context():
        engine = gateway_state(app).outbox_db.engine
        pool = engine.pool
        taken = [engine.raw_connection() for _ in range(pool.size() + pool._max_overflow)]
        try:
            thread = threading.Thread(target=post, daemon=True)
            thread.start()
            thread.join(timeout=STALL_LIMIT)  # the pool stays taken until the post answers
        finally:
            for connection in taken:
                connection.close()
    assert not thread.is_alive(), f"no answer within {STALL_LIMIT}s"
    ((status, code, seconds),) = answer

    assert (status, code) == (503, "outbox_unavailable")
    assert seconds < 2 * WRITE_TIMEOUT + 1.5, f"{seconds:.1f}s with a {WRITE_TIMEOUT}s timeout"
    time.sleep(2 * WRITE_TIMEOUT)  # a commit still under way would have ended by now
    assert [row_label(r) for r in rows(app)] == ["before"]  # the 503 was true
    assert client.post("/api", json=labelled("after")).status_code == 202
    assert [row_label(r) for r in rows(app)] == ["before", "after"]


@pytest.mark.timeout(60)
def test_a_postgresql_server_that_never_answers_is_503_in_bounded_time(
    make_app: Callable[..., Flask],
) -> None:
    """Opening a connection has a deadline too (libpq has none by default): a server that
    accepts and then says nothing costs a post seconds, not forever."""
    with silent_server() as port:
        started = time.monotonic()
        app = make_app(
            **FAST,
            DATABASE_URL=f"postgresql://gateway@127.0.0.1:{port}/outbox",
            INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT="1",
            INNGEST_GATEWAY_RATELIMIT_ENABLED="false",
        )
        # The schema checks gave up (logged): the service's own tables, then the outbox's
        # (the extension's own engine), each after libpq's connect_timeout.
        assert time.monotonic() - started < 2 * 2 + 1.5

        began = time.monotonic()
        response = app.test_client().post("/api", json=labelled("unreachable"))
        seconds = time.monotonic() - began

    assert response.status_code == 503
    assert response.get_json()["code"] == "outbox_unavailable"
    # libpq's connect_timeout counts whole seconds, at least 2: the first-use schema checks
    # (the service's own tables, then the outbox's), then the write's own connection.
    assert seconds < 3 * 2 + 1.5, f"{seconds:.1f}s"


# -- the schema, made by several processes at once -------------------------------------------

# Each prints whether its schema is ready, once the given instant has come.
SCHEMA_AT_ONCE = {
    "the outbox": """
import logging, sys, time
from inngest_gateway.db import OwnDatabase
from inngest_gateway.outbox.model import OutboxBase
logging.basicConfig(level=logging.WARNING)
database = OwnDatabase(
    sys.argv[1], OutboxBase.metadata, sqlite_synchronous="NORMAL", write_timeout=5,
    make_folder=True,
)
start = float(sys.argv[2])
print("on time" if time.time() < start else "late")  # else no race was run
time.sleep(max(start - time.time(), 0))
print(database.ensure_schema())
""",
    "the service's users": """
import logging, os, sys, time
from flask import Flask
import service.users  # its tables
from service.db import init_app
logging.basicConfig(level=logging.WARNING)
if sys.argv[1].startswith("sqlite:///"):
    os.makedirs(os.path.dirname(sys.argv[1].removeprefix("sqlite:///")), exist_ok=True)
app = Flask("worker")
start = float(sys.argv[2])
print("on time" if time.time() < start else "late")  # else no race was run
time.sleep(max(start - time.time(), 0))
init_app(app, sys.argv[1], write_timeout=5)
print(app.extensions.get("schema_ready", False))
""",
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("database", list(SCHEMA_AT_ONCE))
def test_workers_starting_at_once_on_a_new_database_each_find_its_tables(
    database_url: str, tmp_path: Path, database: str
) -> None:
    """gunicorn's workers on a database nobody has used: each creates the tables or finds
    them made by another; none reports the database unavailable (on SQLite, the loser of
    the race used to get "table already exists" or "database is locked")."""
    for trial in range(3):
        if database_url.startswith("sqlite"):
            url = f"sqlite:///{tmp_path / f'new-{trial}' / 'outbox.db'}"  # folder made too
        else:
            url = database_url
            with psycopg.connect(database_url, autocommit=True) as connection:
                connection.execute(
                    "DROP TABLE IF EXISTS outbox_events, login_sessions, users CASCADE"
                )
        start = time.time() + 3.0  # all three have started Python by then
        workers = [
            subprocess.Popen(
                [str(BIN / "python"), "-c", SCHEMA_AT_ONCE[database], url, str(start)],
                cwd=ROOT,
                env=clean_env(tmp_path),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert (out.split("\n"), err) == (["on time", "True", ""], ""), f"trial {trial}: {err}"


def test_a_process_forked_while_a_thread_held_the_write_lock_can_still_write(
    tmp_path: Path,
) -> None:
    """A fork copies the lock's thread half as it is: held by a thread the child does not
    have, it used to stay held there for good (every write of the child timed out)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with write_lock(engine):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: wait for the parent's thread to let go, then write
        code = 1
        try:
            with write_lock(engine, time.monotonic() + 5):
                code = 0
        finally:
            os._exit(code)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    engine.dispose()
