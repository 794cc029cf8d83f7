"""Health checks for load balancers and orchestrators."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError

from . import apidoc
from .db import db, ensure_schema, ping
from .errors import NotReady
from .outbox import queries
from .state import gateway_state

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
        "summary": "Readiness: the database answers and takes writes",
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
    return jsonify(status="ok", database="ok", outbox=depth)


def init_app(app: Flask) -> None:
    """Register `/healthz` and `/readyz`."""
    app.register_blueprint(bp)
