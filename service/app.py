"""The application factory, built from small named steps."""

from __future__ import annotations

from collections.abc import Mapping

import click
from flask import Flask
from sqlalchemy.exc import IntegrityError

from . import (
    api,
    auth,
    csrf,
    db,
    errors,
    health,
    inngest,
    limits,
    logs,
    metrics,
    openapi,
    outbox,
    pages,
    payload,
    security,
    users,
)
from .settings import Settings, environment, instance_secret, load_settings


def create_app(env: Mapping[str, str] | None = None, *, instance_path: str | None = None) -> Flask:
    """Build the service; settings come from `env`, else from the environment and `.env`."""
    app = Flask(__name__, instance_path=instance_path)
    app.request_class = payload.GatewayRequest
    settings = load_settings(environment() if env is None else env)
    configure_app(app, settings)
    configure_logger(settings, app.config["SECRET_KEY"])
    register_extensions(app, settings)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    if settings.inngest_dev and settings.create_demo_user:
        create_demo_user(app)
    return app


def configure_app(app: Flask, settings: Settings) -> None:
    """Flask's own settings, derived from ours."""
    app.extensions["settings"] = settings
    secure = not settings.inngest_dev
    app.config.update(
        SECRET_KEY=settings.secret_key or instance_secret(app.instance_path),
        MAX_CONTENT_LENGTH=settings.api_max_body_bytes,
        MAX_FORM_MEMORY_SIZE=settings.api_max_body_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=secure,
    )


def configure_logger(settings: Settings, secret_key: str) -> None:
    """Log lines carry request ids, and never the event key or the session secret."""
    secrets: tuple[str, ...] = (secret_key,)
    if settings.inngest_event_key != "NO_EVENT_KEY_SET":
        secrets += (settings.inngest_event_key,)
    logs.configure_logging(settings.log_level, secrets, json_lines=settings.log_format == "json")


def register_extensions(app: Flask, settings: Settings) -> None:
    """Bind the extensions and our modules that need the app."""
    logs.init_app(app)
    security.init_app(app)
    app.before_request(payload.buffer_streamed_body)
    db.init_app(
        app,
        db.database_url(settings.database_url, app.instance_path),
        sqlite_synchronous=settings.sqlite_synchronous,
        write_timeout=settings.outbox_write_timeout,
    )
    auth.init_app(app)
    csrf.init_app(app)
    inngest.init_app(app)
    outbox.init_app(app, app.extensions["inngest"])
    metrics.init_app(app)


def register_blueprints(app: Flask) -> None:
    """The views: the API, login, health checks and the demo pages, and their rate limits."""
    api.init_app(app)
    health.init_app(app)
    pages.init_app(app)
    openapi.init_app(app)
    limits.init_app(app)


def register_errorhandlers(app: Flask) -> None:
    """Every error as one JSON envelope."""
    errors.init_app(app)


def register_commands(app: Flask) -> None:
    """`flask users ...` (`flask outbox ...` comes with the outbox)."""
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
