"""The extension's typed settings, read once from the host's app.config at `init_app`.

Each setting is declared once, as a field of `Settings`: its key (`INNGEST_GATEWAY_...`, or
the Inngest SDK's own name), marshmallow field, default (as the environment spells it), group
and help text. The schema that reads them is made from those declarations; the standalone
service reads the same keys from its environment (`service/settings.py` adds its own), and a
test checks the tables of docs/settings.md and `.env.example` against them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast
from urllib.parse import urlsplit

from limits import parse_many
from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing, post_load, validate

from .event_schemas import EventSchemas, EventSchemasError, load_event_schemas

DEV_SERVER_ORIGIN = "http://127.0.0.1:8288"
CLOUD_ORIGIN = "https://inn.gs"
DEV_EVENT_KEY = "NO_EVENT_KEY_SET"
INNGEST_MAX_EVENTS_PER_REQUEST = 5000
_FALSY = {"", "0", "false"}

# Every app.config key of the extension starts with it, but the Inngest SDK's own names.
PREFIX = "INNGEST_GATEWAY_"
# Flask's own key; the extension reads it as Flask does, and declares it not.
SECRET_KEY = "SECRET_KEY"

# The extension's groups, in the order docs/settings.md and `.env.example` show them.
INNGEST = "Inngest"
API = "API"
OUTBOX = "Outbox"
RATE_LIMITS = "Rate limits"
GROUPS = (INNGEST, API, OUTBOX, RATE_LIMITS)
UNSET = "(unset)"
_DECLARATION = "setting"


class ConfigError(Exception):
    """A setting is missing or invalid; the service must not start."""


@dataclass(frozen=True)
class Declaration:
    """One setting: its key, how it is read, its default, and how the docs show it."""

    # The app.config key, the same as the environment variable in the standalone service.
    name: str
    group: str
    help: str
    # The default as the environment would spell it (`7d`, `true`); None: unset.
    default: str | None = None
    # docs/settings.md's words for a default that is not one value (`dev mode: ...`).
    doc_default: str | None = None
    # The value `.env.example` gives, when it is not the default (a working dev setup).
    example: str | None = None
    # None: read by gunicorn.conf.py, not by a settings schema.
    field: fields.Field[Any] | None = None
    # The settings dataclass's attribute that holds the value ("" when none does).
    attribute: str = ""

    @property
    def shown_default(self) -> str:
        """The default as the table of docs/settings.md shows it."""
        if self.doc_default is not None:
            return self.doc_default
        return UNSET if self.default is None else f"`{self.default}`"


def setting(
    field: fields.Field[Any],
    *,
    group: str,
    help: str,
    name: str = "",
    default: str | None = None,
    doc_default: str | None = None,
    example: str | None = None,
    secret: bool = False,
) -> Any:
    """Declare a settings field, read from the key `name` (default: see `declarations`).

    The default is given as the environment spells it and parsed by the field itself, so the
    docs and the code cannot disagree on it. A secret (or a URL that may hold a password)
    stays out of repr, and so out of logs.
    """
    if default is not None:
        field.load_default = field.deserialize(default)
    elif field.load_default is missing:
        field.load_default = None
    declaration = Declaration(
        name=name,  # "": named after the attribute by `declarations`
        group=group,
        help=help,
        default=default,
        doc_default=doc_default,
        example=example,
        field=field,
    )
    return dataclasses.field(metadata={_DECLARATION: declaration}, repr=not secret)


def derived() -> Any:
    """A `Settings` field computed from other settings, read from no variable of its own."""
    return dataclasses.field()


def dev_mode(raw: str | None) -> tuple[bool, str | None]:
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


class EnvBool(fields.Boolean):
    truthy = {"1", "true", "yes", "on", "True", "TRUE", "Yes", "YES", "On", "ON"}
    falsy = {"0", "false", "no", "off", "", "False", "FALSE", "No", "NO", "Off", "OFF"}


class _DevMode(fields.Field[bool]):
    """INNGEST_DEV: whether dev mode is on (a URL value also names the server, see `_build`)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        return dev_mode(str(value))[0]


class _Csv(fields.Field[tuple[str, ...]]):
    """Comma-separated items, blanks dropped."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> tuple[str, ...]:
        return _csv(str(value))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: str) -> float:
    """Seconds from `30`, `500ms`, `30s`, `15m`, `2h` or `7d`."""
    match = _DURATION.fullmatch(str(value).strip().lower())
    if not match:
        raise ValueError(f"must be a duration like 30, 30s, 15m, 2h or 7d; got {value!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """A duration as settings spell it (`7d`, `5m`, `90s`, `500ms`), as parse_duration reads it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms" if seconds else "0s"


class Duration(fields.Field[float]):
    """A duration setting, in seconds."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


def check_limits(value: str) -> None:
    try:
        parse_many(value)
    except ValueError:
        raise ValidationError(
            f"must be limits like '300 per minute' or '5/minute;20/hour', got {value!r}"
        ) from None


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting the extension reads, already parsed and checked; declared here, once.

    Keys are `INNGEST_GATEWAY_` + the attribute's name in upper case, but the Inngest SDK's
    own names (which say so).
    """

    # -- Inngest (the names and precedence of the official SDKs) ------------------------------
    inngest_dev: bool = setting(
        _DevMode(load_default=False),
        group=INNGEST,
        name="INNGEST_DEV",
        doc_default="unset (cloud mode)",
        example="1",
        help=(
            'Dev mode when set to anything but `""`, `0`, `false`; a URL value also names the dev '
            "server. `make run` sets `1`."
        ),
    )
    # None: not set outside dev mode, which a host app may be until it serves posts.
    inngest_event_key: str | None = setting(
        fields.String(),
        group=INNGEST,
        name="INNGEST_EVENT_KEY",
        doc_default=f"dev mode: `{DEV_EVENT_KEY}`",
        secret=True,
        help=(
            "The event key. **Required outside dev mode**: the service refuses to start without "
            "it; a host app mounting the extension starts, and answers posts `503 not_configured` "
            "until it is set (unless sends are suppressed, see `INNGEST_GATEWAY_SUPPRESS_SEND`). "
            "Never logged or answered."
        ),
    )
    inngest_event_api_base_url: str | None = setting(
        fields.String(),
        group=INNGEST,
        name="INNGEST_EVENT_API_BASE_URL",
        secret=True,
        help="Origin of the event API; wins over `INNGEST_BASE_URL`.",
    )
    inngest_base_url: str | None = setting(
        fields.String(),
        group=INNGEST,
        name="INNGEST_BASE_URL",
        secret=True,
        help="Origin of Inngest; wins over an `INNGEST_DEV` URL.",
    )
    inngest_env: str | None = setting(
        fields.String(),
        group=INNGEST,
        name="INNGEST_ENV",
        help="Branch environment, sent as `x-inngest-env`.",
    )
    inngest_send_timeout: float = setting(
        fields.Float(validate=validate.Range(min=0.1, max=300)),
        group=INNGEST,
        name="INNGEST_GATEWAY_SEND_TIMEOUT",
        default="10",
        help=(
            "Total seconds one send to Inngest may take, retries included, however slowly Inngest "
            "answers (a wall-clock budget, not a per-read timeout), connecting and the TLS "
            "handshake included; only the DNS lookup is outside it."
        ),
    )
    # Unset: the app's `testing` flag, read at each post (as Flask-Mail's MAIL_SUPPRESS_SEND).
    suppress_send: bool | None = setting(
        EnvBool(),
        group=INNGEST,
        doc_default="the app's `TESTING`",
        help=(
            "`true`: posts are checked, answered and recorded (`record_events`) as usual, but "
            "nothing is sent to Inngest nor stored in the outbox, and no event key is needed. "
            "Unset: on while the app is testing (`TESTING`), as Flask-Mail's `MAIL_SUPPRESS_SEND`."
        ),
    )
    # From INNGEST_EVENT_API_BASE_URL, INNGEST_BASE_URL or INNGEST_DEV, else the mode's own.
    inngest_origin: str = derived()

    # -- API: what browsers may send ----------------------------------------------------------
    api_allowed_events: tuple[str, ...] = setting(
        _Csv(),
        group=API,
        default="app/*",
        help=(
            "Comma-separated glob patterns of event names browsers may send. Names starting with "
            "`inngest/` are always refused."
        ),
    )
    api_default_event: str = setting(
        fields.String(validate=validate.Length(min=1, max=256)),
        group=API,
        default="app/api.posted",
        help="Event name used when a post names none.",
    )
    api_require_login: bool = setting(
        EnvBool(),
        group=API,
        default="false",
        help="`true`: anonymous posts get `401`. `false`: they are sent with `data.user: null`.",
    )
    api_session_only: bool = setting(
        EnvBool(),
        group=API,
        default="false",
        help=(
            "`true`: only the session cookie (and Flask-Login's remember cookie) names the "
            "poster; the host's `request_loader` (tokens, HTTP Basic) is not honoured on "
            "`/api`, and a post carrying such credentials gets `401`. For hosts that want only "
            "browsers there."
        ),
    )
    api_max_event_bytes: int = setting(
        fields.Integer(validate=validate.Range(min=1024, max=3 * 1024 * 1024)),
        group=API,
        default="262144",
        help=(
            "Largest event, measured as it is sent to Inngest (after the server adds its keys). "
            "Inngest Cloud's free plan allows 256 KiB."
        ),
    )
    api_max_body_bytes: int = setting(
        fields.Integer(validate=validate.Range(min=1024, max=64 * 1024 * 1024)),
        group=API,
        default="1048576",
        help="Largest request body, checked before parsing, chunked bodies included.",
    )
    api_max_batch: int = setting(
        fields.Integer(validate=validate.Range(min=1, max=INNGEST_MAX_EVENTS_PER_REQUEST)),
        group=API,
        default="100",
        help="Most events in one JSON array (Inngest takes at most 5000).",
    )
    api_ts_max_age: float = setting(
        Duration(validate=validate.Range(min=1)),
        group=API,
        default="7d",
        help=(
            "Oldest `ts` a post may give, counted back from the server's clock; older is a `422` "
            "(a backdated event fools logic that trusts its time). The browser client keeps each "
            "event's `ts` from `send` while it is queued, with no time limit of its own: an event "
            "queued longer than this is refused when it goes. Durations as for "
            "`INNGEST_GATEWAY_OUTBOX_MAX_AGE`."
        ),
    )
    api_ts_max_skew: float = setting(
        Duration(validate=validate.Range(min=0)),
        group=API,
        default="5m",
        help=(
            "How far ahead of the server's clock a posted `ts` may be, for browsers whose clock "
            "runs fast; further is a `422`. Inngest starts the functions an event triggers at its "
            "`ts`, so a browser must not pick a time ahead."
        ),
    )
    # Read as text; `_build` checks each origin.
    trusted_origins: tuple[str, ...] = setting(
        fields.String(),
        group=API,
        help=(
            "Extra origins, besides the service's own, allowed to post with cookies "
            "(comma-separated, e.g. `https://app.example.com`). They also get CORS headers on "
            "`/api`."
        ),
    )
    # Read as a path; `_build` loads the file, so that a bad one stops the start.
    event_schemas: EventSchemas | None = setting(
        fields.String(),
        group=API,
        help=(
            "A JSON or YAML file mapping event names or glob patterns to a JSON Schema (2020-12 "
            "unless `$schema` says otherwise) for `data`; see "
            "[API contract](api.md#api-contract). Read at start: a missing file or an invalid "
            "schema stops the service. Unset: data is not checked."
        ),
    )

    # -- Outbox: storing and delivering events ------------------------------------------------
    delivery_mode: str = setting(
        fields.String(validate=validate.OneOf(["outbox", "sync"])),
        group=OUTBOX,
        default="outbox",
        help=(
            "`outbox`: store, answer `202`, deliver in the background. `sync`: answer after "
            "Inngest (`200`, `502`, `503`)."
        ),
    )
    # Unset: the service uses DATABASE_URL's database, a host app a file in its instance folder.
    outbox_database_url: str | None = setting(
        fields.String(validate=validate.Length(min=1)),
        group=OUTBOX,
        doc_default="`DATABASE_URL`",
        secret=True,
        help=(
            "The outbox's database (SQLAlchemy URL, PostgreSQL as for `DATABASE_URL`), on an "
            "engine of its own. In a host app mounting the extension: the app's own database "
            "when it is given Flask-SQLAlchemy's `db`, else a SQLite file "
            "`inngest-gateway-outbox.db` in the app's instance folder."
        ),
    )
    outbox_max_pending: int = setting(
        fields.Integer(validate=validate.Range(min=1)),
        group=OUTBOX,
        default="100000",
        help="Most events waiting for delivery; past it, posts get `503` with `Retry-After`.",
    )
    outbox_max_age: float = setting(
        Duration(validate=validate.Range(min=1)),
        group=OUTBOX,
        default="7d",
        help=(
            "Events not delivered within this time go to dead letter. Durations: `30`, `500ms`, "
            "`30s`, `15m`, `2h`, `7d`."
        ),
    )
    outbox_keep_delivered: float = setting(
        Duration(),
        group=OUTBOX,
        default="0",
        help="How long delivered events stay in the table (`0`: removed at once).",
    )
    outbox_drain_seconds: float = setting(
        Duration(),
        group=OUTBOX,
        default="10",
        help=(
            "On shutdown, how long to keep delivering what is stored. Keep it under "
            "`GUNICORN_GRACEFUL_TIMEOUT`."
        ),
    )
    # At least twice INNGEST_GATEWAY_SEND_TIMEOUT, whatever is set (`_build`).
    outbox_lease_seconds: float = setting(
        Duration(validate=validate.Range(min=1)),
        group=OUTBOX,
        default="60",
        help=(
            "How long a claimed batch stays with its deliverer before another may take it over (at "
            "least 2 × `INNGEST_GATEWAY_SEND_TIMEOUT`)."
        ),
    )
    outbox_retry_base: float = setting(
        Duration(validate=validate.Range(min=0.001)),
        group=OUTBOX,
        default="1s",
        help=(
            "The first backoff between delivery attempts while Inngest is unreachable or "
            "failing (exponential, with jitter)."
        ),
    )
    outbox_retry_max: float = setting(
        Duration(validate=validate.Range(min=0.001)),
        group=OUTBOX,
        default="60s",
        help="The longest backoff between delivery attempts.",
    )
    outbox_poll_seconds: float = setting(
        Duration(validate=validate.Range(min=0.01, max=60)),
        group=OUTBOX,
        default="1",
        help="How often an idle deliverer looks for events stored by other processes.",
    )
    outbox_batch_size: int = setting(
        fields.Integer(validate=validate.Range(min=1, max=INNGEST_MAX_EVENTS_PER_REQUEST)),
        group=OUTBOX,
        default="1000",
        help=(
            "Most events the deliverer sends in one request (Inngest takes at most 5000); "
            "`INNGEST_GATEWAY_OUTBOX_MAX_BATCH_BYTES` may stop a batch sooner."
        ),
    )
    outbox_max_batch_bytes: int = setting(
        fields.Integer(validate=validate.Range(min=1024, max=64 * 1024 * 1024)),
        group=OUTBOX,
        default="1048576",
        help=(
            "Largest body the deliverer sends in one request (batches also stop at "
            "`INNGEST_GATEWAY_OUTBOX_BATCH_SIZE` events)."
        ),
    )
    outbox_concurrency: int = setting(
        fields.Integer(validate=validate.Range(min=1, max=16)),
        group=OUTBOX,
        default="2",
        help=(
            "Batches each deliverer (a web worker's, or `flask --app wsgi inngest-gateway outbox "
            "deliver`) sends at once during a backlog, each from a thread of its own, so that "
            "waiting for Inngest's answer does not hold back the rest of it; without a backlog "
            "one sender gathers the posts into batches."
        ),
    )
    outbox_split_after: int = setting(
        fields.Integer(validate=validate.Range(min=1)),
        group=OUTBOX,
        default="5",
        help=(
            "A batch of several events that keeps failing (`5xx`, timeouts) is split in halves "
            "each time its events reach another this many failed attempts, down to single events, "
            "so one bad event cannot hold back the others. Not on Inngest's `429` (a rate answer); "
            "a `5xx` with `Retry-After` is split, and the delay honoured."
        ),
    )
    # A post waits for at most two commits: keep that well under nginx's 25 s read timeout.
    outbox_write_timeout: float = setting(
        Duration(validate=validate.Range(min=0.1, max=10)),
        group=OUTBOX,
        default="5s",
        help=(
            "Longest a commit of posted events may take, waiting for the write lock included "
            "(SQLite: the lock file and `busy_timeout`; PostgreSQL: `lock_timeout` and "
            "`statement_timeout`). Waiting for a free pooled connection counts too (the pool's "
            "wait is this long, not 30 s); on PostgreSQL opening a connection gives up after it "
            "(whole seconds, at least 2) and TCP keepalives notice a vanished server within "
            "seconds. Past it the commit is rolled back and its posts get `503 "
            "outbox_unavailable`. A post waits at most twice this (the commit under way, then its "
            "own); at most `10s`, to stay well under nginx's 25 s read timeout. On PostgreSQL a "
            "commit still waiting half a second later has its socket shut down (a link that "
            "forwards nothing). It also bounds the service's own login lookup (`503 "
            "database_unavailable` past it)."
        ),
    )
    outbox_embedded_deliverer: bool = setting(
        EnvBool(),
        group=OUTBOX,
        default="true",
        help=(
            "Run a deliverer in each web worker; `false` if you run `flask --app wsgi "
            "inngest-gateway outbox deliver` instead."
        ),
    )
    sqlite_synchronous: str = setting(
        fields.String(validate=validate.OneOf(["NORMAL", "FULL"])),
        group=OUTBOX,
        default="NORMAL",
        help=(
            "SQLite only. `NORMAL`: an acknowledged event survives the process being killed (WAL "
            "mode). `FULL`: it also survives a power loss or an OS crash, at the cost of an fsync "
            "per commit (about a third of the outbox's throughput here)."
        ),
    )

    # -- Rate limits --------------------------------------------------------------------------
    ratelimit_enabled: bool = setting(
        EnvBool(),
        group=RATE_LIMITS,
        default="true",
        help=(
            "Rate limits on `POST /api` and `POST /auth/login` (the `limits` library, sliding "
            "window counter)."
        ),
    )
    ratelimit_storage_uri: str = setting(
        fields.String(),
        group=RATE_LIMITS,
        default="memory://",
        help=(
            "Where counts live: `memory://` counts per worker process; `redis://host:6379/0` "
            "shares them between workers and hosts."
        ),
    )
    ratelimit_key_prefix: str = setting(
        fields.String(),
        group=RATE_LIMITS,
        default="inngest-gateway",
        help="Prefix of the counters' keys in shared storage.",
    )
    ratelimit_api: str = setting(
        fields.String(validate=check_limits),
        group=RATE_LIMITS,
        default="300 per minute",
        help=(
            "`POST /api` per logged-in user, or per client IP when anonymous. Several limits: `10 "
            "per second;300 per minute`."
        ),
    )

    @property
    def event_api_url(self) -> str:
        """The full event API URL; it holds the key, so it is never logged."""
        return f"{self.inngest_origin}/e/{self.inngest_event_key}"


def declarations(cls: type, prefix: str = "") -> tuple[Declaration, ...]:
    """The settings a dataclass declares with `setting`, in the order declared.

    Each is named `prefix` + the attribute's name in upper case, unless it names itself.
    """
    return tuple(
        dataclasses.replace(
            item.metadata[_DECLARATION],
            name=item.metadata[_DECLARATION].name or prefix + item.name.upper(),
            attribute=item.name,
        )
        for item in dataclasses.fields(cls)
        if _DECLARATION in item.metadata
    )


SETTINGS = declarations(Settings, PREFIX)
# Every app.config key (and, in the standalone service, environment variable) the extension reads.
GATEWAY_SETTINGS = frozenset(d.name for d in SETTINGS)


def _raw(raw: Mapping[str, Any], attribute: str) -> Any:
    """A parsed value by its `Settings` attribute, whatever its key is named."""
    return raw[_NAMES[attribute]]


_NAMES = {d.attribute: d.name for d in SETTINGS}


class _SettingsBase(Schema):
    """Settings by their keys to `Settings`; the fields come from the declarations."""

    class Meta:
        unknown = EXCLUDE

    def __init__(self, *, require_keys: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_keys = require_keys

    @post_load(pass_original=True)
    def _build(self, raw: dict[str, Any], original: Mapping[str, Any], **_: Any) -> Settings:
        """The rules that tie settings together: dev mode, the key, the secret, the origin."""
        values = {d.attribute: raw[d.name] for d in SETTINGS}
        dev = raw["INNGEST_DEV"]
        dev_url = dev_mode(original.get("INNGEST_DEV"))[1]
        key = raw["INNGEST_EVENT_KEY"] or None
        if key is None and dev:
            key = DEV_EVENT_KEY
        elif key is None and self.require_keys:  # else refused at the first post
            raise ValidationError(
                "is required outside dev mode (set it, or set INNGEST_DEV=1 for the "
                "Inngest dev server)",
                "INNGEST_EVENT_KEY",
            )
        elif key is not None and not re.fullmatch(r"[A-Za-z0-9_\-]+", key):
            raise ValidationError("has characters an event key cannot have", "INNGEST_EVENT_KEY")
        # Flask's own key, read as Flask reads it: it signs the session and the poster tag.
        # Without `require_keys`, a post is refused until it is set (`api.check_secret_key`).
        if not str(original.get(SECRET_KEY) or "").strip() and not dev and self.require_keys:
            raise ValidationError("is required outside dev mode", SECRET_KEY)
        if raw["INNGEST_EVENT_API_BASE_URL"]:
            origin = _origin(raw["INNGEST_EVENT_API_BASE_URL"], "INNGEST_EVENT_API_BASE_URL")
        elif raw["INNGEST_BASE_URL"]:
            origin = _origin(raw["INNGEST_BASE_URL"], "INNGEST_BASE_URL")
        elif dev_url:
            origin = _origin(dev_url, "INNGEST_DEV")
        else:
            origin = DEV_SERVER_ORIGIN if dev else CLOUD_ORIGIN
        trusted_name = _NAMES["trusted_origins"]
        trusted = _csv(raw[trusted_name] or "")
        values.update(
            inngest_event_key=key,
            inngest_env=raw["INNGEST_ENV"] or None,
            trusted_origins=tuple(_origin(o, trusted_name).lower() for o in trusted),
            outbox_lease_seconds=max(
                _raw(raw, "outbox_lease_seconds"), _raw(raw, "inngest_send_timeout") * 2
            ),
            event_schemas=_event_schemas(_raw(raw, "event_schemas")),
        )
        return Settings(inngest_origin=origin, **values)


def table_schema(base: type[Schema], table: Sequence[Declaration], name: str) -> type[Schema]:
    """`base` with a field for each setting of `table` that has one, named by its key."""
    return base.from_dict({d.name: d.field for d in table if d.field is not None}, name=name)


def load_table(schema: Schema, env: Mapping[str, str]) -> Any:
    """What `schema` (from `table_schema`) loads from `env`, or ConfigError in one line.

    An empty value counts as unset, as in `.env.example`.
    """
    given = {name: value for name, value in env.items() if value.strip()}
    try:
        return schema.load(given)
    except ValidationError as exc:
        raise ConfigError(first_error(exc.messages)) from None


_SettingsSchema = cast(
    "type[_SettingsBase]", table_schema(_SettingsBase, SETTINGS, "_SettingsSchema")
)


def _event_schemas(path: str | None) -> EventSchemas | None:
    """The event schemas file, read and checked now so that a bad one stops the start."""
    if path is None:
        return None
    try:
        return load_event_schemas(path)
    except EventSchemasError as exc:
        raise ValidationError(str(exc), _NAMES["event_schemas"]) from None


def first_error(messages: Any, prefix: str = "") -> str:
    """Flatten marshmallow's nested messages into one `NAME: message` line."""
    if isinstance(messages, dict):
        name, inner = next(iter(messages.items()))
        label = prefix if name == "_schema" else str(name)
        return first_error(inner, label)
    if isinstance(messages, list) and messages:
        return first_error(messages[0], prefix)
    return f"{prefix}: {messages}" if prefix else str(messages)


def load_settings(env: Mapping[str, str], *, require_keys: bool = True) -> Settings:
    """Parse settings from a mapping of keys to strings (plus Flask's SECRET_KEY), or raise
    ConfigError.

    An empty value counts as unset. Without `require_keys`, a missing INNGEST_EVENT_KEY
    outside dev mode gives `inngest_event_key=None`, and a missing SECRET_KEY is let pass:
    posts are refused `503 not_configured` until each is set, and commands run without them.
    """
    settings: Settings = load_table(_SettingsSchema(require_keys=require_keys), env)
    return settings


def config_text(value: Any) -> str:
    """An app.config value as the environment would spell it: lists comma-separated, durations
    (timedelta) in seconds, byte strings decoded."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(config_text(item) for item in value)
    if isinstance(value, timedelta):
        # Fixed point to the microsecond, timedelta's resolution: `:g` keeps six digits only.
        return f"{value.total_seconds():f}"
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def settings_from_config(config: Mapping[str, Any], *, require_keys: bool = True) -> Settings:
    """The extension's settings from a host's app.config, and nothing else.

    Only the keys of the table are read (and Flask's own SECRET_KEY); a key unset or None
    takes the table's default. Other extensions' keys (`RATELIMIT_*`, `SESSION_*`) and the
    process environment are not looked at.
    """
    source = {
        name: config_text(config[name])
        for name in (*GATEWAY_SETTINGS, SECRET_KEY)
        if config.get(name) is not None
    }
    return load_settings(source, require_keys=require_keys)
