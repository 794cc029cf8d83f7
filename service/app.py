"""The standalone service: a small host app, built from named steps, that mounts the gateway.

It brings what a host app would: its users and login pages, request ids and logging,
security headers, proxy handling, JSON error pages, health checks, metrics and docs; the
`POST /api` itself is `InngestGateway`, mounted as any host app mounts it.

With `IDENTITY=flask-session` it runs beside another Flask app instead: the user comes from
that app's session cookie and users table (`identity`), and the service has no users, login
pages or demo pages of its own; it serves `/api`, health checks, metrics and docs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import click
from flask import Flask, url_for
from sqlalchemy.exc import IntegrityError

from inngest_gateway import InngestGateway, errors, payload
from inngest_gateway.db import database_url
from inngest_gateway.settings import Settings
from inngest_gateway.state import gateway_state

from . import auth, db, health, identity, logs, metrics, openapi, pages, security, users
from . import settings as service_settings
from .environment import environment
from .identity import IdentitySettings
from .settings import ServiceSettings, instance_secret, load_all


def create_app(env: Mapping[str, str] | None = None, *, instance_path: str | None = None) -> Flask:
    """Build the service; settings come from `env`, else from the environment and `.env`.

    The extension's settings and the service's own are read by the same names they have in
    app.config (docs/settings.md); a name renamed since is refused, naming the new one.
    """
    app = Flask(__name__, instance_path=instance_path)
    source = environment() if env is None else env
    settings, own = load_all(source)
    id_settings = identity.load_identity_settings(source)
    configure_app(app, settings, own)
    configure_logger(own, settings, app.config["SECRET_KEY"])
    register_extensions(app, settings, own, id_settings)
    register_blueprints(app, id_settings)
    register_errorhandlers(app)
    register_commands(app, id_settings)
    if settings.inngest_dev and own.create_demo_user and not id_settings.flask_session:
        create_demo_user(app)
    return app


def configure_app(app: Flask, settings: Settings, own: ServiceSettings) -> None:
    """Flask's own settings, derived from ours."""
    secure = not settings.inngest_dev
    app.config.update(
        SECRET_KEY=own.secret_key or instance_secret(app.instance_path),
        MAX_CONTENT_LENGTH=settings.api_max_body_bytes,
        MAX_FORM_MEMORY_SIZE=settings.api_max_body_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=secure,
    )


def configure_logger(own: ServiceSettings, settings: Settings, secret_key: str) -> None:
    """Log lines carry request ids, and never the event key or the session secret."""
    secrets: tuple[str, ...] = (secret_key,)
    key = settings.inngest_event_key
    if key is not None and key != "NO_EVENT_KEY_SET":
        secrets += (key,)
    logs.configure_logging(own.log_level, secrets, json_lines=own.log_format == "json")


def _sent_page() -> str:
    return url_for("pages.sent")


def register_extensions(
    app: Flask, settings: Settings, own: ServiceSettings, id_settings: IdentitySettings
) -> None:
    """Bind the extensions and our modules that need the app; mount the gateway.

    Who is posting comes from the service's own logins, or (IDENTITY=flask-session) from the
    host app's session cookie and users, read-only.
    """
    service_settings.init_app(app, own)
    logs.init_app(app)
    url = database_url(own.database_url, app.instance_path)
    db.init_app(
        app,
        url,
        sqlite_synchronous=settings.sqlite_synchronous,
        write_timeout=settings.outbox_write_timeout,
    )
    # The outbox lives in the service's own database unless INNGEST_GATEWAY_OUTBOX_DATABASE_URL
    # names another.
    settings = dataclasses.replace(
        settings, outbox_database_url=settings.outbox_database_url or url
    )
    if id_settings.flask_session:
        # No pages of our own: a form post lands back on the host's page, or its home.
        InngestGateway(
            app,
            settings=settings,
            user_serializer=identity.HostUser.public,
            redirect_to="/",
            login_url=id_settings.login_url,
        )
    else:
        InngestGateway(
            app,
            settings=settings,
            user_serializer=users.LoggedIn.public,
            redirect_to=_sent_page,
        )
    # The service makes its tables at start; the extension alone waits for the first post.
    gateway_state(app).outbox_db.ensure_schema()
    security.init_app(app)
    if id_settings.flask_session:
        identity.init_app(app, id_settings)
    else:
        app.before_request(payload.buffer_streamed_body)  # for the login form; /api does its own
        auth.init_app(app)
    metrics.init_app(app)


def register_blueprints(app: Flask, id_settings: IdentitySettings) -> None:
    """The service's own views: health checks, the docs, and the demo pages (not beside a host)."""
    health.init_app(app)
    if not id_settings.flask_session:
        pages.init_app(app)
    openapi.init_app(app)


def register_errorhandlers(app: Flask) -> None:
    """Every error as one JSON envelope, on the service's own routes too."""
    errors.init_app(app)


def register_commands(app: Flask, id_settings: IdentitySettings) -> None:
    """`flask users ...` (not beside a host: its users are its own); the outbox's are the
    extension's, `flask inngest-gateway outbox ...`, as in any host."""
    if not id_settings.flask_session:
        users.init_app(app)


def create_demo_user(app: Flask) -> None:
    """On a dev database without users, make one a person can log in with, and say how."""
    with app.app_context():
        if not db.ensure_schema(app):
            return
        try:
            password = users.ensure_demo_user()
        except IntegrityError:  # another worker made it at the same moment
            db.db.session.rollback()
            return
    if password:
        click.echo(
            f"Created the demo user: e-mail {users.DEMO_EMAIL}, password {password} "
            "(shown once; dev mode only)."
        )
