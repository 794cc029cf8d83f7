"""The login flow: JSON and HTML form logins, the session, logout, disabled users."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import PASSWORD, AuthActions, assert_envelope

HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ADA = {"email": "ada@example.com", "name": "Ada Lovelace"}


def disable(app: Flask, runner: Any, email: str) -> Any:
    """`flask users disable EMAIL`."""
    return runner.invoke(args=["users", "disable", email])


def test_json_login_answers_with_the_user(
    client: FlaskClient, user: dict[str, Any], auth: AuthActions
) -> None:
    response = auth.login()

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "user": {"id": user["id"], **ADA}}


@pytest.mark.parametrize("email", ["ADA@example.com", "Ada@Example.COM", "  ada@example.com "])
def test_email_is_case_insensitive(
    client: FlaskClient, user: dict[str, Any], auth: AuthActions, email: str
) -> None:
    response = auth.login(email=email)

    assert response.status_code == 200
    assert response.get_json()["user"] == {"id": user["id"], **ADA}


@pytest.mark.parametrize(
    "credentials",
    [
        {"email": "ada@example.com", "password": "wrong password"},
        {"email": "nobody@example.com", "password": PASSWORD},
        {"email": "nobody@example.com", "password": "wrong password"},
    ],
)
def test_wrong_password_and_unknown_email_look_alike(
    client: FlaskClient, user: dict[str, Any], credentials: dict[str, str]
) -> None:
    reference = client.post("/auth/login", json={"email": "ada@example.com", "password": "not it"})

    response = client.post("/auth/login", json=credentials)

    body = assert_envelope(response, 401, "invalid_credentials")
    assert body["errors"] == {}
    expected = reference.get_data().replace(
        reference.headers["X-Request-ID"].encode(), response.headers["X-Request-ID"].encode()
    )
    assert response.get_data() == expected
    assert client.get("/auth/me").status_code == 401


def test_failed_logins_differ_only_in_request_id(client: FlaskClient, user: dict[str, Any]) -> None:
    wrong = client.post("/auth/login", json={"email": "ada@example.com", "password": "nope"})
    unknown = client.post("/auth/login", json={"email": "who@example.com", "password": "nope"})

    first = assert_envelope(wrong, 401, "invalid_credentials")
    second = assert_envelope(unknown, 401, "invalid_credentials")
    assert first["request_id"] != second["request_id"]
    assert (
        wrong.get_data().replace(first["request_id"].encode(), second["request_id"].encode())
        == unknown.get_data()
    )


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, {"email", "password"}),
        ({"email": "ada@example.com"}, {"password"}),
        ({"password": PASSWORD}, {"email"}),
        ({"email": "", "password": ""}, {"email", "password"}),
        ({"email": "ada@example.com", "password": PASSWORD, "role": "admin"}, {"role"}),
        ({"email": 7, "password": PASSWORD}, {"email"}),
        ({"email": "ada@example.com", "password": PASSWORD, "remember": "perhaps"}, {"remember"}),
    ],
)
def test_invalid_login_body_is_a_422_with_field_errors(
    client: FlaskClient, user: dict[str, Any], body: dict[str, Any], errors: set[str]
) -> None:
    response = client.post("/auth/login", json=body)

    envelope = assert_envelope(response, 422, "validation_failed")
    assert set(envelope["errors"]) == errors
    assert all(isinstance(messages, list) and messages for messages in envelope["errors"].values())
    assert client.get("/auth/me").status_code == 401


def test_missing_form_fields_are_a_422(client: FlaskClient, user: dict[str, Any]) -> None:
    response = client.post(
        "/auth/login", data={"email": "ada@example.com"}, headers={"Accept": "application/json"}
    )

    envelope = assert_envelope(response, 422, "validation_failed")
    assert envelope["errors"] == {"password": ["Missing data for required field."]}


def test_login_body_of_another_type_is_refused(client: FlaskClient, user: dict[str, Any]) -> None:
    response = client.post(
        "/auth/login", data=f"ada@example.com:{PASSWORD}", content_type="text/plain"
    )

    envelope = assert_envelope(response, 422, "validation_failed")
    assert "_schema" in envelope["errors"]
    assert client.get("/auth/me").status_code == 401


@pytest.mark.parametrize(
    ("next_url", "location"),
    [
        ("/sent", "/sent"),
        ("/pricing?plan=pro#top", "/pricing?plan=pro#top"),
        (None, "/"),
        ("", "/"),
        ("https://evil.example", "/"),
        ("https://evil.example/steal", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
    ],
)
def test_form_login_by_navigation_redirects_to_a_same_origin_next(
    client: FlaskClient, user: dict[str, Any], next_url: str | None, location: str
) -> None:
    form = {"email": "ada@example.com", "password": PASSWORD}
    if next_url is not None:
        form["next"] = next_url

    response = client.post("/auth/login", data=form, headers={"Accept": HTML})

    assert response.status_code == 303
    assert response.headers["Location"] == location
    me = client.get("/auth/me")
    assert me.status_code == 200
    assert me.get_json() == {"id": user["id"], **ADA}


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_failed_form_login_by_navigation_shows_the_page_again(
    client: FlaskClient, user: dict[str, Any], content_type: str
) -> None:
    response = client.post(
        "/auth/login",
        data={"email": "ada@example.com", "password": "wrong password", "next": "/sent"},
        content_type=content_type,
        headers={"Accept": HTML},
    )

    assert response.status_code == 401
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert 'role="alert"' in page
    assert "The e-mail or password is incorrect." in page
    assert 'name="email" value="ada@example.com"' in page
    assert 'name="next" value="/sent"' in page
    assert "wrong password" not in page
    assert client.get("/auth/me").status_code == 401


def test_failed_form_login_that_asks_for_json_gets_the_envelope(
    client: FlaskClient, user: dict[str, Any]
) -> None:
    response = client.post(
        "/auth/login",
        data={"email": "ada@example.com", "password": "wrong password"},
        headers={"Accept": "application/json"},
    )

    assert_envelope(response, 401, "invalid_credentials")


def test_form_login_that_asks_for_json_gets_json(client: FlaskClient, user: dict[str, Any]) -> None:
    response = client.post(
        "/auth/login",
        data={"email": "ada@example.com", "password": PASSWORD, "next": "/sent"},
        headers={"X-Requested-With": "XMLHttpRequest"},
    )

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "user": {"id": user["id"], **ADA}}


def test_me_is_a_401_envelope_when_anonymous(client: FlaskClient) -> None:
    response = client.get("/auth/me")

    body = assert_envelope(response, 401, "login_required")
    assert body["errors"] == {}


def test_me_is_the_user_when_logged_in(
    client: FlaskClient, user: dict[str, Any], auth: AuthActions
) -> None:
    auth.login()

    response = client.get("/auth/me")

    assert response.status_code == 200
    assert response.get_json() == {"id": user["id"], **ADA}


def test_logout_ends_the_session(
    client: FlaskClient, user: dict[str, Any], auth: AuthActions
) -> None:
    assert auth.login().status_code == 200
    assert client.get("/auth/me").status_code == 200

    response = auth.logout()

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert_envelope(client.get("/auth/me"), 401, "login_required")


def test_logout_by_a_page_form_redirects_home(
    client: FlaskClient, user: dict[str, Any], auth: AuthActions
) -> None:
    auth.login()

    response = client.post(
        "/auth/logout",
        data="",
        content_type="application/x-www-form-urlencoded",
        headers={"Accept": HTML},
    )

    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert_envelope(client.get("/auth/me"), 401, "login_required")


def test_disabled_user_is_logged_out_and_cannot_log_in(
    app: Flask, client: FlaskClient, runner: Any, user: dict[str, Any], auth: AuthActions
) -> None:
    assert auth.login().status_code == 200
    assert client.get("/auth/me").status_code == 200

    result = disable(app, runner, "ada@example.com")

    assert result.exit_code == 0, result.output
    assert "ada@example.com" in result.output
    assert_envelope(client.get("/auth/me"), 401, "login_required")
    assert_envelope(auth.login(), 401, "invalid_credentials")
    assert_envelope(client.get("/auth/me"), 401, "login_required")


def test_disabled_user_with_a_remember_cookie_stays_out(
    app: Flask, client: FlaskClient, runner: Any, user: dict[str, Any]
) -> None:
    login = client.post(
        "/auth/login", json={"email": "ada@example.com", "password": PASSWORD, "remember": True}
    )
    assert login.status_code == 200
    assert client.get_cookie("remember_token") is not None

    result = disable(app, runner, "ada@example.com")
    client.delete_cookie("session")

    assert result.exit_code == 0, result.output
    assert_envelope(client.get("/auth/me"), 401, "login_required")


def test_remember_sets_a_remember_cookie_that_restores_the_session(
    client: FlaskClient, user: dict[str, Any]
) -> None:
    response = client.post(
        "/auth/login", json={"email": "ada@example.com", "password": PASSWORD, "remember": True}
    )

    assert response.status_code == 200
    assert response.get_json()["user"] == {"id": user["id"], **ADA}
    (remember,) = [
        header
        for header in response.headers.getlist("Set-Cookie")
        if header.startswith("remember_token=")
    ]
    assert "HttpOnly" in remember
    assert "SameSite=Lax" in remember
    assert "Secure" in remember
    client.delete_cookie("session")
    me = client.get("/auth/me")
    assert me.status_code == 200
    assert me.get_json() == {"id": user["id"], **ADA}


@pytest.mark.parametrize("remember", [False, None])
def test_without_remember_there_is_no_remember_cookie(
    client: FlaskClient, user: dict[str, Any], remember: bool | None
) -> None:
    body: dict[str, Any] = {"email": "ada@example.com", "password": PASSWORD}
    if remember is not None:
        body["remember"] = remember

    response = client.post("/auth/login", json=body)

    assert response.status_code == 200
    assert client.get_cookie("remember_token") is None
    assert client.get_cookie("session") is not None
    client.delete_cookie("session")
    assert_envelope(client.get("/auth/me"), 401, "login_required")


def test_form_remember_checkbox_sets_a_remember_cookie(
    client: FlaskClient, user: dict[str, Any]
) -> None:
    response = client.post(
        "/auth/login",
        data={"email": "ada@example.com", "password": PASSWORD, "remember": "true"},
        headers={"Accept": HTML},
    )

    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert client.get_cookie("remember_token") is not None


def test_logout_also_forgets_the_remember_cookie(client: FlaskClient, user: dict[str, Any]) -> None:
    client.post(
        "/auth/login", json={"email": "ada@example.com", "password": PASSWORD, "remember": True}
    )

    response = client.post("/auth/logout")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert client.get_cookie("remember_token") is None
    assert_envelope(client.get("/auth/me"), 401, "login_required")


def test_session_cookie_is_httponly_lax_and_secure_in_production(
    client: FlaskClient, user: dict[str, Any], auth: AuthActions
) -> None:
    response = auth.login()

    assert response.status_code == 200
    (session,) = [
        header for header in response.headers.getlist("Set-Cookie") if header.startswith("session=")
    ]
    assert "HttpOnly" in session
    assert "SameSite=Lax" in session
    assert "Secure" in session


@pytest.mark.parametrize(
    ("query", "hidden_next"),
    [
        ("", None),
        ("?next=/sent", "/sent"),
        ("?next=https://evil.example", None),
        ("?next=//evil.example", None),
    ],
)
def test_login_page_is_a_form(client: FlaskClient, query: str, hidden_next: str | None) -> None:
    response = client.get(f"/auth/login{query}")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert '<form method="post" action="/auth/login">' in page
    assert 'type="email" name="email"' in page
    assert 'type="password" name="password"' in page
    assert 'name="remember"' in page
    assert 'role="alert"' not in page
    if hidden_next is None:
        assert 'name="next"' not in page
        assert "evil.example" not in page
    else:
        assert f'<input type="hidden" name="next" value="{hidden_next}">' in page


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/auth/login", {"email": "ada@example.com", "password": PASSWORD}),
        ("/auth/logout", {}),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_cross_site_auth_posts_are_refused(
    client: FlaskClient,
    user: dict[str, Any],
    path: str,
    body: dict[str, str],
    headers: dict[str, str],
) -> None:
    response = client.post(path, data=body, headers=headers)

    assert_envelope(response, 403, "cross_site_request")
    assert_envelope(client.get("/auth/me"), 401, "login_required")


def test_cross_site_logout_leaves_the_session(
    client: FlaskClient, user: dict[str, Any], auth: AuthActions
) -> None:
    auth.login()

    response = client.post("/auth/logout", headers={"Origin": "https://evil.example"})

    assert_envelope(response, 403, "cross_site_request")
    assert client.get("/auth/me").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
        {"Origin": "http://localhost"},
        {},
    ],
)
def test_same_origin_login_passes(
    client: FlaskClient, user: dict[str, Any], headers: dict[str, str]
) -> None:
    response = client.post(
        "/auth/login", json={"email": "ada@example.com", "password": PASSWORD}, headers=headers
    )

    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"
