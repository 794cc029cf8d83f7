"""The standalone service's own settings, read from its environment (and `.env`) at start.

The service is a host app: besides the extension's settings (`inngest_gateway.settings`,
the same keys in its environment as in a host's app.config) it has its users, logins, logs,
metrics and proxies, declared here once. docs/settings.md and `.env.example` list both
tables, and the names renamed when the extension got its own prefix (`RENAMED`): an old name
still set stops the start, so an upgrade is not silently switched to defaults.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from marshmallow import EXCLUDE, Schema, fields, post_load, validate

from inngest_gateway.settings import GROUPS as GATEWAY_GROUPS
from inngest_gateway.settings import (
    PREFIX,
    RATE_LIMITS,
    SECRET_KEY,
    SETTINGS,
    ConfigError,
    Declaration,
    Duration,
    EnvBool,
    Settings,
    check_limits,
    declarations,
    dev_mode,
    load_settings,
    load_table,
    setting,
    table_schema,
)

IDENTITY = "Identity & sessions"
LOGS_METRICS = "Logs & metrics"
SERVER = "Server"
# The groups, in the order docs/settings.md and `.env.example` show them.
GROUPS = (*GATEWAY_GROUPS, IDENTITY, LOGS_METRICS, SERVER)
_EXTENSION_KEY = "inngest_gateway_service"
# Browsers keep cookies at most 400 days.
_COOKIE_DAYS = 400


def _days(most: int) -> validate.Range:
    return validate.Range(min=1, max=most * 86400)


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """The service's own settings, named as the attribute in upper case; declared here, once."""

    login_ratelimit_ip: str = setting(
        fields.String(validate=check_limits),
        group=RATE_LIMITS,
        default="30 per minute",
        help="`POST /auth/login` per client IP.",
    )
    login_ratelimit_email: str = setting(
        fields.String(validate=check_limits),
        group=RATE_LIMITS,
        default="5 per minute;20 per hour",
        help=(
            "Failed logins per e-mail; once over, even the right password waits (against password "
            "guessing from many addresses)."
        ),
    )

    # -- Identity & sessions ------------------------------------------------------------------
    secret_key: str | None = setting(
        fields.String(),
        group=IDENTITY,
        doc_default="dev mode: generated into `instance/secret_key`",
        secret=True,
        help=(
            "Signs session cookies. **Required outside dev mode**: the service refuses to start "
            "without it."
        ),
    )
    session_lifetime: float = setting(
        Duration(validate=_days(_COOKIE_DAYS)),
        group=IDENTITY,
        default="14d",
        help=(
            'How long a login without "remember me" lasts at most, enforced by the server (see '
            "[Logins and sessions](production.md#logins-and-sessions)). Durations as for "
            "`INNGEST_GATEWAY_OUTBOX_MAX_AGE`; at most `400d`."
        ),
    )
    remember_cookie_duration: float = setting(
        Duration(validate=_days(_COOKIE_DAYS)),
        group=IDENTITY,
        default="30d",
        help=(
            'How long a "remember me" login and its cookie last, enforced by the server too. At '
            "most `400d`."
        ),
    )
    create_demo_user: bool = setting(
        EnvBool(),
        group=IDENTITY,
        default="true",
        help="Dev mode only: create the demo user on an empty database.",
    )

    # -- Logs & metrics -----------------------------------------------------------------------
    log_level: str = setting(
        fields.String(validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])),
        group=LOGS_METRICS,
        default="INFO",
        help="The service's log level.",
    )
    # Unset: `text` in dev mode, else `json` (`_build`).
    log_format: str = setting(
        fields.String(validate=validate.OneOf(["json", "text"])),
        group=LOGS_METRICS,
        doc_default="`json` (`text` in dev mode)",
        help="`json`: one JSON object per line on stderr; `text`: the same lines for people.",
    )
    metrics_token: str | None = setting(
        fields.String(),
        group=LOGS_METRICS,
        secret=True,
        help=(
            "When set, `GET /metrics` needs `Authorization: Bearer <token>` (401 otherwise). Never "
            "logged."
        ),
    )
    metrics_internal_only: bool = setting(
        EnvBool(),
        group=LOGS_METRICS,
        default="true",
        help=(
            "`GET /metrics` answers only loopback and private addresses (403 otherwise). Behind a "
            "proxy, set `TRUSTED_PROXIES` so the address is the client's, not the proxy's."
        ),
    )

    # -- Server -------------------------------------------------------------------------------
    database_url: str | None = setting(
        fields.String(validate=validate.Length(min=1)),
        group=SERVER,
        doc_default="`sqlite:///instance/gateway.db`",
        secret=True,
        help="SQLAlchemy URL. PostgreSQL: `postgresql+psycopg://user:pw@host/db`.",
    )
    trusted_proxies: int = setting(
        fields.Integer(validate=validate.Range(min=0, max=10)),
        group=SERVER,
        default="0",
        help=(
            "How many proxies in front set `X-Forwarded-For`/`-Proto` (nginx alone: `1`). With `0` "
            "those headers are ignored, so nobody can spoof an address or scheme."
        ),
    )


# Read by gunicorn.conf.py in the master process, not by a settings schema.
PROCESS_SETTINGS = (
    Declaration(
        "PROMETHEUS_MULTIPROC_DIR",
        LOGS_METRICS,
        doc_default="(a temporary directory)",
        help=(
            "Where gunicorn's workers keep their metric values so a scrape adds them up. "
            "`gunicorn.conf.py` empties it at start, or makes (and later removes) a temporary one "
            "when unset."
        ),
    ),
    Declaration(
        "GUNICORN_BIND",
        SERVER,
        default="127.0.0.1:8000",
        help="gunicorn's listen address (`gunicorn.conf.py`).",
    ),
    Declaration(
        "GUNICORN_WORKERS",
        SERVER,
        doc_default="`2 × cores + 1`",
        help="Worker processes.",
    ),
    Declaration(
        "GUNICORN_THREADS",
        SERVER,
        doc_default="`4` (`32` in sync mode)",
        help=(
            "Threads per worker (gthread). In sync mode each post waits for Inngest on its "
            "thread, so a worker keeps more of them."
        ),
    ),
    Declaration(
        "GUNICORN_TIMEOUT",
        SERVER,
        default="30",
        help="Seconds before a silent worker is restarted.",
    ),
    Declaration(
        "GUNICORN_GRACEFUL_TIMEOUT",
        SERVER,
        default="30",
        help="Seconds workers get to finish on restart or stop.",
    ),
    Declaration(
        "GUNICORN_KEEPALIVE", SERVER, default="5", help="Seconds to keep idle connections."
    ),
    Declaration("GUNICORN_LOG_LEVEL", SERVER, default="info", help="gunicorn's own log level."),
    Declaration(
        "GUNICORN_ACCESS_LOG",
        SERVER,
        help="A path or `-` for gunicorn's access log (the service logs each request itself).",
    ),
)


SERVICE_SETTINGS = declarations(ServiceSettings)
# Every variable the service and gunicorn.conf.py read, for the docs: the extension's first.
DECLARATIONS = SETTINGS + SERVICE_SETTINGS + PROCESS_SETTINGS

# Settings added after the prefix: they never had another name.
BORN_PREFIXED = frozenset({f"{PREFIX}SUPPRESS_SEND", f"{PREFIX}API_SESSION_ONLY"})
# The names before the extension had a prefix of its own, and the names that replaced them.
RENAMED = {
    **{
        name.removeprefix(PREFIX): name
        for name in (d.name for d in SETTINGS)
        if name.startswith(PREFIX) and name != f"{PREFIX}SEND_TIMEOUT" and name not in BORN_PREFIXED
    },
    "INNGEST_SEND_TIMEOUT": f"{PREFIX}SEND_TIMEOUT",
    # Flask-Limiter's namespace: the service's login limits have their own names too.
    "RATELIMIT_LOGIN_IP": "LOGIN_RATELIMIT_IP",
    "RATELIMIT_LOGIN_EMAIL": "LOGIN_RATELIMIT_EMAIL",
}


def check_renamed(env: Mapping[str, str]) -> None:
    """Refuse to start while an old name is set: its value would be silently ignored."""
    for old, new in RENAMED.items():
        if env.get(old, "").strip():
            raise ConfigError(f"{old}: was renamed {new}; set {new} instead (docs/settings.md)")


class _ServiceSettingsBase(Schema):
    """Environment variables to `ServiceSettings`; the fields come from the declarations."""

    class Meta:
        unknown = EXCLUDE

    @post_load(pass_original=True)
    def _build(self, raw: dict[str, Any], original: Mapping[str, Any], **_: Any) -> ServiceSettings:
        """Defaults that follow the mode: the log format."""
        values = {d.attribute: raw[d.name] for d in SERVICE_SETTINGS}
        dev = dev_mode(original.get("INNGEST_DEV"))[0]
        values.update(
            secret_key=raw[SECRET_KEY] or None,
            log_format=raw["LOG_FORMAT"] or ("text" if dev else "json"),
            metrics_token=raw["METRICS_TOKEN"] or None,
        )
        return ServiceSettings(**values)


_ServiceSettingsSchema = table_schema(
    _ServiceSettingsBase, SERVICE_SETTINGS, "_ServiceSettingsSchema"
)


def load_service_settings(env: Mapping[str, str]) -> ServiceSettings:
    """The service's own settings from its environment, or ConfigError."""
    loaded: ServiceSettings = load_table(_ServiceSettingsSchema(), env)
    return loaded


def load_all(env: Mapping[str, str]) -> tuple[Settings, ServiceSettings]:
    """Both tables from the service's environment, old names refused first."""
    check_renamed(env)
    return load_settings(env), load_service_settings(env)


def init_app(app: Flask, settings: ServiceSettings) -> None:
    """Keep the service's own settings on the app, for its modules."""
    app.extensions[_EXTENSION_KEY] = settings


def service_settings(app: Flask | None = None) -> ServiceSettings:
    """The service's own settings, of `app` or of the current app."""
    settings: ServiceSettings = (app or current_app).extensions[_EXTENSION_KEY]
    return settings


def instance_secret(instance_path: str) -> str:
    """A session secret generated once and kept under `instance/`, for dev mode only."""
    path = Path(instance_path) / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    return secret
