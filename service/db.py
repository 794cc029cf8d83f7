"""The database: one SQLAlchemy extension, SQLite by default, schema created on first use."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event, exc, text
from sqlalchemy.orm import DeclarativeBase

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    """Declarative base for the service's tables."""


db = SQLAlchemy(model_class=Base)


def _sqlite_pragmas(synchronous: str) -> Any:
    """WAL lets readers and one writer work at once.

    In WAL mode a committed transaction survives the process being killed with either
    `synchronous` setting; FULL also makes it survive a power loss or an OS crash, at the
    cost of an fsync per commit.
    """

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    return on_connect


class _SQLiteWriteLock:
    """One writer at a time across threads and processes, woken as soon as the lock frees.

    SQLite's own busy handler polls with sleeps of up to 100 ms, which under concurrent
    writers leaves the database idle while they sleep; an flock'd file queues them instead.
    """

    def __init__(self) -> None:
        self._threads = threading.Lock()
        self._files: dict[tuple[int, str], int] = {}

    @contextlib.contextmanager
    def hold(self, path: str) -> Iterator[None]:
        with self._threads:
            key = (os.getpid(), path)  # a child after fork opens its own description
            fd = self._files.get(key)
            if fd is None:
                fd = self._files[key] = os.open(f"{path}.write-lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


_sqlite_lock = _SQLiteWriteLock()


@contextlib.contextmanager
def write_lock() -> Iterator[None]:
    """Hold around a write transaction: serialises SQLite writers; nothing on other databases."""
    url = db.engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        with _sqlite_lock.hold(str(url.database)):
            yield
    else:
        yield


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


def init_app(app: Flask, url: str, *, sqlite_synchronous: str = "NORMAL") -> None:
    """Bind the database to the app and make sure its tables exist."""
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    # A server can drop idle connections; a SQLite file cannot.
    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": not url.startswith("sqlite")}
    )
    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas(sqlite_synchronous))
            db.engine.dispose()  # connections opened before the listener lack the pragmas
        ensure_schema(app)

    @app.before_request
    def _schema_on_first_use() -> None:
        if not app.extensions.get("schema_ready"):
            ensure_schema(app)
