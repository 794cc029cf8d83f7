"""`flask users create|list|disable`, checked through the commands' output and real logins;
the outbox's commands under their one name."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import PASSWORD, assert_envelope


def invoke(app: Flask, runner: Any, *args: str, input: str | None = None) -> Any:
    return runner.invoke(args=["users", *args], input=input)


def login(client: FlaskClient, email: str, password: str) -> Any:
    return client.post("/auth/login", json={"email": email, "password": password})


def test_create_makes_a_user_who_can_log_in(app: Flask, runner: Any, client: FlaskClient) -> None:
    result = invoke(
        app, runner, "create", "Grace@Example.com", "--name", "Grace Hopper", "--password", PASSWORD
    )

    assert result.exit_code == 0, result.output
    assert result.output == "created user 1: grace@example.com\n"
    response = login(client, "grace@example.com", PASSWORD)
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "user": {"id": 1, "email": "grace@example.com", "name": "Grace Hopper"},
    }


def test_create_prompts_for_the_password_without_echoing_it(
    app: Flask, runner: Any, client: FlaskClient
) -> None:
    secret = "prompted-secret-42"

    result = invoke(
        app, runner, "create", "grace@example.com", "--name", "Grace", input=f"{secret}\n{secret}\n"
    )

    assert result.exit_code == 0, result.output
    assert "Password" in result.output
    assert secret not in result.output
    assert "created user 1: grace@example.com" in result.output
    assert login(client, "grace@example.com", secret).status_code == 200


def test_create_refuses_a_mismatched_confirmation(
    app: Flask, runner: Any, client: FlaskClient
) -> None:
    result = invoke(
        app,
        runner,
        "create",
        "grace@example.com",
        "--name",
        "Grace",
        input="first-password\nsecond-password\n",
    )

    assert result.exit_code != 0
    assert "do not match" in result.output
    assert "first-password" not in result.output
    assert_envelope(
        login(client, "grace@example.com", "first-password"), 401, "invalid_credentials"
    )


@pytest.mark.parametrize(
    ("email", "name", "password", "message"),
    [
        (
            "ada@example.com",
            "Another Ada",
            PASSWORD,
            "a user with the e-mail ada@example.com exists",
        ),
        (
            "ADA@Example.com",
            "Another Ada",
            PASSWORD,
            "a user with the e-mail ada@example.com exists",
        ),
        ("not-an-email", "Someone", PASSWORD, "not a valid e-mail address: 'not-an-email'"),
        ("two@@example.com", "Someone", PASSWORD, "not a valid e-mail address"),
        ("short@example.com", "Someone", "1234567", "at least 8 characters"),
        ("blank@example.com", "   ", PASSWORD, "the name must not be empty"),
    ],
)
def test_create_refuses_bad_input_clearly(
    app: Flask,
    runner: Any,
    client: FlaskClient,
    user: dict[str, Any],
    email: str,
    name: str,
    password: str,
    message: str,
) -> None:
    result = invoke(app, runner, "create", email, "--name", name, "--password", password)

    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert message in result.output
    assert "created user" not in result.output
    listing = invoke(app, runner, "list")
    assert listing.exit_code == 0
    assert listing.output == f"{user['id']}\tada@example.com\tAda Lovelace\tactive\n"


def test_create_without_a_name_is_a_usage_error(app: Flask, runner: Any) -> None:
    result = invoke(app, runner, "create", "grace@example.com", "--password", PASSWORD)

    assert result.exit_code == 2
    assert "--name" in result.output
    assert invoke(app, runner, "list").output == ""


def test_list_shows_users_and_their_state(app: Flask, runner: Any) -> None:
    for email, name in [("ada@example.com", "Ada Lovelace"), ("alan@example.com", "Alan Turing")]:
        created = invoke(app, runner, "create", email, "--name", name, "--password", PASSWORD)
        assert created.exit_code == 0, created.output
    disabled = invoke(app, runner, "disable", "alan@example.com")

    result = invoke(app, runner, "list")

    assert disabled.exit_code == 0, disabled.output
    assert disabled.output == "disabled user 2: alan@example.com\n"
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "1\tada@example.com\tAda Lovelace\tactive",
        "2\talan@example.com\tAlan Turing\tdisabled",
    ]


def test_list_of_no_users_is_empty(app: Flask, runner: Any) -> None:
    result = invoke(app, runner, "list")

    assert result.exit_code == 0
    assert result.output == ""


@pytest.mark.parametrize("email", ["nobody@example.com", "NOBODY@example.com "])
def test_disable_of_an_unknown_email_fails_clearly(
    app: Flask, runner: Any, user: dict[str, Any], email: str
) -> None:
    result = invoke(app, runner, "disable", email)

    assert result.exit_code == 1
    assert result.output == "Error: no user with the e-mail nobody@example.com\n"
    assert invoke(app, runner, "list").output.endswith("\tactive\n")


def test_disable_is_case_insensitive_and_stops_logins(
    app: Flask, runner: Any, client: FlaskClient, user: dict[str, Any]
) -> None:
    result = invoke(app, runner, "disable", "Ada@Example.COM")

    assert result.exit_code == 0, result.output
    assert result.output == f"disabled user {user['id']}: ada@example.com\n"
    assert_envelope(login(client, "ada@example.com", PASSWORD), 401, "invalid_credentials")


def test_the_outbox_commands_have_one_name(runner: Any) -> None:
    """`flask inngest-gateway outbox ...`, as in any host app; no second `flask outbox`."""
    status = runner.invoke(args=["inngest-gateway", "outbox", "status"])
    alias = runner.invoke(args=["outbox", "status"])

    assert status.exit_code == 0, status.output
    assert "pending: 0" in status.output
    assert alias.exit_code == 2
    assert "No such command 'outbox'" in alias.output
