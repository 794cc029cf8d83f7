"""The gateway beside the extensions Flask apps already run, each set up as its docs say."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cachelib import FileSystemCache
from flask import Flask, render_template_string
from flask_cors import CORS
from flask_login import LoginManager, UserMixin, login_user
from flask_session import Session
from flask_talisman import Talisman
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from playwright.sync_api import Page, Route
from wtforms import StringField

from inngest_gateway import InngestGateway
from inngest_gateway.state import gateway_state
from tests.conftest import assert_envelope
from tests.standin import InngestStandIn

SECRET = "host-secret-0123456789abcdef0123456789"
HOST = "http://localhost"


class Member(UserMixin):
    def __init__(self, user_id: str, email: str) -> None:
        self.id, self.email = user_id, email


MEMBERS = {"3": Member("3", "ada@example.com")}


class NoteForm(FlaskForm):
    text = StringField()


def host_with_csrf_protect(instance: Path, config: dict[str, Any], *, csrf_first: bool) -> Flask:
    """A host with Flask-WTF's CSRFProtect on every post, bound before or after the gateway."""
    app = Flask("host", instance_path=str(instance))
    app.config.update(SECRET_KEY=SECRET, **config)
    login = LoginManager(app)
    login.user_loader(MEMBERS.get)
    csrf = CSRFProtect()
    if csrf_first:
        csrf.init_app(app)
    InngestGateway(app, url_prefix="/events")
    if not csrf_first:
        csrf.init_app(app)

    @app.get("/login/<user_id>")
    def log_in(user_id: str) -> str:
        login_user(MEMBERS[user_id])
        return "in"

    @app.route("/notes", methods=["GET", "POST"])
    def notes() -> str:
        form = NoteForm()
        if form.validate_on_submit():
            return f"saved {form.text.data}"
        return render_template_string(
            '<form method="post">{{ form.csrf_token }}{{ form.text }}</form>', form=form
        )

    return app


@pytest.fixture
def make_host(tmp_path: Path, inngest: InngestStandIn) -> Iterator[Callable[..., Flask]]:
    config = {
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "INNGEST_GATEWAY_SEND_TIMEOUT": 2,
        "INNGEST_GATEWAY_DELIVERY_MODE": "sync",
        "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": False,
    }
    made: list[Flask] = []

    def factory(**kwargs: Any) -> Flask:
        app = host_with_csrf_protect(tmp_path / f"instance-{len(made)}", config, **kwargs)
        made.append(app)
        return app

    yield factory

    for app in made:
        gateway_state(app).outbox_db.dispose()


@pytest.mark.parametrize("csrf_first", [True, False], ids=["csrf-first", "gateway-first"])
def test_flask_wtf_csrf_protect_leaves_the_gateways_posts_to_the_gateway(
    make_host: Callable[..., Flask], inngest: InngestStandIn, csrf_first: bool
) -> None:
    app = make_host(csrf_first=csrf_first)
    client = app.test_client()
    assert client.get("/login/3").status_code == 200
    same_origin = {"Origin": HOST, "Sec-Fetch-Site": "same-origin"}

    json_post = client.post("/events/api", json={"name": "app/note"}, headers=same_origin)
    assert json_post.status_code == 200, json_post.get_data(as_text=True)
    form_post = client.post(
        "/events/api",
        data={"name": "app/form"},
        headers={**same_origin, "Accept": "application/json"},
    )
    assert form_post.status_code == 200, form_post.get_data(as_text=True)
    users = [e["data"]["user"]["id"] for r in inngest.received for e in r.events]
    assert users == ["3", "3"]

    # The gateway's own check still refuses another site, in its own envelope.
    cross = client.post(
        "/events/api",
        json={"name": "app/note"},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert_envelope(cross, 403, cross.get_json()["code"])
    assert len(inngest.received) == 2

    # The host's own forms are protected as before.
    page = client.get("/notes").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token, page
    assert client.post("/notes", data={"text": "hi"}).status_code == 400
    saved = client.post("/notes", data={"text": "hi", "csrf_token": token.group(1)})
    assert saved.get_data(as_text=True) == "saved hi"
    # Other methods on the gateway's path get its JSON 405, not CSRFProtect's 400.
    assert_envelope(
        client.put("/events/api", json={}, headers=same_origin), 405, "method_not_allowed"
    )


def plain_host(instance: Path, config: dict[str, Any]) -> Flask:
    app = Flask("host", instance_path=str(instance))
    app.config.update(SECRET_KEY=SECRET, **config)
    return app


@pytest.fixture
def host_config(inngest: InngestStandIn) -> dict[str, Any]:
    return {
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "INNGEST_GATEWAY_DELIVERY_MODE": "sync",
        "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": False,
    }


def test_a_second_init_app_on_one_app_is_a_clear_error(
    tmp_path: Path, host_config: dict[str, Any]
) -> None:
    app = plain_host(tmp_path, host_config)
    gateway = InngestGateway(app)
    try:
        with pytest.raises(RuntimeError, match="already set up on this app"):
            gateway.init_app(app)
        with pytest.raises(RuntimeError, match="already set up on this app"):
            InngestGateway(app, url_prefix="/other")
    finally:
        gateway_state(app).outbox_db.dispose()


@pytest.mark.parametrize(
    ("host_rule", "kwargs", "clash"),
    [
        ("/api", {}, "/api"),
        ("/hooks/api", {"url_prefix": "/hooks"}, "/hooks/api"),
        ("/events", {"path": "/events"}, "/events"),
    ],
)
def test_mounting_on_a_path_the_host_serves_is_refused(
    tmp_path: Path, host_config: dict[str, Any], host_rule: str, kwargs: Any, clash: str
) -> None:
    app = plain_host(tmp_path, host_config)
    app.add_url_rule(host_rule, "host_view", lambda: "the host's", methods=["GET"])
    with pytest.raises(RuntimeError) as raised:
        InngestGateway(app, **kwargs)
    message = str(raised.value)
    assert f"cannot serve {clash}" in message and "GET -> host_view" in message
    assert "url_prefix=" in message
    assert "inngest_gateway" not in app.extensions and not app.blueprints
    # Beside it, under its own prefix, it mounts.
    InngestGateway(app, url_prefix="/gateway")
    try:
        assert app.test_client().get(host_rule).get_data(as_text=True) == "the host's"
    finally:
        gateway_state(app).outbox_db.dispose()


def test_the_gateways_errors_stay_its_envelope_whatever_the_host_handles(
    tmp_path: Path, host_config: dict[str, Any]
) -> None:
    """Handlers a host registers by status code are found before any handler registered by
    class; on the gateway's path its own still answer."""
    app = plain_host(tmp_path, {**host_config, "INNGEST_GATEWAY_API_MAX_BODY_BYTES": 1024})
    for code in (400, 405, 413, 415, 422, 500):
        app.register_error_handler(code, lambda exc, code=code: (f"host {code}", code))
    app.add_url_rule("/home", "home", lambda: "home")
    InngestGateway(app)
    client = app.test_client()
    try:
        headers = {"Origin": HOST, "Sec-Fetch-Site": "same-origin"}
        assert_envelope(client.get("/api"), 405, "method_not_allowed")
        assert_envelope(
            client.post("/api", data=b"{", headers=headers, content_type="application/json"),
            400,
            "invalid_json",
        )
        assert_envelope(
            client.post("/api", data=b"x" * 2048, headers=headers, content_type="application/json"),
            413,
            "payload_too_large",
        )
        assert_envelope(
            client.post("/api", data=b"x", headers=headers, content_type="text/plain"),
            415,
            "unsupported_media_type",
        )
        # The host's own paths keep the host's handlers.
        assert client.put("/home").get_data(as_text=True) == "host 405"
    finally:
        gateway_state(app).outbox_db.dispose()


def host_with_flask_limiter(instance: Path, config: dict[str, Any], **limiter: Any) -> Flask:
    """A host with Flask-Limiter set up as its docs say: its own `RATELIMIT_*` config, default
    limits and a limit on one of its routes."""
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    app = Flask("host", instance_path=str(instance))
    app.config.update(SECRET_KEY=SECRET, RATELIMIT_STORAGE_URI="memory://", **config)
    login = LoginManager(app)
    login.user_loader(MEMBERS.get)
    limits = Limiter(get_remote_address, app=app, **limiter)

    @app.get("/login/<user_id>")
    @limits.exempt
    def log_in(user_id: str) -> str:
        login_user(MEMBERS[user_id])
        return "in"

    @app.get("/search")
    @limits.limit("2 per minute")
    def search() -> str:
        return "results"

    InngestGateway(app, url_prefix="/events")
    app.extensions["test_limiter"] = limits
    return app


GATEWAY_LIMITS = {
    "INNGEST_GATEWAY_RATELIMIT_API": "3 per minute",
    "INNGEST_GATEWAY_RATELIMIT_KEY_PREFIX": "gateway-neighbour",
}


def _post_events(app: Flask, count: int) -> list[int]:
    client = app.test_client()
    assert client.get("/login/3").status_code == 200
    headers = {"Origin": HOST, "Sec-Fetch-Site": "same-origin"}
    return [
        client.post("/events/api", json={"name": "app/note"}, headers=headers).status_code
        for _ in range(count)
    ]


def test_flask_limiter_turned_off_by_its_own_setting_leaves_the_gateways_limits_on(
    tmp_path: Path, host_config: dict[str, Any], inngest: InngestStandIn
) -> None:
    """`RATELIMIT_ENABLED = False` is Flask-Limiter's key: it turns Flask-Limiter off, not
    the gateway's limits."""
    app = host_with_flask_limiter(
        tmp_path, {**host_config, **GATEWAY_LIMITS, "RATELIMIT_ENABLED": False}
    )
    try:
        assert _post_events(app, 4) == [200, 200, 200, 429]
        assert len(inngest.received) == 3
        # Flask-Limiter is off, as its host asked: its limit on the host's route counts nothing.
        client = app.test_client()
        assert [client.get("/search").status_code for _ in range(3)] == [200, 200, 200]
    finally:
        gateway_state(app).outbox_db.dispose()


# -- Flask-Talisman, Flask-CORS and Flask-Session, each as its docs set it up --------------------


def test_talismans_csp_nonce_is_on_the_script_tag(
    tmp_path: Path, host_config: dict[str, Any]
) -> None:
    app = plain_host(tmp_path, host_config)
    Talisman(
        app,
        force_https=False,
        content_security_policy={"default-src": "'self'", "script-src": "'self'"},
        content_security_policy_nonce_in=["script-src"],
    )
    InngestGateway(app, url_prefix="/events")
    app.add_url_rule(
        "/page",
        "page",
        lambda: render_template_string("<main>page</main>{{ inngest_gateway_script() }}"),
    )
    app.add_url_rule(
        "/explicit",
        "explicit",
        lambda: render_template_string("{{ inngest_gateway_script(nonce=csp_nonce()) }}"),
    )
    client = app.test_client()
    try:
        for path in ("/page", "/explicit"):
            response = client.get(path)
            policy = response.headers["Content-Security-Policy"]
            header_nonce = re.search(r"script-src [^;]*'nonce-([^']+)'", policy)
            assert header_nonce, policy
            tags = re.findall(r"<script [^>]*>", response.get_data(as_text=True))
            assert len(tags) == 1 and tags[0].count("nonce=") == 1, tags
            assert f'nonce="{header_nonce[1]}"' in tags[0]
            assert 'src="/events/inngest-gateway.js"' in tags[0]  # 'self' allows it too
        # Each page its own nonce.
        policies = {client.get("/page").headers["Content-Security-Policy"] for _ in range(2)}
        assert len(policies) == 2
    finally:
        gateway_state(app).outbox_db.dispose()


def test_a_page_without_a_csp_nonce_gets_a_tag_without_one(
    tmp_path: Path, host_config: dict[str, Any]
) -> None:
    app = plain_host(tmp_path, host_config)
    InngestGateway(app)
    try:
        with app.test_request_context("/"):
            tag = render_template_string("{{ inngest_gateway_script() }}")
        assert "nonce" not in tag
    finally:
        gateway_state(app).outbox_db.dispose()


@pytest.mark.parametrize("cors_first", [True, False], ids=["cors-first", "gateway-first"])
def test_flask_cors_app_wide_leaves_the_gateways_own_cors_rules_on_its_path(
    tmp_path: Path, host_config: dict[str, Any], inngest: InngestStandIn, cors_first: bool
) -> None:
    app = plain_host(
        tmp_path, {**host_config, "INNGEST_GATEWAY_TRUSTED_ORIGINS": "https://app.example"}
    )
    app.add_url_rule("/things", "things", lambda: {"things": []})
    if cors_first:
        CORS(app)
    InngestGateway(app)
    if not cors_first:
        CORS(app)
    client = app.test_client()
    try:
        trusted = client.post(
            "/api", json={"name": "app/x"}, headers={"Origin": "https://app.example"}
        )
        assert trusted.status_code == 200, trusted.get_data(as_text=True)
        assert trusted.headers.getlist("Access-Control-Allow-Origin") == ["https://app.example"]
        assert trusted.headers["Access-Control-Allow-Credentials"] == "true"

        # Another origin: the gateway's own check refuses it, whatever CORS(app) allows; the
        # answer never lets a page read it with the user's cookies.
        evil = {"Origin": "https://evil.example"}
        refused = client.post("/api", json={"name": "app/x"}, headers=evil)
        assert_envelope(refused, 403, "cross_site_request")
        assert "Access-Control-Allow-Credentials" not in refused.headers
        preflight = client.options(
            "/api", headers={**evil, "Access-Control-Request-Method": "POST"}
        )
        assert "Access-Control-Allow-Credentials" not in preflight.headers
        assert len(inngest.accepted) == 1

        # The host's own routes get CORS(app) as the host configured it.
        things = client.get("/things", headers=evil)
        assert things.headers["Access-Control-Allow-Origin"] in ("*", "https://evil.example")
    finally:
        gateway_state(app).outbox_db.dispose()


def test_flask_session_server_side_sessions_name_the_user(
    tmp_path: Path, host_config: dict[str, Any], inngest: InngestStandIn
) -> None:
    app = plain_host(
        tmp_path,
        {
            **host_config,
            "SESSION_TYPE": "cachelib",
            "SESSION_CACHELIB": FileSystemCache(str(tmp_path / "sessions"), threshold=100),
        },
    )
    Session(app)
    login = LoginManager(app)
    login.user_loader(MEMBERS.get)
    app.add_url_rule(
        "/login/<user_id>", "log_in", lambda user_id: str(login_user(MEMBERS[user_id]))
    )
    InngestGateway(app)
    client = app.test_client()
    try:
        assert client.get("/login/3").status_code == 200
        cookie = client.get_cookie("session")
        assert cookie is not None and "_user_id" not in cookie.value  # an id, not the data

        logged_in = client.post("/api", json={"name": "app/x", "id": "k-1"})
        again = client.post("/api", json={"name": "app/x", "id": "k-1"})
        anonymous = app.test_client().post("/api", json={"name": "app/x"})

        assert logged_in.status_code == again.status_code == anonymous.status_code == 200
        assert logged_in.get_json()["ids"] == again.get_json()["ids"]
        users = [event["data"]["user"] for event in inngest.accepted]
        assert users == [{"id": "3", "email": "ada@example.com"}] * 2 + [None]
    finally:
        gateway_state(app).outbox_db.dispose()


def test_flask_limiter_and_the_gateway_count_each_their_own(
    tmp_path: Path, host_config: dict[str, Any], inngest: InngestStandIn
) -> None:
    """Flask-Limiter on, with its own storage, prefix and limits: each keeps its own counts.
    Its app-wide default limits apply to every blueprint, the gateway's too, until the host
    exempts it as Flask-Limiter's docs show for any blueprint."""
    config = {**host_config, **GATEWAY_LIMITS, "RATELIMIT_KEY_PREFIX": "host"}
    app = host_with_flask_limiter(tmp_path / "a", config)
    try:
        client = app.test_client()
        assert [client.get("/search").status_code for _ in range(3)] == [200, 200, 429]
        # The gateway's limit is its own, whatever Flask-Limiter's keys say.
        assert _post_events(app, 4) == [200, 200, 200, 429]
    finally:
        gateway_state(app).outbox_db.dispose()

    # The host's default limits also count the gateway's posts, like any route of the app...
    limited = host_with_flask_limiter(tmp_path / "b", host_config, default_limits=["2 per minute"])
    try:
        assert _post_events(limited, 3) == [200, 200, 429]
        assert "X-RateLimit-Limit" not in limited.test_client().get("/login/3").headers
    finally:
        gateway_state(limited).outbox_db.dispose()

    # ...until the host exempts the gateway's blueprint, as the README shows.
    exempted = host_with_flask_limiter(tmp_path / "c", host_config, default_limits=["2 per minute"])
    exempted.extensions["test_limiter"].exempt(exempted.blueprints["inngest_gateway"])
    try:
        assert _post_events(exempted, 4) == [200, 200, 200, 200]
    finally:
        gateway_state(exempted).outbox_db.dispose()


def test_the_script_loads_in_chromium_under_talismans_nonce_only_csp(
    tmp_path: Path, host_config: dict[str, Any], page: Page
) -> None:
    """A CSP whose script-src allows no host, only the page's nonce: the tag's nonce is what
    lets the client load (a tag without it is blocked)."""
    app = plain_host(tmp_path, host_config)
    Talisman(
        app,
        force_https=False,
        content_security_policy={"default-src": "'self'", "script-src": "https://cdn.invalid"},
        content_security_policy_nonce_in=["script-src"],
    )
    InngestGateway(app)
    app.add_url_rule(
        "/page", "page", lambda: render_template_string("{{ inngest_gateway_script() }}")
    )
    app.add_url_rule(
        "/no-nonce", "no_nonce", lambda: '<script src="/inngest-gateway.js" defer></script>'
    )
    client = app.test_client()

    def from_app(route: Route) -> None:
        url = urlsplit(route.request.url)
        answer = client.get(url.path)
        body = answer.get_data()
        answer.close()  # the client's file is streamed
        route.fulfill(status=answer.status_code, headers=dict(answer.headers), body=body)

    page.context.route("http://talisman.test/**", from_app)
    try:
        page.goto("http://talisman.test/page")
        page.wait_for_load_state("load")  # after deferred scripts have run
        assert page.evaluate("typeof InngestGateway") == "object"
        page.goto("http://talisman.test/no-nonce")
        page.wait_for_load_state("load")
        assert page.evaluate("typeof InngestGateway") == "undefined"
    finally:
        gateway_state(app).outbox_db.dispose()
