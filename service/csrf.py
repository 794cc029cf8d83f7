"""Cross-site request refusal, judged from `Sec-Fetch-Site` and `Origin` as browsers send them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, request
from flask_cors import CORS

from .errors import CrossSiteRequest
from .state import gateway_state

F = TypeVar("F", bound=Callable[..., Any])


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_request(trusted_origins: tuple[str, ...]) -> None:
    """Raise unless the request comes from this site's own pages or a trusted origin.

    Browsers send `Sec-Fetch-Site` and, on posts, `Origin`; programs such as curl send
    neither, carry no ambient cookies, and pass.
    """
    site = (request.headers.get("Sec-Fetch-Site") or "").lower()
    if site in ("same-origin", "none"):
        return  # the browser itself vouches that the page is ours, or that no page sent it
    origin = request.headers.get("Origin")
    if not site and origin is None:
        return
    allowed = {_origin_of(request.host_url), *trusted_origins}
    if origin is not None and origin.lower() in allowed:
        return
    raise CrossSiteRequest(f"Requests from {origin or 'another site'} are not allowed.")


def protect(view: F) -> F:
    """Refuse cross-site requests to this view before anything else it is wrapped in runs.

    Put it above the rate limits: a refused request must never count against them
    (another site could otherwise spend a visitor's quota, or lock the visitor's address
    out of logging in).
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_request(gateway_state().settings.trusted_origins)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def allow_trusted_origins(bp: Blueprint, trusted_origins: tuple[str, ...]) -> None:
    """CORS headers on the blueprint's answers, for the trusted origins only."""
    if trusted_origins:
        CORS(
            bp,
            origins=list(trusted_origins),
            supports_credentials=True,
            allow_headers=[
                "Content-Type",
                "Idempotency-Key",
                "X-Inngest-Poster",
                "X-Request-ID",
                "X-Requested-With",
            ],
            expose_headers=["X-Request-ID", "Retry-After"],
            methods=["POST"],
        )
