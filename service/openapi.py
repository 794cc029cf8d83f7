"""The published contract: an OpenAPI 3.1 document built from the marshmallow schemas (apispec),
with the EVENT_SCHEMAS when configured, at `GET /openapi.json`, and a page at `GET /docs`."""

from __future__ import annotations

import copy
import fnmatch
import json
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app, jsonify, render_template
from marshmallow import Schema, fields, validate

from . import __version__
from .auth import current
from .event_schemas import glob_regex
from .events import RESERVED_PREFIX
from .schemas import MAX_ID_LENGTH, SERVER_KEYS, TS_MAX, EventSchema, LoginSchema
from .settings import Settings
from .state import gateway_state

bp = Blueprint("openapi", __name__)
JSON = "application/json"
HTML = "text/html"
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


# -- the answers, as marshmallow schemas ---------------------------------------------------
class ErrorSchema(Schema):
    """The envelope every error is answered with."""

    status = fields.String(required=True, validate=validate.OneOf(["error"]))
    code = fields.String(
        required=True, metadata={"description": "Machine-readable; see each answer's codes."}
    )
    message = fields.String(required=True, metadata={"description": "For people."})
    errors = fields.Dict(
        required=True,
        metadata={
            "description": "Failing fields and their messages; in a batch, keyed by the "
            "event's index first. Empty when no field is to blame."
        },
    )
    request_id = fields.String(
        required=True, allow_none=True, metadata={"description": "Also in X-Request-ID."}
    )


class AcceptedSchema(Schema):
    """Events taken: their ids, in the order posted."""

    status = fields.String(required=True, validate=validate.OneOf(["ok"]))
    ids = fields.List(fields.String(), required=True)


class OkSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class UserSchema(Schema):
    """A user as events (`data.user`) and `/auth/me` show them."""

    id = fields.Integer(required=True)
    email = fields.String(required=True)
    name = fields.String(required=True)


class LoggedInSchema(OkSchema):
    user = fields.Nested(UserSchema, required=True)


class OutboxStatusSchema(Schema):
    pending = fields.Integer(required=True)
    in_flight = fields.Integer(required=True)
    dead = fields.Integer(required=True)
    delivered = fields.Integer(required=True)
    oldest_pending_age_seconds = fields.Float(required=True)


class ReadySchema(OkSchema):
    database = fields.String(required=True, validate=validate.OneOf(["ok"]))
    outbox = fields.Nested(OutboxStatusSchema, required=True)


# -- building blocks -----------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, *codes: str, retry: bool = False) -> dict[str, Any]:
    """An error answer: the envelope, with the codes this answer can carry."""
    schema = {"allOf": [_ref("Error")], "properties": {"code": {"enum": list(codes)}}}
    headers: dict[str, Any] = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    if retry:
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    codes_text = ", ".join(f"`{code}`" for code in codes)
    return {
        "description": f"{description} (code: {codes_text})",
        "headers": headers,
        "content": {JSON: {"schema": schema}},
    }


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {JSON: {"schema": _ref(schema)}},
    }


def _page(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {HTML: {"schema": {"type": "string"}}},
    }


def _see_other(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "Location": {"description": "Where the page goes next.", "schema": {"type": "string"}},
            "X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"},
        },
    }


_UNEXPECTED = _error("The service failed unexpectedly", "internal_error")
_DATABASE = _error("The database is unavailable", "database_unavailable", retry=True)
_CROSS_SITE = _error("A cross-site request (by Sec-Fetch-Site and Origin)", "cross_site_request")
_TOO_LARGE_BODY = _error("The body is larger than API_MAX_BODY_BYTES", "payload_too_large")
_RATE_LIMITED = _error("Too many requests", "rate_limited", retry=True)
_REQUEST_ID = "X-Request-ID"  # the parameter component, resolved by apispec


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


def _event_schema_components(settings: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Components for the EVENT_SCHEMAS, and the conditions tying them to event names."""
    if settings.event_schemas is None:
        return {}, []
    components: dict[str, Any] = {}
    conditions: list[dict[str, Any]] = []
    for index, rule in enumerate(settings.event_schemas.rules):
        name = f"EventData{index}"
        schema = copy.deepcopy(rule.schema)
        if isinstance(schema, dict):
            schema.setdefault("title", rule.pattern)
            schema["x-event-pattern"] = rule.pattern
        components[name] = schema
        named = {
            "required": ["name"],
            "properties": {"name": {"pattern": glob_regex(rule.pattern)}},
        }
        condition: dict[str, Any] = named
        if fnmatch.fnmatchcase(settings.api_default_event, rule.pattern):
            condition = {"anyOf": [named, {"not": {"required": ["name"]}}]}
        conditions.append({"if": condition, "then": {"properties": {"data": _ref(name)}}})
    return components, conditions


def _post_api(settings: Settings, checked: bool) -> dict[str, Any]:
    event = _ref("CheckedEvent" if checked else "Event")
    batch = {"type": "array", "items": event, "minItems": 1, "maxItems": settings.api_max_batch}
    return {
        "summary": "Send events",
        "description": (
            "One event object, or an array of them, as JSON; or an HTML form (its fields "
            "become `data`). The server sets `data.user` (the logged-in user, else null) and "
            "`data.request`; clients may not send them, nor `data._inngest` (Inngest's own). "
            "Event names must match "
            f"API_ALLOWED_EVENTS ({', '.join(settings.api_allowed_events)}) and never start "
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
            _REQUEST_ID,
        ],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": {"oneOf": [event, batch]}},
                **{form: {"schema": _form_body()} for form in FORMS},
            },
        },
        "responses": {
            "200": _ok("Sent to Inngest (DELIVERY_MODE=sync)", "Accepted"),
            "202": _ok("Stored for delivery (DELIVERY_MODE=outbox)", "Accepted"),
            "303": _see_other("A form post from a page: to `next`, the referring page or /sent"),
            "400": _error(
                "The body cannot be parsed",
                "invalid_json",
                "invalid_form",
                "empty_body",
                "bad_request",
            ),
            "401": _error("API_REQUIRE_LOGIN is set and nobody is logged in", "login_required"),
            "403": _error(
                "A cross-site request, or an event name that is not allowed",
                "cross_site_request",
                "event_not_allowed",
            ),
            "413": _error(
                "The body exceeds API_MAX_BODY_BYTES, or an event API_MAX_EVENT_BYTES",
                "payload_too_large",
                "event_too_large",
            ),
            "415": _error("Neither JSON nor a form", "unsupported_media_type"),
            "422": _error(
                "The events are invalid (including data refused by EVENT_SCHEMAS)",
                "validation_failed",
            ),
            "429": _RATE_LIMITED,
            "500": _UNEXPECTED,
            "502": _error("Inngest refused the events (sync mode)", "upstream_rejected"),
            "503": _error(
                "Inngest, the outbox or the database is unavailable, or the outbox is full",
                "upstream_unavailable",
                "outbox_unavailable",
                "outbox_full",
                "database_unavailable",
                retry=True,
            ),
        },
    }


def _paths(settings: Settings, checked: bool) -> dict[str, dict[str, Any]]:
    login_form = {
        "type": "object",
        "properties": {
            "email": {"type": "string"},
            "password": {"type": "string"},
            "remember": {"type": "string"},
            "next": {"type": "string"},
        },
        "required": ["email", "password"],
    }
    return {
        "/api": {"post": _post_api(settings, checked)},
        "/auth/login": {
            "get": {
                "summary": "The login page",
                "parameters": [
                    {"name": "next", "in": "query", "required": False, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _page("The login form"),
                    "500": _UNEXPECTED,
                    "503": _DATABASE,
                },
            },
            "post": {
                "summary": "Log in",
                "description": "Unknown e-mail and wrong password get the same answer.",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": _ref("Login")},
                        **{form: {"schema": login_form} for form in FORMS},
                    },
                },
                "responses": {
                    "200": _ok("Logged in; the session cookie is set", "LoggedIn"),
                    "303": _see_other("A form post from a page: logged in, to `next` or /"),
                    "400": _error(
                        "The body cannot be parsed", "invalid_json", "invalid_form", "empty_body"
                    ),
                    "401": {
                        **_error("The e-mail or password is incorrect", "invalid_credentials"),
                        "content": {
                            **_error("", "invalid_credentials")["content"],
                            HTML: {"schema": {"type": "string"}},
                        },
                    },
                    "403": _CROSS_SITE,
                    "413": _TOO_LARGE_BODY,
                    "422": _error("The credentials are missing or malformed", "validation_failed"),
                    "429": _RATE_LIMITED,
                    "500": _UNEXPECTED,
                    "503": _DATABASE,
                },
            },
        },
        "/auth/logout": {
            "post": {
                "summary": "Log out: end this login on the server",
                "responses": {
                    "200": _ok("The session has ended", "Ok"),
                    "303": _see_other("A form post from a page: to /"),
                    "403": _CROSS_SITE,
                    "413": _TOO_LARGE_BODY,
                    "500": _UNEXPECTED,
                    "503": _DATABASE,
                },
            }
        },
        "/auth/me": {
            "get": {
                "summary": "The logged-in user",
                "responses": {
                    "200": _ok("The user", "User"),
                    "401": _error("Nobody is logged in", "login_required"),
                    "500": _UNEXPECTED,
                    "503": _DATABASE,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (see METRICS_TOKEN, METRICS_INTERNAL_ONLY)",
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format",
                        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error("The metrics token is missing or wrong", "unauthorized"),
                    "403": _error("Not an internal address", "forbidden"),
                    "500": _UNEXPECTED,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers",
                "responses": {"200": _ok("Alive", "Ok"), "500": _UNEXPECTED, "503": _DATABASE},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the database answers and takes writes",
                "responses": {
                    "200": _ok("Ready, with the outbox's state", "Ready"),
                    "500": _UNEXPECTED,
                    "503": _error(
                        "Not ready", "not_ready", "database_unavailable", "outbox_unavailable"
                    ),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    "500": _UNEXPECTED,
                    "503": _DATABASE,
                },
            }
        },
        "/": {
            "get": {
                "summary": "The demo page: a form and a fetch button posting to /api",
                "responses": {"200": _page("The page"), "500": _UNEXPECTED, "503": _DATABASE},
            }
        },
        "/sent": {
            "get": {
                "summary": "Where a form post lands when it names no page; shows the sent ids",
                "responses": {"200": _page("The page"), "500": _UNEXPECTED, "503": _DATABASE},
            }
        },
        "/docs": {
            "get": {
                "summary": "This document as a page",
                "responses": {
                    "200": _page("The document, readable"),
                    "500": _UNEXPECTED,
                    "503": _DATABASE,
                },
            }
        },
    }


def build_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for these settings."""
    spec = APISpec(
        title="inngest-gateway",
        version=__version__,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={
            "description": (
                "Turns browser form and XHR posts into Inngest events, with the user from the "
                "session. Every error is answered with the `Error` envelope."
            )
        },
    )
    for name, schema in (
        ("Event", EventSchema),
        ("Login", LoginSchema),
        ("Error", ErrorSchema),
        ("Accepted", AcceptedSchema),
        ("Ok", OkSchema),
        ("User", UserSchema),
        ("LoggedIn", LoggedInSchema),
        ("OutboxStatus", OutboxStatusSchema),
        ("Ready", ReadySchema),
    ):
        spec.components.schema(name, schema=schema)
    data_components, conditions = _event_schema_components(settings)
    for name, component in data_components.items():
        spec.components.schema(name, component)
    if conditions:
        spec.components.schema(
            "CheckedEvent",
            {
                "description": "An event whose data is checked by the EVENT_SCHEMAS entries "
                "its name matches (all of them).",
                "allOf": [_ref("Event"), *conditions],
            },
        )
    spec.components.header(
        "X-Request-ID",
        {
            "description": "The request's id, always made by the server (32 hex digits); also "
            "in the logs, the error envelope and events' `data.request.id`.",
            "schema": {"type": "string"},
        },
    )
    spec.components.header(
        "Retry-After",
        {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}},
    )
    spec.components.parameter(
        "X-Request-ID",
        "header",
        {
            "required": False,
            "description": "The client's own id for the request, for correlation only: kept "
            "as `data.request.client_request_id` and `client_request_id` in the access log "
            "when it is 1 to 128 of `A-Za-z0-9._:@/+=-`, else ignored. It never replaces "
            "the server's request id.",
            "schema": {"type": "string", "maxLength": 128},
        },
    )
    for path, operations in _paths(settings, bool(conditions)).items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _refine_event(document["components"]["schemas"]["Event"])
    return document


def _refine_event(event: dict[str, Any]) -> None:
    """What the marshmallow schema says in code rather than in fields."""
    properties = event["properties"]
    properties["data"] = {
        "description": 'Any JSON value; a non-object arrives as `{"value": ...}`, null or '
        "absent as `{}`. Reserved keys, refused with a 422: "
        + ", ".join(f"`{key}`" for key in SERVER_KEYS)
        + " (the server sets `user` and `request`; Inngest owns `_inngest`).",
        "properties": {key: False for key in SERVER_KEYS},
    }
    ts = properties["ts"]
    ts.pop("maximum", None)
    ts["exclusiveMaximum"] = TS_MAX
    ts["description"] = "Milliseconds since the epoch; default: when the post was received."
    properties["id"]["description"] = (
        "The client's deduplication key (default: from Idempotency-Key). The event id is a "
        "UUID derived from it and the poster (the user, else the browser's session), so "
        "one poster's key never deduplicates another's; a new random UUID without a key."
    )


# -- views -------------------------------------------------------------------------------
def _document() -> dict[str, Any]:
    document: dict[str, Any] = current_app.extensions["openapi"]
    return document


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document."""
    return jsonify(_document())


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Each operation, flattened for the page, with its schemas as indented JSON."""
    operations = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            content = operation.get("requestBody", {}).get("content", {})
            operations.append(
                {
                    "id": f"{method}-{path}".replace("/", "-").strip("-"),
                    "method": method.upper(),
                    "path": path,
                    "summary": operation.get("summary", ""),
                    "description": operation.get("description", ""),
                    "parameters": [_resolve(document, p) for p in operation.get("parameters", [])],
                    "bodies": [(kind, _pretty(body["schema"])) for kind, body in content.items()],
                    "responses": [
                        {
                            "status": status,
                            "description": answer.get("description", ""),
                            "types": ", ".join(answer.get("content", {})) or "(no body)",
                        }
                        for status, answer in operation["responses"].items()
                    ],
                }
            )
    return operations


def _resolve(document: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """A `$ref`'d component as itself."""
    ref = item.get("$ref")
    if not isinstance(ref, str):
        return item
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    resolved: dict[str, Any] = node
    return resolved


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@bp.get("/docs")
def docs() -> str:
    """The document as a page: no script, no external assets."""
    document = _document()
    schemas = document.get("components", {}).get("schemas", {})
    return render_template(
        "docs.html",
        user=current(),
        info=document["info"],
        version=document["openapi"],
        operations=_operations(document),
        schemas=[(name, _pretty(schema)) for name, schema in schemas.items()],
    )


def init_app(app: Flask) -> None:
    """Build the document once, from the settings, and register `/openapi.json` and `/docs`."""
    app.extensions["openapi"] = build_spec(gateway_state(app).settings)
    app.register_blueprint(bp)
