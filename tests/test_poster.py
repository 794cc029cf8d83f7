"""The poster tag: a page's queued events are sent only as the poster who queued them.

The page's script tag carries `data-poster`; the browser client stores it with each event and
sends it back in `X-Inngest-Poster`. A post whose tag is not the current poster's is a 409,
and nothing of it is sent: a queue left by one user on a shared browser is never sent as the
next user who logs in.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.users import create_user
from tests.conftest import PASSWORD, AuthActions, assert_envelope
from tests.standin import InngestStandIn

EVENT = {"name": "app/api.posted", "data": {"n": 1}, "id": "client-key-1"}


def tag_on_page(client: FlaskClient) -> str | None:
    """The data-poster of the demo page's script tag (None if it had none)."""
    html = client.get("/").get_data(as_text=True)
    script = re.search(r'<script src="/inngest-gateway.js"[^>]*>', html)
    assert script, html
    match = re.search(r'data-poster="([^"]+)"', script.group(0))
    return match.group(1) if match else None


def post(client: FlaskClient, tag: str | None) -> Any:
    headers = {"X-Inngest-Poster": tag} if tag is not None else {}
    return client.post("/api", json=EVENT, headers=headers)


def test_an_anonymous_visitor_gets_an_anonymous_tag_and_the_page_sets_nothing(
    client: FlaskClient,
) -> None:
    first, second = tag_on_page(client), tag_on_page(client)
    response = client.get("/")

    assert first is not None and re.fullmatch(r"anonymous\.[A-Za-z0-9_-]{22}", first)
    assert first != second  # each page its own scope: a shared cache's copy names nobody
    # The page neither starts a session nor changes its caching: the first post does.
    assert response.headers.getlist("Set-Cookie") == []
    assert client.get_cookie("session") is None
    assert "no-store" not in response.headers.get("Cache-Control", "")


def test_a_retry_whose_first_answer_was_lost_keeps_the_anonymous_ids(
    app: Flask, client: FlaskClient, inngest: InngestStandIn
) -> None:
    """The first post's answer (and the cookie it sets) never arrives; the retry carries the
    page's tag, the scope of its events, so the service derives the same id and Inngest
    drops it."""
    tag = tag_on_page(client)
    assert tag is not None
    first = client.post("/api", json=EVENT, headers={"X-Inngest-Poster": tag})
    retry_client = app.test_client()  # without the cookie the lost answer set

    retry = retry_client.post("/api", json=EVENT, headers={"X-Inngest-Poster": tag})
    other_page = retry_client.post(
        "/api", json=EVENT, headers={"X-Inngest-Poster": tag_on_page(retry_client) or ""}
    )

    assert first.status_code == retry.status_code == other_page.status_code == 200
    assert first.get_json()["ids"] == retry.get_json()["ids"]
    assert other_page.get_json()["ids"] != first.get_json()["ids"]  # another page, another poster


def test_a_users_tag_is_accepted_and_another_is_refused(
    client: FlaskClient, auth: AuthActions, user: dict[str, Any], inngest: InngestStandIn
) -> None:
    auth.login()
    tag = tag_on_page(client)
    assert tag is not None and re.fullmatch(r"[A-Za-z0-9_-]{22}", tag)
    assert tag == tag_on_page(client)  # stable for the user

    accepted = post(client, tag)
    refused = post(client, "A" * 22)
    unbound = post(client, None)

    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    body = assert_envelope(refused, 409, "poster_changed")
    assert "another user or session" in body["message"]
    assert unbound.status_code == 200
    assert len(inngest.accepted) == 2  # the refused post sent nothing


def test_a_queue_left_by_one_user_is_refused_for_the_next(
    app: Flask,
    client: FlaskClient,
    auth: AuthActions,
    user: dict[str, Any],
    inngest: InngestStandIn,
) -> None:
    with app.app_context():
        create_user("bob@example.com", "Bob", PASSWORD)
    auth.login()
    adas = tag_on_page(client)
    auth.logout()
    auth.login("bob@example.com")
    bobs = tag_on_page(client)

    refused = post(client, adas)
    accepted = post(client, bobs)

    assert adas != bobs
    assert_envelope(refused, 409, "poster_changed")
    assert accepted.status_code == 200
    (event,) = inngest.accepted
    assert event["data"]["user"]["email"] == "bob@example.com"


def test_anonymous_events_go_as_anyone_anonymous_but_never_as_a_user(
    app: Flask, client: FlaskClient, auth: AuthActions, user: dict[str, Any]
) -> None:
    """A browser restart ends the anonymous session (and scope) but not the queue: its
    events are still nobody's. Once someone logs in they are not sent as that user."""
    anonymous = tag_on_page(client)
    assert anonymous is not None and anonymous.startswith("anonymous.")
    restarted = app.test_client()  # no cookie: another anonymous scope

    assert post(restarted, anonymous).status_code == 200
    assert post(restarted, "anonymous").status_code == 200  # as pages of earlier versions
    auth.login()
    assert_envelope(post(client, anonymous), 409, "poster_changed")
    assert_envelope(post(client, "anonymous"), 409, "poster_changed")
    users = tag_on_page(client)
    auth.logout()
    assert_envelope(post(client, users), 409, "poster_changed")


def test_the_tag_names_nobody_and_depends_on_the_secret(
    make_app: Any, auth: AuthActions, user: dict[str, Any]
) -> None:
    client = auth._client
    auth.login()
    tag = tag_on_page(client)
    other = make_app(SECRET_KEY="another-secret-0123456789abcdef0123")  # same users table
    other_client = other.test_client()
    AuthActions(other_client).login()

    assert tag is not None
    assert tag_on_page(other_client) not in (None, tag)
    for revealing in (str(user["id"]), "ada", "example"):
        assert revealing not in tag.lower()


@pytest.mark.parametrize("tag", ["", " ", "x" * 5000, "café", "anonymous"])
def test_odd_tags_are_refused_not_errors(
    client: FlaskClient, auth: AuthActions, user: dict[str, Any], tag: str
) -> None:
    auth.login()
    assert_envelope(post(client, tag), 409, "poster_changed")


@pytest.mark.parametrize(
    "tag",
    ["", "x", "anonymous.", "anonymous.short", "anonymous." + "a" * 23, "anonymous:" + "a" * 22],
)
def test_odd_anonymous_tags_are_refused_not_errors(client: FlaskClient, tag: str) -> None:
    assert_envelope(post(client, tag), 409, "poster_changed")
