"""The service's Prometheus metrics (HTTP requests, the host's cookies) and `GET /metrics`.

A scrape exposes the gateway's metrics, the service's, and the outbox's depth and age, read
from the database at scrape time so that every worker answers the same. Under gunicorn
(`PROMETHEUS_MULTIPROC_DIR`) the counters of every worker are added up.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from inngest_gateway import apidoc
from inngest_gateway.errors import envelope
from inngest_gateway.metrics import MULTIPROCESS, OTHER, PREFIX, status_label
from inngest_gateway.metrics import REGISTRY as GATEWAY_REGISTRY
from inngest_gateway.outbox.metrics import OutboxCollector

from .settings import ServiceSettings, service_settings

UNMATCHED = "<unmatched>"
# A made-up method is "other", a path no rule matches UNMATCHED: no request can add series.
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)

# The service's own metrics; with MULTIPROCESS their values go to files, not to this registry.
REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests_total",
    "HTTP requests answered, by route (the URL rule), method and status code.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time to answer an HTTP request, by route (the URL rule) and method.",
    ["route", "method"],
    registry=REGISTRY,
)
HOST_COOKIES_REJECTED = Counter(
    f"{PREFIX}_host_cookies_rejected_total",
    "The host app's cookies not accepted (IDENTITY=flask-session), by cookie (session, "
    "remember) and reason (bad_signature, expired, malformed).",
    ["cookie", "reason"],
    registry=REGISTRY,
)


def host_cookie_rejected(cookie: str, reason: str) -> None:
    """A host cookie (`session`, `remember`) refused: `bad_signature`, `expired`, `malformed`."""
    HOST_COOKIES_REJECTED.labels(cookie=cookie, reason=reason).inc()


def method_label(method: str) -> str:
    """The request's method if it is a standard one, else "other"."""
    return method if method in METHODS else OTHER


# -- per request ---------------------------------------------------------------------------


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _route() -> str:
    """The matched URL rule's template, or UNMATCHED (no rule, or the API's any-method 405)."""
    rule = request.url_rule
    if rule is None or getattr(rule, "fallback", False):
        return UNMATCHED
    return rule.rule


def _record(response: Response) -> Response:
    route = _route()
    method = method_label(request.method)
    HTTP_REQUESTS.labels(
        route=route, method=method, status=status_label(response.status_code)
    ).inc()
    started = g.get("metrics_started")
    if started is not None:
        HTTP_DURATION.labels(route=route, method=method).observe(time.perf_counter() - started)
    return response


# -- the scrape ----------------------------------------------------------------------------


class _Scrape(Collector):
    """What one scrape exposes: every worker's counters (or this process's), and the outbox."""

    def collect(self) -> Iterator[Metric]:
        if MULTIPROCESS:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            yield from registry.collect()
        else:
            yield from GATEWAY_REGISTRY.collect()
            yield from REGISTRY.collect()
        yield from OutboxCollector().collect()


def internal_address(address: str | None) -> bool:
    """Loopback or private (RFC 1918, unique local, link-local) addresses."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_private or ip.is_link_local


def _refusal(settings: ServiceSettings) -> Response | None:
    """The error envelope for a scrape that may not read the metrics, or None."""
    if settings.metrics_internal_only and not internal_address(request.remote_addr):
        return envelope(403, "forbidden", "Metrics may only be read from an internal address.")
    if settings.metrics_token:
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), settings.metrics_token.encode()
        ):
            response = envelope(
                401, "unauthorized", "Send the metrics token as `Authorization: Bearer <token>`."
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return None


bp = Blueprint("metrics", __name__)


@apidoc.documented(
    "get",
    {
        "summary": "Prometheus metrics (see METRICS_TOKEN, METRICS_INTERNAL_ONLY)",
        "responses": {
            "200": {
                "description": "The Prometheus text exposition format",
                "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "401": apidoc.error("The metrics token is missing or wrong", "unauthorized"),
            "403": apidoc.error("Not an internal address", "forbidden"),
            "500": apidoc.UNEXPECTED,
        },
    },
)
@bp.get("/metrics")
def scrape() -> Response:
    """The metrics in Prometheus' text format."""
    refused = _refusal(service_settings())
    if refused is not None:
        return refused
    response = Response(generate_latest(_Scrape()), content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Time and count every request, and serve `GET /metrics`."""
    funcs: Any = app.before_request_funcs.setdefault(None, [])
    funcs.insert(0, _start_timer)  # first, so the time includes the other steps
    app.after_request(_record)
    app.register_blueprint(bp)
