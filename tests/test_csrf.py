"""Cross-site refusal on POST /api, /auth/login and /auth/logout; CORS for trusted origins;
session cookie flags."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import PASSWORD, AuthActions, assert_envelope
from tests.cors import CORS_REQUESTS, TRUSTED, assert_cors_answer, cors_request
from tests.standin import InngestStandIn

OWN_ORIGIN = "http://localhost"
EVIL = "https://evil.example"
SIBLING = "http://blog.localhost"
CREDENTIALS = {"email": "ada@example.com", "password": PASSWORD}
FORMS: dict[str, dict[str, Any]] = {
    "/api": {"name": "app/csrf.test", "note": "hi"},
    "/auth/login": CREDENTIALS,
    "/auth/logout": {},
}
JSON_BODIES: dict[str, dict[str, Any]] = {
    **FORMS,
    "/api": {"name": "app/csrf.test", "data": {"note": "hi"}},
}
KINDS = ["form", "json"]


def post(
    client: FlaskClient, path: str, kind: str, headers: dict[str, str], **kwargs: Any
) -> TestResponse:
    """A post as a browser makes it: a form submission, or an XHR/`fetch` with a JSON body."""
    if kind == "form":
        return client.post(
            path,
            data=FORMS[path],
            content_type="application/x-www-form-urlencoded",
            headers=headers,
            **kwargs,
        )
    return client.post(path, json=JSON_BODIES[path], headers=headers, **kwargs)


def me(client: FlaskClient) -> str | None:
    """The e-mail of the logged-in user, or None."""
    response = client.get("/auth/me")
    if response.status_code == 401:
        assert_envelope(response, 401, "login_required")
        return None
    assert response.status_code == 200
    email: str = response.get_json()["email"]
    return email


def cookie_attributes(response: TestResponse, name: str) -> set[str]:
    """The lower-cased attributes of the Set-Cookie header for `name`."""
    (header,) = [
        value for value in response.headers.getlist("Set-Cookie") if value.startswith(f"{name}=")
    ]
    return {part.strip().lower() for part in header.split(";")[1:]}


REFUSED: list[Any] = [
    pytest.param({"Sec-Fetch-Site": "cross-site", "Origin": EVIL}, id="cross-site"),
    pytest.param({"Sec-Fetch-Site": "cross-site"}, id="cross-site-without-origin"),
    pytest.param({"Origin": EVIL}, id="origin-only-old-browser"),
    pytest.param({"Origin": "null"}, id="origin-null"),
    pytest.param({"Sec-Fetch-Site": "cross-site", "Origin": "null"}, id="sandboxed-null"),
    pytest.param({"Sec-Fetch-Site": "same-site", "Origin": SIBLING}, id="same-site"),
    pytest.param({"Origin": "http://localhost.evil.example"}, id="prefix-of-own-host"),
    pytest.param({"Origin": "http://localhost:8080"}, id="other-port"),
    pytest.param({"Origin": "https://localhost"}, id="other-scheme"),
    pytest.param({"Sec-Fetch-Site": "cross-site", "Origin": TRUSTED}, id="not-trusted-here"),
]


@pytest.mark.parametrize("headers", REFUSED)
@pytest.mark.parametrize("kind", KINDS)
def test_cross_site_post_to_api_is_refused(
    client: FlaskClient,
    auth: AuthActions,
    user: dict[str, Any],
    inngest: InngestStandIn,
    kind: str,
    headers: dict[str, str],
) -> None:
    assert auth.login().status_code == 200  # the victim is logged in

    response = post(client, "/api", kind, headers)

    envelope = assert_envelope(response, 403, "cross_site_request")
    assert envelope["errors"] == {}
    assert "Location" not in response.headers
    assert "Access-Control-Allow-Origin" not in response.headers
    assert inngest.received == []


@pytest.mark.parametrize("headers", REFUSED)
@pytest.mark.parametrize("kind", KINDS)
def test_cross_site_login_is_refused(
    client: FlaskClient,
    user: dict[str, Any],
    inngest: InngestStandIn,
    kind: str,
    headers: dict[str, str],
) -> None:
    response = post(client, "/auth/login", kind, headers)

    envelope = assert_envelope(response, 403, "cross_site_request")
    assert envelope["errors"] == {}
    assert response.headers.getlist("Set-Cookie") == []
    assert me(client) is None
    assert inngest.received == []


@pytest.mark.parametrize("headers", REFUSED)
@pytest.mark.parametrize("kind", KINDS)
def test_cross_site_logout_is_refused(
    client: FlaskClient,
    auth: AuthActions,
    user: dict[str, Any],
    inngest: InngestStandIn,
    kind: str,
    headers: dict[str, str],
) -> None:
    assert auth.login().status_code == 200

    response = post(client, "/auth/logout", kind, headers)

    envelope = assert_envelope(response, 403, "cross_site_request")
    assert envelope["errors"] == {}
    assert me(client) == "ada@example.com"
    assert inngest.received == []


def test_refusal_comes_before_login_and_validation(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(INNGEST_GATEWAY_API_REQUIRE_LOGIN="true").test_client()

    response = client.post(
        "/api",
        data=b"{not json",
        content_type="application/json",
        headers={"Sec-Fetch-Site": "cross-site", "Origin": EVIL},
    )

    assert_envelope(response, 403, "cross_site_request")
    assert inngest.received == []


ALLOWED: list[Any] = [
    pytest.param({"Sec-Fetch-Site": "same-origin", "Origin": OWN_ORIGIN}, id="same-origin"),
    pytest.param({"Sec-Fetch-Site": "same-origin"}, id="same-origin-without-origin"),
    pytest.param({"Origin": OWN_ORIGIN}, id="own-origin-old-browser"),
    pytest.param({}, id="no-browser-headers"),
]


def expect_allowed(response: TestResponse, kind: str, location: str) -> None:
    """A form navigation is redirected; a JSON post gets JSON."""
    if kind == "form":
        assert response.status_code == 303, response.get_data(as_text=True)
        assert response.headers["Location"] == location
        assert location in response.get_data(as_text=True)
    else:
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["status"] == "ok"


@pytest.mark.parametrize("headers", ALLOWED)
@pytest.mark.parametrize("kind", KINDS)
def test_same_origin_and_headerless_posts_to_api_pass(
    client: FlaskClient, inngest: InngestStandIn, kind: str, headers: dict[str, str]
) -> None:
    response = post(client, "/api", kind, headers)

    expect_allowed(response, kind, "/sent")
    (received,) = inngest.received
    (event,) = received.events
    assert event["name"] == "app/csrf.test"
    assert event["data"]["note"] == "hi"
    if kind == "json":
        assert response.get_json()["ids"] == [event["id"]]


@pytest.mark.parametrize("headers", ALLOWED)
@pytest.mark.parametrize("kind", KINDS)
def test_same_origin_and_headerless_login_and_logout_pass(
    client: FlaskClient,
    user: dict[str, Any],
    inngest: InngestStandIn,
    kind: str,
    headers: dict[str, str],
) -> None:
    login = post(client, "/auth/login", kind, headers)

    expect_allowed(login, kind, "/")
    if kind == "json":
        assert login.get_json()["user"] == user
    assert me(client) == "ada@example.com"

    logout = post(client, "/auth/logout", kind, headers)

    expect_allowed(logout, kind, "/")
    assert me(client) is None
    assert inngest.received == []


def test_same_site_check_uses_the_host_the_request_came_to(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    """Served as https://gateway.example.com, a page there may post; a sibling may not."""
    base = "https://gateway.example.com"
    sibling = client.post(
        "/api",
        json={"name": "app/x"},
        base_url=base,
        headers={"Sec-Fetch-Site": "same-site", "Origin": "https://blog.example.com"},
    )
    own = client.post("/api", json={"name": "app/x"}, base_url=base, headers={"Origin": base})

    assert_envelope(sibling, 403, "cross_site_request")
    assert own.status_code == 200, own.get_data(as_text=True)
    assert own.get_json()["status"] == "ok"
    assert len(inngest.received) == 1


# -- trusted origins and CORS ----------------------------------------------------------


@pytest.fixture
def trusted_client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(INNGEST_GATEWAY_TRUSTED_ORIGINS=TRUSTED).test_client()


def assert_cors_for(response: TestResponse, origin: str) -> None:
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize("site", ["cross-site", "same-site", None])
def test_trusted_origin_may_post_to_api_and_gets_cors_headers(
    trusted_client: FlaskClient, inngest: InngestStandIn, site: str | None
) -> None:
    headers = {"Origin": TRUSTED} if site is None else {"Origin": TRUSTED, "Sec-Fetch-Site": site}

    response = trusted_client.post("/api", json={"name": "app/from.app"}, headers=headers)

    assert response.status_code == 200, response.get_data(as_text=True)
    (event_id,) = response.get_json()["ids"]
    assert_cors_for(response, TRUSTED)
    exposed = response.headers["Access-Control-Expose-Headers"].lower()
    assert "x-request-id" in exposed
    assert inngest.accepted_ids() == [event_id]


def test_trusted_origin_can_read_error_answers(
    trusted_client: FlaskClient, inngest: InngestStandIn
) -> None:
    response = trusted_client.post(
        "/api",
        json={"name": "app/x", "bogus": 1},
        headers={"Origin": TRUSTED, "Sec-Fetch-Site": "cross-site"},
    )

    envelope = assert_envelope(response, 422, "validation_failed")
    assert set(envelope["errors"]) == {"bogus"}
    assert_cors_for(response, TRUSTED)
    assert inngest.received == []


def test_trusted_origin_setting_is_normalised(
    make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = make_app(
        INNGEST_GATEWAY_TRUSTED_ORIGINS=" https://App.Example/ , https://other.example"
    ).test_client()

    response = client.post(
        "/api", json={}, headers={"Origin": TRUSTED, "Sec-Fetch-Site": "cross-site"}
    )

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == "ok"
    assert response.headers["Access-Control-Allow-Origin"] == TRUSTED
    assert len(inngest.received) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_trusted_origin_may_log_in_and_out(
    trusted_client: FlaskClient, user: dict[str, Any], inngest: InngestStandIn, kind: str
) -> None:
    headers = {"Origin": TRUSTED, "Sec-Fetch-Site": "cross-site"}

    login = post(trusted_client, "/auth/login", kind, headers)
    expect_allowed(login, kind, "/")
    assert me(trusted_client) == "ada@example.com"

    logout = post(trusted_client, "/auth/logout", kind, headers)
    expect_allowed(logout, kind, "/")
    assert me(trusted_client) is None
    assert inngest.received == []


def test_preflight_from_a_trusted_origin_is_answered(
    trusted_client: FlaskClient, inngest: InngestStandIn
) -> None:
    response = trusted_client.options(
        "/api",
        headers={
            "Origin": TRUSTED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "cors",
        },
    )

    assert response.status_code == 200
    assert response.get_data() == b""
    assert_cors_for(response, TRUSTED)
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed_headers = response.headers["Access-Control-Allow-Headers"].lower()
    assert "content-type" in allowed_headers
    assert "idempotency-key" in allowed_headers
    assert inngest.received == []


def test_untrusted_origin_gets_no_cors_headers(
    trusted_client: FlaskClient, inngest: InngestStandIn
) -> None:
    preflight = trusted_client.options(
        "/api",
        headers={
            "Origin": EVIL,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    posted = trusted_client.post(
        "/api", json={"name": "app/x"}, headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}
    )

    assert preflight.status_code == 200
    assert preflight.get_data() == b""
    assert_envelope(posted, 403, "cross_site_request")
    for response in (preflight, posted):
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Credentials" not in response.headers
    assert inngest.received == []


def test_without_trusted_origins_no_cors_headers_are_sent(
    client: FlaskClient, inngest: InngestStandIn
) -> None:
    preflight = client.options(
        "/api", headers={"Origin": TRUSTED, "Access-Control-Request-Method": "POST"}
    )
    same_origin = client.post("/api", json={}, headers={"Origin": OWN_ORIGIN})

    assert preflight.status_code == 200
    assert preflight.get_data() == b""
    assert same_origin.status_code == 200
    assert same_origin.get_json()["status"] == "ok"
    for response in (preflight, same_origin):
        assert "Access-Control-Allow-Origin" not in response.headers
    assert len(inngest.received) == 1


# -- every answer says it varies by Origin ---------------------------------------------


@pytest.mark.parametrize("trusted", [TRUSTED, f"{TRUSTED},https://other.example"])
@pytest.mark.parametrize("origin", [None, TRUSTED, EVIL])
@pytest.mark.parametrize("kind", CORS_REQUESTS)
def test_the_gateways_answers_vary_by_origin_and_allow_only_a_trusted_one(
    make_app: Callable[..., Flask],
    inngest: InngestStandIn,
    kind: str,
    origin: str | None,
    trusted: str,
) -> None:
    """A shared cache must never hand one origin's answer (or a no-Origin one) to another."""
    client = make_app(INNGEST_GATEWAY_TRUSTED_ORIGINS=trusted).test_client()

    response = cors_request(client, kind, origin)

    assert_cors_answer(response, origin, allowed=origin == TRUSTED)
    if kind == "post":
        assert response.status_code == (403 if origin == EVIL else 200)


@pytest.mark.parametrize("origin", [None, TRUSTED])
@pytest.mark.parametrize("kind", CORS_REQUESTS)
def test_without_trusted_origins_the_answers_still_vary_by_origin(
    client: FlaskClient, inngest: InngestStandIn, kind: str, origin: str | None
) -> None:
    """The post's answer depends on Origin anyway: another site's is refused."""
    assert_cors_answer(cors_request(client, kind, origin), origin, allowed=False)


@pytest.mark.parametrize("origin", [None, TRUSTED, EVIL])
def test_a_revalidated_client_file_varies_by_origin_too(
    make_app: Callable[..., Flask], origin: str | None
) -> None:
    client = make_app(INNGEST_GATEWAY_TRUSTED_ORIGINS=TRUSTED).test_client()
    etag = cors_request(client, "module", origin).headers["ETag"]

    response = cors_request(client, "module", origin, **{"If-None-Match": etag})

    assert response.status_code == 304
    assert_cors_answer(response, origin, allowed=origin == TRUSTED)


# -- session cookies -------------------------------------------------------------------


def login_with_remember(client: FlaskClient) -> TestResponse:
    response = client.post("/auth/login", json={**CREDENTIALS, "remember": True})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["user"]["email"] == "ada@example.com"
    return response


@pytest.mark.parametrize("cookie", ["session", "remember_token"])
def test_cookies_are_httponly_lax_and_secure_in_production(
    client: FlaskClient, user: dict[str, Any], cookie: str
) -> None:
    response = login_with_remember(client)

    attributes = cookie_attributes(response, cookie)
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "secure" in attributes


@pytest.mark.parametrize("cookie", ["session", "remember_token"])
def test_cookies_are_not_secure_in_dev_mode(
    make_app: Callable[..., Flask],
    user: dict[str, Any],
    inngest: InngestStandIn,
    cookie: str,
) -> None:
    client = make_app(INNGEST_DEV=inngest.url).test_client()

    response = login_with_remember(client)

    attributes = cookie_attributes(response, cookie)
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "secure" not in attributes


def test_form_login_cookie_has_the_same_flags(client: FlaskClient, user: dict[str, Any]) -> None:
    response = client.post(
        "/auth/login", data={**CREDENTIALS, "next": "/sent"}, headers={"Origin": OWN_ORIGIN}
    )

    assert response.status_code == 303
    assert response.headers["Location"] == "/sent"
    assert "/sent" in response.get_data(as_text=True)
    assert {"httponly", "samesite=lax", "secure"} <= cookie_attributes(response, "session")
