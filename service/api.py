"""`POST /api`: a browser's post becomes Inngest events, stored (or sent) before the answer."""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    request,
    url_for,
)

from . import csrf, inngest, metrics, outbox
from .auth import current, poster_scope
from .errors import LoginRequired
from .events import build_events
from .payload import Payload, read_payload, referrer_path, same_origin_path, wants_json
from .settings import Settings

bp = Blueprint("api", __name__)


def request_meta() -> dict[str, Any]:
    """What the server knows about the request, added to every event as `data.request`."""
    return {
        "id": g.request_id,
        "client_request_id": g.client_request_id,
        "received_at": g.received_ms,
        "ip": request.remote_addr,
        "user_agent": request.user_agent.string or None,
    }


def _redirect_target(payload: Payload) -> str:
    return same_origin_path(payload.next) or referrer_path(request) or url_for("pages.sent")


@bp.post("/api")
@csrf.protect
def post_events() -> Any:
    """Validate the posted events, store or send them, and answer with their ids.

    Outbox mode (the default) answers 202 once the events are committed to the outbox;
    sync mode answers 200 once Inngest has accepted them.
    """
    settings: Settings = current_app.extensions["settings"]
    user = current()
    if user is None and settings.api_require_login:
        raise LoginRequired()
    payload = read_payload(request, settings.api_max_batch)
    events = build_events(
        payload.items,
        batch=payload.batch,
        settings=settings,
        user=user.public() if user else None,
        request_meta=request_meta(),
        scope=lambda: poster_scope(user),
        idempotency_key=request.headers.get("Idempotency-Key") or None,
    )
    g.event_count = len(events)
    # Decide the answer before sending, so nothing can fail once Inngest has the events.
    target = _redirect_target(payload) if payload.form and not wants_json(request) else None
    if settings.delivery_mode == "outbox":
        outbox.store(events)
        outbox.deliverer().notify()
        status = 202
    else:
        inngest.client().send([event.body for event in events])
        metrics.events_delivered(len(events))
        status = 200
    metrics.events_accepted(len(events))
    ids = [event.id for event in events]
    if target is not None:
        flash(", ".join(ids), "sent")
        return redirect(target, 303)
    return jsonify(status="ok", ids=ids), status


def init_app(app: Flask) -> None:
    """Register `POST /api`."""
    app.register_blueprint(bp)
