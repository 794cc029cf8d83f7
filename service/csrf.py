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
    """Refuse cross-site requests to this view."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_request()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    """Let trusted origins call `/api` from their pages with cookies (CORS)."""
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
