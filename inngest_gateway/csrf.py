"""Cross-site request refusal, judged from `Sec-Fetch-Site` and `Origin` as browsers send them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Response, request
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


def _vary_by_origin(response: Response) -> Response:
    response.vary.add("Origin")
    return response


def allow_trusted_origins(bp: Blueprint, trusted_origins: tuple[str, ...]) -> None:
    """CORS headers on the blueprint's answers, for a trusted `Origin` only; `Vary: Origin` on all.

    Every answer depends on the request's Origin (its CORS headers, or a post's refusal), so
    none may be kept by a shared cache for another origin, the client's files included. A
    request without Origin gets no CORS headers: flask-cors would otherwise list the trusted
    origins (with one, the very header a trusted page needs), and no `Vary` with them.
    """
    bp.after_request(_vary_by_origin)
    if trusted_origins:
        CORS(
            bp,
            origins=list(trusted_origins),
            always_send=False,
            vary_header=False,  # ours above, on every answer; flask-cors adds it only for some
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
