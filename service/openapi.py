"""The published contract: an OpenAPI 3.1 document built from the marshmallow schemas (apispec),
with the event schemas when configured, at `GET /openapi.json`, and a page at `GET /docs`."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app, jsonify, render_template
from werkzeug.routing import Rule

from inngest_gateway import __version__, apidoc
from inngest_gateway.event_schemas import glob_regex
from inngest_gateway.schemas import SERVER_KEYS, TS_MAX, EventSchema
from inngest_gateway.settings import Settings, format_duration
from inngest_gateway.state import gateway_state

from .auth import LoginSchema, current

bp = Blueprint("openapi", __name__)


# -- the document -------------------------------------------------------------------------
def _event_schema_components(settings: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Components for the event schemas, and the conditions tying them to event names."""
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
        conditions.append({"if": condition, "then": {"properties": {"data": apidoc.ref(name)}}})
    return components, conditions


def _path(rule: Rule) -> str:
    """A URL rule as an OpenAPI path: `<int:id>` becomes `{id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)


def _documented_paths(app: Flask, settings: Settings) -> dict[str, dict[str, Any]]:
    """What each view of the app declares (`apidoc.documented`), at the path it is served on."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        declared = apidoc.operations(app.view_functions[rule.endpoint], settings)
        methods = {method.lower() for method in rule.methods or ()}
        for method, operation in declared.items():
            if method in methods:
                paths.setdefault(_path(rule), {})[method] = operation
    return paths


def build_spec(app: Flask, settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the app's documented routes, for its gateway's settings.

    The paths are the app's own URL rules, so a gateway mounted under a prefix or another
    path is documented where it is served.
    """
    settings = settings or gateway_state(app).settings
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
        ("Error", apidoc.ErrorSchema),
        ("Accepted", apidoc.AcceptedSchema),
        ("Ok", apidoc.OkSchema),
        ("User", apidoc.UserSchema),
        ("LoggedIn", apidoc.LoggedInSchema),
        ("OutboxStatus", apidoc.OutboxStatusSchema),
        ("Ready", apidoc.ReadySchema),
    ):
        spec.components.schema(name, schema=schema)
    data_components, conditions = _event_schema_components(settings)
    for name, component in data_components.items():
        spec.components.schema(name, component)
    if conditions:
        spec.components.schema(
            "CheckedEvent",
            {
                "description": "An event whose data is checked by the "
                "INNGEST_GATEWAY_EVENT_SCHEMAS entries "
                "its name matches (all of them).",
                "allOf": [apidoc.ref("Event"), *conditions],
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
    for path, operations in _documented_paths(app, settings).items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _refine_event(document["components"]["schemas"]["Event"], settings)
    return document


def _refine_event(event: dict[str, Any], settings: Settings) -> None:
    """What the marshmallow schema says in code rather than in fields, and the ts window."""
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
    ts["description"] = (
        "Milliseconds since the epoch; default: when the post was received. At most "
        f"{format_duration(settings.api_ts_max_age)} before (INNGEST_GATEWAY_API_TS_MAX_AGE) and "
        f"{format_duration(settings.api_ts_max_skew)} after (INNGEST_GATEWAY_API_TS_MAX_SKEW) the "
        f"server's "
        "clock, else a 422: Inngest starts the functions an event triggers at its `ts`. "
        "`minimum` and `exclusiveMaximum` are Inngest's own bounds."
    )
    properties["id"]["description"] = (
        "The client's deduplication key (default: from Idempotency-Key). The event id is a "
        "UUID derived from it and the poster (the user, else the browser's session), so "
        "one poster's key never deduplicates another's; a new random UUID without a key."
    )


# -- views -------------------------------------------------------------------------------
def _document() -> dict[str, Any]:
    document: dict[str, Any] = current_app.extensions["openapi"]
    return document


@apidoc.documented(
    "get",
    {
        "summary": "This document",
        "responses": {
            "200": {
                "description": "The OpenAPI 3.1 document",
                "content": {apidoc.JSON: {"schema": {"type": "object"}}},
            },
            "500": apidoc.UNEXPECTED,
            "503": apidoc.DATABASE,
        },
    },
)
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


@apidoc.documented(
    "get",
    {
        "summary": "This document as a page",
        "responses": {
            "200": apidoc.page("The document, readable"),
            "500": apidoc.UNEXPECTED,
            "503": apidoc.DATABASE,
        },
    },
)
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
    """Register `/openapi.json` and `/docs`, then build the document once; call it last."""
    app.register_blueprint(bp)
    app.extensions["openapi"] = build_spec(app)
