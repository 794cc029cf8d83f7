"""Rate limits (Flask-Limiter): posts per user or client IP; logins per IP and per e-mail."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from flask_login import current_user

from .errors import envelope
from .payload import FORM_TYPES, form_fields
from .settings import Settings
from .users import normalize_email


def client_ip() -> str:
    """The client's address, as the proxy in front saw it when TRUSTED_PROXIES says so."""
    return request.remote_addr or "unknown"


def poster() -> str:
    """Who a post counts against: the logged-in user, else the client's IP."""
    if current_user.is_authenticated:
        return f"user:{current_user.id}"
    return f"ip:{client_ip()}"


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


def _settings() -> Settings:
    settings: Settings = current_app.extensions["settings"]
    return settings


def _failed_login(response: Response) -> bool:
    return response.status_code == 401


def _breached(limit: RequestLimit) -> None:
    g.rate_limit_reset = limit.reset_at  # for Retry-After; the handler below renders the answer


def _limited(exc: RateLimitExceeded) -> Response:
    """429 in the usual envelope, with when to try again."""
    retry = max(1, math.ceil(g.get("rate_limit_reset", time.time() + 1) - time.time()))
    response = envelope(
        429,
        "rate_limited",
        f"Too many requests (limit: {exc.description}); try again in {retry} s.",
    )
    response.headers["Retry-After"] = str(retry)
    return response


def init_app(app: Flask) -> None:
    """One limiter per app, and the limits on `POST /api` and `POST /auth/login`."""
    settings: Settings = app.extensions["settings"]
    limiter = Limiter(
        key_func=client_ip,
        app=app,
        storage_uri=settings.ratelimit_storage_uri,
        key_prefix=settings.ratelimit_key_prefix,
        # Two counters per key, whatever the rate: a moving window keeps every hit.
        strategy="sliding-window-counter",
        # Its headers would put a Retry-After on every answer; ours goes on the 429 only.
        headers_enabled=False,
        enabled=settings.ratelimit_enabled,
        swallow_errors=False,
        on_breach=_breached,
    )
    app.register_error_handler(RateLimitExceeded, _limited)
    app.extensions["rate_limiter"] = limiter
    views: dict[str, Any] = app.view_functions  # wrapped in place, after registration
    views["api.post_events"] = limiter.limit(
        lambda: _settings().ratelimit_api, key_func=poster, scope="api"
    )(views["api.post_events"])
    login = limiter.limit(lambda: _settings().ratelimit_login_ip, scope="login-ip")(
        views["auth.login"]
    )
    # Only failed attempts count against an e-mail; once over, even the right password waits.
    views["auth.login"] = limiter.limit(
        lambda: _settings().ratelimit_login_email,
        key_func=login_email,
        scope="login-email",
        deduct_when=_failed_login,
    )(login)
