"""Users: the table, password checks, and the `flask users` commands."""

from __future__ import annotations

import functools
import secrets
from datetime import UTC, datetime

import click
from flask import Flask
from flask.cli import AppGroup
from flask_login import UserMixin
from marshmallow import ValidationError, validate
from sqlalchemy import String, func, select
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from .db import db

MIN_PASSWORD_LENGTH = 8
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


class User(UserMixin, db.Model):  # type: ignore[name-defined,misc]
    """A person who can log in; the session holds their `session_token`, not their id."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(default=True)
    session_token: Mapped[str] = mapped_column(String(64), unique=True, default=_new_token)
    created_at: Mapped[datetime] = mapped_column(default=_now)

    @property
    def is_active(self) -> bool:
        """Disabled users cannot log in."""
        return self.active

    def get_id(self) -> str:
        """Flask-Login's session key: rotating it logs the user out everywhere."""
        return self.session_token

    def public(self) -> dict[str, object]:
        """The user as events and `/auth/me` show them."""
        return {"id": self.id, "email": self.email, "name": self.name}


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


def load_user(session_token: str) -> User | None:
    """Flask-Login's loader: the active user holding this session token."""
    return db.session.scalar(
        select(User).where(User.session_token == session_token, User.active.is_(True))
    )


def disable_user(email: str) -> User:
    """Stop a user from logging in and end their sessions."""
    user = find_user(email)
    if user is None:
        raise UserError(f"no user with the e-mail {normalize_email(email)}")
    user.active = False
    user.session_token = _new_token()
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


def init_app(app: Flask) -> None:
    """Register the `flask users` commands."""
    app.cli.add_command(users_cli)
