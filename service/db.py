"""The database: one SQLAlchemy extension, SQLite by default, schema created on first use."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event, exc, text
from sqlalchemy.orm import DeclarativeBase

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    """Declarative base for the service's tables."""


db = SQLAlchemy(model_class=Base)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers and one writer work at once; FULL sync makes a commit survive a crash."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def database_url(configured: str | None, instance_path: str) -> str:
    """The configured URL (PostgreSQL through psycopg 3), or a SQLite file under `instance/`."""
    if configured:
        for prefix in ("postgres://", "postgresql://"):
            if configured.startswith(prefix):
                return "postgresql+psycopg://" + configured.removeprefix(prefix)
        return configured
    os.makedirs(instance_path, exist_ok=True)
    return f"sqlite:///{os.path.join(instance_path, 'gateway.db')}"


def create_schema() -> None:
    """Create missing tables; safe when several processes start at once."""
    try:
        db.create_all()
    except (exc.IntegrityError, exc.ProgrammingError):
        # Another worker created a table between our check and our CREATE: look again.
        db.session.rollback()
        db.create_all()


def ensure_schema(app: Flask) -> bool:
    """Create the schema once per process; False (and logged) while the database is down."""
    if app.extensions.get("schema_ready"):
        return True
    try:
        create_schema()
    except exc.SQLAlchemyError as error:
        db.session.rollback()
        log.warning("database unavailable, schema not checked yet: %s", type(error).__name__)
        return False
    app.extensions["schema_ready"] = True
    return True


def ping() -> None:
    """Raise if the database does not answer."""
    db.session.execute(text("SELECT 1"))


def init_app(app: Flask, url: str) -> None:
    """Bind the database to the app and make sure its tables exist."""
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})
    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas)
            db.engine.dispose()  # connections opened before the listener lack the pragmas
        ensure_schema(app)

    @app.before_request
    def _schema_on_first_use() -> None:
        if not app.extensions.get("schema_ready"):
            ensure_schema(app)
