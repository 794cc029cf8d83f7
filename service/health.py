"""Health checks for load balancers and orchestrators."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError

from inngest_gateway import apidoc
from inngest_gateway.errors import NotReady
from inngest_gateway.outbox import queries
from inngest_gateway.reads import ReadTimeout
from inngest_gateway.state import gateway_state

from .db import db, ensure_schema, ping
from .identity import UserLookup, UsersQueryError

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@apidoc.documented(
    "get",
    {
        "summary": "Liveness: the process answers",
        "responses": {
            "200": apidoc.ok("Alive", "Ok"),
            "500": apidoc.UNEXPECTED,
            "503": apidoc.DATABASE,
        },
    },
)
@bp.get("/healthz")
def healthz() -> Response:
    """The process answers."""
    return jsonify(status="ok")


@apidoc.documented(
    "get",
    {
        "summary": "Readiness: the database answers and takes writes (and beside a host app, "
        "USERS_SQL runs on the users database)",
        "responses": {
            "200": apidoc.ok("Ready, with the outbox's state", "Ready"),
            "500": apidoc.UNEXPECTED,
            "503": apidoc.error(
                "Not ready", "not_ready", "database_unavailable", "outbox_unavailable"
            ),
        },
    },
)
@bp.get("/readyz")
def readyz() -> Response:
    """The database answers and takes writes; with the outbox's depth and oldest event's age."""
    try:
        ping()
        if not ensure_schema(current_app):
            raise NotReady("The database schema could not be created.")
        outbox_db = gateway_state().outbox_db
        if not outbox_db.ensure_schema():
            raise NotReady("The outbox's schema could not be created.")
        queries.check_writable(outbox_db)
        depth = queries.status(outbox_db)
    except SQLAlchemyError as exc:
        db.session.rollback()
        gateway_state().outbox_db.session.remove()
        log.warning("database not ready: %s", type(exc).__name__)
        raise NotReady(
            "The database does not answer.", errors={"database": ["unreachable"]}
        ) from None
    lookup = current_app.extensions.get("identity")
    if lookup is None:
        return jsonify(status="ok", database="ok", outbox=depth)
    return jsonify(status="ok", database="ok", outbox=depth, users=_users_state(lookup))


def _users_state(lookup: UserLookup) -> str:
    """IDENTITY=flask-session: `ok`, or `unavailable` (an outage does not make the service
    unready: anonymous posts still work, and every instance shares the users database).
    A USERS_SQL that the users database says cannot run is a configuration error: not ready.
    """
    try:
        lookup.check()
    except UsersQueryError as exc:
        raise NotReady(
            "USERS_SQL cannot run on the users database.", errors={"users": [f"USERS_SQL: {exc}"]}
        ) from None
    except (SQLAlchemyError, ReadTimeout) as exc:
        log.warning("users database not answering: %s", type(getattr(exc, "orig", exc)).__name__)
        return "unavailable"
    return "ok"


def init_app(app: Flask) -> None:
    """Register `/healthz` and `/readyz`."""
    app.register_blueprint(bp)
