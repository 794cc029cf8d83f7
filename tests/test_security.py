"""Security headers, caching of authenticated answers, and which forwarded headers count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.security import CONTENT_SECURITY_POLICY
from tests.conftest import AuthActions
from tests.standin import InngestStandIn


@pytest.mark.parametrize("path", ["/", "/auth/login", "/sent"])
def test_html_pages_carry_security_headers(client: FlaskClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_pages_use_no_inline_script_or_style(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)

    assert "<script src=" in page
    assert "<script>" not in page and "style=" not in page and "<style" not in page


def test_json_answers_are_nosniff_without_a_page_policy(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    response = client.post("/api", json={})

    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in response.headers


def test_authenticated_answers_are_not_stored(
    client: FlaskClient, auth: AuthActions, user: Any, inngest: InngestStandIn
) -> None:
    assert "no-store" not in client.get("/healthz").headers.get("Cache-Control", "")

    login = auth.login()
    assert login.headers["Cache-Control"] == "no-store"  # it sets the session cookie
    for response in (client.get("/auth/me"), client.get("/"), client.post("/api", json={})):
        assert response.headers["Cache-Control"] == "no-store"
        assert "Cookie" in response.headers["Vary"]


def test_hsts_only_over_https(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()

    assert "Strict-Transport-Security" not in client.get("/").headers
    secure = client.get("/", base_url="https://gateway.example")
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"


def meta(inngest: InngestStandIn) -> dict[str, Any]:
    (event,) = inngest.received[-1].events
    request: dict[str, Any] = event["data"]["request"]
    return request


SPOOF = {"X-Forwarded-For": "203.0.113.66", "X-Forwarded-Proto": "https"}


def test_without_trusted_proxies_forwarded_headers_are_ignored(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(TRUSTED_PROXIES="0").test_client()

    response = client.post(
        "/api", json={}, headers=SPOOF, environ_base={"REMOTE_ADDR": "192.0.2.10"}
    )

    assert response.status_code == 200
    assert meta(inngest)["ip"] == "192.0.2.10"
    # The scheme stays http, so an https Origin is not this service's own.
    refused = client.post("/api", json={}, headers={**SPOOF, "Origin": "https://localhost"})
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("hops", "forwarded_for", "seen"),
    [
        ("1", "203.0.113.5", "203.0.113.5"),
        ("1", "6.6.6.6, 203.0.113.5", "203.0.113.5"),  # the client's own claim is not trusted
        ("2", "203.0.113.5, 10.0.0.2", "203.0.113.5"),
    ],
)
def test_trusted_proxies_give_the_client_address_and_scheme(
    make_app: Callable[..., Flask],
    inngest: InngestStandIn,
    hops: str,
    forwarded_for: str,
    seen: str,
) -> None:
    client = make_app(TRUSTED_PROXIES=hops).test_client()
    headers = {
        "X-Forwarded-For": forwarded_for,
        "X-Forwarded-Proto": ", ".join(["https"] * int(hops)),
        "Origin": "https://localhost",
        "Sec-Fetch-Site": "same-origin",
    }

    response = client.post("/api", json={}, headers=headers)

    assert response.status_code == 200
    assert meta(inngest)["ip"] == seen
    assert response.headers["Strict-Transport-Security"]  # the request counts as https
    form = client.post(
        "/api", data={"m": "1"}, headers={**headers, "Referer": "https://localhost/x"}
    )
    assert form.headers["Location"] == "/x"  # the https referrer is this service's own
