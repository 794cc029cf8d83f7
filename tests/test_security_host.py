"""A host shaped like a Flask-Security-Too app: roles, `fs_uniquifier`, token auth.

Flask-Security-Too's session holds `fs_uniquifier` (its `get_id()`), replaced on every
password change to log the user out everywhere; its `request_loader` reads an
`Authentication-Token` header (or `?auth_token=`). The host here does the same with
Flask-SQLAlchemy and Flask-Login alone. A person stays one poster through a password change:
the same `data.user.id`, event ids, rate limit and poster tag; credentials the host refuses
get a 401, never an anonymous post.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, abort, render_template_string, request
from flask.testing import FlaskClient
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user
from flask_sqlalchemy import SQLAlchemy
from jsonschema import Draft202012Validator
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from inngest_gateway import InngestGateway
from inngest_gateway.state import gateway_state
from service.openapi import build_spec
from tests.conftest import assert_envelope
from tests.standin import InngestStandIn

SECRET = "security-host-secret-0123456789abcdef"
PASSWORD, NEW_PASSWORD = "first password 1", "second password 2"


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class RolesUsers(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "roles_users"
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"), primary_key=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("role.id"), primary_key=True)


class Role(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "role"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)


class User(db.Model, UserMixin):  # type: ignore[name-defined,misc]
    """As Flask-Security-Too's `UserMixin` has it: `get_id()` is `fs_uniquifier`."""

    __tablename__ = "user"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password: Mapped[str] = mapped_column(String(128))
    active: Mapped[bool] = mapped_column(default=True)
    fs_uniquifier: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[list[Role]] = relationship(secondary="roles_users")

    def get_id(self) -> str:
        return self.fs_uniquifier

    def change_password(self, password: str) -> None:
        """As Flask-Security does: a new uniquifier ends every session and token."""
        self.password = digest(password)
        self.fs_uniquifier = uuid.uuid4().hex


def digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def auth_token(user: User) -> str:
    """A token derived from fs_uniquifier, so a password change revokes it."""
    mac = hmac.new(SECRET.encode(), user.fs_uniquifier.encode(), hashlib.sha256).digest()
    return f"{user.fs_uniquifier}.{base64.urlsafe_b64encode(mac).decode()}"


def user_from_token(token: str) -> User | None:
    uniquifier, _, _ = token.partition(".")
    user = db.session.scalar(db.select(User).filter_by(fs_uniquifier=uniquifier))
    if user is None or not hmac.compare_digest(token, auth_token(user)):
        return None
    return user


def make_security_host(instance: Path, config: dict[str, Any], **gateway: Any) -> Flask:
    """The host: its models, session login, token `request_loader`, password change, a page."""
    app = Flask("security_host", instance_path=str(instance))
    app.config.update(
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{instance / 'host.db'}",
        **config,
    )
    db.init_app(app)
    login_manager = LoginManager(app)

    @login_manager.user_loader
    def load_user(uniquifier: str) -> User | None:
        return db.session.scalar(db.select(User).filter_by(fs_uniquifier=uniquifier))

    @login_manager.request_loader
    def load_user_from_request(req: Any) -> User | None:
        token = req.headers.get("Authentication-Token") or req.args.get("auth_token")
        if token:
            return user_from_token(token)
        basic = req.authorization
        if basic is not None and basic.type == "basic":
            user = db.session.scalar(db.select(User).filter_by(email=basic.username))
            if user is not None and user.password == digest(basic.password or ""):
                return user
        return None

    @app.post("/login")
    def log_in() -> Any:
        body = request.get_json()
        user = db.session.scalar(db.select(User).filter_by(email=body["email"]))
        if user is None or user.password != digest(body["password"]):
            abort(401)
        login_user(user)
        return {"token": auth_token(user)}

    @app.post("/change-password")
    @login_required
    def change_password() -> Any:
        current_user.change_password(request.get_json()["password"])
        db.session.commit()
        return {"changed": True}

    @app.get("/page")
    def page() -> str:
        return render_template_string("<main>hello</main>{{ inngest_gateway_script() }}")

    InngestGateway(app, **gateway)
    with app.app_context():
        db.create_all()
        admin, editor = Role(name="admin"), Role(name="editor")
        db.session.add(
            User(
                email="ada@example.com",
                username="ada",
                password=digest(PASSWORD),
                fs_uniquifier=uuid.uuid4().hex,
                roles=[admin, editor],
            )
        )
        db.session.commit()
    return app


@pytest.fixture
def security_host(tmp_path: Path, inngest: InngestStandIn) -> Iterator[Callable[..., Flask]]:
    made: list[Flask] = []
    config = {
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "INNGEST_GATEWAY_SEND_TIMEOUT": 2,
        "INNGEST_GATEWAY_DELIVERY_MODE": "sync",
        "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": False,
    }

    def factory(extra: dict[str, Any] | None = None, **gateway: Any) -> Flask:
        instance = tmp_path / f"instance-{len(made)}"
        instance.mkdir()
        app = make_security_host(instance, {**config, **(extra or {})}, **gateway)
        made.append(app)
        return app

    yield factory
    for app in made:
        gateway_state(app).outbox_db.dispose()
        with app.app_context():
            db.engine.dispose()


def log_in(client: FlaskClient, password: str = PASSWORD) -> str:
    response = client.post("/login", json={"email": "ada@example.com", "password": password})
    assert response.status_code == 200, response.get_data(as_text=True)
    token: str = response.get_json()["token"]
    return token


def page_tag(client: FlaskClient) -> str:
    html = client.get("/page").get_data(as_text=True)
    match = re.search(r'data-poster="([^"]+)"', html)
    assert match, html
    return match.group(1)


def posted_users(inngest: InngestStandIn) -> list[Any]:
    return [event["data"]["user"] for event in inngest.accepted]


def test_a_password_change_keeps_the_users_id_event_ids_rate_limit_and_tag(
    security_host: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = security_host({"INNGEST_GATEWAY_RATELIMIT_API": "3 per minute"})
    client = app.test_client()
    log_in(client)
    tag = page_tag(client)
    keyed = {"Idempotency-Key": "order-1", "X-Inngest-Poster": tag}
    before = client.post("/api", json={"name": "app/a"}, headers=keyed)
    assert before.status_code == 200, before.get_data(as_text=True)

    assert client.post("/change-password", json={"password": NEW_PASSWORD}).status_code == 200
    log_in(client, NEW_PASSWORD)  # the new uniquifier: Flask-Login's id has changed

    # The page loaded before the change still posts as this user (its queue is theirs).
    retry = client.post("/api", json={"name": "app/a"}, headers=keyed)
    assert retry.status_code == 200, retry.get_data(as_text=True)
    assert retry.get_json()["ids"] == before.get_json()["ids"]  # the same event-id scope
    assert page_tag(client) == tag
    # One rate limit across the change: the 4th post in the minute is refused.
    assert client.post("/api", json={"name": "app/c"}).status_code == 200
    assert_envelope(client.post("/api", json={"name": "app/d"}), 429, "rate_limited")

    with app.app_context():
        ada = db.session.scalar(db.select(User).filter_by(email="ada@example.com"))
        assert ada is not None
        expected = {"id": ada.id, "email": "ada@example.com"}
    # The model's integer primary key, as the model has it; never the uniquifier.
    assert posted_users(inngest) == [expected, expected, expected]
    # As the published contract describes `data.user`, in this mode as in the service's.
    user_schema = build_spec(app)["components"]["schemas"]["User"]
    Draft202012Validator(user_schema).validate(expected)


def test_a_token_the_host_accepts_names_the_user_and_one_it_refuses_is_a_401(
    security_host: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = security_host()
    token = log_in(app.test_client())
    with app.app_context():
        ada_id = db.session.scalar(db.select(User.id).filter_by(email="ada@example.com"))

    fresh = app.test_client()  # no session: the token alone
    named = fresh.post("/api", json={"name": "app/t"}, headers={"Authentication-Token": token})
    assert named.status_code == 200, named.get_data(as_text=True)
    by_arg = fresh.post(f"/api?auth_token={token}", json={"name": "app/t"})
    assert by_arg.status_code == 200, by_arg.get_data(as_text=True)
    basic = fresh.post("/api", json={"name": "app/t"}, auth=("ada@example.com", PASSWORD))
    assert basic.status_code == 200, basic.get_data(as_text=True)
    assert [user["id"] for user in posted_users(inngest)] == [ada_id, ada_id, ada_id]

    refused = [
        fresh.post("/api", json={"name": "app/t"}, headers={"Authentication-Token": "forged"}),
        fresh.post("/api?auth_token=forged", json={"name": "app/t"}),
        fresh.post("/api", json={"name": "app/t"}, auth=("ada@example.com", "wrong")),
        fresh.post("/api", json={"name": "app/t"}, headers={"Authorization": "Bearer nope"}),
    ]
    for response in refused:
        assert_envelope(response, 401, "login_required")
    assert len(inngest.accepted) == 3  # nothing of the refused posts went out

    # Without credentials the post is anonymous, as before.
    anonymous = fresh.post("/api", json={"name": "app/t"})
    assert anonymous.status_code == 200
    assert posted_users(inngest)[-1] is None


def test_a_password_change_revokes_the_old_token(
    security_host: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = security_host()
    client = app.test_client()
    old_token = log_in(client)
    assert client.post("/change-password", json={"password": NEW_PASSWORD}).status_code == 200

    stale = app.test_client().post(
        "/api", json={"name": "app/t"}, headers={"Authentication-Token": old_token}
    )

    assert_envelope(stale, 401, "login_required")
    assert inngest.accepted == []


def test_session_only_ignores_the_request_loader_on_the_api(
    security_host: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    app = security_host({"INNGEST_GATEWAY_API_SESSION_ONLY": True})
    client = app.test_client()
    token = log_in(client)

    tokened = app.test_client().post(
        "/api", json={"name": "app/t"}, headers={"Authentication-Token": token}
    )
    assert_envelope(tokened, 401, "login_required")
    # The browser's session still names the user.
    assert client.post("/api", json={"name": "app/t"}).status_code == 200
    assert len(inngest.accepted) == 1 and inngest.accepted[0]["data"]["user"]["email"]


def test_a_serializer_for_a_model_with_username_and_roles(
    security_host: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    """The README's example of a `user_serializer`."""

    def serialize_user(user: User) -> dict[str, Any]:
        return {
            "id": user.id,
            "username": user.username,
            "roles": sorted(role.name for role in user.roles),
        }

    app = security_host(user_serializer=serialize_user)
    client = app.test_client()
    log_in(client)

    assert client.post("/api", json={"name": "app/t"}).status_code == 200

    (user,) = posted_users(inngest)
    assert user["username"] == "ada" and user["roles"] == ["admin", "editor"]
    assert isinstance(user["id"], int)
