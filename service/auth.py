"""Logging in and out: Flask-Login bound to the users table, and the `/auth` views."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    jsonify,
    redirect,
    render_template,
    request,
    session,
)
from flask_login import LoginManager, current_user, login_user, logout_user
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate

from inngest_gateway import apidoc, csrf, limits
from inngest_gateway.errors import InvalidCredentials, LoginRequired, ValidationFailed
from inngest_gateway.payload import (
    FORM_TYPES,
    JSON_TYPE,
    form_fields,
    same_origin_path,
    strict_json,
    wants_json,
)
from inngest_gateway.poster import ANONYMOUS_SCOPE_KEY
from inngest_gateway.state import current_limiter, gateway_state

from .settings import ServiceSettings, service_settings
from .users import (
    LoggedIn,
    authenticate,
    bound_login_reads,
    end_session,
    load_user,
    normalize_email,
    start_session,
)

__all__ = ["LoginSchema", "bp", "current", "init_app", "login_manager"]

login_manager = LoginManager()
login_manager.session_protection = "basic"
bp = Blueprint("auth", __name__, url_prefix="/auth")


class LoginSchema(Schema):
    """Credentials posted to `/auth/login`."""

    class Meta:
        unknown = RAISE

    email = fields.String(required=True, validate=validate.Length(min=1, max=254))
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024))
    remember = fields.Boolean(load_default=False)
    next = fields.String(load_default=None)


@login_manager.user_loader
def _load_user(token: str) -> LoggedIn | None:
    return load_user(token)


@login_manager.unauthorized_handler
def _unauthorized() -> Response:
    raise LoginRequired()


def current() -> LoggedIn | None:
    """The logged-in user, or None for an anonymous request."""
    user: LoggedIn | None = current_user if current_user.is_authenticated else None
    return user


def login_email() -> str:
    """The e-mail a login names, read from the (cached) body; failures are counted per e-mail."""
    email: Any = None
    if request.is_json:
        try:
            body = json.loads(request.get_data(cache=True) or b"null")
        except ValueError:
            body = None
        email = body.get("email") if isinstance(body, dict) else None
    elif request.mimetype in FORM_TYPES:
        email = form_fields(request).get("email")  # a malformed form is a 400 here already
    return f"email:{normalize_email(email)}" if isinstance(email, str) else "email:-"


def _settings() -> ServiceSettings:
    return service_settings()


def _credentials() -> dict[str, Any]:
    if request.mimetype == JSON_TYPE:
        body = strict_json(request.get_data(cache=True))
        schema = LoginSchema()
    elif request.mimetype in FORM_TYPES:
        body = form_fields(request).to_dict()
        schema = LoginSchema(unknown=EXCLUDE)
    else:
        raise ValidationFailed(
            "Send the credentials as JSON or as an HTML form.",
            errors={"_schema": ["Expected application/json or a form body."]},
        )
    try:
        credentials: dict[str, Any] = schema.load(body)
    except ValidationError as exc:
        raise ValidationFailed(errors=dict(exc.messages_dict)) from None
    return credentials


def _navigation() -> bool:
    """A form submitted by a page, which expects a page back rather than JSON."""
    return request.mimetype in FORM_TYPES and not wants_json(request)


_LOGIN_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "email": {"type": "string"},
        "password": {"type": "string"},
        "remember": {"type": "string"},
        "next": {"type": "string"},
    },
    "required": ["email", "password"],
}


@apidoc.documented(
    "get",
    {
        "summary": "The login page",
        "parameters": [
            {"name": "next", "in": "query", "required": False, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": apidoc.page("The login form"),
            "500": apidoc.UNEXPECTED,
            "503": apidoc.DATABASE,
        },
    },
)
@bp.get("/login")
def login_page() -> str:
    """The login form; it works without JavaScript."""
    return render_template("login.html", next=same_origin_path(request.args.get("next")))


@apidoc.documented(
    "post",
    {
        "summary": "Log in",
        "description": "Unknown e-mail and wrong password get the same answer.",
        "requestBody": {
            "required": True,
            "content": {
                apidoc.JSON: {"schema": apidoc.ref("Login")},
                **{form: {"schema": _LOGIN_FORM} for form in apidoc.FORMS},
            },
        },
        "responses": {
            "200": apidoc.ok("Logged in; the session cookie is set", "LoggedIn"),
            "303": apidoc.see_other("A form post from a page: logged in, to `next` or /"),
            "400": apidoc.error(
                "The body cannot be parsed", "invalid_json", "invalid_form", "empty_body"
            ),
            "401": {
                **apidoc.error("The e-mail or password is incorrect", "invalid_credentials"),
                "content": {
                    **apidoc.error("", "invalid_credentials")["content"],
                    apidoc.HTML: {"schema": {"type": "string"}},
                },
            },
            "403": apidoc.CROSS_SITE,
            "413": apidoc.TOO_LARGE_BODY,
            "422": apidoc.error("The credentials are missing or malformed", "validation_failed"),
            "429": apidoc.RATE_LIMITED,
            "500": apidoc.UNEXPECTED,
            "503": apidoc.DATABASE,
        },
    },
)
@bp.post("/login")
@csrf.protect  # first: a refused request never counts against the rate limits
@limits.limit(
    lambda: _settings().login_ratelimit_ip,
    limiter=current_limiter,
    scope="login-ip",
)
# Only failed attempts count against an e-mail; once over, even the right password waits.
@limits.limit(
    lambda: _settings().login_ratelimit_email,
    limiter=current_limiter,
    scope="login-email",
    key=login_email,
    count_when=lambda status: status == 401,
)
def login() -> Any:
    """Check the credentials and start a session; unknown e-mail and wrong password look alike."""
    credentials = _credentials()
    user = authenticate(credentials["email"], credentials["password"])
    if user is None:
        if _navigation():
            page = render_template(
                "login.html",
                next=same_origin_path(credentials["next"]),
                email=credentials["email"],
                error=InvalidCredentials.message,
            )
            return page, 401
        raise InvalidCredentials()
    previous = current()
    if previous is not None:  # a new login on this client replaces the one it had
        end_session(previous.get_id())
    settings = _settings()
    remember = credentials["remember"]
    lifetime = settings.remember_cookie_duration if remember else settings.session_lifetime
    login_user(start_session(user, lifetime, remember=remember), remember=remember)
    session.pop(ANONYMOUS_SCOPE_KEY, None)
    if _navigation():
        return redirect(same_origin_path(credentials["next"]) or "/", 303)
    return jsonify(status="ok", user=user.public())


@apidoc.documented(
    "post",
    {
        "summary": "Log out: end this login on the server",
        "responses": {
            "200": apidoc.ok("The session has ended", "Ok"),
            "303": apidoc.see_other("A form post from a page: to /"),
            "403": apidoc.CROSS_SITE,
            "413": apidoc.TOO_LARGE_BODY,
            "500": apidoc.UNEXPECTED,
            "503": apidoc.DATABASE,
        },
    },
)
@bp.post("/logout")
@csrf.protect
def logout() -> Any:
    """End this login on the server, so copies of its cookies stop working too."""
    user = current()
    if user is not None:
        end_session(user.get_id())
    logout_user()
    session.pop(ANONYMOUS_SCOPE_KEY, None)  # the next visitor of this browser is someone else
    if _navigation():
        return redirect("/", 303)
    return jsonify(status="ok")


@apidoc.documented(
    "get",
    {
        "summary": "The logged-in user",
        "responses": {
            "200": apidoc.ok("The user", "User"),
            "401": apidoc.error("Nobody is logged in", "login_required"),
            "500": apidoc.UNEXPECTED,
            "503": apidoc.DATABASE,
        },
    },
)
@bp.get("/me")
def me() -> Response:
    """The logged-in user, or 401."""
    user = current()
    if user is None:
        raise LoginRequired()
    return jsonify(user.public())


def init_app(app: Flask) -> None:
    """Bind Flask-Login and register the `/auth` views."""
    settings = service_settings(app)
    app.config["REMEMBER_COOKIE_DURATION"] = timedelta(seconds=settings.remember_cookie_duration)
    login_manager.init_app(app)
    bound_login_reads(app, gateway_state(app).settings.outbox_write_timeout)
    app.register_blueprint(bp)
