"""Events from the host's own code (`gateway.send`), committed in its database transaction.

A shop (tests/shop.py: Flask-SQLAlchemy, Flask-Login, the gateway given `db=`) writes an
order and its events in one transaction; the stand-in Inngest receives them after the
commit, once, and never for a transaction that rolled back. Each test runs on SQLite, and on
PostgreSQL when TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from flask_migrate import Migrate
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import Session

from inngest_gateway import InngestGateway, outbox_table
from inngest_gateway.db import database_url as normalize_url
from inngest_gateway.errors import (
    EventNotAllowed,
    OutboxUnavailable,
    UpstreamUnavailable,
    ValidationFailed,
)
from inngest_gateway.state import gateway_state
from tests import waiting
from tests.conftest import SECRET_KEY
from tests.packaging import run_example
from tests.processes import BIN, ROOT, clean_env
from tests.shop import SHOP_TABLES, Order, User, create_shop, db, gateway
from tests.standin import InngestStandIn

pytestmark = pytest.mark.timeout(120)

ShopFactory = Callable[..., Flask]


def drop_shop_tables(url: str) -> None:
    engine = create_engine(normalize_url(url, ""))
    with engine.begin() as connection:
        # Flask-Migrate's version table too: a revision of another test's migrations.
        for name in (*SHOP_TABLES, "alembic_version"):
            cascade = " CASCADE" if engine.dialect.name == "postgresql" else ""
            connection.execute(text(f"DROP TABLE IF EXISTS {name}{cascade}"))
    engine.dispose()


def shop_config(url: str, inngest: InngestStandIn, **extra: str) -> dict[str, str]:
    return {
        "SECRET_KEY": SECRET_KEY,
        "SHOP_DATABASE_URL": url,
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "INNGEST_GATEWAY_API_ALLOWED_EVENTS": "shop/*",
        "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.05",
        "INNGEST_GATEWAY_OUTBOX_RETRY_BASE": "50ms",
        "INNGEST_GATEWAY_OUTBOX_RETRY_MAX": "200ms",
        "INNGEST_GATEWAY_SEND_TIMEOUT": "1",
        "INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS": "2",
        **extra,
    }


@pytest.fixture
def shops(database_url: str, inngest: InngestStandIn) -> Iterator[ShopFactory]:
    """Shops on the test database, with Ada (id 1) and Bob (id 2); stopped afterwards."""
    drop_shop_tables(database_url)
    made: list[Flask] = []

    def factory(*, create: bool = True, **extra: str) -> Flask:
        app = create_shop(shop_config(database_url, inngest, **extra))
        made.append(app)
        if create:
            with app.app_context():
                db.create_all()  # the shop's tables and the outbox's (db.metadata has it)
                if db.session.get(User, 1) is None:
                    db.session.add_all(
                        [
                            User(id=1, email="ada@example.com", name="Ada Lovelace"),
                            User(id=2, email="bob@example.com", name="Bob"),
                        ]
                    )
                    db.session.commit()
        return app

    yield factory
    for app in made:
        gateway.stop(app)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        gateway_state(app).outbox_db.dispose()


def wait_until(done: Callable[[], bool], seconds: float = 10.0) -> None:
    assert waiting.wait_until(done, seconds), f"not within {seconds}s"


def count(app: Flask, model: Any = None) -> int:
    """Rows of a shop model, or of the outbox table."""
    with app.app_context():
        target = model.__table__ if model is not None else outbox_table(db.metadata)
        return int(db.session.scalar(select(func.count()).select_from(target)) or 0)


def received_events(inngest: InngestStandIn) -> list[dict[str, Any]]:
    return [event for request in inngest.received for event in request.events]


def logged_in(app: Flask, user_id: int = 1) -> Any:
    client = app.test_client()
    assert client.post(f"/login/{user_id}").status_code == 200
    return client


# -- in the view's transaction -------------------------------------------------------------


def test_an_order_committed_with_its_event_reaches_inngest_once_with_the_user(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    app = shops()
    response = logged_in(app).post("/orders?item=lamp")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()

    wait_until(lambda: count(app) == 0 and len(inngest.accepted) == 1)
    [event] = inngest.accepted
    assert event["id"] == body["ids"][0]
    assert event["name"] == "shop/order.placed"
    assert event["data"]["order"] == body["order"]
    assert event["data"]["item"] == "lamp"
    assert event["data"]["user"] == {"id": 1, "email": "ada@example.com", "name": "Ada Lovelace"}
    assert event["data"]["request"]["ip"] == "127.0.0.1"  # the request the view ran in
    # A second order, delivered too: the first was not sent again meanwhile.
    second = logged_in(app).post("/orders?item=pen").get_json()
    wait_until(lambda: len(inngest.accepted) == 2)
    assert [e["id"] for e in inngest.accepted] == [body["ids"][0], second["ids"][0]]


def test_the_commit_wakes_the_deliverer_it_does_not_wait_for_the_poll(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    """With a poll of a minute, only the wake after the host's commit can send within 5 s."""
    app = shops(INNGEST_GATEWAY_OUTBOX_POLL_SECONDS="60")
    client = logged_in(app)  # the first request: the deliverer starts
    # A first order, sent by the deliverer's first look or by a wake; once it is settled and
    # a second has passed, the deliverer has looked again, found nothing, and waits its minute.
    first = client.post("/orders?item=pen").get_json()
    wait_until(lambda: inngest.accepted_ids() == first["ids"] and count(app) == 0)
    time.sleep(1.0)

    body = client.post("/orders?item=lamp").get_json()
    wait_until(lambda: len(inngest.accepted) == 2, seconds=5)

    assert inngest.accepted_ids() == first["ids"] + body["ids"]


@pytest.mark.parametrize("how", ["fail=before-commit", "rollback=1"])
def test_a_transaction_that_does_not_commit_sends_nothing_and_leaves_no_row(
    shops: ShopFactory, inngest: InngestStandIn, how: str
) -> None:
    app = shops()
    client = logged_in(app)
    failed = client.post(f"/orders?item=lost&{how}")
    assert failed.status_code == (500 if how.startswith("fail") else 200)
    assert count(app) == 0
    assert count(app, Order) == 0

    # A later order is delivered: the deliverer has run past the one that never existed.
    kept = client.post("/orders?item=kept").get_json()
    wait_until(lambda: len(inngest.accepted) == 1)
    assert [e["data"]["item"] for e in received_events(inngest)] == ["kept"]
    assert inngest.accepted_ids() == kept["ids"]
    assert count(app, Order) == 1


def test_events_of_one_transaction_arrive_in_order_with_the_same_ids_on_a_retry(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    app = shops()
    inngest.fail_next(1, 500)  # the first delivery fails: the batch is sent again
    body = logged_in(app).post("/orders?lines=3").get_json()
    assert len(body["ids"]) == 4

    wait_until(lambda: len(inngest.accepted) == 4)
    first, retried = inngest.received[0], inngest.received[-1]
    assert first.status == 500
    assert [e["id"] for e in json.loads(first.body)] == body["ids"]  # one batch, in order
    assert [e["id"] for e in retried.events] == body["ids"]  # the same ids, the same order
    assert first.seed == retried.seed
    assert [e["name"] for e in inngest.accepted] == ["shop/order.placed"] + ["shop/order.line"] * 3
    assert [e["data"].get("line") for e in inngest.accepted] == [None, 0, 1, 2]


def test_a_connections_transaction_commits_or_rolls_back_its_events(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    """`session=` an SQLAlchemy Connection (Core, no ORM): the same in its transaction."""
    app = shops()
    orders = Order.__table__
    with app.app_context(), db.engine.connect() as connection:
        with connection.begin() as transaction:
            connection.execute(orders.insert().values(user_id=1, item="dropped"))
            gateway.send({"name": "shop/core", "data": {"item": "dropped"}}, session=connection)
            transaction.rollback()
        with connection.begin():
            connection.execute(orders.insert().values(user_id=1, item="kept"))
            ids = gateway.send(
                [{"name": "shop/core", "data": {"item": "kept", "n": n}} for n in range(2)],
                session=connection,
            )
    wait_until(lambda: len(inngest.accepted) == 2)
    assert inngest.accepted_ids() == ids
    assert [len(r.events) for r in inngest.received] == [2]  # one transaction, one batch
    assert count(app, Order) == 1
    wait_until(lambda: count(app) == 0)


def test_a_connection_not_yet_begun_still_sends_its_events_as_one_batch(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    """Commit as you go: send() is the Connection's first statement, so it begins the
    transaction; its events still share one batch, and later sends in it join that batch."""
    app = shops()
    with app.app_context(), db.engine.connect() as connection:
        first = gateway.send(
            [{"name": "shop/core", "data": {"n": n}} for n in range(3)], session=connection
        )
        second = gateway.send({"name": "shop/core", "data": {"n": 3}}, session=connection)
        connection.commit()
    wait_until(lambda: len(inngest.accepted) == 4)
    assert inngest.accepted_ids() == first + second
    assert [len(r.events) for r in inngest.received] == [4]


def test_a_long_lived_connection_keeps_no_listener_per_send(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    """Each send on one Connection used to add two listeners for good, each holding events."""
    app = shops()
    with app.app_context(), db.engine.connect() as connection:
        for n in range(30):
            gateway.send({"name": "shop/core", "data": {"n": n}}, session=connection)
            if n % 2:
                connection.commit()
            else:
                connection.rollback()
        dispatch = connection.dispatch
        listeners = [
            len(dispatch.commit),
            len(dispatch.rollback),
            len(dispatch.release_savepoint),
            len(dispatch.rollback_savepoint),
        ]
    assert listeners == [1, 1, 1, 1]
    wait_until(lambda: len(inngest.accepted) == 15)
    assert [e["data"]["n"] for e in inngest.accepted] == list(range(1, 30, 2))


def test_a_savepoint_rolled_back_or_released_counts_only_at_the_outer_commit(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    """Flask-SQLAlchemy's `begin_nested`: a savepoint's release is not the commit, and one
    rolled back takes its events with it (recorded as Inngest would get them, under TESTING)."""
    app = shops()
    app.testing = True  # suppressed: the recorder shows what the commits made
    with app.app_context(), gateway.record_events(app) as recorded:
        with db.session.begin_nested():  # released ...
            gateway.send({"name": "shop/nested", "data": {"step": "released"}})
        db.session.rollback()  # ... but the transaction around it rolls back
        assert recorded == []

        gateway.send({"name": "shop/nested", "data": {"step": "outer"}})
        savepoint = db.session.begin_nested()
        gateway.send({"name": "shop/nested", "data": {"step": "rolled back"}})
        savepoint.rollback()
        with db.session.begin_nested():
            gateway.send({"name": "shop/nested", "data": {"step": "inner"}})
        assert recorded == []  # nothing before the outer commit
        db.session.commit()
    assert [e["data"]["step"] for e in recorded] == ["outer", "inner"]
    assert inngest.received == []


def test_a_connections_savepoint_rolled_back_or_released_counts_only_at_the_outer_commit(
    shops: ShopFactory,
) -> None:
    """The same on a Core Connection: `begin_nested()` rolled back takes its events with it,
    released hands them to the transaction around it, and only the outer COMMIT counts."""
    app = shops()
    app.testing = True  # suppressed: the recorder shows what the commits made
    with app.app_context(), gateway.record_events(app) as recorded:
        with db.engine.connect() as connection, connection.begin():
            gateway.send({"name": "shop/core", "data": {"step": "outer"}}, session=connection)
            savepoint = connection.begin_nested()
            gateway.send({"name": "shop/core", "data": {"step": "rolled back"}}, session=connection)
            inner = connection.begin_nested()  # released into the one rolled back
            gateway.send({"name": "shop/core", "data": {"step": "inside it"}}, session=connection)
            inner.commit()
            savepoint.rollback()
            with connection.begin_nested(), connection.begin_nested():
                gateway.send({"name": "shop/core", "data": {"step": "inner"}}, session=connection)
            assert recorded == []  # nothing before the outer commit
    assert [e["data"]["step"] for e in recorded] == ["outer", "inner"]


def test_a_connections_savepoint_rolled_back_with_one_still_open_inside_drops_both(
    shops: ShopFactory,
) -> None:
    """A savepoint rolled back while one begun inside it is still open (its context manager
    left by an exception): the events of both are gone, as their rows are."""
    app = shops()
    app.testing = True
    with app.app_context(), gateway.record_events(app) as recorded:
        with db.engine.connect() as connection, connection.begin():
            gateway.send({"name": "shop/core", "data": {"step": "outer"}}, session=connection)
            with pytest.raises(LookupError), pytest.warns(SAWarning, match="deassociated"):
                with connection.begin_nested():
                    gateway.send(
                        {"name": "shop/core", "data": {"step": "in it"}}, session=connection
                    )
                    connection.begin_nested()  # never ended
                    gateway.send(
                        {"name": "shop/core", "data": {"step": "inside"}}, session=connection
                    )
                    raise LookupError
    assert [e["data"]["step"] for e in recorded] == ["outer"]


def test_send_in_a_request_takes_the_logged_in_user_by_default(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    app = shops()
    body = logged_in(app, 2).post("/orders?item=pen&user=default").get_json()
    wait_until(lambda: len(inngest.accepted) == 1)
    assert inngest.accepted_ids() == body["ids"]
    assert inngest.accepted[0]["data"]["user"] == {
        "id": 2,
        "email": "bob@example.com",
        "name": "Bob",
    }


def test_with_db_and_the_outbox_in_another_database_send_stores_there_before_it_returns(
    shops: ShopFactory, inngest: InngestStandIn, tmp_path: Path
) -> None:
    """db= with INNGEST_GATEWAY_OUTBOX_DATABASE_URL naming another database: send() cannot
    join db.session's transaction, so it commits to the gateway's own outbox, as without db."""
    own = tmp_path / "own-outbox.db"
    app = shops(INNGEST_GATEWAY_OUTBOX_DATABASE_URL=f"sqlite:///{own}")
    client = logged_in(app)

    placed = client.post("/orders?item=lamp")
    rolled = client.post("/orders?item=pen&rollback=1")

    assert placed.status_code == 200, placed.get_data(as_text=True)
    assert rolled.status_code == 200, rolled.get_data(as_text=True)
    wait_until(lambda: len(inngest.accepted) == 2)
    # Stored before send returned, so the rolled-back order's event went too: the documented
    # cost of an outbox outside the app's database.
    assert [e["data"]["item"] for e in inngest.accepted] == ["lamp", "pen"]
    assert gateway_state(app).outbox_db.engine.url.database == str(own)


def test_a_transaction_past_a_batch_goes_in_consecutive_batches_in_order(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    app = shops(INNGEST_GATEWAY_OUTBOX_BATCH_SIZE="2")
    body = logged_in(app).post("/orders?lines=4").get_json()
    wait_until(lambda: len(inngest.accepted) == 5)
    assert [len(r.events) for r in inngest.received] == [2, 2, 1]
    assert inngest.accepted_ids() == body["ids"]
    assert len({r.seed for r in inngest.received}) == 3


def test_a_given_id_is_the_apps_own_stable_and_never_a_posters(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    app = shops(INNGEST_GATEWAY_API_ALLOWED_EVENTS="shop/*")
    with app.app_context():
        ada = db.session.get(User, 1)
        once = gateway.send({"name": "shop/x", "id": "k1"}, user=ada)
        again = gateway.send({"name": "shop/x", "id": "k1"}, user=None)
        db.session.commit()
    assert once == again  # the app's scope: the same key, the same event id, whoever
    # A browser posting the same key gets another id: it cannot make the app's a duplicate.
    posted = logged_in(app).post("/api", json={"name": "shop/x", "id": "k1"}).get_json()
    assert posted["ids"] != once


# -- outside a request ---------------------------------------------------------------------


def test_send_from_a_flask_command_and_from_a_thread(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    app = shops()
    result = app.test_cli_runner().invoke(args=["shop", "place-order", "2"])
    assert result.exit_code == 0, result.output
    assert "committed" in result.output

    sent: list[list[str]] = []
    failures: list[BaseException] = []

    def job() -> None:
        try:
            with app.app_context():
                sent.append(gateway.send({"name": "shop/report.ready", "data": {"rows": 3}}))
                db.session.commit()
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    thread.join(10)
    assert failures == []
    wait_until(lambda: len(inngest.accepted) == 2)
    by_name = {e["name"]: e for e in inngest.accepted}
    assert by_name["shop/order.placed"]["data"]["user"]["id"] == 2
    assert by_name["shop/order.placed"]["data"]["request"] is None  # no request: none
    assert by_name["shop/report.ready"]["data"]["user"] is None  # nobody, unless given
    assert by_name["shop/report.ready"]["id"] == sent[0][0]


def test_an_invalid_event_raises_before_anything_is_written_and_the_transaction_goes_on(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    app = shops()
    with app.app_context():
        db.session.add(Order(user_id=1, item="kept"))
        with pytest.raises(ValidationFailed) as invalid:
            gateway.send([{"name": "shop/ok"}, {"name": "shop/bad", "ts": "yesterday"}])
        assert invalid.value.code == "validation_failed"
        assert "1" in invalid.value.errors  # the envelope's field errors, by index
        with pytest.raises(EventNotAllowed):
            gateway.send({"name": "inngest/function.finished"})  # Inngest's own names
        with pytest.raises(EventNotAllowed):
            gateway.send({"name": "other/thing"})  # not in INNGEST_GATEWAY_API_ALLOWED_EVENTS
        db.session.commit()  # the host's transaction is still usable
    assert count(app, Order) == 1
    assert count(app) == 0
    time.sleep(0.3)  # six polls of the deliverer: nothing was stored, nothing goes out
    assert inngest.received == []


# -- a process killed around the commit ----------------------------------------------------


def _place_order_process(
    database_url: str, inngest: InngestStandIn, tmp_path: Path, pause: str
) -> subprocess.Popen[str]:
    env = clean_env(tmp_path) | shop_config(database_url, inngest)
    command = [str(BIN / "flask"), "--app", "tests.shop:create_shop()", "shop", "place-order"]
    return subprocess.Popen(
        [*command, "1", "--pause", pause],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL: no exit handler, no rollback, no drain; the database sees a dropped client."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    assert process.stdout is not None
    process.stdout.close()


def _read_until(process: subprocess.Popen[str], marker: str, seconds: float = 30) -> list[str]:
    """Lines of the process's output up to one starting with `marker` (bounded in time)."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(marker):
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert found.wait(seconds), f"no {marker!r} from the command: {lines}"
    return lines


def test_killed_after_the_commit_the_event_is_delivered_after_the_restart(
    shops: ShopFactory, inngest: InngestStandIn, database_url: str, tmp_path: Path
) -> None:
    shops()  # the tables and users
    inngest.fail_ratio = 1.0  # Inngest down: the committing process cannot deliver
    process = _place_order_process(database_url, inngest, tmp_path, "after-commit")
    try:
        lines = _read_until(process, "committed")
    finally:
        _kill(process)
    event_id = next(line for line in lines if line.startswith("written")).split()[2]
    assert inngest.accepted == []

    inngest.fail_ratio = 0.0
    restarted = shops(create=False)  # the app again, in another process
    gateway.start(restarted)
    wait_until(lambda: inngest.accepted_ids() == [event_id], seconds=15)
    wait_until(lambda: count(restarted) == 0)


def test_killed_before_the_commit_neither_the_order_nor_the_event_exists(
    shops: ShopFactory, inngest: InngestStandIn, database_url: str, tmp_path: Path
) -> None:
    app = shops()
    process = _place_order_process(database_url, inngest, tmp_path, "before-commit")
    try:
        _read_until(process, "written")  # the rows are written, not committed
    finally:
        _kill(process)

    gateway.start(app)
    kept = logged_in(app).post("/orders?item=kept").get_json()
    wait_until(lambda: len(inngest.accepted) == 1)
    assert inngest.accepted_ids() == kept["ids"]
    assert count(app, Order) == 1  # only the kept one
    wait_until(lambda: count(app) == 0)  # the kept one's row, once its delivery is settled


# -- the table in the host's migrations, or made by a command ------------------------------


def test_alembic_autogenerate_makes_the_outbox_table_from_the_hosts_metadata(
    shops: ShopFactory, database_url: str
) -> None:
    app = shops(create=False)  # an empty database: migrations make every table
    with app.app_context():
        with db.engine.connect() as connection:
            diffs = compare_metadata(MigrationContext.configure(connection), db.metadata)
    added_tables = {diff[1].name for diff in diffs if diff[0] == "add_table"}
    assert added_tables == {"shop_users", "shop_orders", "outbox_events"}
    added_indexes = {diff[1].name for diff in diffs if diff[0] == "add_index"}
    assert {"ix_outbox_events_due", "ix_outbox_events_batch_seed"} <= added_indexes


def _only_the_apps(_object: Any, _name: Any, type_: str, reflected: bool, compare_to: Any) -> bool:
    return not (type_ == "table" and reflected and compare_to is None)


@pytest.fixture
def loggers_kept() -> Iterator[None]:
    """Alembic's env.py runs logging.config.fileConfig, which disables every logger there is;
    a host runs `flask db` in a process of its own, so its loggers come back here after."""
    enabled = [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.disabled
    ]
    yield
    for logger in enabled:
        logger.disabled = False


# Flask-Migrate's env.py template asks Flask-SQLAlchemy for get_engine() first.
@pytest.mark.filterwarnings("ignore:'get_engine' is deprecated:DeprecationWarning")
@pytest.mark.usefixtures("loggers_kept")
def test_flask_migrate_creates_the_outbox_table_and_sends_work(
    shops: ShopFactory, inngest: InngestStandIn, tmp_path: Path
) -> None:
    app = shops(create=False)
    # Tables the shared test database has from other tests are none of this app's business.
    Migrate(app, db, directory=str(tmp_path / "migrations"), include_object=_only_the_apps)
    runner = app.test_cli_runner()
    for args in (["db", "init"], ["db", "migrate", "-m", "shop"], ["db", "upgrade"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0, (args, result.output)
    [version] = (tmp_path / "migrations" / "versions").glob("*.py")
    assert "op.create_table('outbox_events'" in version.read_text()
    with app.app_context():
        assert "outbox_events" in inspect(db.engine).get_table_names()
        db.session.add(User(id=1, email="ada@example.com", name="Ada Lovelace"))
        db.session.commit()
    body = logged_in(app).post("/orders").get_json()
    wait_until(lambda: inngest.accepted_ids() == body["ids"])


def test_without_migrations_the_create_command_makes_the_table(
    shops: ShopFactory, inngest: InngestStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    app = shops(create=False)
    with app.app_context():
        db.metadata.create_all(db.engine, tables=[User.__table__, Order.__table__])
        db.session.add(User(id=1, email="ada@example.com", name="Ada Lovelace"))
        db.session.commit()
    # Posts to /api land in the same outbox: without its table they answer 503, and say why.
    missing = app.test_client().post("/api", json={"name": "shop/x"})
    assert missing.status_code == 503
    assert "outbox create" in caplog.text

    result = app.test_cli_runner().invoke(args=["inngest-gateway", "outbox", "create"])
    assert result.exit_code == 0, result.output
    assert "outbox table" in result.output
    posted = app.test_client().post("/api", json={"name": "shop/x"})
    assert posted.status_code == 202, posted.get_data(as_text=True)
    sent = logged_in(app).post("/orders").get_json()
    wait_until(
        lambda: sorted(inngest.accepted_ids()) == sorted(posted.get_json()["ids"] + sent["ids"])
    )


def test_a_send_before_the_outbox_table_exists_raises_and_the_transaction_goes_on(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    """Before the app's migrations made the outbox table: the gateway's own 503 error, naming
    the command, before anything is written; on PostgreSQL a failed INSERT would have aborted
    the host's transaction."""
    app = shops(create=False)
    with app.app_context():
        db.metadata.create_all(db.engine, tables=[User.__table__, Order.__table__])
        db.session.add(User(id=1, email="ada@example.com", name="Ada Lovelace"))
        db.session.flush()
        with pytest.raises(OutboxUnavailable) as missing:
            gateway.send({"name": "shop/too.early"})
        assert missing.value.status_code == 503
        assert missing.value.code == "outbox_unavailable"
        assert "flask inngest-gateway outbox create" in missing.value.message
        db.session.add(Order(user_id=1, item="kept"))
        db.session.commit()  # the host's transaction is still usable
    assert count(app, Order) == 1

    result = app.test_cli_runner().invoke(args=["inngest-gateway", "outbox", "create"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        [sent] = gateway.send({"name": "shop/in.time"})
        db.session.commit()
    wait_until(lambda: inngest.accepted_ids() == [sent])


def test_a_connection_that_moves_the_outbox_table_to_another_schema_is_refused(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    """A schema per tenant (`schema_translate_map`): the rows would land where no deliverer
    reads them. Refused before anything is written; the transaction goes on."""
    app = shops()
    with app.app_context():
        with db.engine.connect() as connection, connection.begin():
            connection.execution_options(schema_translate_map={None: "tenant_a"})
            with pytest.raises(RuntimeError, match="schema_translate_map"):
                gateway.send({"name": "shop/tenant"}, session=connection)
            assert connection.scalar(text("SELECT 1")) == 1  # the transaction goes on
        with db.engine.connect() as connection:
            [sent] = gateway.send({"name": "shop/plain"}, session=connection)
            connection.commit()
    wait_until(lambda: inngest.accepted_ids() == [sent])
    wait_until(lambda: count(app) == 0)  # the delivered row is removed after the answer


def test_a_deliverer_that_never_found_its_table_stops_cleanly(
    shops: ShopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the app's migrations ran: the deliverer starts, finds no table, and its stop
    (at a worker's exit) neither drains nor hands back claims in a table that is not there."""
    app = shops(create=False)
    gateway.start(app)
    time.sleep(0.2)  # a few polls: each finds no table
    assert gateway.stop(app) == 0
    assert "outbox create" in caplog.text


# -- modes and tests -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["outbox", "sync"])
def test_without_db_send_stores_or_sends_before_it_returns(
    inngest: InngestStandIn, tmp_path: Path, mode: str
) -> None:
    """A gateway without `db`: send commits to its own outbox, or in sync mode sends."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        INNGEST_EVENT_KEY=inngest.event_key,
        INNGEST_BASE_URL=inngest.url,
        INNGEST_GATEWAY_DELIVERY_MODE=mode,
        INNGEST_GATEWAY_SEND_TIMEOUT="0.5",
    )
    own = InngestGateway(app)
    with app.app_context():
        ids = own.send({"name": "app/from.code", "data": {"mode": mode}})
        if mode == "sync":
            assert inngest.accepted_ids() == ids  # at Inngest when send returned
        else:  # committed when send returned; the deliverer it started sends it
            wait_until(lambda: inngest.accepted_ids() == ids)
        assert inngest.accepted[0]["data"]["user"] is None

        inngest.fail_next(20, 503)
        if mode == "sync":  # Inngest's failure, as the exception a post's answer would be
            with pytest.raises(UpstreamUnavailable) as unavailable:
                own.send({"name": "app/from.code"})
            assert unavailable.value.code == "upstream_unavailable"
            assert unavailable.value.status_code == 503
        else:
            own.send({"name": "app/from.code"})  # stored: Inngest's state does not matter
    own.stop(app)
    gateway_state(app).outbox_db.dispose()


def test_under_testing_a_committed_send_is_recorded_and_a_rolled_back_one_is_not(
    shops: ShopFactory, inngest: InngestStandIn
) -> None:
    app = shops()
    app.testing = True  # suppressed: nothing written, nothing sent
    with gateway.record_events(app) as recorded:
        client = logged_in(app)
        client.post("/orders?item=rolled&rollback=1")
        kept = client.post("/orders?item=kept").get_json()
    assert [e["data"]["item"] for e in recorded] == ["kept"]
    assert [e["id"] for e in recorded] == kept["ids"]
    assert recorded[0]["data"]["user"]["id"] == 1
    assert count(app) == 0
    assert inngest.received == []


def test_a_session_on_another_database_is_refused(shops: ShopFactory, tmp_path: Path) -> None:
    app = shops()
    other = create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    with app.app_context(), Session(other) as session, pytest.raises(RuntimeError) as refused:
        gateway.send({"name": "shop/x"}, session=session)
    assert "not the outbox's" in str(refused.value)
    other.dispose()


def test_the_events_json_is_what_a_post_makes(shops: ShopFactory, inngest: InngestStandIn) -> None:
    """Same fields, same encoding: `name`, `data` (with `user` and `request`), `id`, `ts`."""
    app = shops()
    body = logged_in(app).post("/orders").get_json()
    wait_until(lambda: len(inngest.accepted) == 1)
    [request] = inngest.received
    [raw] = json.loads(request.body)
    assert set(raw) == {"name", "data", "id", "ts"}
    assert raw["id"] == body["ids"][0]


# -- the README's example ------------------------------------------------------------------


def readme_send_example() -> str:
    """The Python example of the README's "Events from your own code" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Events from your own code", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's section on events from your own code has no Python example"
    assert "InngestGateway(db=db)" in blocks[0] and "gateway.send(" in blocks[0]
    return str(blocks[0])


AFTER_SEND_EXAMPLE = """
import json
answer = app.test_client().post("/orders")
gateway.stop(app)  # delivers what is stored before it returns
print(json.dumps({"status": answer.status_code, "body": answer.get_json()}))
"""


def test_the_readme_send_example_delivers_the_order_event(
    inngest: InngestStandIn, tmp_path: Path
) -> None:
    env = clean_env(tmp_path) | {
        "SECRET_KEY": SECRET_KEY,
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.05",
        "PYTHONPATH": str(ROOT),
    }
    code = readme_send_example() + AFTER_SEND_EXAMPLE
    result = run_example(BIN / "python", code, cwd=tmp_path, env=env, timeout=60)
    assert result["status"] == 200
    [event] = inngest.accepted
    assert event["id"] == result["body"]["ids"][0]
    assert event["name"] == "app/order.placed"
    assert event["data"]["order"] == result["body"]["order"]
