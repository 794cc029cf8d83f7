"""CORS on the gateway's blueprint as a browser meets it: the kinds of request and the checks.

Shared by the service's tests and the extension's own (tests/extension), so nothing here
imports the service.
"""

from __future__ import annotations

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

TRUSTED = "https://app.example"

# The blueprint's kinds of answer: a post, its preflight, and the client's cacheable files.
CORS_REQUESTS = {
    "post": ("POST", "/api"),
    "preflight": ("OPTIONS", "/api"),
    "script": ("GET", "/inngest-gateway.js"),
    "module": ("GET", "/inngest-gateway.mjs"),
    "types": ("GET", "/inngest-gateway.d.ts"),
}


def cors_request(
    client: FlaskClient, kind: str, origin: str | None, prefix: str = "", **headers: str
) -> TestResponse:
    """One of CORS_REQUESTS, from a page on `origin` (None: no Origin header, as curl sends)."""
    method, path = CORS_REQUESTS[kind]
    if origin is not None:
        headers["Origin"] = origin
    if kind == "preflight":
        headers["Access-Control-Request-Method"] = "POST"
        headers["Access-Control-Request-Headers"] = "content-type"
    body = {"json": {"name": "app/cors"}} if method == "POST" else {}
    response = client.open(prefix + path, method=method, headers=headers, **body)
    response.get_data()  # read, then closed: the files are streamed
    response.close()
    return response


def assert_cors_answer(response: TestResponse, origin: str | None, allowed: bool) -> None:
    """`Vary: Origin` always (once); CORS headers only for an Origin that is allowed."""
    assert response.status_code < 500, response.get_data(as_text=True)
    varies = [v.strip().lower() for h in response.headers.getlist("Vary") for v in h.split(",")]
    assert varies.count("origin") == 1, response.headers
    cors = {k for k in response.headers.keys() if k.lower().startswith("access-control-")}
    if allowed:
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
    else:
        assert cors == set(), response.headers


def trusted_origin_preflights(
    client: FlaskClient, trusted: str
) -> tuple[TestResponse, TestResponse, TestResponse]:
    """A preflight from `trusted` to /api, the same to the host's /, and one to /api from
    another origin."""
    preflight = {
        "Origin": trusted,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Content-Type",
    }
    return (
        client.options("/api", headers=preflight),
        client.options("/", headers=preflight),
        client.options("/api", headers={**preflight, "Origin": "https://evil.example"}),
    )
