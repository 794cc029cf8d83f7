"""Request ids and logging: one line per event worth telling, with the request's id.

In production each line is a JSON object (one per request, one per delivery attempt, and
the rest); in dev mode the same lines are plain text for people.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, has_request_context, request

from inngest_gateway.requestids import REQUEST_ID_HEADER, client_request_id

_HANDLER_NAME = "inngest-gateway"
# The service's own modules, and the extension it mounts: one handler, one format for both.
LOGGERS = ("service", "inngest_gateway")

log = logging.getLogger("service.access")


class RequestContextFilter(logging.Filter):
    """Adds the current request's id to each record, and removes secrets from it."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        if self.secrets:
            record.msg, record.args = self._redact(record.getMessage()), None
            fields = getattr(record, "fields", None)
            if isinstance(fields, dict):
                record.fields = {
                    k: self._redact(v) if isinstance(v, str) else v for k, v in fields.items()
                }
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message, and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


# C0 controls, DEL, C1 controls, the Unicode line and paragraph separators, and the backslash
# that starts an escape (so that a literal `\n` in a path is told from an escaped newline).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
# Written before each line of a traceback, so that none of them can pass for a record.
TRACE_PREFIX = "  | "


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """`text` with control characters as visible escapes (`\\n`, `\\x1b`), on one line."""
    return _UNSAFE.sub(_escape_one, text)


class TextFormatter(logging.Formatter):
    """The same lines for people: the message, then the fields as key=value.

    Whatever a request brings (a path with `%0a`, a header), a record is one line: control
    characters in every part are escaped, and a traceback's lines each start with `  | `.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # A copy with every part escaped: other handlers get the record as it was.
        line = logging.makeLogRecord(record.__dict__)
        line.msg, line.args = escape_controls(record.getMessage()), None
        line.name = escape_controls(record.name)
        line.levelname = escape_controls(record.levelname)
        line.request_id = escape_controls(str(getattr(record, "request_id", "-")))
        line.exc_info, line.exc_text, line.stack_info = None, None, None
        text = super().format(line)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(
                f"{escape_controls(str(k))}={escape_controls(str(v))}" for k, v in fields.items()
            )
        trace = record.exc_text or (
            self.formatException(record.exc_info) if record.exc_info else ""
        )
        for block in (trace, self.formatStack(record.stack_info) if record.stack_info else ""):
            for part in block.split("\n") if block else ():
                text += "\n" + TRACE_PREFIX + escape_controls(part)
        return text


def configure_logging(level: str, secrets: tuple[str, ...], json_lines: bool = True) -> None:
    """Send the service's logs and the gateway's to stderr, one line each, with the request id."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
    handler = next((h for h in loggers[0].handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
    for logger in loggers:
        logger.setLevel(level)
        if handler not in logger.handlers:
            logger.addHandler(handler)
    handler.setFormatter(JSONFormatter() if json_lines else TextFormatter())
    for old in list(handler.filters):
        handler.removeFilter(old)
    handler.addFilter(RequestContextFilter(secrets))
    # urllib3 logs request lines, which hold the event key, at DEBUG.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _start() -> None:
    # Always the server's own: a client-chosen id could collide with, or impersonate, others'.
    g.request_id = uuid.uuid4().hex
    g.client_request_id = client_request_id()
    g.started = time.monotonic()
    g.received_ms = int(time.time() * 1000)


def _user_id() -> int | None:
    """The user this request acted for, if it looked one up; never a database query here."""
    user = g.get("_login_user")  # where Flask-Login keeps the user it loaded
    return user.id if user is not None and user.is_authenticated else None


def _finish(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = g.request_id
    if not log.isEnabledFor(logging.INFO):
        return response
    elapsed_ms = (time.monotonic() - g.started) * 1000
    log.info(
        "%s %s %d %.1fms",
        request.method,
        request.path,
        response.status_code,
        elapsed_ms,
        extra={
            "fields": {
                "method": request.method,
                "route": request.url_rule.rule if request.url_rule else None,
                "path": request.path,
                "client_request_id": g.client_request_id,
                "status": response.status_code,
                "latency_ms": round(elapsed_ms, 1),
                "events": g.get("event_count", 0),
                "user_id": _user_id(),
                "client_ip": request.remote_addr,
            }
        },
    )
    return response


def init_app(app: Flask) -> None:
    """Give each request the server's own id, and keep a well-formed client `X-Request-ID` aside."""
    app.before_request(_start)
    app.after_request(_finish)
