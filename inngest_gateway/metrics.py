"""The gateway's Prometheus metrics: events accepted, refused, delivered; Inngest's answers.

They live in `REGISTRY` (a host exposes it as it likes; the standalone service at
`GET /metrics`). With `PROMETHEUS_MULTIPROC_DIR` set before prometheus-client is imported
(gunicorn.conf.py sets it in the master), each process keeps its values in files there and a
scrape adds them up across workers; without it the values live in this process.
"""

from __future__ import annotations

import os
import re
from http import HTTPStatus

from flask import g
from prometheus_client import CollectorRegistry, Counter, Histogram

PREFIX = "inngest_gateway"
# prometheus-client chooses in-process or file-backed values once, when it is imported.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# Every label takes its value from a fixed set, so no request (nor a misbehaving upstream)
# can add series: a status code outside the registered ones is its class ("4xx"), a name
# that is not one of ours "other".
OTHER = "other"
STATUSES = frozenset(str(status.value) for status in HTTPStatus)
# The service's own names for a refusal (error codes) or a failed send (connection_error).
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

# The gateway's metrics; with MULTIPROCESS their values go to files, not to this registry.
REGISTRY = CollectorRegistry(auto_describe=True)

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
    "Events given up on (refused by Inngest, or older than INNGEST_GATEWAY_OUTBOX_MAX_AGE).",
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


def post_refused(status: int) -> None:
    """A post to the API refused, by the error envelope's code (as `envelope` recorded it)."""
    code = g.get("error_code")
    reason = code if isinstance(code, str) and _NAME.match(code) else f"http_{status_label(status)}"
    EVENTS_REFUSED.labels(reason=reason).inc()
