"""The service's own PostgreSQL stops answering: every post gets 503 with Retry-After, never 500.

The link to the database is a proxy that can be frozen: it holds its connections, accepts new
ones, and forwards nothing, as a stalled network path does. Logged-in posts read the login
(`users.load_user`); anonymous ones only store their events; both must answer in bounded time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from service.db import db
from service.users import create_user
from tests.conftest import PASSWORD, assert_envelope
from tests.proxy import LinkProxy, freezable_proxy, through

WRITE_TIMEOUT = 1.0
# The longest a post may take with the link frozen: the login read (one timeout), then the
# outbox's write (the commit under way, then its own: twice the timeout, plus a second).
BOUND = WRITE_TIMEOUT + 2 * WRITE_TIMEOUT + 1.0 + 1.0


def _post(client: FlaskClient, label: str) -> tuple[TestResponse, float]:
    began = time.monotonic()
    response = client.post("/api", json={"name": "app/outage", "data": {"label": label}})
    return response, time.monotonic() - began


def _assert_503(response: TestResponse, seconds: float) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    body = assert_envelope(response, 503, response.get_json()["code"])
    assert body["code"] in ("database_unavailable", "outbox_unavailable"), body
    assert response.headers["Retry-After"].isdigit()
    assert seconds < BOUND, f"{seconds:.1f}s"


def _service(make_app: Callable[..., Flask], proxy: LinkProxy, url: str) -> Flask:
    app = make_app(
        DATABASE_URL=through(proxy, url),
        INNGEST_GATEWAY_DELIVERY_MODE="outbox",
        INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT=f"{WRITE_TIMEOUT:g}",
        INNGEST_GATEWAY_RATELIMIT_ENABLED="false",
    )
    with app.app_context():
        create_user("ada@example.com", "Ada Lovelace", PASSWORD)
    return app


@pytest.mark.timeout(120)
def test_a_link_that_forwards_nothing_is_503_for_every_post_never_500(
    make_app: Callable[..., Flask], postgres_url: str
) -> None:
    port = urlsplit(postgres_url).port or 5432
    with freezable_proxy(port) as proxy:
        app = _service(make_app, proxy, postgres_url)
        logged_in, anonymous = app.test_client(), app.test_client()
        assert (
            logged_in.post(
                "/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
            ).status_code
            == 200
        )
        assert _post(logged_in, "before")[0].status_code == 202  # every pool is warm now
        assert _post(anonymous, "before")[0].status_code == 202

        proxy.freeze()
        for client in (logged_in, anonymous, logged_in):
            _assert_503(*_post(client, "frozen"))

        proxy.thaw()
        deadline = time.monotonic() + 20
        while _post(logged_in, "after")[0].status_code != 202:
            assert time.monotonic() < deadline, "posts did not recover"
            time.sleep(0.2)


@pytest.mark.timeout(120)
def test_a_new_connection_that_times_out_is_503_never_500(
    make_app: Callable[..., Flask], postgres_url: str
) -> None:
    """The pools are empty and connecting times out (libpq's connect_timeout)."""
    port = urlsplit(postgres_url).port or 5432
    with freezable_proxy(port) as proxy:
        app = _service(make_app, proxy, postgres_url)
        logged_in = app.test_client()
        assert (
            logged_in.post(
                "/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
            ).status_code
            == 200
        )
        proxy.freeze()
        with app.app_context():
            db.engine.dispose()  # every pooled connection gone: the next one must connect
        app.extensions["login_reads"].dispose()
        for client in (logged_in, app.test_client()):
            _assert_503(*_post(client, "connect"))
