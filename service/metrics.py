"""Prometheus metrics at `GET /metrics`, correct under gunicorn with several workers.

With `PROMETHEUS_MULTIPROC_DIR` set (gunicorn.conf.py sets it before the workers fork),
prometheus-client keeps each process's values in files there and a scrape adds them up
across workers; without it (`flask run`, tests) the values live in this process. The
outbox's depth and age are read from the database at scrape time, so every worker
answers the same.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from http import HTTPStatus
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
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from . import apidoc
from .errors import envelope
from .settings import Settings
from .state import gateway_state

log = logging.getLogger(__name__)

PREFIX = "inngest_gateway"
# prometheus-client chooses in-process or file-backed values once, when it is imported.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
UNMATCHED = "<unmatched>"
# Every label takes its value from a fixed set, so no request (nor a misbehaving upstream)
# can add series: a made-up method is "other", a path no rule matches is UNMATCHED, a status
# code outside the registered ones is its class ("4xx").
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
OTHER = "other"
STATUSES = frozenset(str(status.value) for status in HTTPStatus)
# The service's own names for a refusal (error codes) or a failed send (connection_error).
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

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
EVENTS_ACCEPTED = Counter(
    f"{PREFIX}_events_accepted_total",
    "Events accepted by POST /api (stored in the outbox, or sent in sync mode).",
    registry=REGISTRY,
)
EVENTS_REFUSED = Counter(
    f"{PREFIX}_events_refused_total",
    "Posts to POST /api refused, by reason (the error envelope's code).",
    ["reason"],
    registry=REGISTRY,
)
EVENTS_DELIVERED = Counter(
    f"{PREFIX}_events_delivered_total",
    "Events Inngest accepted, from the outbox deliverer or a sync send.",
    registry=REGISTRY,
)
EVENTS_RETRIED = Counter(
    f"{PREFIX}_events_retried_total",
    "Events whose delivery attempt failed and that will be tried again.",
    registry=REGISTRY,
)
EVENTS_DEAD = Counter(
    f"{PREFIX}_events_dead_lettered_total",
    "Events given up on (refused by Inngest, or older than OUTBOX_MAX_AGE).",
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    f"{PREFIX}_upstream_request_duration_seconds",
    "Time of each request to Inngest's event API, failures included.",
    registry=REGISTRY,
)
UPSTREAM_RESPONSES = Counter(
    f"{PREFIX}_upstream_responses_total",
    "Answers from Inngest's event API by status code, or connection_error / timeout.",
    ["status"],
    registry=REGISTRY,
)
HOST_COOKIES_REJECTED = Counter(
    f"{PREFIX}_host_cookies_rejected_total",
    "The host app's cookies not accepted (IDENTITY=flask-session), by cookie (session, "
    "remember) and reason (bad_signature, expired, malformed).",
    ["cookie", "reason"],
    registry=REGISTRY,
)


# -- instrumentation, called from the other modules ------------------------------------------


def events_accepted(count: int) -> None:
    EVENTS_ACCEPTED.inc(count)


def events_delivered(count: int) -> None:
    if count:
        EVENTS_DELIVERED.inc(count)


def events_retried(count: int) -> None:
    if count:
        EVENTS_RETRIED.inc(count)


def events_dead(count: int) -> None:
    if count:
        EVENTS_DEAD.inc(count)


def host_cookie_rejected(cookie: str, reason: str) -> None:
    """A host cookie (`session`, `remember`) refused: `bad_signature`, `expired`, `malformed`."""
    HOST_COOKIES_REJECTED.labels(cookie=cookie, reason=reason).inc()


def method_label(method: str) -> str:
    """The request's method if it is a standard one, else "other"."""
    return method if method in METHODS else OTHER


def status_label(status: int | str) -> str:
    """A registered HTTP status code as it is, any other its class ("4xx"), or a failure's name.

    Names are the service's own (`connection_error`, `timeout`); anything else is "other".
    """
    if isinstance(status, int):
        if str(status) in STATUSES:
            return str(status)
        return f"{status // 100}xx" if 100 <= status <= 599 else OTHER
    return status if _NAME.match(status) else OTHER


def upstream_response(status: int | str, seconds: float) -> None:
    """One request to Inngest: its HTTP status (or `connection_error`) and how long it took."""
    UPSTREAM_RESPONSES.labels(status=status_label(status)).inc()
    UPSTREAM_DURATION.observe(seconds)


# -- per request ---------------------------------------------------------------------------


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def post_refused(status: int) -> None:
    """A post to the API refused, by the error envelope's code (as `envelope` recorded it)."""
    code = g.get("error_code")
    reason = code if isinstance(code, str) and _NAME.match(code) else f"http_{status_label(status)}"
    EVENTS_REFUSED.labels(reason=reason).inc()


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


class OutboxCollector(Collector):
    """The outbox's depth and oldest pending event's age, read from the database per scrape."""

    def collect(self) -> Iterable[Metric]:
        # Here, not at the top: the outbox's deliverer imports this module.
        from .outbox import queries

        database = gateway_state().outbox_db
        try:
            if not database.ensure_schema():
                return
            status = queries.status(database)
        except SQLAlchemyError as exc:
            database.session.remove()
            log.warning("outbox metrics unavailable: %s", type(exc).__name__)
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_outbox_pending_events",
            "Events stored and not yet delivered or given up on (the outbox depth).",
            value=status["pending"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_outbox_dead_events",
            "Dead-lettered events kept in the outbox.",
            value=status["dead"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when none is pending).",
            value=status["oldest_pending_age_seconds"],
        )


class _Scrape(Collector):
    """What one scrape exposes: every worker's counters (or this process's), and the outbox."""

    def collect(self) -> Iterator[Metric]:
        if MULTIPROCESS:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            yield from registry.collect()
        else:
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


def _refusal(settings: Settings) -> Response | None:
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
    refused = _refusal(gateway_state().settings)
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
