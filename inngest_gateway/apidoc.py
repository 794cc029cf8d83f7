"""OpenAPI declarations beside the views: each view says what it answers, with `documented`.

The answers' marshmallow schemas and the building blocks of operations live here, so that
a view module can describe itself without importing the document's builder (openapi.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from marshmallow import Schema, fields, validate

from .settings import Settings

JSON = "application/json"
HTML = "text/html"
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
# An operation, or a function making it from the app's settings (when they shape it).
Operation = dict[str, Any] | Callable[[Settings], dict[str, Any]]
View = TypeVar("View", bound=Callable[..., Any])
_OPERATIONS: dict[Callable[..., Any], dict[str, Operation]] = {}


def documented(method: str, operation: Operation) -> Callable[[View], View]:
    """Declare the OpenAPI operation of a view for one HTTP method; put it outermost."""

    def decorate(view: View) -> View:
        _OPERATIONS.setdefault(view, {})[method.lower()] = operation
        return view

    return decorate


def operations(view: Callable[..., Any], settings: Settings) -> dict[str, dict[str, Any]]:
    """The operations declared for a view, by lower-case method; none when it has none."""
    return {
        method: operation(settings) if callable(operation) else operation
        for method, operation in _OPERATIONS.get(view, {}).items()
    }


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
    """A user as events (`data.user`) and `/auth/me` show them, in every mode."""

    id = fields.Raw(
        required=True,
        metadata={
            "type": ["integer", "string"],
            "description": "The user's primary key as the model has it: an integer key is "
            "an integer, any other (text, UUID) a string. It survives password changes; it "
            "is never the session's login id.",
        },
    )
    email = fields.String(metadata={"description": "When the user has one."})
    name = fields.String(metadata={"description": "When the user has one."})


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
def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def error(description: str, *codes: str, retry: bool = False) -> dict[str, Any]:
    """An error answer: the envelope, with the codes this answer can carry."""
    schema = {"allOf": [ref("Error")], "properties": {"code": {"enum": list(codes)}}}
    headers: dict[str, Any] = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    if retry:
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    codes_text = ", ".join(f"`{code}`" for code in codes)
    return {
        "description": f"{description} (code: {codes_text})",
        "headers": headers,
        "content": {JSON: {"schema": schema}},
    }


def ok(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {JSON: {"schema": ref(schema)}},
    }


def page(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {HTML: {"schema": {"type": "string"}}},
    }


def see_other(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "Location": {"description": "Where the page goes next.", "schema": {"type": "string"}},
            "X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"},
        },
    }


UNEXPECTED = error("The service failed unexpectedly", "internal_error")
DATABASE = error("The database is unavailable", "database_unavailable", retry=True)
CROSS_SITE = error("A cross-site request (by Sec-Fetch-Site and Origin)", "cross_site_request")
TOO_LARGE_BODY = error(
    "The body is larger than INNGEST_GATEWAY_API_MAX_BODY_BYTES", "payload_too_large"
)
RATE_LIMITED = error("Too many requests", "rate_limited", retry=True)
REQUEST_ID = "X-Request-ID"  # the parameter component, resolved by apispec
