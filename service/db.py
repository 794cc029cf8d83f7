"""The service's own database (Flask-SQLAlchemy): its users and their logins.

SQLite by default, schema created on first use; its engine options come from the extension's,
so that a login lookup is bounded as an outbox write is.
"""

from __future__ import annotations

import logging

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event, exc, text
from sqlalchemy.orm import DeclarativeBase

from inngest_gateway.db import (
    WriteTimeout,
    create_tables_at_once,
    engine_options,
    sqlite_pragmas,
)

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    """Declarative base for the service's tables."""


db = SQLAlchemy(model_class=Base)


def create_schema() -> None:
    """Create missing tables; safe when several processes start at once."""
    create_tables_at_once(db.engine, db.create_all)


def ensure_schema(app: Flask) -> bool:
    """Create the schema once per process; False (and logged) while the database is down."""
    if app.extensions.get("schema_ready"):
        return True
    try:
        create_schema()
    except (exc.SQLAlchemyError, WriteTimeout) as error:
        db.session.rollback()
        log.warning("database unavailable, schema not checked yet: %s", type(error).__name__)
        return False
    app.extensions["schema_ready"] = True
    return True


def ping() -> None:
    """Raise if the database does not answer."""
    db.session.execute(text("SELECT 1"))


def init_app(
    app: Flask,
    url: str,
    *,
    sqlite_synchronous: str = "NORMAL",
    write_timeout: float | None = None,
) -> None:
    """Bind the database to the app and make sure its tables exist."""
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(url, write_timeout))
    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", sqlite_pragmas(sqlite_synchronous))
            db.engine.dispose()  # connections opened before the listener lack the pragmas
        ensure_schema(app)

    @app.before_request
    def _schema_on_first_use() -> None:
        if not app.extensions.get("schema_ready"):
            ensure_schema(app)
