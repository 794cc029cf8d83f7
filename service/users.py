"""Users: the table, password checks, and the `flask users` commands."""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from flask_login import UserMixin
from marshmallow import ValidationError, validate
from sqlalchemy import BigInteger, ForeignKey, String, delete, func, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from inngest_gateway.errors import DatabaseUnavailable
from inngest_gateway.reads import BoundedReads, ReadTimeout

from .db import db

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 8
# app.extensions key of the login lookup's bounded reads (PostgreSQL only).
LOGIN_READS = "login_reads"
DEMO_EMAIL = "demo@example.com"


class UserError(Exception):
    """A user could not be created or changed."""


@functools.cache
def _dummy_hash() -> str:
    """A hash to check against when the e-mail is unknown, so both failures take as long."""
    return generate_password_hash(secrets.token_hex(16))


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def _now() -> datetime:
    return datetime.now(UTC)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _token_hash(token: str) -> str:
    """What the table keeps of a login token: a copy of the table cannot be used as cookies."""
    return hashlib.sha256(token.encode()).hexdigest()


class User(db.Model):  # type: ignore[name-defined,misc]
    """A person who can log in; sessions hold the token of one login, never the user's id.

    Flask-Login holds a `LoggedIn`, never this model: see `load_user`.
    """

    __tablename__ = "users"
    __allow_unmapped__ = True

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(default=True)
    # No longer read (logins are `login_sessions` rows); kept so that databases created
    # before those still take new users.
    session_token: Mapped[str] = mapped_column(String(64), unique=True, default=_new_token)
    created_at: Mapped[datetime] = mapped_column(default=_now)

    def public(self) -> dict[str, object]:
        """The user as events and `/auth/me` show them."""
        return {"id": self.id, "email": self.email, "name": self.name}


class LoginSession(db.Model):  # type: ignore[name-defined,misc]
    """One login: logout deletes it, `users disable` deletes all of a user's, and it expires."""

    __tablename__ = "login_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    remember: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


def normalize_email(email: str) -> str:
    """E-mail addresses are compared without case or surrounding spaces."""
    return email.strip().lower()


def create_user(email: str, name: str, password: str) -> User:
    """Add a user, checking the e-mail, the name and the password length."""
    email = normalize_email(email)
    try:
        validate.Email()(email)
    except ValidationError:
        raise UserError(f"not a valid e-mail address: {email!r}") from None
    if not name.strip():
        raise UserError("the name must not be empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if find_user(email) is not None:
        raise UserError(f"a user with the e-mail {email} exists already")
    user = User(email=email, name=name.strip(), password_hash=generate_password_hash(password))
    db.session.add(user)
    db.session.commit()
    return user


def find_user(email: str) -> User | None:
    """The user with this e-mail, if any."""
    return db.session.scalar(select(User).where(User.email == normalize_email(email)))


def authenticate(email: str, password: str) -> User | None:
    """The active user with these credentials, else None, in the same time either way."""
    user = find_user(email)
    if user is None:
        check_password_hash(_dummy_hash(), password)
        return None
    if not check_password_hash(user.password_hash, password) or not user.active:
        return None
    return user


def start_session(user: User, lifetime: float, *, remember: bool = False) -> LoggedIn:
    """Record a new login of this user, lasting `lifetime` seconds; the user as logged in.

    Expired logins of every user are removed on the way, so the table stays small.
    """
    token = secrets.token_urlsafe(32)
    now = _now_ms()
    db.session.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
    db.session.add(
        LoginSession(
            token_hash=_token_hash(token),
            user_id=user.id,
            remember=remember,
            created_at=now,
            expires_at=now + int(lifetime * 1000),
        )
    )
    db.session.commit()
    return LoggedIn.of(user, token)


class LoggedIn(UserMixin):  # type: ignore[misc]
    """The user a request acts for, as one login: read from the database on every request.

    Not an ORM object: a post needs the user's id, e-mail and name, and loading those through
    the ORM cost more than the rest of a post. Nothing of it is cached between requests, so
    a logout or `users disable` ends the login at once in every process.
    """

    __slots__ = ("email", "id", "login_token", "name")

    def __init__(self, user_id: int, email: str, name: str, login_token: str) -> None:
        self.id = user_id
        self.email = email
        self.name = name
        self.login_token = login_token

    @classmethod
    def of(cls, user: User, token: str) -> LoggedIn:
        """The logged-in form of a user who has just started the login `token`."""
        return cls(user.id, user.email, user.name, token)

    def get_id(self) -> str:
        """Flask-Login's session key (and the remember cookie's): this login's token."""
        return self.login_token

    def public(self) -> dict[str, object]:
        """The user as events and `/auth/me` show them."""
        return {"id": self.id, "email": self.email, "name": self.name}


_LOGIN_QUERY = (
    "SELECT users.id, users.email, users.name FROM users "
    "JOIN login_sessions ON login_sessions.user_id = users.id "
    "WHERE login_sessions.token_hash = {mark} AND login_sessions.expires_at > {mark} "
    "AND users.active"
)


@functools.cache
def _login_query(paramstyle: str) -> str:
    return _LOGIN_QUERY.format(mark="?" if paramstyle == "qmark" else "%s")


def load_user(token: str) -> LoggedIn | None:
    """Flask-Login's loader: the active user of this unexpired login, in one indexed lookup.

    One statement on the driver's own connection: SQLAlchemy's ORM and statement layers cost
    more than the lookup. On PostgreSQL it is a bounded read (`reads.BoundedReads`, within
    INNGEST_GATEWAY_OUTBOX_WRITE_TIMEOUT), so that a link that forwards nothing cannot hold the
    request. A
    driver error is raised as SQLAlchemy's, and a read past its deadline as
    DatabaseUnavailable: the error handlers answer either with a 503 and `Retry-After`.
    """
    params = (_token_hash(token), _now_ms())
    reads: BoundedReads | None = current_app.extensions.get(LOGIN_READS)
    if reads is not None:
        query = _login_query(reads.engine.dialect.paramstyle)

        def read(driver: Any) -> Any:
            with driver.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchone()

        try:
            row = reads.run(read)
        except ReadTimeout:
            log.warning("login lookup: no answer from the database within %gs", reads.timeout)
            raise DatabaseUnavailable(headers={"Retry-After": "5"}) from None
    else:
        row = _sqlite_login_row(params)
    return None if row is None else LoggedIn(row[0], row[1], row[2], token)


def _sqlite_login_row(params: tuple[str, int]) -> Any:
    """The login query on the pooled SQLite connection; returning it rolls the read back."""
    engine = db.engine
    dialect = engine.dialect
    query = _login_query(dialect.paramstyle)
    connection = None
    try:
        connection = engine.raw_connection()
        cursor = connection.cursor()
        try:
            cursor.execute(query, params)
            return cursor.fetchone()
        finally:
            cursor.close()
    except dialect.loaded_dbapi.Error as error:
        wrapped = DBAPIError.instance(
            query, params, error, dialect.loaded_dbapi.Error, hide_parameters=True, dialect=dialect
        )
        if connection is not None and isinstance(wrapped, OperationalError):
            connection.invalidate()  # may be broken: the pool opens a fresh one
        raise wrapped from error
    finally:
        if connection is not None:
            connection.close()


def end_session(token: str) -> None:
    """End one login: its cookies, and every copy of them, stop working."""
    db.session.execute(delete(LoginSession).where(LoginSession.token_hash == _token_hash(token)))
    db.session.commit()


def disable_user(email: str) -> User:
    """Stop a user from logging in and end all their logins."""
    user = find_user(email)
    if user is None:
        raise UserError(f"no user with the e-mail {normalize_email(email)}")
    user.active = False
    db.session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
    db.session.commit()
    return user


def ensure_demo_user() -> str | None:
    """In dev mode, on a database without users, create the demo user and return its password."""
    if db.session.scalar(select(func.count()).select_from(User)):
        return None
    password = secrets.token_urlsafe(12)
    create_user(DEMO_EMAIL, "Demo User", password)
    return password


users_cli = AppGroup("users", help="Manage the users who can log in.")


@users_cli.command("create")
@click.argument("email")
@click.option("--name", required=True, help="The name shown in events.")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Prompted for when left out.",
)
def create_command(email: str, name: str, password: str) -> None:
    """Create a user who can log in."""
    try:
        user = create_user(email, name, password)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created user {user.id}: {user.email}")


@users_cli.command("list")
def list_command() -> None:
    """List users."""
    for user in db.session.scalars(select(User).order_by(User.id)):
        state = "active" if user.active else "disabled"
        click.echo(f"{user.id}\t{user.email}\t{user.name}\t{state}")


@users_cli.command("disable")
@click.argument("email")
def disable_command(email: str) -> None:
    """Disable a user and end their sessions."""
    try:
        user = disable_user(email)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"disabled user {user.id}: {user.email}")


def bound_login_reads(app: Flask, timeout: float) -> None:
    """On PostgreSQL, make `load_user` a bounded read: it ends within `timeout`."""
    with app.app_context():
        url = db.engine.url
    if url.get_backend_name() == "postgresql":
        app.extensions[LOGIN_READS] = BoundedReads(
            url.render_as_string(hide_password=False), timeout
        )


def init_app(app: Flask) -> None:
    """Register the `flask users` commands."""
    app.cli.add_command(users_cli)
