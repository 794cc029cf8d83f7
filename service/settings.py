"""Typed settings, read once from the environment (and `.env`) when the app is created."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from limits import parse_many
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates

from .event_schemas import EventSchemas, EventSchemasError, load_event_schemas

DEV_SERVER_ORIGIN = "http://127.0.0.1:8288"
CLOUD_ORIGIN = "https://inn.gs"
DEV_EVENT_KEY = "NO_EVENT_KEY_SET"
INNGEST_MAX_EVENTS_PER_REQUEST = 5000
DEFAULT_SESSION_LIFETIME = 14 * 86400.0
DEFAULT_REMEMBER_COOKIE_DURATION = 30 * 86400.0
_FALSY = {"", "0", "false"}


class ConfigError(Exception):
    """A setting is missing or invalid; the service must not start."""


@dataclass(frozen=True)
class Settings:
    """Every setting the service reads, already parsed and checked."""

    # Secrets, and URLs that may hold a password, stay out of repr (and so out of logs).
    secret_key: str | None = field(repr=False)
    database_url: str | None = field(repr=False)
    inngest_dev: bool
    inngest_event_key: str = field(repr=False)
    inngest_origin: str
    inngest_env: str | None
    inngest_send_timeout: float
    api_allowed_events: tuple[str, ...]
    api_default_event: str
    api_require_login: bool
    api_max_event_bytes: int
    api_max_body_bytes: int
    api_max_batch: int
    trusted_origins: tuple[str, ...]
    log_level: str
    log_format: str
    create_demo_user: bool
    delivery_mode: str
    sqlite_synchronous: str
    outbox_max_pending: int
    outbox_max_age: float
    outbox_keep_delivered: float
    outbox_drain_seconds: float
    outbox_lease_seconds: float
    outbox_retry_base: float
    outbox_retry_max: float
    outbox_poll_seconds: float
    outbox_max_batch_bytes: int
    outbox_embedded_deliverer: bool
    trusted_proxies: int
    event_schemas: EventSchemas | None
    ratelimit_enabled: bool
    ratelimit_storage_uri: str
    ratelimit_key_prefix: str
    ratelimit_api: str
    ratelimit_login_ip: str
    ratelimit_login_email: str
    metrics_token: str | None = field(repr=False)
    metrics_internal_only: bool
    session_lifetime: float = DEFAULT_SESSION_LIFETIME
    remember_cookie_duration: float = DEFAULT_REMEMBER_COOKIE_DURATION
    # The schema below sets these; the defaults only spare code that builds Settings by hand.
    outbox_write_timeout: float = 5.0
    outbox_split_after: int = 5
    # Unset: the service uses DATABASE_URL's database, a host app a file in its instance folder.
    outbox_database_url: str | None = field(default=None, repr=False)

    @property
    def event_api_url(self) -> str:
        """The full event API URL; it holds the key, so it is never logged."""
        return f"{self.inngest_origin}/e/{self.inngest_event_key}"


def _dev_mode(raw: str | None) -> tuple[bool, str | None]:
    """The SDKs' rule: unset, "", "0" and "false" mean cloud; a URL also names the dev server."""
    if raw is None or raw.strip().lower() in _FALSY:
        return False, None
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc:
        return True, value
    return True, None


def _origin(value: str, setting: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError(f"must be an http(s) URL, got {value!r}", setting)
    return value.strip().rstrip("/")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


class _EnvBool(fields.Boolean):
    truthy = {"1", "true", "yes", "on", "True", "TRUE", "Yes", "YES", "On", "ON"}
    falsy = {"0", "false", "no", "off", "", "False", "FALSE", "No", "NO", "Off", "OFF"}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: str) -> float:
    """Seconds from `30`, `500ms`, `30s`, `15m`, `2h` or `7d`."""
    match = _DURATION.fullmatch(str(value).strip().lower())
    if not match:
        raise ValueError(f"must be a duration like 30, 30s, 15m, 2h or 7d; got {value!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Duration(fields.Field[float]):
    """A duration setting, in seconds."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class _SettingsSchema(Schema):
    """Environment variables to typed values; names are the variables' own."""

    class Meta:
        unknown = EXCLUDE

    SECRET_KEY = fields.String(load_default=None)
    DATABASE_URL = fields.String(load_default=None, validate=validate.Length(min=1))
    INNGEST_DEV = fields.String(load_default=None)
    INNGEST_EVENT_KEY = fields.String(load_default=None)
    INNGEST_BASE_URL = fields.String(load_default=None)
    INNGEST_EVENT_API_BASE_URL = fields.String(load_default=None)
    INNGEST_ENV = fields.String(load_default=None)
    INNGEST_SEND_TIMEOUT = fields.Float(
        load_default=10.0, validate=validate.Range(min=0.1, max=300)
    )
    API_ALLOWED_EVENTS = fields.String(load_default="app/*")
    API_DEFAULT_EVENT = fields.String(
        load_default="app/api.posted", validate=validate.Length(min=1, max=256)
    )
    API_REQUIRE_LOGIN = _EnvBool(load_default=False)
    API_MAX_EVENT_BYTES = fields.Integer(
        load_default=262144, validate=validate.Range(min=1024, max=3 * 1024 * 1024)
    )
    API_MAX_BODY_BYTES = fields.Integer(
        load_default=1024 * 1024, validate=validate.Range(min=1024, max=64 * 1024 * 1024)
    )
    API_MAX_BATCH = fields.Integer(
        load_default=100, validate=validate.Range(min=1, max=INNGEST_MAX_EVENTS_PER_REQUEST)
    )
    TRUSTED_ORIGINS = fields.String(load_default="")
    CREATE_DEMO_USER = _EnvBool(load_default=True)
    SQLITE_SYNCHRONOUS = fields.String(
        load_default="NORMAL", validate=validate.OneOf(["NORMAL", "FULL"])
    )
    DELIVERY_MODE = fields.String(
        load_default="outbox", validate=validate.OneOf(["outbox", "sync"])
    )
    OUTBOX_DATABASE_URL = fields.String(load_default=None, validate=validate.Length(min=1))
    OUTBOX_MAX_PENDING = fields.Integer(load_default=100_000, validate=validate.Range(min=1))
    OUTBOX_MAX_AGE = _Duration(load_default=7 * 86400.0, validate=validate.Range(min=1))
    OUTBOX_KEEP_DELIVERED = _Duration(load_default=0.0)
    OUTBOX_DRAIN_SECONDS = _Duration(load_default=10.0)
    OUTBOX_LEASE_SECONDS = _Duration(load_default=60.0, validate=validate.Range(min=1))
    OUTBOX_RETRY_BASE = _Duration(load_default=1.0, validate=validate.Range(min=0.001))
    OUTBOX_RETRY_MAX = _Duration(load_default=60.0, validate=validate.Range(min=0.001))
    OUTBOX_POLL_SECONDS = _Duration(load_default=1.0, validate=validate.Range(min=0.01, max=60))
    OUTBOX_MAX_BATCH_BYTES = fields.Integer(
        load_default=1024 * 1024, validate=validate.Range(min=1024, max=64 * 1024 * 1024)
    )
    OUTBOX_EMBEDDED_DELIVERER = _EnvBool(load_default=True)
    OUTBOX_SPLIT_AFTER = fields.Integer(load_default=5, validate=validate.Range(min=1))
    # A post waits for at most two commits: keep that well under nginx's 25 s read timeout.
    OUTBOX_WRITE_TIMEOUT = _Duration(load_default=5.0, validate=validate.Range(min=0.1, max=10))
    TRUSTED_PROXIES = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10))
    EVENT_SCHEMAS = fields.String(load_default=None)
    RATELIMIT_ENABLED = _EnvBool(load_default=True)
    RATELIMIT_STORAGE_URI = fields.String(load_default="memory://")
    RATELIMIT_KEY_PREFIX = fields.String(load_default="inngest-gateway")
    RATELIMIT_API = fields.String(load_default="300 per minute")
    RATELIMIT_LOGIN_IP = fields.String(load_default="30 per minute")
    RATELIMIT_LOGIN_EMAIL = fields.String(load_default="5 per minute;20 per hour")
    METRICS_TOKEN = fields.String(load_default=None)
    METRICS_INTERNAL_ONLY = _EnvBool(load_default=True)
    # Browsers keep cookies at most 400 days.
    SESSION_LIFETIME = _Duration(
        load_default=DEFAULT_SESSION_LIFETIME, validate=validate.Range(min=1, max=400 * 86400)
    )
    REMEMBER_COOKIE_DURATION = _Duration(
        load_default=DEFAULT_REMEMBER_COOKIE_DURATION,
        validate=validate.Range(min=1, max=400 * 86400),
    )

    @validates("RATELIMIT_API", "RATELIMIT_LOGIN_IP", "RATELIMIT_LOGIN_EMAIL")
    def _limit(self, value: str, **_: Any) -> None:
        try:
            parse_many(value)
        except ValueError:
            raise ValidationError(
                f"must be limits like '300 per minute' or '5/minute;20/hour', got {value!r}"
            ) from None

    LOG_FORMAT = fields.String(load_default=None, validate=validate.OneOf(["json", "text"]))
    LOG_LEVEL = fields.String(
        load_default="INFO",
        validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
    )

    @post_load
    def _build(self, raw: dict[str, Any], **_: Any) -> Settings:
        dev, dev_url = _dev_mode(raw["INNGEST_DEV"])
        key = raw["INNGEST_EVENT_KEY"] or None
        if key is None:
            if not dev:
                raise ValidationError(
                    "is required outside dev mode (set it, or set INNGEST_DEV=1 for the "
                    "Inngest dev server)",
                    "INNGEST_EVENT_KEY",
                )
            key = DEV_EVENT_KEY
        elif not re.fullmatch(r"[A-Za-z0-9_\-]+", key):
            raise ValidationError("has characters an event key cannot have", "INNGEST_EVENT_KEY")
        secret = raw["SECRET_KEY"] or None
        if secret is None and not dev:
            raise ValidationError("is required outside dev mode", "SECRET_KEY")
        if raw["INNGEST_EVENT_API_BASE_URL"]:
            origin = _origin(raw["INNGEST_EVENT_API_BASE_URL"], "INNGEST_EVENT_API_BASE_URL")
        elif raw["INNGEST_BASE_URL"]:
            origin = _origin(raw["INNGEST_BASE_URL"], "INNGEST_BASE_URL")
        elif dev_url:
            origin = _origin(dev_url, "INNGEST_DEV")
        else:
            origin = DEV_SERVER_ORIGIN if dev else CLOUD_ORIGIN
        trusted = tuple(_origin(o, "TRUSTED_ORIGINS").lower() for o in _csv(raw["TRUSTED_ORIGINS"]))
        patterns = _csv(raw["API_ALLOWED_EVENTS"])
        return Settings(
            secret_key=secret,
            database_url=raw["DATABASE_URL"],
            inngest_dev=dev,
            inngest_event_key=key,
            inngest_origin=origin,
            inngest_env=raw["INNGEST_ENV"] or None,
            inngest_send_timeout=raw["INNGEST_SEND_TIMEOUT"],
            api_allowed_events=patterns,
            api_default_event=raw["API_DEFAULT_EVENT"],
            api_require_login=raw["API_REQUIRE_LOGIN"],
            api_max_event_bytes=raw["API_MAX_EVENT_BYTES"],
            api_max_body_bytes=raw["API_MAX_BODY_BYTES"],
            api_max_batch=raw["API_MAX_BATCH"],
            trusted_origins=trusted,
            log_level=raw["LOG_LEVEL"],
            log_format=raw["LOG_FORMAT"] or ("text" if dev else "json"),
            create_demo_user=raw["CREATE_DEMO_USER"],
            delivery_mode=raw["DELIVERY_MODE"],
            sqlite_synchronous=raw["SQLITE_SYNCHRONOUS"],
            outbox_max_pending=raw["OUTBOX_MAX_PENDING"],
            outbox_max_age=raw["OUTBOX_MAX_AGE"],
            outbox_keep_delivered=raw["OUTBOX_KEEP_DELIVERED"],
            outbox_drain_seconds=raw["OUTBOX_DRAIN_SECONDS"],
            outbox_lease_seconds=max(raw["OUTBOX_LEASE_SECONDS"], raw["INNGEST_SEND_TIMEOUT"] * 2),
            outbox_retry_base=raw["OUTBOX_RETRY_BASE"],
            outbox_retry_max=raw["OUTBOX_RETRY_MAX"],
            outbox_poll_seconds=raw["OUTBOX_POLL_SECONDS"],
            outbox_max_batch_bytes=raw["OUTBOX_MAX_BATCH_BYTES"],
            outbox_embedded_deliverer=raw["OUTBOX_EMBEDDED_DELIVERER"],
            outbox_write_timeout=raw["OUTBOX_WRITE_TIMEOUT"],
            outbox_split_after=raw["OUTBOX_SPLIT_AFTER"],
            outbox_database_url=raw["OUTBOX_DATABASE_URL"],
            trusted_proxies=raw["TRUSTED_PROXIES"],
            event_schemas=_event_schemas(raw["EVENT_SCHEMAS"]),
            ratelimit_enabled=raw["RATELIMIT_ENABLED"],
            ratelimit_storage_uri=raw["RATELIMIT_STORAGE_URI"],
            ratelimit_key_prefix=raw["RATELIMIT_KEY_PREFIX"],
            ratelimit_api=raw["RATELIMIT_API"],
            ratelimit_login_ip=raw["RATELIMIT_LOGIN_IP"],
            ratelimit_login_email=raw["RATELIMIT_LOGIN_EMAIL"],
            metrics_token=raw["METRICS_TOKEN"] or None,
            metrics_internal_only=raw["METRICS_INTERNAL_ONLY"],
            session_lifetime=raw["SESSION_LIFETIME"],
            remember_cookie_duration=raw["REMEMBER_COOKIE_DURATION"],
        )


# The standalone service's own settings (its users, logins, logs, proxies, metrics): a host
# app mounting the gateway has its own ways, so the extension never reads these names.
SERVICE_ONLY_SETTINGS = frozenset(
    {
        "DATABASE_URL",
        "SESSION_LIFETIME",
        "REMEMBER_COOKIE_DURATION",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "CREATE_DEMO_USER",
        "TRUSTED_PROXIES",
        "RATELIMIT_LOGIN_IP",
        "RATELIMIT_LOGIN_EMAIL",
        "METRICS_TOKEN",
        "METRICS_INTERNAL_ONLY",
    }
)
# What the extension reads, from the host's app.config first, then the environment.
GATEWAY_SETTINGS = frozenset(_SettingsSchema._declared_fields) - SERVICE_ONLY_SETTINGS


def _event_schemas(path: str | None) -> EventSchemas | None:
    """The EVENT_SCHEMAS file, read and checked now so that a bad one stops the start."""
    if path is None:
        return None
    try:
        return load_event_schemas(path)
    except EventSchemasError as exc:
        raise ValidationError(str(exc), "EVENT_SCHEMAS") from None


def _first_error(messages: Any, prefix: str = "") -> str:
    """Flatten marshmallow's nested messages into one `NAME: message` line."""
    if isinstance(messages, dict):
        name, inner = next(iter(messages.items()))
        label = prefix if name == "_schema" else str(name)
        return _first_error(inner, label)
    if isinstance(messages, list) and messages:
        return _first_error(messages[0], prefix)
    return f"{prefix}: {messages}" if prefix else str(messages)


def environment(dotenv_path: str | os.PathLike[str] = ".env") -> dict[str, str]:
    """The process environment over the values of `.env`, when that file exists."""
    values = {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None}
    values.update(os.environ)
    return values


def load_settings(env: Mapping[str, str]) -> Settings:
    """Parse settings from a mapping of variable names to strings, or raise ConfigError.

    An empty value counts as unset, as in `.env.example`.
    """
    given = {name: value for name, value in env.items() if value.strip()}
    try:
        settings: Settings = _SettingsSchema().load(given)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc.messages)) from None
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
