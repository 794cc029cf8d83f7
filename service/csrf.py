"""Cross-site request refusal, judged from `Sec-Fetch-Site` and `Origin` as browsers send them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, current_app, request
from flask_cors import CORS

from .errors import CrossSiteRequest
from .settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

# Marks a view `protect` wrapped; decorators that use functools.wraps (the rate limits) keep it.
_PROTECTED = "csrf_protected"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_request() -> None:
    """Raise unless the request comes from this service's own pages or a trusted origin.

    Browsers send `Sec-Fetch-Site` and, on posts, `Origin`; programs such as curl send
    neither, carry no ambient cookies, and pass.
    """
    settings: Settings = current_app.extensions["settings"]
    site = (request.headers.get("Sec-Fetch-Site") or "").lower()
    if site in ("same-origin", "none"):
        return  # the browser itself vouches that the page is ours, or that no page sent it
    origin = request.headers.get("Origin")
    if not site and origin is None:
        return
    allowed = {_origin_of(request.host_url), *settings.trusted_origins}
    if origin is not None and origin.lower() in allowed:
        return
    raise CrossSiteRequest(f"Requests from {origin or 'another site'} are not allowed.")


def protect(view: F) -> F:
    """Refuse cross-site requests to this view, before anything else counts or reads them.

    `init_app` checks marked views before the view and its decorators run, so a refused
    request never reaches the rate limits (another site could otherwise spend a visitor's
    quota, or lock the visitor's address out of logging in); the check in the view itself
    stays, in case the view is ever called without that hook.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_request()
        return view(*args, **kwargs)

    setattr(wrapper, _PROTECTED, True)
    return wrapper  # type: ignore[return-value]


def _check_protected_view() -> None:
    rule = request.url_rule
    if request.method == "OPTIONS" and getattr(rule, "provide_automatic_options", False):
        return  # Flask answers a preflight itself, without the view (CORS decides its headers)
    view = current_app.view_functions.get(request.endpoint or "")
    if view is not None and getattr(view, _PROTECTED, False):
        check_request()


def init_app(app: Flask) -> None:
    """Refuse cross-site requests to protected views up front; CORS for trusted origins.

    The hook runs before Flask-Limiter's checks, which happen later (its own hook is added
    when the limits are set up, after this one, and the per-view limits run inside the view).
    """
    app.before_request(_check_protected_view)
    settings: Settings = app.extensions["settings"]
    if settings.trusted_origins:
        CORS(
            app,
            resources={r"/api": {"origins": list(settings.trusted_origins)}},
            supports_credentials=True,
            allow_headers=["Content-Type", "Idempotency-Key", "X-Request-ID", "X-Requested-With"],
            expose_headers=["X-Request-ID", "Retry-After"],
            methods=["POST"],
        )
