"""The gateway mounted in a host shaped like a real Flask app, every neighbour at once.

`create_app` is such a host: an app factory, Flask-SQLAlchemy users with hashed passwords and
its own login view, Flask-WTF's CSRFProtect, Flask-Limiter with a limit of its own, Talisman's
nonce CSP, its own `/api/...` blueprint and 404 page. The gateway is mounted under `/events`
with `init_app`, as an `extensions.py` would. Built without the gateway, the same factory is
the host as it was: its answers are the reference the mounted host must still give.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask, redirect, render_template_string, request, url_for
from flask.testing import FlaskClient
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, UserMixin, login_required, login_user
from flask_sqlalchemy import SQLAlchemy
from flask_talisman import Talisman
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from playwright.sync_api import Page
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.serving import make_server
from werkzeug.test import TestResponse
from wtforms import PasswordField, StringField

from inngest_gateway import InngestGateway
from inngest_gateway.state import gateway_state
from tests.browsers import console_errors
from tests.conftest import assert_envelope
from tests.standin import InngestStandIn

pytestmark = pytest.mark.timeout(120)

SECRET = "real-host-secret-0123456789abcdef0123"
EMAIL, NAME, PASSWORD = "grace@example.com", "Grace", "host password 1"
SAME_ORIGIN = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}


# -- the host app ---------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
gateway = InngestGateway(url_prefix="/events")


class User(db.Model, UserMixin):  # type: ignore[name-defined,misc]
    __tablename__ = "host_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(80))
    password_hash: Mapped[str] = mapped_column(String(256))


class LoginForm(FlaskForm):
    email = StringField()
    password = PasswordField()


class NoteForm(FlaskForm):
    text = StringField()


LOGIN_PAGE = """<h1>Sign in</h1>
<form method="post">{{ form.csrf_token }}{{ form.email }}{{ form.password }}
<button type="submit">Sign in</button></form>
{% if failed %}<p>Wrong e-mail or password</p>{% endif %}"""

NOTIFY_PAGE = """<h1>Tell the team</h1>{{ inngest_gateway_script() }}
<form id="notify" method="post" action="{{ url_for('inngest_gateway.post_events') }}">
<input type="hidden" name="name" value="app/form.sent">
<input type="hidden" name="next" value="/notify?sent=1">
<input name="message"><button type="submit">Send</button></form>"""


def create_app(config: Mapping[str, Any], *, instance: Path, mount_gateway: bool = True) -> Flask:
    """The host's app factory; `mount_gateway=False` is the host before it adopted the gateway."""
    app = Flask("realhost", instance_path=str(instance))
    app.config.update(
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{instance / 'host.db'}",
        RATELIMIT_STORAGE_URI="memory://",
    )
    app.config.update(config)

    db.init_app(app)
    login_manager = LoginManager(app)
    login_manager.login_view = "login"

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        return db.session.get(User, int(user_id))

    CSRFProtect(app)
    limiter = Limiter(get_remote_address, app=app)
    app.extensions["host_limiter"] = limiter  # Flask-Limiter's decorators hold it weakly
    Talisman(
        app,
        force_https=False,
        content_security_policy={"default-src": "'self'", "script-src": "'self'"},
        content_security_policy_nonce_in=["script-src"],
    )

    @app.get("/")
    def home() -> Any:
        response = app.make_response(render_template_string("<h1>Home</h1>"))
        response.set_cookie("theme", "light", samesite="Lax")
        return response

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        form = LoginForm()
        failed = False
        if form.validate_on_submit():
            user = db.session.scalar(db.select(User).filter_by(email=form.email.data))
            if user is not None and check_password_hash(user.password_hash, form.password.data):
                login_user(user)
                target = request.args.get("next", "")
                return redirect(target if target.startswith("/") else url_for("home"))
            failed = True
        return render_template_string(LOGIN_PAGE, form=form, failed=failed)

    @app.route("/notes", methods=["GET", "POST"])
    @login_required
    def notes() -> str:
        form = NoteForm()
        if form.validate_on_submit():
            return f"saved {form.text.data}"
        return render_template_string(
            '<form method="post">{{ form.csrf_token }}{{ form.text }}</form>', form=form
        )

    @app.errorhandler(404)
    def not_found(_error: Exception) -> tuple[str, int]:
        return "<h1>Host: nothing here</h1>", 404

    @app.after_request
    def tag(response: Any) -> Any:
        response.headers["X-Host-App"] = "realhost"
        return response

    api = Blueprint("host_api", __name__, url_prefix="/api")

    @api.get("/items")
    @limiter.limit("2 per minute")
    def items() -> dict[str, Any]:
        return {"items": ["kettle", "teapot"]}

    app.register_blueprint(api)

    if mount_gateway:
        gateway.init_app(app)

        @app.get("/notify")
        @login_required
        def notify() -> str:
            return render_template_string(NOTIFY_PAGE)

    with app.app_context():
        db.create_all()
    return app


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def gateway_config(inngest: InngestStandIn) -> dict[str, Any]:
    return {
        "TESTING": True,
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "INNGEST_GATEWAY_SUPPRESS_SEND": False,
        "INNGEST_GATEWAY_DELIVERY_MODE": "sync",
        "INNGEST_GATEWAY_SEND_TIMEOUT": 5,
        "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": False,
    }


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Callable[..., tuple[Flask, int]]]:
    """Builds hosts with create_app, each with Grace in its users; yields (app, her id)."""
    made: list[Flask] = []

    def build(config: Mapping[str, Any], *, mount_gateway: bool = True) -> tuple[Flask, int]:
        instance = tmp_path / f"instance-{len(made)}"
        instance.mkdir()
        app = create_app(config, instance=instance, mount_gateway=mount_gateway)
        made.append(app)
        with app.app_context():
            # An earlier user first, so her key is not the 1 a careless default would give.
            for email, name in (("first@example.com", "First"), (EMAIL, NAME)):
                db.session.add(
                    User(email=email, name=name, password_hash=generate_password_hash(PASSWORD))
                )
            db.session.commit()
            user_id = db.session.scalar(db.select(User.id).filter_by(email=EMAIL))
        assert user_id is not None
        return app, user_id

    yield build
    for app in made:
        if "inngest_gateway" in app.extensions:
            gateway_state(app).outbox_db.dispose()
        with app.app_context():
            db.engine.dispose()


def csrf_token(page: str) -> str:
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def log_in(client: FlaskClient) -> TestResponse:
    token = csrf_token(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token})


def _normalized(response: TestResponse) -> dict[str, Any]:
    """What a person or a browser sees of an answer, with per-request randomness blanked out:
    CSP nonces, CSRF tokens, the session cookie's signed value, the date."""
    body = re.sub(r'value="[^"]{20,}"', 'value="TOKEN"', response.get_data(as_text=True))
    headers: dict[str, list[str]] = {}
    for name, value in response.headers.items():
        if name == "Date":
            continue
        value = re.sub(r"'nonce-[^']+'", "'nonce-N'", value)
        if name == "Set-Cookie":
            value = re.sub(r"^session=[^;]*", "session=V", value)
        headers.setdefault(name, []).append(value)
    return {"status": response.status_code, "body": body, "headers": headers}


def _visit(app: Flask) -> list[dict[str, Any]]:
    """The host's own tour: pages, its API and its limit, its 404, its login, a CSRF refusal."""
    client = app.test_client()
    answers = [client.get("/"), client.get("/login"), client.get("/notes")]
    answers += [client.get("/api/items") for _ in range(3)]  # its own limit: 2 per minute
    answers += [client.get("/nope"), client.post("/api/items", json={}), client.get("/events/x")]
    answers.append(
        client.post("/login", data={"email": EMAIL, "password": PASSWORD})  # no token
    )
    answers.append(log_in(client))
    answers += [client.get("/notes"), client.post("/notes", data={"text": "hi"})]
    token = csrf_token(answers[-2].get_data(as_text=True))
    answers.append(client.post("/notes", data={"text": "hi", "csrf_token": token}))
    return [_normalized(answer) for answer in answers]


# -- the tests ------------------------------------------------------------------------------


def test_the_hosts_pages_errors_headers_cookies_and_limits_are_unchanged(
    hosts: Callable[..., tuple[Flask, int]], gateway_config: dict[str, Any]
) -> None:
    before, _ = hosts(gateway_config, mount_gateway=False)
    after, _ = hosts(gateway_config)

    reference, mounted = _visit(before), _visit(after)

    assert mounted == reference
    # The reference is the host at work, not a tour of errors.
    statuses = [answer["status"] for answer in reference]
    assert statuses == [200, 200, 302, 200, 200, 429, 404, 405, 404, 400, 302, 200, 400, 200]
    assert reference[0]["headers"]["Set-Cookie"] == ["theme=light; Path=/; SameSite=Lax"]
    assert reference[3]["body"].strip() == '{"items":["kettle","teapot"]}'
    assert reference[6]["body"] == "<h1>Host: nothing here</h1>"
    assert reference[-1]["body"] == "saved hi"
    for answer in reference:
        assert answer["headers"]["X-Host-App"] == ["realhost"]
        assert answer["headers"]["Content-Security-Policy"][0].startswith("default-src 'self'")
    assert "'nonce-N'" in reference[0]["headers"]["Content-Security-Policy"][0]
    # The mounted host serves the gateway beside them.
    assert_envelope(after.test_client().get("/events/api"), 405, "method_not_allowed")


@pytest.fixture
def served(
    hosts: Callable[..., tuple[Flask, int]], gateway_config: dict[str, Any]
) -> Iterator[tuple[str, int]]:
    """The mounted host on a real HTTP server on a loopback port: (its URL, Grace's id)."""
    app, user_id = hosts(gateway_config)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", user_id
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.mark.slow
def test_a_logged_in_browser_sends_as_the_hosts_user(
    served: tuple[str, int], page: Page, inngest: InngestStandIn
) -> None:
    url, user_id = served
    errors = console_errors(page)

    # The host's own login: Flask-Login sends the browser to its login_view and back.
    page.goto(f"{url}/notify")
    assert page.url == f"{url}/login?next=%2Fnotify"
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/notify")
    page.wait_for_load_state("load")  # the client's deferred script has run under the CSP
    assert page.evaluate("typeof InngestGateway") == "object"

    fetched = page.evaluate(
        """async () => {
            const answer = await fetch('/events/api', {
                method: 'POST',
                headers: {'Content-Type': 'application/json'},
                body: JSON.stringify({name: 'app/fetch.sent', data: {via: 'fetch'}}),
            });
            return [answer.status, await answer.json()];
        }"""
    )
    assert fetched[0] == 200, fetched

    page.fill("input[name=message]", "from the form")
    page.click("#notify button[type=submit]")
    page.wait_for_url(f"{url}/notify?sent=1")

    ids = page.evaluate("() => InngestGateway.send('app/client.sent', {via: 'client'})")
    assert isinstance(ids, list) and len(ids) == 1, ids
    assert errors == []  # the client loaded under the host's CSP; nothing failed on the page

    # The host's own CSRF-protected form still refuses a post without its token.
    refused = page.evaluate(
        """async () => (await fetch('/notes', {
            method: 'POST', body: new URLSearchParams({text: 'no token'}),
        })).status"""
    )
    assert refused == 400

    events = {event["name"]: event["data"] for event in inngest.accepted}
    assert set(events) == {"app/fetch.sent", "app/form.sent", "app/client.sent"}
    for data in events.values():
        assert data["user"] == {"id": user_id, "email": EMAIL, "name": NAME}
    assert events["app/fetch.sent"]["via"] == "fetch"
    assert events["app/form.sent"]["message"] == "from the form"
    assert events["app/client.sent"]["via"] == "client"


def test_the_gateways_limit_holds_while_flask_limiter_is_off(
    hosts: Callable[..., tuple[Flask, int]],
    gateway_config: dict[str, Any],
    inngest: InngestStandIn,
) -> None:
    app, user_id = hosts(
        {
            **gateway_config,
            "RATELIMIT_ENABLED": False,
            "INNGEST_GATEWAY_RATELIMIT_API": "3 per minute",
        }
    )
    client = app.test_client()
    assert log_in(client).status_code == 302

    answers = [
        client.post("/events/api", json={"name": "app/note"}, headers=SAME_ORIGIN) for _ in range(4)
    ]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert_envelope(answers[-1], 429, "rate_limited")
    assert [event["data"]["user"]["id"] for event in inngest.accepted] == [user_id] * 3
    # Flask-Limiter is off, as the host asked: its 2-per-minute route counts nothing.
    assert [client.get("/api/items").status_code for _ in range(3)] == [200, 200, 200]
