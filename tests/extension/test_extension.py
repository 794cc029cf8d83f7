"""`InngestGateway` mounted in host apps that are not the service: their users, their pages.

Each host here has its own LoginManager and in-memory users, its own 404 page, header,
cookie and error handler; posts go through Flask's test client to the real stand-in for
Inngest, with the outbox in a real SQLite file.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask, Request, Response, render_template_string, request
from flask.testing import FlaskClient
from flask_login import LoginManager, UserMixin

from inngest_gateway import InngestGateway, outbox
from inngest_gateway.state import gateway_state
from tests.cors import (
    CORS_REQUESTS,
    TRUSTED,
    assert_cors_answer,
    cors_request,
    trusted_origin_preflights,
)
from tests.extension.test_host import GRACE
from tests.standin import InngestStandIn

ROOT = Path(__file__).resolve().parents[2]
SECRET = "host-secret-0123456789abcdef0123456789"


class HostUser(UserMixin):
    """A host's own user: Flask-Login's protocol and nothing of ours."""

    def __init__(self, user_id: str, email: str, name: str, team: str) -> None:
        self.id, self.email, self.name, self.team = user_id, email, name, team


USERS = {
    "7": HostUser("7", "grace@example.com", "Grace Hopper", "compilers"),
    "8": HostUser("8", "alan@example.com", "Alan Turing", "machines"),
}


class HostError(Exception):
    """An error of the host's own, with the host's own handler."""


def make_host(instance: Path) -> Flask:
    """A host app as a team would have it, before it mounts anything."""
    app = Flask("host", instance_path=str(instance))
    app.config.update(SECRET_KEY=SECRET, TESTING=True)
    login_manager = LoginManager(app)

    @login_manager.user_loader
    def load_user(user_id: str) -> HostUser | None:
        return USERS.get(user_id)

    @app.get("/")
    def home() -> str:
        return "host home"

    @app.post("/echo-form")
    def echo_form() -> Any:
        return {"fields": request.form.to_dict()}

    @app.get("/boom")
    def boom() -> str:
        raise HostError("the host's own failure")

    @app.errorhandler(404)
    def not_found(_: Exception) -> tuple[str, int]:
        return "<h1>Host: no such page</h1>", 404

    @app.errorhandler(HostError)
    def host_error(exc: HostError) -> tuple[str, int]:
        return f"host handled: {exc}", 418

    @app.after_request
    def host_headers(response: Response) -> Response:
        response.headers["X-Host"] = "yes"
        response.set_cookie("host_pref", "dark")
        return response

    return app


@pytest.fixture
def host_config(inngest: InngestStandIn) -> dict[str, Any]:
    """The gateway's settings, given the way a host would: in app.config."""
    return {
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "INNGEST_GATEWAY_SEND_TIMEOUT": 2,
        "INNGEST_GATEWAY_DELIVERY_MODE": "sync",
        "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": False,
        "INNGEST_GATEWAY_SUPPRESS_SEND": False,  # these hosts test the gateway itself: real sends
    }


@pytest.fixture
def hosts(tmp_path: Path, host_config: dict[str, Any]) -> Iterator[Callable[..., Flask]]:
    """Host apps with the gateway mounted (`mount=False`: not yet), cleaned up afterwards."""
    made: list[Flask] = []

    def factory(mount: bool = True, config: dict[str, Any] | None = None, **kwargs: Any) -> Flask:
        app = make_host(tmp_path / f"instance-{len(made)}")
        app.config.update({**host_config, **(config or {})})
        if mount:
            InngestGateway(app, **kwargs)
        made.append(app)
        return app

    yield factory
    for app in made:
        state = app.extensions.get("inngest_gateway")
        if state is not None:
            state.deliverer.stop(drain_seconds=0)
            state.outbox_db.dispose()


def log_in(client: FlaskClient, user_id: str) -> None:
    """Log in as the host does it: Flask-Login's user id in the host's session."""
    with client.session_transaction() as session:
        session["_user_id"] = user_id
        session["_fresh"] = True


def only_event(inngest: InngestStandIn) -> dict[str, Any]:
    assert len(inngest.accepted) == 1, inngest.accepted
    event: dict[str, Any] = inngest.accepted[0]
    return event


def assert_gateway_envelope(response: Any, status: int, code: str) -> dict[str, Any]:
    """Our JSON envelope, with the request id we gave the request."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == "error" and body["code"] == code
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    assert response.headers["X-Request-ID"] == body["request_id"]
    return body


# -- posting as the host's user ----------------------------------------------------------------


def test_logged_in_post_carries_the_hosts_user(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = hosts().test_client()
    log_in(client, "7")

    response = client.post("/api", json={"name": "app/report.run", "data": {"report": 3}})

    assert response.status_code == 200, response.get_data(as_text=True)
    event = only_event(inngest)
    assert response.get_json() == {"status": "ok", "ids": [event["id"]]}
    assert event["name"] == "app/report.run"
    assert event["data"]["report"] == 3
    # The default serializer: the id (no model: `user.id`), email and name; nothing else.
    assert event["data"]["user"] == GRACE
    assert event["data"]["request"]["id"] == response.headers["X-Request-ID"]


def test_anonymous_post_has_no_user(hosts: Callable[..., Flask], inngest: InngestStandIn) -> None:
    response = hosts().test_client().post("/api", json={"data": {"a": 1}})

    assert response.status_code == 200, response.get_data(as_text=True)
    assert only_event(inngest)["data"]["user"] is None


def test_login_can_be_required(hosts: Callable[..., Flask], inngest: InngestStandIn) -> None:
    client = hosts(config={"INNGEST_GATEWAY_API_REQUIRE_LOGIN": True}).test_client()

    assert_gateway_envelope(client.post("/api", json={"data": {}}), 401, "login_required")
    log_in(client, "8")
    assert client.post("/api", json={"data": {}}).status_code == 200
    assert only_event(inngest)["data"]["user"]["id"] == "8"


@pytest.mark.parametrize(
    ("login_view", "login_url", "expected"),
    [
        ("sign_in", None, "/sign-in?next=%2Freports"),
        ("sign_in", "/elsewhere", "/elsewhere?next=%2Freports"),  # login_url= wins
        ("/account/login", None, "/account/login?next=%2Freports"),  # a path, as Flask-Login
    ],
)
def test_a_form_post_that_needs_a_login_goes_to_flask_logins_login_view(
    hosts: Callable[..., Flask], login_view: str, login_url: str | None, expected: str
) -> None:
    app = hosts(mount=False, config={"INNGEST_GATEWAY_API_REQUIRE_LOGIN": True})
    app.add_url_rule("/sign-in", "sign_in", lambda: "sign in")
    app.login_manager.login_view = login_view  # type: ignore[attr-defined]
    InngestGateway(app, login_url=login_url)
    client = app.test_client()

    form = client.post(
        "/api", data={"name": "app/x"}, headers={"Referer": "http://localhost/reports"}
    )
    as_json = client.post("/api", json={"name": "app/x"})

    assert form.status_code == 303, form.get_data(as_text=True)
    assert form.headers["Location"] == expected
    assert_gateway_envelope(as_json, 401, "login_required")


def test_without_a_login_view_a_form_post_that_needs_a_login_gets_the_401(
    hosts: Callable[..., Flask],
) -> None:
    client = hosts(config={"INNGEST_GATEWAY_API_REQUIRE_LOGIN": True}).test_client()

    form = client.post("/api", data={"name": "app/x"})

    assert_gateway_envelope(form, 401, "login_required")


def test_idempotency_key_is_scoped_to_the_hosts_user(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    grace = hosts().test_client()
    log_in(grace, "7")
    first = grace.post("/api", json={"data": {}}, headers={"Idempotency-Key": "k-1"})
    log_in(grace, "7")  # a new login of the same user: the same poster
    again = grace.post("/api", json={"data": {}}, headers={"Idempotency-Key": "k-1"})
    log_in(grace, "8")
    other = grace.post("/api", json={"data": {}}, headers={"Idempotency-Key": "k-1"})

    assert first.get_json()["ids"] == again.get_json()["ids"]
    assert other.get_json()["ids"] != first.get_json()["ids"]


# -- bad input, wrong methods ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": b"{nope", "content_type": "application/json"}, 400, "invalid_json"),
        ({"json": {"name": "inngest/function.failed"}}, 403, "event_not_allowed"),
        ({"json": {"data": "x", "ts": "soon"}}, 422, "validation_failed"),
        ({"data": "plain", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": b"x" * 2048, "content_type": "application/json"}, 413, "payload_too_large"),
        (
            {
                "data": b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1",
                "content_type": "multipart/form-data; boundary=b",
            },
            400,
            "invalid_form",
        ),
    ],
)
def test_bad_input_gets_the_envelope(
    hosts: Callable[..., Flask],
    inngest: InngestStandIn,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    client = hosts(config={"INNGEST_GATEWAY_API_MAX_BODY_BYTES": 1024}).test_client()

    assert_gateway_envelope(client.post("/api", **kwargs), status, code)
    assert inngest.received == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "FROBNICATE"])
def test_other_methods_get_the_json_405(hosts: Callable[..., Flask], method: str) -> None:
    response = hosts().test_client().open("/api", method=method)

    assert_gateway_envelope(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"POST", "OPTIONS"}


def test_cross_site_posts_are_refused(hosts: Callable[..., Flask], inngest: InngestStandIn) -> None:
    client = hosts().test_client()
    log_in(client, "7")

    response = client.post(
        "/api",
        json={"data": {}},
        headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    )

    assert_gateway_envelope(response, 403, "cross_site_request")
    assert inngest.received == []


@pytest.mark.usefixtures("stopped_clock")
def test_rate_limit_from_the_hosts_config(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = hosts(config={"INNGEST_GATEWAY_RATELIMIT_API": "2 per minute"}).test_client()

    assert [client.post("/api", json={"data": {}}).status_code for _ in range(2)] == [200, 200]
    refused = client.post("/api", json={"data": {}})
    assert_gateway_envelope(refused, 429, "rate_limited")
    # The clock stands 17.5 s into the window's minute: 42.5 s left, rounded up.
    assert refused.headers["Retry-After"] == "43"
    assert len(inngest.accepted) == 2


# -- the host keeps its own ways ---------------------------------------------------------------


def snapshot(app: Flask) -> dict[str, Any]:
    """Everything app-wide that an extension could change behind the host's back."""
    return {
        "request_class": app.request_class,
        "wsgi_app": app.wsgi_app,
        # App-wide hooks and handlers live under the key None; a blueprint's under its name.
        "before_request": list(app.before_request_funcs.get(None, [])),
        "after_request": list(app.after_request_funcs.get(None, [])),
        "teardown_request": list(app.teardown_request_funcs.get(None, [])),
        "teardown_appcontext": list(app.teardown_appcontext_funcs),
        "url_value_preprocessors": list(app.url_value_preprocessors.get(None, [])),
        "context_processors": list(app.template_context_processors.get(None, [])),
        "error_handlers": {
            code: dict(handlers) for code, handlers in app.error_handler_spec[None].items()
        },
        "config": dict(app.config),
        "session_interface": app.session_interface,
        "json": app.json,
        "jinja_globals": set(app.jinja_env.globals),
        "root_log_handlers": list(logging.getLogger().handlers),
        "root_log_level": logging.getLogger().level,
    }


def test_mounting_changes_nothing_app_wide(hosts: Callable[..., Flask]) -> None:
    app = hosts(mount=False)
    before = snapshot(app)

    InngestGateway(app)

    after = snapshot(app)
    # One addition: the template helper that writes the browser client's <script> tag.
    assert after.pop("jinja_globals") == before.pop("jinja_globals") | {"inngest_gateway_script"}
    assert after == before
    assert app.request_class is Request
    assert set(app.blueprints) == {"inngest_gateway"}


def test_hosts_routes_keep_their_pages_headers_and_cookies(hosts: Callable[..., Flask]) -> None:
    client = hosts().test_client()

    home = client.get("/")
    missing = client.get("/nope")
    api_slash = client.post("/api/", json={})  # not our path: the host's 404
    failing = client.get("/boom")

    assert home.get_data(as_text=True) == "host home"
    for response in (missing, api_slash):
        assert response.status_code == 404
        assert response.get_data(as_text=True) == "<h1>Host: no such page</h1>"
    assert (failing.status_code, failing.get_data(as_text=True)) == (
        418,
        "host handled: the host's own failure",
    )
    for response in (home, missing, api_slash, failing):
        assert response.headers["X-Host"] == "yes"
        assert any("host_pref=dark" in c for c in response.headers.getlist("Set-Cookie"))
        for ours in ("X-Request-ID", "Content-Security-Policy", "X-Frame-Options"):
            assert ours not in response.headers


@pytest.mark.parametrize("logged_in", [False, True], ids=["anonymous", "logged-in"])
def test_the_script_tag_helper_changes_neither_cookies_nor_caching_of_its_page(
    hosts: Callable[..., Flask], inngest: InngestStandIn, logged_in: bool
) -> None:
    app = hosts()

    @app.get("/page/<int:script>")
    def page(script: int) -> str:
        tag = "{{ inngest_gateway_script() }}" if script else ""
        return render_template_string(f"<main>page</main>{tag}")

    client = app.test_client()
    if logged_in:
        log_in(client, "7")
        client.get("/page/0")  # Flask-Login's first load marks the session: not our doing
    without, with_script = client.get("/page/0"), client.get("/page/1")

    assert "data-poster=" in with_script.get_data(as_text=True)
    ignored = {"Content-Length"}
    assert [h for h in with_script.headers if h[0] not in ignored] == [
        h for h in without.headers if h[0] not in ignored
    ]
    # The anonymous scope is made by the first post, not the page.
    if not logged_in:
        assert client.get_cookie("session") is None
        tag = re.search(r'data-poster="([^"]+)"', with_script.get_data(as_text=True))
        assert tag is not None
        first = client.post("/api", json={"id": "k-1"}, headers={"X-Inngest-Poster": tag[1]})
        assert first.status_code == 200, first.get_data(as_text=True)
    assert len(inngest.accepted) == (0 if logged_in else 1)


def test_hosts_own_form_parsing_is_left_alone(hosts: Callable[..., Flask]) -> None:
    """Our strict form parser is for our requests only: the host's stay lenient."""
    malformed = {
        "data": b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1",
        "content_type": "multipart/form-data; boundary=b",
    }
    client = hosts().test_client()

    assert client.post("/echo-form", **malformed).get_json() == {"fields": {}}
    assert_gateway_envelope(client.post("/api", **malformed), 400, "invalid_form")


def test_our_answers_carry_the_hosts_after_request_too(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    response = hosts().test_client().post("/api", json={"data": {}})

    assert response.status_code == 200
    assert response.headers["X-Host"] == "yes"  # the host's hooks still run on our path
    assert "Content-Security-Policy" not in response.headers


# -- a second host: its own serializer, under a prefix -----------------------------------------


def serialize_with_team(user: HostUser) -> dict[str, Any]:
    return {"id": f"u{user.id}", "team": user.team}


def test_custom_serializer_and_url_prefix(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = hosts(user_serializer=serialize_with_team, url_prefix="/hooks")
    client = app.test_client()
    log_in(client, "8")

    response = client.post("/hooks/api", json={"data": {"x": 1}})

    assert response.status_code == 200, response.get_data(as_text=True)
    assert only_event(inngest)["data"]["user"] == {"id": "u8", "team": "machines"}
    assert client.post("/api", json={}).get_data(as_text=True) == "<h1>Host: no such page</h1>"
    assert_gateway_envelope(client.get("/hooks/api"), 405, "method_not_allowed")


def test_form_post_redirects_to_the_configured_page(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    client = hosts(url_prefix="/hooks", redirect_to=lambda: "/thanks").test_client()

    response = client.post("/hooks/api", data={"name": "app/form.sent", "color": "blue"})

    assert response.status_code == 303
    assert response.headers["Location"] == "/thanks"
    assert only_event(inngest)["data"]["color"] == "blue"


def test_init_app_pattern(
    tmp_path: Path, host_config: dict[str, Any], inngest: InngestStandIn
) -> None:
    gateway = InngestGateway(url_prefix="/v1")  # made before any app, as in an app factory

    def create_host() -> Flask:
        app = make_host(tmp_path / "factory")
        app.config.update(host_config)
        gateway.init_app(app)
        return app

    app = create_host()
    try:
        response = app.test_client().post("/v1/api", json={"data": {"from": "factory"}})
        assert response.status_code == 200
        assert only_event(inngest)["data"]["from"] == "factory"
    finally:
        gateway_state(app).outbox_db.dispose()


def test_the_process_environment_is_not_read(
    hosts: Callable[..., Flask], inngest: InngestStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only app.config configures the extension: variables of the process, under the new names
    or the old ones, change nothing (a host maps its environment into app.config itself)."""
    monkeypatch.setenv("INNGEST_GATEWAY_API_DEFAULT_EVENT", "app/from.environment")
    monkeypatch.setenv("INNGEST_GATEWAY_API_ALLOWED_EVENTS", "app/*,env/*")
    monkeypatch.setenv("INNGEST_GATEWAY_DELIVERY_MODE", "carrier-pigeon")
    monkeypatch.setenv("INNGEST_GATEWAY_API_REQUIRE_LOGIN", "true")
    monkeypatch.setenv("INNGEST_GATEWAY_DELIVERY_MODE", "outbox")
    app = hosts(config={"INNGEST_GATEWAY_API_DEFAULT_EVENT": "app/from.config"})
    client = app.test_client()

    assert client.post("/api", json={"data": {}}).status_code == 200
    assert client.post("/api", json={"name": "env/x", "data": {}}).status_code == 403
    assert [event["name"] for event in inngest.accepted] == ["app/from.config"]
    settings = gateway_state(app).settings
    assert settings.api_allowed_events == ("app/*",)
    assert settings.api_require_login is False


def test_app_config_takes_python_values_as_a_host_writes_them(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """Lists, durations as timedelta and byte strings mean what they say, not their repr."""
    app = hosts(
        config={
            "INNGEST_GATEWAY_API_ALLOWED_EVENTS": ["app/*", "billing/*"],
            "INNGEST_GATEWAY_TRUSTED_ORIGINS": ("https://app.example",),
            "INNGEST_GATEWAY_SEND_TIMEOUT": timedelta(seconds=3),
            # Days, hours and a fraction: all of it, not the part past whole days, nor rounded.
            "INNGEST_GATEWAY_OUTBOX_MAX_AGE": timedelta(days=2, hours=3, milliseconds=250),
        }
    )
    client = app.test_client()

    assert client.post("/api", json={"name": "billing/paid", "data": {}}).status_code == 200
    assert client.post("/api", json={"name": "app/x", "data": {}}).status_code == 200
    refused = client.post("/api", json={"name": "other/x", "data": {}})
    assert refused.status_code == 403, refused.get_data(as_text=True)
    settings = gateway_state(app).settings
    assert settings.inngest_send_timeout == 3.0
    assert settings.outbox_max_age == 2 * 86400 + 3 * 3600 + 0.25
    assert settings.trusted_origins == ("https://app.example",)
    assert [event["name"] for event in inngest.accepted] == ["billing/paid", "app/x"]


def test_a_bad_setting_stops_the_mount(hosts: Callable[..., Flask]) -> None:
    from inngest_gateway.settings import ConfigError

    with pytest.raises(ConfigError, match="INNGEST_GATEWAY_DELIVERY_MODE"):
        hosts(config={"INNGEST_GATEWAY_DELIVERY_MODE": "carrier-pigeon"})


# -- the outbox, its deliverer and its commands on the host ------------------------------------

# Outbox mode, with this process's deliverer (the hosts' default config turns it off).
OUTBOX_DELIVERED = {
    "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
    "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": True,
}


def test_outbox_mode_is_delivered_by_the_deliverer(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = hosts(
        config={
            **OUTBOX_DELIVERED,
            "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.05",
            "TESTING": False,  # a test app's outbox is a private temporary file
        }
    )
    client = app.test_client()
    log_in(client, "7")

    response = client.post("/api", json={"name": "app/queued", "data": {}})

    assert response.status_code == 202, response.get_data(as_text=True)
    deadline = time.monotonic() + 10
    while not inngest.accepted and time.monotonic() < deadline:
        time.sleep(0.02)
    event = only_event(inngest)
    assert event["id"] == response.get_json()["ids"][0]
    assert event["data"]["user"]["email"] == "grace@example.com"
    # The outbox is a SQLite file in the host's instance folder, on the gateway's own engine.
    assert (Path(app.instance_path) / "inngest-gateway-outbox.db").is_file()


def test_cli_group_on_the_host(hosts: Callable[..., Flask], inngest: InngestStandIn) -> None:
    app = hosts(config={"INNGEST_GATEWAY_DELIVERY_MODE": "outbox"})
    runner = app.test_cli_runner()
    assert app.test_client().post("/api", json={"data": {}}).status_code == 202

    status = runner.invoke(args=["inngest-gateway", "outbox", "status"])
    assert status.exit_code == 0, status.output
    assert "pending: 1" in status.output
    assert inngest.received == []  # the command itself delivers nothing

    deliver = runner.invoke(args=["inngest-gateway", "outbox", "deliver", "--once"])
    assert deliver.exit_code == 0, deliver.output
    assert "handled 1 event(s)" in deliver.output
    assert len(inngest.accepted) == 1
    after = runner.invoke(args=["inngest-gateway", "outbox", "status"])
    assert "pending: 0" in after.output
    assert runner.invoke(args=["outbox", "status"]).exit_code != 0  # one group, one name


# -- the README's example ---------------------------------------------------------------------


def readme_example() -> str:
    """The Python example of the README's "Mount it in your Flask app" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Mount it in your Flask app", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's mount section has no Python example"
    # An app factory, with the gateway made unbound at module level and bound in it.
    assert "\ngateway = InngestGateway()" in blocks[0]
    assert "\ndef create_app(" in blocks[0] and "gateway.init_app(app)" in blocks[0]
    return str(blocks[0]) + "\napp = create_app()\n"


def test_cors_for_trusted_origins_on_our_path_only(hosts: Callable[..., Flask]) -> None:
    trusted = "https://app.example.com"
    client = hosts(config={"INNGEST_GATEWAY_TRUSTED_ORIGINS": trusted}).test_client()
    ours, theirs, stranger = trusted_origin_preflights(client, trusted)

    assert ours.headers["Access-Control-Allow-Origin"] == trusted
    assert ours.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Access-Control-Allow-Origin" not in theirs.headers
    assert "Access-Control-Allow-Origin" not in stranger.headers


def test_mounted_the_ts_window_comes_from_app_config_or_the_defaults(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """A timedelta of days, as a host writes it, counts whole: 2 days, not the hour past them."""
    hour, minute = 3600 * 1000, 60 * 1000
    configured = hosts(
        config={
            "INNGEST_GATEWAY_API_TS_MAX_AGE": timedelta(days=2, hours=1),
            "INNGEST_GATEWAY_API_TS_MAX_SKEW": "1h",
        }
    ).test_client()
    defaults = hosts().test_client()
    now = int(time.time() * 1000)

    accepted = configured.post("/api", json=[{"ts": now - 48 * hour}, {"ts": now + 59 * minute}])
    old = configured.post("/api", json={"ts": now - 50 * hour})
    ahead = configured.post("/api", json=[{"ts": now}, {"ts": now + 61 * minute}])
    default_old = defaults.post("/api", json={"ts": now - 8 * 24 * hour})
    default_ahead = defaults.post("/api", json={"ts": now + 10 * minute})
    default_ok = defaults.post("/api", json={"ts": now - 6 * 24 * hour})

    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    assert default_ok.status_code == 200, default_ok.get_data(as_text=True)
    for refused in (old, default_old, default_ahead):
        assert set(assert_gateway_envelope(refused, 422, "validation_failed")["errors"]) == {"ts"}
    assert list(assert_gateway_envelope(ahead, 422, "validation_failed")["errors"]) == ["1"]
    assert [e["ts"] for e in inngest.accepted] == [
        now - 48 * hour,
        now + 59 * minute,
        now - 6 * 24 * hour,
    ]


@pytest.mark.parametrize("prefix", ["", "/hooks"])
@pytest.mark.parametrize("origin", [None, TRUSTED, "https://evil.example"])
@pytest.mark.parametrize("kind", CORS_REQUESTS)
def test_mounted_the_answers_vary_by_origin_and_allow_only_a_trusted_one(
    hosts: Callable[..., Flask], kind: str, origin: str | None, prefix: str
) -> None:
    client = hosts(
        config={"INNGEST_GATEWAY_TRUSTED_ORIGINS": TRUSTED}, url_prefix=prefix or None
    ).test_client()

    response = cors_request(client, kind, origin, prefix)

    assert_cors_answer(response, origin, allowed=origin == TRUSTED)
    # The host's own pages are left alone.
    home = client.get("/", headers={} if origin is None else {"Origin": origin})
    assert "Origin" not in home.vary and "Access-Control-Allow-Origin" not in home.headers


def test_the_gateways_state_does_not_show_its_secrets(
    hosts: Callable[..., Flask], inngest: InngestStandIn, tmp_path: Path
) -> None:
    """A host that logs or prints its extensions must not leak a key, secret or database URL."""
    outbox = f"sqlite:///{tmp_path / 'outbox.db'}"  # a server's URL would hold a password
    app = hosts(config={"INNGEST_GATEWAY_OUTBOX_DATABASE_URL": outbox})
    shown = repr(app.extensions)

    assert inngest.event_key not in shown
    assert SECRET not in shown
    assert outbox not in shown


def test_a_host_with_its_own_api_blueprint(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """Hosts often have a blueprint named "api" already: ours must not collide with it."""
    app = hosts(mount=False)
    theirs = Blueprint("api", __name__, url_prefix="/v2")

    @theirs.get("/things")
    def things() -> dict[str, Any]:
        return {"things": []}

    app.register_blueprint(theirs)
    InngestGateway(app)
    client = app.test_client()

    assert client.get("/v2/things").get_json() == {"things": []}
    assert client.post("/api", json={"data": {}}).status_code == 200
    assert len(inngest.accepted) == 1


@pytest.mark.timeout(60)  # above the child's own wait (20 s)
def test_a_forked_worker_gets_its_own_connections_and_deliverer(
    hosts: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """As under gunicorn with preload: the app is built, and has used its outbox, in the master."""
    app = hosts(
        config={
            **OUTBOX_DELIVERED,
        }
    )
    state = gateway_state(app)
    assert outbox.status(state.outbox_db)["pending"] == 0  # the master's pool has a connection
    parents_pool = state.outbox_db.engine.pool
    parents_name = state.deliverer.name
    # gunicorn's master serves no request, so it runs no deliverer; neither does this test
    # process, which has served none: stopping it is a no-op kept as a guard, as forking under
    # a running thread would leave the child holding whatever lock that thread held.
    state.delivery.stop()

    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only, and never return
        code = 1
        try:
            fresh = state.outbox_db.engine.pool is not parents_pool  # never the parent's sockets
            answer = app.test_client().post("/api", json={"name": "app/child", "data": {}})
            # The stand-in's records live in the parent: here, watch the outbox empty.
            until = time.monotonic() + 20
            while (pending := outbox.status(state.outbox_db)["pending"]) and (
                time.monotonic() < until
            ):
                time.sleep(0.02)
            delivered = pending == 0
            # Claims are leased by name: siblings forked from one master must not share one.
            renamed = state.deliverer.name != parents_name
            # Each failure its own bit, so the parent can tell which.
            code = (
                (not fresh) * 4
                | (answer.status_code != 202) * 8
                | (not delivered) * 16
                | (not renamed) * 32
            )
        finally:
            os._exit(code)
    until = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < until:
        time.sleep(0.05)
    if waited[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child never finished")
    status = waited[1]

    failed = os.waitstatus_to_exitcode(status)
    assert failed == 0, {
        "kept the parent's pool": failed & 4,
        "post refused": failed & 8,
        "not delivered": failed & 16,
        "kept the parent's deliverer name": failed & 32,
        "crashed": failed & 1,
    }
    assert [event["name"] for event in inngest.accepted] == ["app/child"]
    assert state.outbox_db.engine.pool is parents_pool  # the master's own, untouched
    assert outbox.status(state.outbox_db)["pending"] == 0


# -- the browser client's files and tag ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mimetype", "content"),
    [
        ("inngest-gateway.js", "text/javascript", "root.InngestGateway = {"),
        ("inngest-gateway.mjs", "text/javascript", 'import "./inngest-gateway.js";'),
        ("inngest-gateway.d.ts", "application/typescript", "export declare class GatewayError"),
    ],
)
def test_the_browser_client_is_served_beside_the_api(
    hosts: Callable[..., Flask], name: str, mimetype: str, content: str
) -> None:
    client = hosts(url_prefix="/hooks").test_client()

    with client.get(f"/hooks/{name}") as response:
        assert response.status_code == 200
        assert response.mimetype == mimetype
        assert content in response.get_data(as_text=True)
        etag = response.headers["ETag"]
        assert response.headers["Cache-Control"] == "no-cache, max-age=0"  # revalidated
    with client.get(f"/hooks/{name}", headers={"If-None-Match": etag}) as again:
        assert again.status_code == 304
    assert client.get(f"/{name}").status_code == 404  # only under the gateway's prefix
    assert client.post(f"/hooks/{name}").status_code == 405
    assert client.get("/hooks/inngest-gateway.txt").status_code == 404


def test_the_script_tag_helper_configures_the_client_for_this_app(
    hosts: Callable[..., Flask],
) -> None:
    app = hosts(url_prefix="/hooks", config={"INNGEST_GATEWAY_API_MAX_BATCH": 25})

    with app.test_request_context("/"):
        plain = render_template_string("{{ inngest_gateway_script() }}")
        with_nonce = render_template_string(
            "{{ inngest_gateway_script(nonce=n, data_budget='5000') }}", n='a"b'
        )

    tag = r'data-poster="anonymous\.[A-Za-z0-9_-]{22}"'
    assert re.fullmatch(
        '<script src="/hooks/inngest-gateway.js" data-endpoint="/hooks/api" '
        f'data-max-batch="25" {tag} defer></script>',
        plain,
    )
    assert re.fullmatch(
        '<script src="/hooks/inngest-gateway.js" data-endpoint="/hooks/api" '
        f'data-max-batch="25" {tag} nonce="a&#34;b" data-budget="5000" '
        "defer></script>",
        with_nonce,
    )


def test_a_trusted_origin_may_load_the_module_across_origins(
    hosts: Callable[..., Flask],
) -> None:
    trusted = "https://app.example.com"
    client = hosts(config={"INNGEST_GATEWAY_TRUSTED_ORIGINS": trusted}).test_client()

    with client.get("/inngest-gateway.mjs", headers={"Origin": trusted}) as ours:
        assert ours.headers["Access-Control-Allow-Origin"] == trusted
    with client.get("/inngest-gateway.mjs", headers={"Origin": "https://evil.example"}) as other:
        assert "Access-Control-Allow-Origin" not in other.headers
