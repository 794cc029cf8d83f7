"""A host Flask app as a team runs it beside the service: its own users, logins and pages.

It knows nothing of the service: its users table (`host_users`, SQLite or PostgreSQL), its
Flask-Login with a `/login` form and `/logout`, its own error pages, a header and a cookie of
its own, and a page whose form and script post to `/api`, which nginx sends to the service.

    gunicorn 'tests.hostapp:create_host_app()'   # settings from HOST_* and SECRET_KEY

Settings (a mapping given to `create_host_app`, else the environment): `SECRET_KEY`,
`HOST_DATABASE_URL` (default: `host.db` in the instance folder), `HOST_API_URL` (where its
pages post; `/api`), `HOST_SESSION_COOKIE_NAME` (`session`).

`HOST_MOUNT_GATEWAY=true` (default: off) makes it mount `InngestGateway` itself, the way the
README's "Mount it in your Flask app" says, with the app-factory pattern: the module-level
`gateway`, bound in `create_host_app`. The gateway's settings then come from the same mapping
(or the environment) under their own names (`INNGEST_EVENT_KEY`, `INNGEST_GATEWAY_DELIVERY_MODE`,
...).

    flask --app 'tests.hostapp:create_host_app()' inngest-gateway outbox status
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template_string,
    request,
    session,
)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    update,
)
from werkzeug.security import check_password_hash, generate_password_hash

from inngest_gateway import InngestGateway
from inngest_gateway.settings import GATEWAY_SETTINGS
from tests.processes import BIN, Server, clean_env, free_port, launch

TABLE = "host_users"
HOST_HEADER = ("X-Host-App", "yes")
HOST_COOKIE = "host_pref"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)

# Unbound, as an app factory has it; `create_host_app` binds it when HOST_MOUNT_GATEWAY is set.
gateway = InngestGateway()

metadata = MetaData()
host_users = Table(
    TABLE,
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(254), unique=True, nullable=False),
    Column("name", String(200), nullable=False),
    Column("password_hash", String(256), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def engine_url(url: str) -> str:
    """PostgreSQL through psycopg 3, as the service uses it."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


class Account(UserMixin):  # type: ignore[misc]
    """A host user as Flask-Login sees it."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.id = row["id"]
        self.email = row["email"]
        self.name = row["name"]
        self.active = row["active"]

    @property
    def is_active(self) -> bool:
        return bool(self.active)


def _engine() -> Engine:
    engine: Engine = current_app.extensions["host_db"]
    return engine


def add_user(app: Flask, email: str, name: str, password: str, *, active: bool = True) -> int:
    """Create a host user; returns its id."""
    with app.extensions["host_db"].begin() as connection:
        result = connection.execute(
            insert(host_users).values(
                email=email,
                name=name,
                password_hash=generate_password_hash(password),
                active=active,
                created_at=datetime(2024, 5, 17, 9, 30, tzinfo=UTC),
            )
        )
        return int(result.inserted_primary_key[0])


def set_active(app: Flask, user_id: int, active: bool) -> None:
    """Enable or disable a host user, as the host's admin would."""
    with app.extensions["host_db"].begin() as connection:
        connection.execute(
            update(host_users).where(host_users.c.id == user_id).values(active=active)
        )


def drop_tables(url: str) -> None:
    """Remove the host's table, so a test starts from an empty database."""
    engine = create_engine(engine_url(url))
    metadata.drop_all(engine)
    engine.dispose()


def _find(**where: Any) -> Mapping[str, Any] | None:
    query = select(host_users)
    for column, value in where.items():
        query = query.where(host_users.c[column] == value)
    with _engine().connect() as connection:
        row = connection.execute(query).mappings().first()
    return row


def _safe_next(target: str | None) -> str:
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


def _csrf_token() -> str:
    token = session.get("csrf_token")
    if not isinstance(token, str):
        token = session["csrf_token"] = secrets.token_urlsafe(16)
    return token


def _check_csrf() -> None:
    sent = request.form.get("csrf_token", "")
    if not hmac.compare_digest(sent, session.get("csrf_token", "") or "-"):
        abort(400)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} · Host app</title>
<link rel="stylesheet" href="{{ url_for('static', filename='host.css') }}"></head>
<body><header>
{% if current_user.is_authenticated %}
  <span id="who">Logged in as {{ current_user.name }}</span>
  <form method="post" action="/logout"><input type="hidden" name="csrf_token" value="{{ csrf }}">
  <button id="logout">Log out</button></form>
{% else %}<a id="login-link" href="/login">Log in</a>{% endif %}
</header><main>{% block main %}{% endblock %}</main></body></html>"""

HOME = PAGE.replace(
    "{% block main %}{% endblock %}",
    """<h1>Send an event</h1>
<form id="html-form" method="post" action="{{ api_url }}">
  <input type="hidden" name="next" value="/sent">
  <label>Event name <input name="name" value="app/host.form"></label>
  <label>Message <input name="message" value="Hello from the host's form"></label>
  <button type="submit">Send with a form</button>
</form>
<form id="fetch-form" data-endpoint="{{ api_url }}">
  <label>Event name <input name="name" value="app/host.fetch"></label>
  <label>Message <input name="message" value="Hello from the host's fetch"></label>
  <button type="submit">Send with fetch</button>
</form>
<pre id="fetch-result" aria-live="polite"></pre>
<script src="{{ url_for('static', filename='host.js') }}" defer></script>""",
)

LOGIN = PAGE.replace(
    "{% block main %}{% endblock %}",
    """<h1>Log in</h1>{% if error %}<p id="error">{{ error }}</p>{% endif %}
<form id="login-form" method="post" action="/login">
  <input type="hidden" name="csrf_token" value="{{ csrf }}">
  <input type="hidden" name="next" value="{{ next }}">
  <label>E-mail <input name="email" type="email" value="{{ email }}" required></label>
  <label>Password <input name="password" type="password" required></label>
  <label><input name="remember" type="checkbox" value="on"> Remember me</label>
  <button type="submit" id="login-submit">Log in</button>
</form>""",
)

SENT = PAGE.replace("{% block main %}{% endblock %}", "<h1 id='sent'>Sent</h1>")
ERROR = PAGE.replace(
    "{% block main %}{% endblock %}", "<h1 id='host-error'>Host app: {{ message }}</h1>"
)


def _render(template: str, **context: Any) -> str:
    return render_template_string(template, csrf=_csrf_token(), **context)


def create_host_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The host app; settings from `config`, else from the environment."""
    given = dict(os.environ if config is None else config)
    app = Flask(__name__, static_folder="hoststatic", static_url_path="/static")
    secret = given.get("SECRET_KEY")
    if not secret:
        raise RuntimeError("the host app needs SECRET_KEY")
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_NAME=given.get("HOST_SESSION_COOKIE_NAME") or "session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
    )
    url = (
        given.get("HOST_DATABASE_URL") or f"sqlite:///{os.path.join(app.instance_path, 'host.db')}"
    )
    if url.startswith("sqlite:///"):
        os.makedirs(app.instance_path, exist_ok=True)
    engine = create_engine(engine_url(url), pool_pre_ping=True)
    metadata.create_all(engine)
    app.extensions["host_db"] = engine
    api_url = given.get("HOST_API_URL") or "/api"
    if str(given.get("HOST_MOUNT_GATEWAY", "")).lower() in ("1", "true", "yes", "on"):
        app.config.update({k: v for k, v in given.items() if k in GATEWAY_SETTINGS})
        gateway.init_app(app)

    login_manager = LoginManager(app)
    login_manager.login_view = "login"

    @login_manager.user_loader
    def load(user_id: str) -> Account | None:
        try:
            row = _find(id=int(user_id), active=True)
        except ValueError:
            return None
        return Account(row) if row is not None else None

    @app.get("/")
    def home() -> str:
        return _render(HOME, title="Home", api_url=api_url)

    @app.get("/sent")
    def sent() -> str:
        return _render(SENT, title="Sent")

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if request.method == "GET":
            return _render(
                LOGIN, title="Log in", next=_safe_next(request.args.get("next")), email=""
            )
        _check_csrf()
        email = request.form.get("email", "").strip().lower()
        row = _find(email=email)
        if (
            row is None
            or not row["active"]
            or not check_password_hash(row["password_hash"], request.form.get("password", ""))
        ):
            page = _render(
                LOGIN,
                title="Log in",
                next=_safe_next(request.form.get("next")),
                email=email,
                error="Wrong e-mail or password.",
            )
            return page, 401
        login_user(Account(row), remember=request.form.get("remember") == "on")
        return redirect(_safe_next(request.form.get("next")), 303)

    @app.post("/logout")
    def logout() -> Any:
        _check_csrf()
        logout_user()
        return redirect("/", 303)

    @app.get("/whoami")
    def whoami() -> Response:
        if not current_user.is_authenticated:
            return jsonify(user=None)
        return jsonify(user={"id": current_user.id, "email": current_user.email})

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("the host's own failure")

    @app.errorhandler(404)
    def not_found(_: Exception) -> tuple[str, int]:
        return _render(ERROR, title="Not found", message="page not found"), 404

    @app.errorhandler(500)
    def failed(_: Exception) -> tuple[str, int]:
        return _render(ERROR, title="Error", message="something went wrong"), 500

    @app.after_request
    def host_headers(response: Response) -> Response:
        response.headers[HOST_HEADER[0]] = HOST_HEADER[1]
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if HOST_COOKIE not in request.cookies:
            response.set_cookie(HOST_COOKIE, "compact", samesite="Lax", httponly=True)
        return response

    return app


# --- running it for real --------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
BESIDE_SITE = ROOT / "deploy" / "nginx-beside.conf"


def start_app(
    spec: str,
    directory: Path,
    env: Mapping[str, str],
    *,
    port: int | None = None,
    config_text: str = "# the defaults; the command line says the rest\n",
    extra_args: Sequence[str] = (),
) -> Server:
    """gunicorn serving a factory (`tests.hostapp:create_host_app()`) with 2 workers.

    It reads no gunicorn.conf.py: that one is the service's, with the service's hooks;
    `config_text` is its config file instead, `extra_args` more of its options.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = directory / "gunicorn.conf.py"
    config.write_text(config_text)
    return launch(
        [
            str(BIN / "gunicorn"),
            spec,
            "--config",
            str(config),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--worker-class",
            "gthread",
            "--threads",
            "2",
            "--graceful-timeout",
            "5",
            *extra_args,
        ],
        clean_env(directory) | dict(env),
        directory / "gunicorn.log",
        port,
    )


def beside_site(host_port: int, service_port: int) -> Callable[[int, int, Path], str]:
    """deploy/nginx-beside.conf as it is, for loopback ports, plus the same server over TLS."""

    def render(port: int, tls_port: int, directory: Path) -> str:
        site = BESIDE_SITE.read_text()
        for line in ("listen 80;", "server 127.0.0.1:5000;", "server 127.0.0.1:8000;"):
            assert line in site, line
        site = site.replace("server 127.0.0.1:5000;", f"server 127.0.0.1:{host_port};")
        site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{service_port};")
        server = site[site.index("server {") :]
        plain = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
        tls = server.replace(
            "listen 80;",
            f"listen 127.0.0.1:{tls_port} ssl;\n"
            f"    ssl_certificate {directory / 'cert.pem'};\n"
            f"    ssl_certificate_key {directory / 'key.pem'};",
        )
        return plain + "\n" + tls

    return render
