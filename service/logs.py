"""Request ids and logging: every log line about a request carries that request's id."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid

from flask import Flask, Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_HANDLER_NAME = "inngest-gateway"

log = logging.getLogger("service.access")


class RequestContextFilter(logging.Filter):
    """Adds the current request's id to each record, and removes secrets from it."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def configure_logging(level: str, secrets: tuple[str, ...]) -> None:
    """Send the service's logs to stderr, one line each, with the request id."""
    logger = logging.getLogger("service")
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
        )
        logger.addHandler(handler)
    for old in list(handler.filters):
        handler.removeFilter(old)
    handler.addFilter(RequestContextFilter(secrets))
    # urllib3 logs request lines, which hold the event key, at DEBUG.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _start() -> None:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    g.started = time.monotonic()
    g.received_ms = int(time.time() * 1000)


def _finish(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = g.request_id
    elapsed_ms = (time.monotonic() - g.started) * 1000
    log.info(
        "%s %s %d %.1fms events=%s",
        request.method,
        request.path,
        response.status_code,
        elapsed_ms,
        g.get("event_count", 0),
    )
    return response


def init_app(app: Flask) -> None:
    """Give each request an id (the client's `X-Request-ID` when it is well-formed)."""
    app.before_request(_start)
    app.after_request(_finish)
