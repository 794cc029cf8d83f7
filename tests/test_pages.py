"""The pages a person uses to try the service, and their static files."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.users import create_user
from tests.conftest import AuthActions, assert_envelope
from tests.standin import InngestStandIn


def page(client: FlaskClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def test_index_for_an_anonymous_visitor(client: FlaskClient) -> None:
    html = page(client, "/")

    assert '<span id="current-user">Not logged in</span>' in html
    assert 'href="/auth/login"' in html
    assert '<form id="html-form" method="post" action="/api">' in html
    assert '<input type="hidden" name="next" value="/sent">' in html
    assert '<form id="client-form" method="post" action="/api" data-inngest-event="">' in html
    assert '<input name="name" value="app/api.posted" required>' in html
    assert re.search(
        '<script src="/inngest-gateway.js" data-endpoint="/api" data-max-batch="100" '
        r'data-poster="anonymous\.[A-Za-z0-9_-]{22}" defer></script>',
        html,
    )
    assert 'href="/static/style.css"' in html
    assert "user: null" in html
    assert "Log out" not in html


def test_index_shows_the_logged_in_user(
    client: FlaskClient, auth: AuthActions, user: dict[str, Any]
) -> None:
    assert auth.login().status_code == 200

    html = page(client, "/")

    assert '<strong id="current-user">Ada Lovelace</strong> (ada@example.com)' in html
    assert "Not logged in" not in html
    assert '<form method="post" action="/auth/logout" class="inline">' in html
    assert '<form id="html-form" method="post" action="/api">' in html


def test_index_after_logout_is_anonymous_again(
    client: FlaskClient, auth: AuthActions, user: dict[str, Any]
) -> None:
    auth.login()
    assert auth.logout().status_code == 200

    html = page(client, "/")

    assert "Not logged in" in html
    assert "Ada Lovelace" not in html


def test_index_escapes_the_user_name(client: FlaskClient, app: Flask) -> None:
    with app.app_context():
        create_user("eve@example.com", "<script>alert(1)</script>", "long enough password")
    login = client.post(
        "/auth/login", json={"email": "eve@example.com", "password": "long enough password"}
    )
    assert login.status_code == 200

    html = page(client, "/")

    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)</script>" not in html


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        ({}, "(anonymous posts are sent with <code>user: null</code>)"),
        ({"INNGEST_GATEWAY_API_REQUIRE_LOGIN": "true"}, "(logging in is required)"),
        ({"INNGEST_GATEWAY_API_DEFAULT_EVENT": "shop/page.posted"}, 'value="shop/page.posted"'),
    ],
)
def test_index_follows_the_settings(
    make_app: Callable[..., Flask], overrides: dict[str, str], shown: str
) -> None:
    html = page(make_app(**overrides).test_client(), "/")

    assert shown in html


def test_sent_page(client: FlaskClient) -> None:
    html = page(client, "/sent")

    assert "<h1>Sent</h1>" in html
    assert "Your event was accepted." in html
    assert 'href="/"' in html
    assert "Not logged in" in html


def test_sent_page_after_a_form_post_shows_the_ids(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    response = client.post(
        "/api",
        data={"name": "app/api.posted", "message": "Hello from a form", "next": "/sent"},
        headers={"Accept": "text/html"},
        follow_redirects=True,
    )

    assert response.status_code == 200
    assert response.request.path == "/sent"
    (event_id,) = inngest.accepted_ids()
    assert f'<code class="sent-ids">{event_id}</code>' in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("path", "mimetype", "content"),
    [
        ("/inngest-gateway.js", "text/javascript", '"Content-Type": "application/json"'),
        ("/inngest-gateway.mjs", "text/javascript", "export default gateway;"),
        ("/inngest-gateway.d.ts", "application/typescript", "export interface GatewayEvent"),
        ("/static/style.css", "text/css", "body {"),
    ],
)
def test_static_files_are_served(
    client: FlaskClient, path: str, mimetype: str, content: str
) -> None:
    with client.get(path) as response:
        assert response.status_code == 200
        assert response.mimetype == mimetype
        body = response.get_data(as_text=True)
    assert content in body


def test_unknown_page_is_a_404_envelope(client: FlaskClient) -> None:
    response = client.get("/no-such-page")

    assert_envelope(response, 404, "not_found")
