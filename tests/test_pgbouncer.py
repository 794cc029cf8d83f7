"""The service behind PgBouncer in transaction mode (Debian's PgBouncer 1.18), where a
transaction may run on any server connection: nothing may outlive one, prepared statements
included.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from inngest_gateway.db import engine_options
from service.users import create_user
from tests.conftest import PASSWORD
from tests.outboxes import deliver_until, rows
from tests.pgbouncer import pgbouncer
from tests.standin import InngestStandIn

POSTERS = 4
POSTS = 25  # each: past psycopg's default of preparing a statement on its fifth run


@pytest.mark.timeout(120)
def test_posts_and_deliveries_through_pgbouncer_in_transaction_mode(
    make_app: Callable[..., Flask], postgres_url: str, inngest: InngestStandIn
) -> None:
    with pgbouncer(postgres_url) as bounced:
        app = make_app(
            DATABASE_URL=bounced,
            INNGEST_GATEWAY_DELIVERY_MODE="outbox",
            INNGEST_GATEWAY_RATELIMIT_ENABLED="false",
        )
        with app.app_context():
            create_user("ada@example.com", "Ada Lovelace", PASSWORD)
        answers: Counter[int] = Counter()
        ids: list[str] = []
        lock = threading.Lock()

        def post(number: int) -> None:
            client = app.test_client()
            login = client.post(
                "/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
            )
            with lock:
                answers[login.status_code] += 1
            for n in range(POSTS):
                response = client.post("/api", json={"name": "app/bounced", "data": {"n": n}})
                body: dict[str, Any] = response.get_json()
                with lock:
                    answers[response.status_code] += 1
                    ids.extend(body.get("ids", []))

        threads = [threading.Thread(target=post, args=(n,)) for n in range(POSTERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert answers == {200: POSTERS, 202: POSTERS * POSTS}, answers

        deliver_until(app, lambda: not rows(app), seconds=30)
    assert sorted(inngest.accepted_ids()) == sorted(ids)


@pytest.mark.parametrize(
    ("url", "told_not_to_prepare"),
    [
        ("postgresql+psycopg://gateway@db.internal/gateway", True),
        ("postgresql://gateway@db.internal/gateway", True),  # psycopg, SQLAlchemy's default
        # psycopg2 prepares nothing, and refuses the option as an unknown connection option.
        ("postgresql+psycopg2://gateway@db.internal/gateway", False),
    ],
)
def test_only_psycopg_is_told_not_to_prepare(url: str, told_not_to_prepare: bool) -> None:
    for options in (engine_options(url), engine_options(url, 5.0)):
        connect_args = options["connect_args"]
        if told_not_to_prepare:
            assert connect_args["prepare_threshold"] is None, options
        else:
            assert "prepare_threshold" not in connect_args, options
