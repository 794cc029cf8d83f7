"""`POST /api`: a browser's post becomes Inngest events, stored (or sent) before the answer.

The blueprint is made per app (`blueprint`), with everything the API needs kept inside it:
its own hooks, error handlers, rate limit and CORS, so a host app mounting it keeps its own.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from flask import (
    Blueprint,
    Response,
    flash,
    g,
    jsonify,
    redirect,
    request,
)
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.routing import Rule

from . import apidoc, browser, csrf, errors, limits, metrics
from .events import RESERVED_PREFIX, build_events
from .login import login_required
from .payload import (
    Payload,
    buffer_streamed_body,
    read_payload,
    referrer_path,
    same_origin_path,
    wants_json,
)
from .poster import (
    POSTER_HEADER,
    carries_credentials,
    check_poster,
    current_poster,
    poster_key,
    poster_scope,
)
from .requestids import client_request_id
from .schemas import MAX_ID_LENGTH
from .settings import Settings
from .state import BLUEPRINT, POST_ENDPOINT, current_limiter, gateway_state

FALLBACK_ENDPOINT = f"{BLUEPRINT}.method_not_allowed"
SCRIPT_ENDPOINT = f"{BLUEPRINT}.{browser.ENDPOINT}"
ALLOWED_METHODS = ("OPTIONS", "POST")


class FallbackRule(Rule):
    """The API path for every other method, so that any method gets the JSON 405.

    Routing errors never reach a blueprint's error handlers; a rule that matches keeps the
    405 inside the blueprint. Metrics count it as unmatched, like any other routing miss.
    """

    fallback = True


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
    fallback = gateway_state().redirect_to
    default = fallback() if callable(fallback) else fallback
    return same_origin_path(payload.next) or referrer_path(request) or default


def _form_body() -> dict[str, Any]:
    value = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "The event name (else the default)."},
            "next": {"type": "string", "description": "A path on this site to go to next."},
        },
        "additionalProperties": value,
        "description": "Every other field goes into `data`; a repeated field as a list.",
    }


def _post_events_doc(settings: Settings) -> dict[str, Any]:
    """The operation of `POST /api`: its limits and names come from the settings."""
    checked = settings.event_schemas is not None and bool(settings.event_schemas.rules)
    event = apidoc.ref("CheckedEvent" if checked else "Event")
    batch = {"type": "array", "items": event, "minItems": 1, "maxItems": settings.api_max_batch}
    return {
        "summary": "Send events",
        "description": (
            "One event object, or an array of them, as JSON; or an HTML form (its fields "
            "become `data`). The server sets `data.user` (the logged-in user, else null) and "
            "`data.request`; clients may not send them, nor `data._inngest` (Inngest's own). "
            "Event names must match "
            f"INNGEST_GATEWAY_API_ALLOWED_EVENTS ({', '.join(settings.api_allowed_events)}) and "
            f"never start "
            f"with `{RESERVED_PREFIX}`; a post without a name sends "
            f"`{settings.api_default_event}`. JSON must be strict: UTF-8, finite numbers, "
            "nested at most 64 levels. Outbox mode answers 202 once stored, sync mode 200 "
            "once Inngest has accepted; a form submitted by a page is redirected (303)."
        ),
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "The client key of an event that names no `id` (suffixed "
                "`:index` in a batch); the event id is derived from it and the poster.",
                "schema": {"type": "string", "maxLength": MAX_ID_LENGTH - 8},
            },
            {
                "name": POSTER_HEADER,
                "in": "header",
                "required": False,
                "description": "The poster the events were queued for (the page's "
                "`data-poster`, sent by the browser client); another poster's is a 409.",
                "schema": {"type": "string"},
            },
            apidoc.REQUEST_ID,
        ],
        "requestBody": {
            "required": True,
            "content": {
                apidoc.JSON: {"schema": {"oneOf": [event, batch]}},
                **{form: {"schema": _form_body()} for form in apidoc.FORMS},
            },
        },
        "responses": {
            "200": apidoc.ok("Sent to Inngest (INNGEST_GATEWAY_DELIVERY_MODE=sync)", "Accepted"),
            "202": apidoc.ok(
                "Stored for delivery (INNGEST_GATEWAY_DELIVERY_MODE=outbox)", "Accepted"
            ),
            "303": apidoc.see_other(
                "A form post from a page: to `next`, the referring page or /sent"
            ),
            "400": apidoc.error(
                "The body cannot be parsed",
                "invalid_json",
                "invalid_form",
                "empty_body",
                "bad_request",
            ),
            "401": apidoc.error(
                "INNGEST_GATEWAY_API_REQUIRE_LOGIN is set and nobody is logged in, or the request "
                "carries credentials (a token, HTTP Basic) that the app does not accept",
                "login_required",
            ),
            "403": apidoc.error(
                "A cross-site request, or an event name that is not allowed",
                "cross_site_request",
                "event_not_allowed",
            ),
            "409": apidoc.error(
                "The events were queued for another poster of this browser",
                "poster_changed",
            ),
            "413": apidoc.error(
                "The body exceeds INNGEST_GATEWAY_API_MAX_BODY_BYTES, or an event "
                "INNGEST_GATEWAY_API_MAX_EVENT_BYTES",
                "payload_too_large",
                "event_too_large",
            ),
            "415": apidoc.error("Neither JSON nor a form", "unsupported_media_type"),
            "422": apidoc.error(
                "The events are invalid (including data refused by INNGEST_GATEWAY_EVENT_SCHEMAS)",
                "validation_failed",
            ),
            "429": apidoc.RATE_LIMITED,
            "500": apidoc.UNEXPECTED,
            "502": apidoc.error("Inngest refused the events (sync mode)", "upstream_rejected"),
            "503": apidoc.error(
                "Inngest, the outbox or the database is unavailable, the outbox is full, or "
                "INNGEST_EVENT_KEY is not set",
                "upstream_unavailable",
                "outbox_unavailable",
                "outbox_full",
                "database_unavailable",
                "not_configured",
                retry=True,
            ),
        },
    }


@apidoc.documented("post", _post_events_doc)
@csrf.protect  # first: a refused request never counts against the rate limit
@limits.limit(
    lambda: gateway_state().settings.ratelimit_api,
    limiter=current_limiter,
    scope="api",
    key=poster_key,
)
def post_events() -> Any:
    """Validate the posted events, store or send them, and answer with their ids.

    Outbox mode (the default) answers 202 once the events are committed to the outbox;
    sync mode answers 200 once Inngest has accepted them.
    """
    state = gateway_state()
    settings = state.settings
    state.delivery.check_secret_key()
    user = current_poster()
    if user is None and carries_credentials():
        raise errors.CredentialsRefused()  # as the host's own views would: never anonymous
    if user is None and settings.api_require_login:
        return login_required(state.login_url)  # 401, or a form post to the login page
    check_poster(user)
    payload = read_payload(request, settings.api_max_batch)
    events = build_events(
        payload.items,
        batch=payload.batch,
        settings=settings,
        user=user,
        request_meta=request_meta(),
        scope=lambda: poster_scope(user),
        idempotency_key=request.headers.get("Idempotency-Key") or None,
    )
    g.event_count = len(events)
    # Decide the answer before sending, so nothing can fail once Inngest has the events.
    target = _redirect_target(payload) if payload.form and not wants_json(request) else None
    status = state.delivery.submit(events)
    ids = [event.id for event in events]
    if target is not None:
        flash(", ".join(ids), "sent")
        return redirect(target, 303)
    return jsonify(status="ok", ids=ids), status


def method_not_allowed(**_: Any) -> Any:
    """Any method but POST on the API path: the JSON 405, with `Allow`."""
    raise MethodNotAllowed(valid_methods=list(ALLOWED_METHODS))


def _before() -> None:
    """Per request of this blueprint only: its limits, ids, and a fully read body."""
    state = gateway_state()
    limit = state.settings.api_max_body_bytes
    request.max_form_memory_size = limit
    # Flask 3.1 takes a limit per request; before it, only the app's MAX_CONTENT_LENGTH, and
    # buffer_streamed_body(limit) below refuses a body over the gateway's own.
    with contextlib.suppress(AttributeError):
        request.max_content_length = limit
    if "request_id" not in g:  # a host that gives requests ids of its own keeps them
        g.request_id = uuid.uuid4().hex
        g.client_request_id = client_request_id()
    if "received_ms" not in g:
        g.received_ms = int(time.time() * 1000)
    g.setdefault("client_request_id", None)
    if request.endpoint == SCRIPT_ENDPOINT:
        return  # the client's files: no body to read, nothing to store
    buffer_streamed_body(limit)


def _after(response: Response) -> Response:
    response.headers.setdefault("X-Request-ID", g.get("request_id") or "")
    if request.endpoint == POST_ENDPOINT and response.status_code >= 400:
        metrics.post_refused(response.status_code)
    return response


def blueprint(settings: Settings, path: str) -> Blueprint:
    """A fresh blueprint for one app (its CORS depends on the app's settings)."""
    bp = Blueprint(BLUEPRINT, __name__)
    bp.add_url_rule(path, "post_events", post_events, methods=["POST"])
    browser.register(bp)
    bp.before_request(_before)
    bp.after_request(_after)
    errors.register(bp)
    csrf.allow_trusted_origins(bp, settings.trusted_origins)
    return bp
