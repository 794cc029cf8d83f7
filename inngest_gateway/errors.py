"""One JSON error envelope for every error the service answers, and the handlers that render it."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException, default_exceptions

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered to the client; subclasses fix its status and code."""

    status_code = 500
    code = "internal_error"
    message = "The service failed to handle the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.errors = errors or {}
        self.headers = headers or {}


class InvalidJSON(APIError):
    status_code, code = 400, "invalid_json"
    message = "The request body is not valid JSON."


class InvalidForm(APIError):
    status_code, code = 400, "invalid_form"
    message = "The request body is not a well-formed form."


class EmptyBody(APIError):
    status_code, code = 400, "empty_body"
    message = "The request body is empty."


class LoginRequired(APIError):
    status_code, code = 401, "login_required"
    message = "Log in first."


class CredentialsRefused(LoginRequired):
    """Credentials the host's Flask-Login did not accept: never an anonymous post instead."""

    message = "The request's credentials were not accepted; log in again."


class InvalidCredentials(APIError):
    status_code, code = 401, "invalid_credentials"
    message = "The e-mail or password is incorrect."


class CrossSiteRequest(APIError):
    status_code, code = 403, "cross_site_request"
    message = "Cross-site requests are not allowed."


class EventNotAllowed(APIError):
    status_code, code = 403, "event_not_allowed"
    message = "This event name may not be sent from a browser."


class EventTooLarge(APIError):
    status_code, code = 413, "event_too_large"
    message = "An event is larger than the allowed size."


class UnsupportedMediaType(APIError):
    status_code, code = 415, "unsupported_media_type"
    message = "Send JSON (application/json) or an HTML form."


class PosterChanged(APIError):
    status_code, code = 409, "poster_changed"
    message = (
        "These events were queued for another user or session of this browser; "
        "they are not sent as the current one."
    )


class ValidationFailed(APIError):
    status_code, code = 422, "validation_failed"
    message = "The request is invalid."


class RateLimited(APIError):
    status_code, code = 429, "rate_limited"
    message = "Too many requests; try again later."


class UpstreamRejected(APIError):
    status_code, code = 502, "upstream_rejected"
    message = "Inngest refused the events."


class NotReady(APIError):
    status_code, code = 503, "not_ready"
    message = "The service cannot serve requests yet."


class NotConfigured(APIError):
    status_code, code = 503, "not_configured"
    message = "The gateway is not configured yet: INNGEST_EVENT_KEY is not set."


class UpstreamUnavailable(APIError):
    status_code, code = 503, "upstream_unavailable"
    message = (
        "Inngest did not confirm the events in time; it may or may not have received them. "
        "Retry with the same Idempotency-Key (or event ids), as the same poster (logged in, or "
        "keeping the session cookie), so that Inngest drops a repeat."
    )


class OutboxFull(APIError):
    status_code, code = 503, "outbox_full"
    message = "Too many events are waiting for delivery; try again shortly."


class OutboxUnavailable(APIError):
    status_code, code = 503, "outbox_unavailable"
    message = "The event could not be stored; try again shortly."


class UsersUnavailable(APIError):
    """IDENTITY=flask-session: the host's users database did not answer the lookup."""

    status_code, code = 503, "users_unavailable"
    message = "The users database is unavailable; try again shortly."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "5"})


class DatabaseUnavailable(APIError):
    status_code, code = 503, "database_unavailable"
    message = "The database is unavailable; try again shortly."


def envelope(
    status: int, code: str, message: str, errors: dict[str, Any] | None = None
) -> Response:
    """The error body every part of the service answers with."""
    g.error_code = code  # for the metrics of refused posts
    response = jsonify(
        status="error",
        code=code,
        message=message,
        errors=errors or {},
        request_id=g.get("request_id"),
    )
    response.status_code = status
    return response


def _api_error(exc: APIError) -> Response:
    response = envelope(exc.status_code, exc.code, exc.message, exc.errors)
    response.headers.update(exc.headers)
    return response


class BadRequest(APIError):
    status_code, code = 400, "bad_request"
    message = "The request is malformed."


class Unauthorized(APIError):
    status_code, code = 401, "unauthorized"
    message = "Credentials are required."


class Forbidden(APIError):
    status_code, code = 403, "forbidden"
    message = "Access is refused."


class NotFound(APIError):
    status_code, code = 404, "not_found"
    message = "No such route."


class MethodNotAllowed(APIError):
    status_code, code = 405, "method_not_allowed"
    message = "The method is not allowed for this route."


class PayloadTooLarge(APIError):
    status_code, code = 413, "payload_too_large"
    message = "The request body is too large."


# Werkzeug's HTTP errors, as the catalogue's errors of the same status.
_HTTP_ERRORS: dict[int, type[APIError]] = {
    cls.status_code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        PayloadTooLarge,
        UnsupportedMediaType,
    )
}


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
    known = _HTTP_ERRORS.get(status)
    if known is not None:
        return _api_error(known(exc.description or None, headers=headers))
    # A status the service never answers on its own (e.g. a host's abort(418) in our hooks).
    code = (exc.name or "error").lower().replace(" ", "_")
    response = envelope(status, code, exc.description or exc.name)
    response.headers.update(headers)
    return response


def _database_down(exc: DBAPIError) -> Response:
    if not exc.connection_invalidated and not isinstance(exc, OperationalError):
        return _unexpected(exc)
    log.warning("database unavailable: %s", type(exc.orig).__name__)
    return _api_error(DatabaseUnavailable(headers={"Retry-After": "5"}))


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return envelope(500, APIError.code, APIError.message)


def register(target: Flask | Blueprint) -> None:
    """Render every error, expected or not, as the JSON envelope: app-wide, or for a blueprint.

    Flask looks for a handler by status code in the blueprint and then the app before it
    looks by exception class, so a host's `errorhandler(405)` would win over a blueprint's
    `HTTPException` handler: each HTTP status gets its own handler here too.
    """
    target.register_error_handler(APIError, _api_error)
    target.register_error_handler(HTTPException, _http_error)
    for code in default_exceptions:
        target.register_error_handler(code, _http_error)
    target.register_error_handler(DBAPIError, _database_down)
    target.register_error_handler(Exception, _unexpected)


def init_app(app: Flask) -> None:
    """Render every error the app answers as the JSON envelope."""
    register(app)
