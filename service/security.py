"""What a browser and a proxy need to get right: forwarded headers, security headers, caching."""

from __future__ import annotations

from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from .settings import service_settings

# The pages load only their own script and stylesheet, post only to this service, and are
# never framed; nothing inline is needed, so nothing inline is allowed.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ]
)


def _headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Frame-Options", "DENY")
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    user = g.get("_login_user")  # set when the request looked up its user; no query here
    if (user is not None and user.is_authenticated) or "Set-Cookie" in headers:
        # A user's own answers, and any answer that sets a cookie, stay out of shared caches.
        headers["Cache-Control"] = "no-store"
        response.vary.add("Cookie")
    return response


def init_app(app: Flask) -> None:
    """Trust TRUSTED_PROXIES hops of X-Forwarded-For/-Proto, and add security headers."""
    hops = service_settings(app).trusted_proxies
    if hops:
        # The address and scheme nginx saw; the Host header nginx passes on as it is.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=0, x_port=0, x_prefix=0
        )
    app.after_request(_headers)
