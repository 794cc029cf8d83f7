"""A host shop app whose own code sends events in its database transactions (`gateway.send`).

An app factory with Flask-SQLAlchemy (users and orders), Flask-Login, and the gateway given
`db=`, so the outbox table is in the shop's database and `send` joins `db.session`:

- `POST /login/<id>` logs a user in (a test shortcut, not a real login);
- `POST /orders` adds an order, sends `shop/order.placed` (and `?lines=N` more events, one
  per order line), then commits; `?fail=before-commit` raises before the commit, and
  `?rollback=1` rolls back instead; `?user=default` leaves `send` to find the user itself;
- `flask shop place-order USER_ID [--pause before-commit|after-commit]` does the same from a
  command, printing `written` once the rows are written and `committed` after the commit;
  with `--pause` it then waits (at most 60 s) at that point, for a test to kill it.

    flask --app 'tests.shop:create_shop()' shop place-order 1
    gunicorn 'tests.shop:create_shop()'

Settings come from the mapping given to `create_shop`, else the environment: `SECRET_KEY`,
`SHOP_DATABASE_URL`, and the gateway's own (`INNGEST_EVENT_KEY`, `INNGEST_BASE_URL`,
`INNGEST_GATEWAY_...`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask, jsonify, request
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from inngest_gateway import InngestGateway
from inngest_gateway.db import database_url


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
gateway = InngestGateway(db=db)  # the outbox in the shop's database, send() in db.session


class User(db.Model, UserMixin):  # type: ignore[name-defined,misc]
    __tablename__ = "shop_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(200))


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "shop_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("shop_users.id"))
    item: Mapped[str] = mapped_column(String(200))


SHOP_TABLES = ("shop_orders", "shop_users", "outbox_events")
PAUSE_SECONDS = 60


def place_order(
    user: Any, item: str, lines: int = 0, *, name_user: bool = True
) -> tuple[Order, list[str]]:
    """Add the order and send its events in the session's transaction (not committed yet).

    Without `name_user`, `send` is not told the user: in a request it takes the logged-in one.
    """
    order = Order(user_id=user.id, item=item)
    db.session.add(order)
    db.session.flush()  # the order's id, for the event
    events = [{"name": "shop/order.placed", "data": {"order": order.id, "item": item}}]
    events += [
        {"name": "shop/order.line", "data": {"order": order.id, "line": n}, "id": f"{order.id}:{n}"}
        for n in range(lines)
    ]
    ids = gateway.send(events, user=user) if name_user else gateway.send(events)
    return order, ids


def create_shop(config: Mapping[str, Any] | None = None) -> Flask:
    """The shop, its settings from `config` (else the environment)."""
    settings = dict(config if config is not None else os.environ)
    app = Flask(__name__)
    app.config["SECRET_KEY"] = settings["SECRET_KEY"]
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url(settings["SHOP_DATABASE_URL"], "")
    for name, value in settings.items():
        if name.startswith(("INNGEST_", "INNGEST_GATEWAY_")):
            app.config[name] = value
    db.init_app(app)
    login = LoginManager(app)

    @login.user_loader
    def load_user(user_id: str) -> User | None:
        return db.session.get(User, int(user_id))

    gateway.init_app(app)

    @app.post("/login/<int:user_id>")
    def log_in(user_id: int) -> Any:
        login_user(db.get_or_404(User, user_id))
        return jsonify(status="ok")

    @app.post("/orders")
    @login_required  # type: ignore[misc]
    def orders() -> Any:
        order, ids = place_order(
            current_user,
            request.args.get("item", "book"),
            int(request.args.get("lines", 0)),
            name_user=request.args.get("user") != "default",
        )
        if request.args.get("fail") == "before-commit":
            raise RuntimeError("the shop failed before its commit")
        if request.args.get("rollback"):
            db.session.rollback()
            return jsonify(status="rolled back", ids=ids)
        db.session.commit()
        return jsonify(status="ok", order=order.id, ids=ids)

    @app.cli.group("shop")
    def shop() -> None:
        """The shop's own commands."""

    @shop.command("place-order")
    @click.argument("user_id", type=int)
    @click.option("--lines", type=int, default=0)
    @click.option("--pause", type=click.Choice(["before-commit", "after-commit"]))
    def place_order_command(user_id: int, lines: int, pause: str | None) -> None:
        """Place an order for a user from a command, as a background job would."""
        user = db.session.get(User, user_id)
        if user is None:
            raise click.ClickException(f"no user {user_id}")
        order, ids = place_order(user, "from a command", lines)
        click.echo(f"written {order.id} {' '.join(ids)}")
        sys.stdout.flush()
        if pause == "before-commit":
            time.sleep(PAUSE_SECONDS)
        db.session.commit()
        click.echo("committed")
        sys.stdout.flush()
        if pause == "after-commit":
            time.sleep(PAUSE_SECONDS)

    return app
