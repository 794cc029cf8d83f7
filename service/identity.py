"""Who is posting when the service runs beside another Flask app: that app's session and users.

With `IDENTITY=flask-session` the service reads the host app's signed session cookie (same
`SECRET_KEY`, cookie name and salt) without ever writing it, takes Flask-Login's user id from
it (or from Flask-Login's remember cookie), and looks the user up in the host's database with
a read-only query (`USERS_SQL`). Each piece works on its own; `init_app` puts them together.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any
from urllib.parse import quote
from uuid import UUID

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin
from flask_login import LoginManager, UserMixin
from flask_login.utils import decode_cookie
from itsdangerous import BadSignature, SignatureExpired
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate
from sqlalchemy import Engine, TextClause, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from inngest_gateway.errors import UsersUnavailable
from inngest_gateway.login import check_login_url, login_required
from inngest_gateway.reads import BoundedReads, ReadTimeout
from inngest_gateway.settings import ConfigError, Duration

from . import metrics

log = logging.getLogger(__name__)

IDENTITY_SERVICE = "service"
IDENTITY_FLASK_SESSION = "flask-session"
FLASK_SESSION_SALT = "cookie-session"  # Flask's SecureCookieSessionInterface.salt
DEFAULT_SESSION_MAX_AGE = 31 * 86400.0  # Flask's default PERMANENT_SESSION_LIFETIME
MAX_USER_ID_LENGTH = 512
# A configuration error of USERS_SQL is logged at ERROR at most this often (seconds).
_CONFIG_ERROR_LOG_INTERVAL = 60.0
# A cookie name is an RFC 6265 token.
_COOKIE_NAME = re.compile(r"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


# --- Settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentitySettings:
    """How the service knows who is posting; `service` mode needs none of the rest."""

    identity: str = IDENTITY_SERVICE
    session_cookie_name: str = "session"
    session_salt: str = FLASK_SESSION_SALT
    session_max_age: float = DEFAULT_SESSION_MAX_AGE
    remember_cookie_name: str = "remember_token"
    users_database_url: str | None = field(default=None, repr=False)  # may hold a password
    users_sql: str | None = None
    users_sql_timeout: float = 2.0
    login_url: str | None = None

    @property
    def flask_session(self) -> bool:
        """Whether the user comes from the host app's session rather than our own logins."""
        return self.identity == IDENTITY_FLASK_SESSION


def check_users_sql(sql: str) -> str:
    """USERS_SQL without a trailing `;`, if it is one SELECT whose only parameter is `:id`."""
    body = sql.strip()
    if body.endswith(";"):
        body = body[:-1].rstrip()
    if ";" in body:
        raise ValueError("must be a single statement (no `;` inside)")
    if not re.match(r"select\b", body, re.IGNORECASE):
        raise ValueError("must be a SELECT statement")
    try:
        names = set(text(body).compile().params)
    except ArgumentError as exc:  # pragma: no cover - text() accepts any string today
        raise ValueError(f"cannot be parsed: {exc}") from None
    if "id" not in names:
        raise ValueError("must use the bind parameter :id, e.g. `WHERE id = :id`")
    if names != {"id"}:
        others = ", ".join(f":{name}" for name in sorted(names - {"id"}))
        raise ValueError(f"may use only the bind parameter :id, not {others}")
    return body


def users_engine_url(url: str) -> str:
    """A SQLite or PostgreSQL URL, PostgreSQL through psycopg 3; anything else is refused."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    if url.startswith(("postgresql+psycopg://", "sqlite:///")):
        return url
    raise ValueError("must be a sqlite:/// or postgresql:// URL")


class _IdentitySchema(Schema):
    """Environment variables to IdentitySettings; names are the variables' own."""

    class Meta:
        unknown = EXCLUDE

    IDENTITY = fields.String(
        load_default=IDENTITY_SERVICE,
        validate=validate.OneOf([IDENTITY_SERVICE, IDENTITY_FLASK_SESSION]),
    )
    SESSION_COOKIE_NAME = fields.String(
        load_default="session", validate=validate.Regexp(_COOKIE_NAME, error="not a cookie name")
    )
    SESSION_SALT = fields.String(load_default=FLASK_SESSION_SALT)
    SESSION_MAX_AGE = Duration(
        load_default=DEFAULT_SESSION_MAX_AGE, validate=validate.Range(min=1, max=400 * 86400)
    )
    REMEMBER_COOKIE_NAME = fields.String(
        load_default="remember_token",
        validate=validate.Regexp(_COOKIE_NAME, error="not a cookie name"),
    )
    USERS_DATABASE_URL = fields.String(load_default=None)
    USERS_SQL = fields.String(load_default=None)
    USERS_SQL_TIMEOUT = Duration(load_default=2.0, validate=validate.Range(min=0.05, max=10))
    LOGIN_URL = fields.String(load_default=None)
    # Only checked: reading the host's cookies needs the host's key, never a generated one.
    SECRET_KEY = fields.String(load_default=None)

    @post_load
    def _build(self, raw: dict[str, Any], **_: Any) -> IdentitySettings:
        flask_session = raw["IDENTITY"] == IDENTITY_FLASK_SESSION
        if not flask_session:
            for name in ("USERS_DATABASE_URL", "USERS_SQL", "LOGIN_URL"):
                if raw[name] is not None:
                    raise ValidationError("is only read with IDENTITY=flask-session", name)
        elif raw["SECRET_KEY"] is None:
            raise ValidationError(
                "is required with IDENTITY=flask-session: the host app's own key", "SECRET_KEY"
            )
        url, sql = raw["USERS_DATABASE_URL"], raw["USERS_SQL"]
        if sql is not None and url is None:
            raise ValidationError("is required when USERS_SQL is set", "USERS_DATABASE_URL")
        if url is not None and sql is None:
            raise ValidationError("is set but USERS_SQL is not", "USERS_DATABASE_URL")
        try:
            url = users_engine_url(url) if url is not None else None
        except ValueError as exc:  # never echo the URL: it may hold a password
            raise ValidationError(str(exc), "USERS_DATABASE_URL") from None
        try:
            sql = check_users_sql(sql) if sql is not None else None
        except ValueError as exc:
            raise ValidationError(str(exc), "USERS_SQL") from None
        try:
            login_url = check_login_url(raw["LOGIN_URL"]) if raw["LOGIN_URL"] else None
        except ValueError as exc:
            raise ValidationError(str(exc), "LOGIN_URL") from None
        return IdentitySettings(
            identity=raw["IDENTITY"],
            session_cookie_name=raw["SESSION_COOKIE_NAME"],
            session_salt=raw["SESSION_SALT"],
            session_max_age=raw["SESSION_MAX_AGE"],
            remember_cookie_name=raw["REMEMBER_COOKIE_NAME"],
            users_database_url=url,
            users_sql=sql,
            users_sql_timeout=raw["USERS_SQL_TIMEOUT"],
            login_url=login_url,
        )


def _first_error(messages: Any) -> str:
    name, inner = next(iter(messages.items()))
    while isinstance(inner, list | dict):
        inner = inner[0] if isinstance(inner, list) else next(iter(inner.values()))
    return f"{name}: {inner}"


def load_identity_settings(env: Mapping[str, str]) -> IdentitySettings:
    """Parse the identity settings from the environment, or raise ConfigError with one line."""
    given = {name: value for name, value in env.items() if value.strip()}
    try:
        settings: IdentitySettings = _IdentitySchema().load(given)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc.messages)) from None
    return settings


# --- The host's session cookie, read-only ---------------------------------------------------


class HostSessionInterface(SecureCookieSessionInterface):
    """Opens the host app's session cookie and never writes one.

    The signature is checked as Flask checks it (same key, its fallbacks, salt and signer),
    and so is its age. A cookie that is missing, tampered with, signed with another key, too
    old or not a session at all opens as an empty session: the request is anonymous. Flask-Login
    may still change the session in memory during a request; nothing of it is ever sent back,
    and any `Set-Cookie` for the host's session or remember cookie is taken off the response,
    so the service cannot log anyone out of the host or overwrite what the host stored.

    A cookie that fails its signature, or that is signed but not a session, is counted (metric
    `host_cookies_rejected_total`) and, at most once a minute (by `clock`), a WARNING says how
    many and what to check: when every cookie fails, SECRET_KEY or SESSION_SALT is not the
    host's, and every post goes out anonymous. An expired one is an old login, counted only.
    """

    WARN_EVERY = 60.0  # seconds between two warnings about rejected cookies

    def __init__(
        self,
        cookie_name: str = "session",
        *,
        salt: str = FLASK_SESSION_SALT,
        max_age: float = DEFAULT_SESSION_MAX_AGE,
        guarded_cookies: tuple[str, ...] = ("remember_token",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cookie_name = cookie_name
        self.salt = salt
        self.max_age = max_age
        self.guarded_cookies = frozenset((cookie_name, *guarded_cookies))
        self.clock = clock
        self._unwarned: dict[str, int] = {}  # rejections by reason since the last warning
        self._warned_at: float | None = None
        self._warn_lock = threading.Lock()

    def get_cookie_name(self, app: Flask) -> str:
        """The host's cookie name, whatever this app's SESSION_COOKIE_NAME says."""
        return self.cookie_name

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession:
        """The host's session, or an empty one; never None, never an error."""
        self._check_remember_cookie(app, request)
        value = request.cookies.get(self.cookie_name)
        serializer = self.get_signing_serializer(app)
        if not value or serializer is None:
            return self.session_class()
        try:
            data = serializer.loads(value, max_age=int(self.max_age))
            return self.session_class(data)
        except Exception as exc:  # noqa: BLE001 - any cookie we cannot read is anonymous
            self._rejected("session", _rejection_reason(exc))
            return self.session_class()

    def _check_remember_cookie(self, app: Flask, request: Request) -> None:
        """Count a remember cookie Flask-Login will not accept (it says nothing itself)."""
        # The name Flask-Login reads, which `init_app` sets to REMEMBER_COOKIE_NAME.
        cookie = request.cookies.get(app.config.get("REMEMBER_COOKIE_NAME", "remember_token"))
        if cookie and app.secret_key and decode_cookie(cookie, key=app.secret_key) is None:
            self._rejected("remember", "bad_signature" if "|" in cookie else "malformed")

    def _rejected(self, cookie: str, reason: str) -> None:
        metrics.host_cookie_rejected(cookie, reason)
        log.info("host %s cookie not accepted: %s", cookie, reason)
        if reason == "expired":
            return  # the host would refuse it too: not a misconfiguration
        now = self.clock()
        with self._warn_lock:
            self._unwarned[reason] = self._unwarned.get(reason, 0) + 1
            last = self._warned_at
            if last is not None and now - last < self.WARN_EVERY:
                return
            counts, self._unwarned, self._warned_at = self._unwarned, {}, now
        total = sum(counts.values())
        log.warning(
            "%d host cookie%s rejected%s (%s); posts carrying them are anonymous. If logged-in "
            'users\' posts all arrive with "user": null, check that SECRET_KEY and SESSION_SALT '
            "(and SESSION_COOKIE_NAME, REMEMBER_COOKIE_NAME) match the host app's",
            total,
            "" if total == 1 else "s",
            "" if last is None else f" in the last {now - last:.0f} s",
            ", ".join(f"{name}: {count}" for name, count in sorted(counts.items())),
            extra={
                "fields": {"rejected": total, **{f"rejected_{k}": v for k, v in counts.items()}}
            },
        )

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        """Never: the cookie is the host's."""
        return False

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Write nothing, and take off any cookie of the host's that another hook set."""
        if session.accessed:
            response.vary.add("Cookie")
        kept = [
            value
            for value in response.headers.getlist("Set-Cookie")
            if value.split("=", 1)[0].strip() not in self.guarded_cookies
        ]
        if len(kept) != len(response.headers.getlist("Set-Cookie")):
            del response.headers["Set-Cookie"]
            for value in kept:
                response.headers.add("Set-Cookie", value)


def _rejection_reason(exc: Exception) -> str:
    """Why a session cookie was not accepted, as the metric's `reason` label says it."""
    if isinstance(exc, SignatureExpired):
        return "expired"
    if isinstance(exc, BadSignature):
        return "bad_signature"  # another key or salt, tampered with, or not signed at all
    return "malformed"  # signed with the host's key, but not a session Flask wrote


def session_user_id(session: Mapping[str, Any]) -> str | None:
    """Flask-Login's user id in a session, as the text the loader receives."""
    return _user_id(session.get("_user_id"))


def remembered_user_id(cookie: str | None, secret_key: str | bytes) -> str | None:
    """The user id in Flask-Login's remember cookie, if its HMAC is right for `secret_key`."""
    if not cookie:
        return None
    return _user_id(decode_cookie(cookie, key=secret_key))


def _user_id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text_id = str(value)
    if not text_id or len(text_id) > MAX_USER_ID_LENGTH:
        return None
    return text_id


# --- The host's users -----------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """A database value as JSON can carry it: dates as ISO 8601, decimals and UUIDs as text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date | time_of_day):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    return str(value)


class HostUser(UserMixin):  # type: ignore[misc]
    """A user of the host app, as Flask-Login sees it: the id from the session, the row."""

    def __init__(self, user_id: str, row: Mapping[str, Any] | None = None) -> None:
        self.id = user_id
        self.row: dict[str, Any] = dict(row) if row is not None else {"id": user_id}

    def get_id(self) -> str:
        """The id the host's session holds for this user."""
        return self.id

    def public(self) -> dict[str, Any]:
        """The user as events carry it in `data.user`: the row, JSON-safe, always with an id
        (the session's, where the row has none)."""
        user = {str(name): json_safe(value) for name, value in self.row.items()}
        if user.get("id") is None:
            user["id"] = self.id
        return user

    def __repr__(self) -> str:
        return f"HostUser(id={self.id!r})"


class UsersQueryError(Exception):
    """USERS_SQL cannot run on the users database as it is (a missing table, a syntax error)."""


# SQLSTATE class 42: syntax error or access rule violation (a missing table or column, a typo,
# no permission). Retrying cannot help: the query or the database must change.
_CONFIG_SQLSTATE = "42"
_SQLITE_CONFIG_ERRORS = (
    "no such table",
    "no such column",
    "syntax error",
    "incomplete input",
    "ambiguous column",
)


def _configuration_problem(exc: SQLAlchemyError) -> str | None:
    """What is wrong with USERS_SQL, if this error says the query itself cannot run."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(_CONFIG_SQLSTATE):
        detail = getattr(getattr(orig, "diag", None), "message_primary", None) or ""
        return f"{type(orig).__name__}: {detail}".rstrip(": ")
    if isinstance(orig, sqlite3.Error):
        message = str(orig)
        if any(words in message for words in _SQLITE_CONFIG_ERRORS):
            return message
    return None


class UserLookup:
    """Finds the host's user for an id with USERS_SQL, read-only and within a time limit.

    Without a query every id is a user carrying only its id. The engine is the lookup's own
    (never the service's database), opened lazily in each process. On PostgreSQL each lookup
    ends within `timeout` whatever the network does (`reads.BoundedReads`); on SQLite a
    progress handler and `busy_timeout` bound it.
    """

    def __init__(self, url: str | None, sql: str | None, timeout: float = 2.0) -> None:
        if (url is None) != (sql is None):
            raise ValueError("USERS_DATABASE_URL and USERS_SQL go together")
        self.url = users_engine_url(url) if url else None
        self.sql = text(check_users_sql(sql)) if sql else None
        self.timeout = timeout
        self.problem: str | None = None  # the last configuration error seen, until a lookup works
        self._engine: Engine | None = None
        self._reads: BoundedReads | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._postgres_sql: str | None = None
        self._logged_at = -math.inf

    @property
    def engine(self) -> Engine:
        """This process's engine for the users database."""
        if self.url is None:
            raise RuntimeError("no USERS_DATABASE_URL")
        if self._bounded() is not None:
            assert self._reads is not None
            return self._reads.engine
        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                if self._engine is not None:  # inherited through fork: leave the parent's
                    self._engine.dispose(close=False)
                self._engine = self._sqlite_engine(self.url)
                self._pid = os.getpid()
            return self._engine

    def _bounded(self) -> BoundedReads | None:
        """PostgreSQL's reads, made on first use."""
        if self.url is None or not self.url.startswith("postgresql"):
            return None
        if self._reads is None:
            self._reads = BoundedReads(self.url, self.timeout)
        return self._reads

    def _sqlite_engine(self, url: str) -> Engine:
        # mode=rw: a missing file is an error, never a new empty database on the host's path.
        uri = f"file:{quote(make_url(url).database or '')}?mode=rw"
        # One connection per lookup: nothing pooled to hold a read snapshot or a lock.
        engine = create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True),
            poolclass=NullPool,
        )
        busy_ms = max(1, int(self.timeout * 1000))

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only=ON")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.close()

        event.listen(engine, "connect", on_connect)
        return engine

    def load(self, user_id: str) -> HostUser | None:
        """The user with this id, or None without a row; UsersUnavailable if the query fails."""
        if self.sql is None:
            return HostUser(user_id)
        started = time.monotonic()
        try:
            row = self._run(self.sql, {"id": user_id}, first=True)
        except (SQLAlchemyError, ReadTimeout) as exc:
            self._failed(exc, started)
            raise UsersUnavailable() from None
        self.problem = None
        return None if row is None else HostUser(user_id, row)

    def check(self) -> None:
        """Run USERS_SQL against the database without reading a user, and check its columns.

        Raises UsersQueryError when the query cannot run as it is or returns no `id` column,
        and SQLAlchemyError or ReadTimeout when the database does not answer.
        """
        if self.sql is None:
            return
        # Wrapped so that no row can come back, whatever the query selects.
        probe = text(f"SELECT * FROM ({self.sql.text}) AS users_sql WHERE 1 = 0")
        try:
            columns = self._run(probe, {"id": None}, first=False)
        except SQLAlchemyError as exc:
            problem = _configuration_problem(exc)
            if problem is None:
                raise
            self.problem = problem
            raise UsersQueryError(problem) from None
        assert isinstance(columns, list)
        if "id" not in columns:
            self.problem = f"returns no `id` column (it returns {', '.join(columns) or 'none'})"
            raise UsersQueryError(self.problem)
        self.problem = None

    def _failed(self, exc: Exception, started: float) -> None:
        """Log a failed lookup: a configuration error at ERROR (rate-limited), an outage at
        WARNING. The class only: a driver's message may quote the URL or the query's values."""
        elapsed = (time.monotonic() - started) * 1000
        problem = _configuration_problem(exc) if isinstance(exc, SQLAlchemyError) else None
        if problem is None:
            log.warning(
                "users lookup failed after %.0f ms: %s",
                elapsed,
                type(getattr(exc, "orig", None) or exc).__name__,
            )
            return
        self.problem = problem
        now = time.monotonic()
        if now - self._logged_at >= _CONFIG_ERROR_LOG_INTERVAL:
            self._logged_at = now
            log.error(
                "users lookup failed: USERS_SQL cannot run on the users database (%s); this is "
                "a configuration error, not an outage: fix USERS_SQL or the users database's "
                "schema. Logged-in posts get 503 until then.",
                problem,
            )

    def _run(self, sql: TextClause, params: dict[str, Any], *, first: bool) -> Any:
        """The first row as a dict (`first`), else the result's column names."""
        reads = self._bounded()
        if reads is not None:
            compiled = sql.compile(dialect=reads.engine.dialect)
            query, values = str(compiled), compiled.construct_params(params)

            def read(driver: Any) -> Any:
                with driver.cursor() as cursor:
                    cursor.execute(query, values)
                    names = [column.name for column in cursor.description or ()]
                    if not first:
                        return names
                    found = cursor.fetchone()
                    return None if found is None else dict(zip(names, found, strict=True))

            return reads.run(read)
        deadline = time.monotonic() + self.timeout
        with self.engine.connect() as connection:
            driver: Any = connection.connection.driver_connection
            driver.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
            try:
                result = connection.execute(sql, params)
                if not first:
                    return list(result.keys())
                row = result.mappings().first()
                return dict(row) if row is not None else None
            finally:
                connection.rollback()  # nothing to keep
                driver.set_progress_handler(None, 0)

    def dispose(self) -> None:
        """Close this process's connections."""
        if self._engine is not None:
            self._engine.dispose()
        if self._reads is not None:
            self._reads.dispose()


def check_users_query(lookup: UserLookup) -> None:
    """At start: refuse USERS_SQL if the users database answers and says it cannot run.

    Raises ConfigError with one line naming the problem. A database that does not answer
    is only logged: it may come up after the service, and lookups then answer `503`.
    """
    try:
        lookup.check()
    except UsersQueryError as exc:
        raise ConfigError(f"USERS_SQL: {exc}") from None
    except (SQLAlchemyError, ReadTimeout) as exc:
        log.warning(
            "users database did not answer at start (%s): USERS_SQL is checked on first use",
            type(getattr(exc, "orig", None) or exc).__name__,
        )


def user_lookup(settings: IdentitySettings) -> UserLookup:
    """The lookup these settings describe."""
    return UserLookup(settings.users_database_url, settings.users_sql, settings.users_sql_timeout)


# --- Putting it together --------------------------------------------------------------------


def make_login_manager(
    settings: IdentitySettings, lookup: UserLookup | None = None
) -> LoginManager:
    """A Flask-Login manager that knows the host's users (unbound: call `init_app`).

    Session protection is off: in "strong" mode Flask-Login would delete the remember cookie
    of a browser whose address changed, and this service must never touch the host's cookies.
    """
    lookup = lookup or user_lookup(settings)
    manager = LoginManager()
    manager.session_protection = None
    manager.user_loader(_loader(lookup))
    manager.unauthorized_handler(lambda: login_required(settings.login_url))
    return manager


def _loader(lookup: UserLookup) -> Callable[[Any], HostUser | None]:
    def load(user_id: Any) -> HostUser | None:
        text_id = _user_id(user_id)
        return None if text_id is None else lookup.load(text_id)

    return load


def init_app(app: Flask, settings: IdentitySettings) -> LoginManager:
    """Read the host app's session and users on `app` (IDENTITY=flask-session).

    Installs the read-only session interface and a Flask-Login manager whose loader runs
    USERS_SQL; Flask-Login then honours the host's remember cookie as the host does. Call it
    instead of binding the service's own logins. A USERS_SQL that the users database says
    cannot run stops the start (ConfigError).
    """
    if not settings.flask_session:
        raise ValueError("identity.init_app is for IDENTITY=flask-session")
    app.session_interface = HostSessionInterface(
        settings.session_cookie_name,
        salt=settings.session_salt,
        max_age=settings.session_max_age,
        guarded_cookies=(settings.remember_cookie_name,),
    )
    app.config["REMEMBER_COOKIE_NAME"] = settings.remember_cookie_name
    app.config["REMEMBER_COOKIE_REFRESH_EACH_REQUEST"] = False
    lookup = user_lookup(settings)
    try:
        check_users_query(lookup)
    except ConfigError:
        lookup.dispose()
        raise
    manager = make_login_manager(settings, lookup)
    manager.init_app(app)
    app.extensions["identity"] = lookup
    return manager
