"""Event ids: a client's key (`id` or `Idempotency-Key`) only ever deduplicates its own posts."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from inngest_gateway.events import EVENT_ID_NAMESPACE
from service.users import create_user
from tests.conftest import PASSWORD
from tests.standin import InngestStandIn


def logged_in(app: Flask, email: str) -> FlaskClient:
    client = app.test_client()
    response = client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    return client


@pytest.fixture
def users(app: Flask) -> dict[str, int]:
    with app.app_context():
        return {
            email: create_user(email, email.split("@")[0], PASSWORD).id
            for email in ("ada@example.com", "bob@example.com")
        }


def post_id(client: FlaskClient, key: str, *, header: bool = False) -> str:
    """Post one event with this client key; the id the service answered."""
    if header:
        response = client.post("/api", json={}, headers={"Idempotency-Key": key})
    else:
        response = client.post("/api", json={"id": key})
    assert response.status_code == 200, response.get_data(as_text=True)
    (event_id,) = response.get_json()["ids"]
    return str(event_id)


@pytest.mark.parametrize("header", [False, True])
def test_two_users_with_the_same_key_get_different_ids(
    app: Flask, users: dict[str, int], inngest: InngestStandIn, header: bool
) -> None:
    ada, bob = logged_in(app, "ada@example.com"), logged_in(app, "bob@example.com")

    ada_id = post_id(ada, "order-42", header=header)
    bob_id = post_id(bob, "order-42", header=header)

    assert ada_id != bob_id
    assert "order-42" not in (ada_id, bob_id)
    assert inngest.accepted_ids() == [ada_id, bob_id]
    events = [r.events[0] for r in inngest.received]
    assert [e["data"]["user"]["id"] for e in events] == [
        users["ada@example.com"],
        users["bob@example.com"],
    ]


@pytest.mark.parametrize("header", [False, True])
def test_a_users_retries_keep_the_same_id_from_any_of_their_logins(
    app: Flask, users: dict[str, int], inngest: InngestStandIn, header: bool
) -> None:
    laptop, phone = logged_in(app, "ada@example.com"), logged_in(app, "ada@example.com")

    first = post_id(laptop, "order-42", header=header)

    assert post_id(laptop, "order-42", header=header) == first
    assert post_id(phone, "order-42", header=header) == first
    assert post_id(laptop, "order-43", header=header) != first
    assert inngest.accepted_ids() == [first, first, first, inngest.accepted_ids()[3]]


def test_the_id_is_derived_as_documented(
    app: Flask, users: dict[str, int], inngest: InngestStandIn
) -> None:
    ada = logged_in(app, "ada@example.com")

    event_id = post_id(ada, "order-42")

    user_id = users["ada@example.com"]
    assert event_id == str(uuid.uuid5(EVENT_ID_NAMESPACE, f"user:{user_id}\norder-42"))


def test_a_body_id_and_the_same_idempotency_key_are_the_same_client_key(
    app: Flask, users: dict[str, int], inngest: InngestStandIn
) -> None:
    ada = logged_in(app, "ada@example.com")

    assert post_id(ada, "k") == post_id(ada, "k", header=True)


def test_a_batch_with_an_idempotency_key_is_scoped_per_index(
    app: Flask, users: dict[str, int], inngest: InngestStandIn
) -> None:
    ada, bob = logged_in(app, "ada@example.com"), logged_in(app, "bob@example.com")
    batch = [{}, {}, {"id": "own"}]

    first = ada.post("/api", json=batch, headers={"Idempotency-Key": "k"}).get_json()["ids"]
    again = ada.post("/api", json=batch, headers={"Idempotency-Key": "k"}).get_json()["ids"]
    bobs = bob.post("/api", json=batch, headers={"Idempotency-Key": "k"}).get_json()["ids"]

    assert first == again
    assert len(set(first)) == 3
    assert not set(first) & set(bobs)
    assert first[0] == post_id(ada, "k:0")
    assert first[2] == post_id(ada, "own")


def test_anonymous_and_user_keys_never_meet(
    app: Flask, users: dict[str, int], inngest: InngestStandIn
) -> None:
    ada = logged_in(app, "ada@example.com")
    visitor, other_visitor = app.test_client(), app.test_client()

    ids = [post_id(c, "order-42") for c in (ada, visitor, other_visitor)]

    assert len(set(ids)) == 3


def test_an_anonymous_client_keeping_its_cookie_retries_idempotently(
    app: Flask, inngest: InngestStandIn
) -> None:
    visitor = app.test_client()

    first = post_id(visitor, "order-42")

    assert visitor.get_cookie("session") is not None  # the anonymous scope lives in it
    assert post_id(visitor, "order-42") == first
    assert post_id(visitor, "order-42", header=True) == first


def test_a_cookieless_client_gets_a_new_scope_for_every_post(
    app: Flask, inngest: InngestStandIn
) -> None:
    first = app.test_client().post("/api", json={"id": "order-42"})
    second = app.test_client().post("/api", json={"id": "order-42"})

    assert first.get_json()["ids"] != second.get_json()["ids"]
    assert any(h.startswith("session=") for h in first.headers.getlist("Set-Cookie"))


def test_no_cookie_is_set_for_a_post_without_a_key(app: Flask, inngest: InngestStandIn) -> None:
    response = app.test_client().post("/api", json=[{}, {"name": "app/x"}])

    assert response.status_code == 200
    assert all(uuid.UUID(i).version == 4 for i in response.get_json()["ids"])
    assert response.headers.getlist("Set-Cookie") == []


def test_logout_starts_a_new_anonymous_scope(
    app: Flask, users: dict[str, int], inngest: InngestStandIn
) -> None:
    client = app.test_client()
    before = post_id(client, "order-42")
    client.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
    as_ada = post_id(client, "order-42")

    client.post("/auth/logout")

    after = post_id(client, "order-42")
    assert len({before, as_ada, after}) == 3


def test_outbox_mode_stores_a_retry_under_the_same_id(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = make_app(INNGEST_GATEWAY_DELIVERY_MODE="outbox")
    with app.app_context():
        create_user("ada@example.com", "Ada", PASSWORD)
    ada = logged_in(app, "ada@example.com")

    answers: list[Any] = [
        ada.post("/api", json={"id": "order-42"}, headers={"Accept": "application/json"})
        for _ in range(2)
    ]

    assert [a.status_code for a in answers] == [202, 202]
    (first,), (second,) = (a.get_json()["ids"] for a in answers)
    assert first == second != "order-42"
