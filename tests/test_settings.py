"""Settings: the SDKs' rules for mode, key and origin, defaults, refusals, `.env` and secrets."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values
from flask import Flask

from inngest_gateway.settings import (
    CLOUD_ORIGIN,
    DEV_EVENT_KEY,
    DEV_SERVER_ORIGIN,
    GATEWAY_SETTINGS,
    PREFIX,
    SETTINGS,
    UNSET,
    ConfigError,
    Declaration,
    Settings,
    _SettingsSchema,
    format_duration,
    load_settings,
    parse_duration,
)
from service.app import create_app
from service.db import db
from service.environment import environment
from service.identity import _IdentitySchema
from service.settings import (
    DECLARATIONS,
    GROUPS,
    IDENTITY,
    RENAMED,
    SERVICE_SETTINGS,
    ServiceSettings,
    _ServiceSettingsSchema,
    load_all,
)
from service.users import create_user
from tests.conftest import PASSWORD
from tests.standin import InngestStandIn

ROOT = Path(__file__).resolve().parent.parent
CLOUD = {"INNGEST_EVENT_KEY": "cloud-key", "SECRET_KEY": "s3cret"}
# The Inngest SDK's own names, which the extension reads as the SDK does.
SDK_NAMES = {
    "INNGEST_EVENT_KEY",
    "INNGEST_BASE_URL",
    "INNGEST_EVENT_API_BASE_URL",
    "INNGEST_DEV",
    "INNGEST_ENV",
}


def setting_value(env: dict[str, str], attribute: str) -> Any:
    """One setting's parsed value, from the extension's table or the service's own."""
    gateway, own = load_all(env)
    return getattr(gateway if hasattr(gateway, attribute) else own, attribute)


@pytest.mark.parametrize(
    ("value", "dev"),
    [
        (None, False),
        ("", False),
        ("0", False),
        ("false", False),
        ("FALSE", False),
        ("False", False),
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("http://127.0.0.1:9999", True),
    ],
)
def test_inngest_dev_decides_the_mode(value: str | None, dev: bool) -> None:
    env = dict(CLOUD)
    if value is not None:
        env["INNGEST_DEV"] = value

    settings = load_settings(env)

    assert settings.inngest_dev is dev
    assert settings.inngest_event_key == "cloud-key"


@pytest.mark.parametrize(
    ("env", "origin"),
    [
        ({}, CLOUD_ORIGIN),
        ({"INNGEST_DEV": "1"}, DEV_SERVER_ORIGIN),
        ({"INNGEST_DEV": "true"}, "http://127.0.0.1:8288"),
        ({"INNGEST_DEV": "http://127.0.0.1:9999"}, "http://127.0.0.1:9999"),
        ({"INNGEST_DEV": "http://127.0.0.1:9999/"}, "http://127.0.0.1:9999"),
        (
            {"INNGEST_DEV": "http://127.0.0.1:9999", "INNGEST_BASE_URL": "http://base:1"},
            "http://base:1",
        ),
        (
            {
                "INNGEST_DEV": "http://127.0.0.1:9999",
                "INNGEST_BASE_URL": "http://base:1",
                "INNGEST_EVENT_API_BASE_URL": "http://events:2",
            },
            "http://events:2",
        ),
        (
            {"INNGEST_DEV": "1", "INNGEST_EVENT_API_BASE_URL": "http://events:2/"},
            "http://events:2",
        ),
        ({"INNGEST_BASE_URL": "https://inngest.internal"}, "https://inngest.internal"),
        (
            {
                "INNGEST_BASE_URL": "https://inngest.internal",
                "INNGEST_EVENT_API_BASE_URL": "https://events.internal",
            },
            "https://events.internal",
        ),
        ({"INNGEST_EVENT_API_BASE_URL": "", "INNGEST_BASE_URL": "http://base:1"}, "http://base:1"),
        ({"INNGEST_DEV": "1", "INNGEST_BASE_URL": ""}, DEV_SERVER_ORIGIN),
        ({"INNGEST_DEV": "0", "INNGEST_BASE_URL": ""}, "https://inn.gs"),
    ],
)
def test_origin_precedence(env: dict[str, str], origin: str) -> None:
    settings = load_settings({**CLOUD, **env})

    assert settings.inngest_origin == origin
    assert settings.event_api_url == f"{origin}/e/cloud-key"


@pytest.mark.parametrize("dev", ["1", "true", "http://127.0.0.1:9999"])
@pytest.mark.parametrize("key", [None, ""])
def test_dev_mode_without_a_key_uses_the_placeholder(dev: str, key: str | None) -> None:
    env = {"INNGEST_DEV": dev}
    if key is not None:
        env["INNGEST_EVENT_KEY"] = key

    settings = load_settings(env)

    assert settings.inngest_event_key == DEV_EVENT_KEY == "NO_EVENT_KEY_SET"
    assert setting_value(env, "secret_key") is None
    assert settings.event_api_url.endswith("/e/NO_EVENT_KEY_SET")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "INNGEST_EVENT_KEY"),
        ({"SECRET_KEY": "s3cret"}, "INNGEST_EVENT_KEY"),
        ({"SECRET_KEY": "s3cret", "INNGEST_EVENT_KEY": ""}, "INNGEST_EVENT_KEY"),
        ({"SECRET_KEY": "s3cret", "INNGEST_DEV": "false"}, "INNGEST_EVENT_KEY"),
        ({"INNGEST_EVENT_KEY": "cloud-key"}, "SECRET_KEY"),
        ({"INNGEST_EVENT_KEY": "cloud-key", "SECRET_KEY": ""}, "SECRET_KEY"),
        ({"INNGEST_EVENT_KEY": "cloud-key", "INNGEST_DEV": "0"}, "SECRET_KEY"),
    ],
)
def test_cloud_mode_requires_the_key_and_the_secret(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env)

    assert str(raised.value).startswith(f"{variable}: ")
    assert "required outside dev mode" in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("INNGEST_GATEWAY_SEND_TIMEOUT", "soon"),
        ("INNGEST_GATEWAY_SEND_TIMEOUT", "0"),
        ("INNGEST_GATEWAY_SEND_TIMEOUT", "-1"),
        ("INNGEST_GATEWAY_SEND_TIMEOUT", "nan"),
        ("INNGEST_GATEWAY_SEND_TIMEOUT", "inf"),
        ("INNGEST_GATEWAY_API_MAX_EVENT_BYTES", "big"),
        ("INNGEST_GATEWAY_API_MAX_EVENT_BYTES", "1e6"),
        ("INNGEST_GATEWAY_API_MAX_EVENT_BYTES", "10"),
        ("INNGEST_GATEWAY_API_MAX_BODY_BYTES", "1.5"),
        ("INNGEST_GATEWAY_API_MAX_BODY_BYTES", "0"),
        ("INNGEST_GATEWAY_API_MAX_BATCH", "ten"),
        ("INNGEST_GATEWAY_API_MAX_BATCH", "0"),
        ("INNGEST_GATEWAY_API_MAX_BATCH", "5001"),
        ("INNGEST_GATEWAY_API_TS_MAX_AGE", "0"),
        ("INNGEST_GATEWAY_API_TS_MAX_AGE", "a week"),
        ("INNGEST_GATEWAY_API_TS_MAX_SKEW", "-5m"),
        ("INNGEST_GATEWAY_OUTBOX_BATCH_SIZE", "0"),
        ("INNGEST_GATEWAY_OUTBOX_BATCH_SIZE", "5001"),
        ("INNGEST_GATEWAY_OUTBOX_CONCURRENCY", "0"),
        ("INNGEST_GATEWAY_OUTBOX_CONCURRENCY", "17"),
        ("INNGEST_GATEWAY_API_REQUIRE_LOGIN", "maybe"),
        ("INNGEST_GATEWAY_API_REQUIRE_LOGIN", "2"),
        ("CREATE_DEMO_USER", "sometimes"),
        ("INNGEST_BASE_URL", "inn.gs"),
        ("INNGEST_BASE_URL", "ftp://inn.gs"),
        ("INNGEST_BASE_URL", "http://"),
        ("INNGEST_EVENT_API_BASE_URL", "not a url"),
        ("INNGEST_GATEWAY_TRUSTED_ORIGINS", "https://ok.example, shop.example"),
        ("INNGEST_EVENT_KEY", "key/with/slashes"),
        ("INNGEST_EVENT_KEY", "key with spaces"),
        ("INNGEST_GATEWAY_API_DEFAULT_EVENT", "x" * 257),
        ("LOG_LEVEL", "LOUD"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_all({**CLOUD, variable: value})

    message = str(raised.value)
    assert message.startswith(f"{variable}: ")
    assert len(message) > len(variable) + 2
    if variable == "INNGEST_EVENT_KEY":
        assert value not in message


def test_defaults_match_the_spec() -> None:
    settings, own = load_all({"INNGEST_DEV": "1"})

    assert own == ServiceSettings(
        secret_key=None,
        database_url=None,
        log_level="INFO",
        log_format="text",
        create_demo_user=True,
        trusted_proxies=0,
        login_ratelimit_ip="30 per minute",
        login_ratelimit_email="5 per minute;20 per hour",
        metrics_token=None,
        metrics_internal_only=True,
        session_lifetime=14 * 86400.0,
        remember_cookie_duration=30 * 86400.0,
    )
    assert settings == Settings(
        inngest_dev=True,
        inngest_event_key="NO_EVENT_KEY_SET",
        suppress_send=None,
        inngest_origin="http://127.0.0.1:8288",
        inngest_event_api_base_url=None,
        inngest_base_url=None,
        inngest_env=None,
        inngest_send_timeout=settings.inngest_send_timeout,
        api_allowed_events=("app/*",),
        api_default_event="app/api.posted",
        api_require_login=False,
        api_session_only=False,
        api_max_event_bytes=262144,
        api_max_body_bytes=1048576,
        api_max_batch=100,
        api_ts_max_age=7 * 86400.0,
        api_ts_max_skew=300.0,
        trusted_origins=(),
        delivery_mode="outbox",
        sqlite_synchronous="NORMAL",
        outbox_max_pending=100_000,
        outbox_max_age=7 * 86400.0,
        outbox_keep_delivered=0.0,
        outbox_drain_seconds=10.0,
        outbox_lease_seconds=60.0,
        outbox_retry_base=1.0,
        outbox_retry_max=60.0,
        outbox_poll_seconds=1.0,
        outbox_batch_size=1000,
        outbox_max_batch_bytes=1048576,
        outbox_concurrency=2,
        outbox_embedded_deliverer=True,
        outbox_split_after=5,
        outbox_write_timeout=5.0,
        outbox_database_url=None,
        event_schemas=None,
        ratelimit_enabled=True,
        ratelimit_storage_uri="memory://",
        ratelimit_key_prefix="inngest-gateway",
        ratelimit_api="300 per minute",
    )
    assert 0 < settings.inngest_send_timeout <= 300


@pytest.mark.parametrize(
    "variable",
    [
        "INNGEST_GATEWAY_API_ALLOWED_EVENTS",
        "INNGEST_GATEWAY_API_DEFAULT_EVENT",
        "INNGEST_GATEWAY_API_REQUIRE_LOGIN",
        "INNGEST_GATEWAY_API_MAX_EVENT_BYTES",
        "INNGEST_GATEWAY_API_MAX_BODY_BYTES",
        "INNGEST_GATEWAY_API_MAX_BATCH",
        "INNGEST_GATEWAY_SEND_TIMEOUT",
        "INNGEST_ENV",
        "DATABASE_URL",
        "INNGEST_GATEWAY_TRUSTED_ORIGINS",
        "LOG_LEVEL",
    ],
)
@pytest.mark.parametrize("blank", ["", "  "])
def test_empty_values_count_as_unset(variable: str, blank: str) -> None:
    assert load_all({**CLOUD, variable: blank}) == load_all(CLOUD)


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"INNGEST_GATEWAY_API_ALLOWED_EVENTS": "app/*"}, "api_allowed_events", ("app/*",)),
        (
            {
                "INNGEST_GATEWAY_API_ALLOWED_EVENTS": (
                    " app/*, billing/invoice.* ,,shop/order.placed "
                )
            },
            "api_allowed_events",
            ("app/*", "billing/invoice.*", "shop/order.placed"),
        ),
        ({"INNGEST_GATEWAY_API_ALLOWED_EVENTS": ","}, "api_allowed_events", ()),
        (
            {"INNGEST_GATEWAY_TRUSTED_ORIGINS": "https://Shop.Example.com/, http://localhost:3000"},
            "trusted_origins",
            ("https://shop.example.com", "http://localhost:3000"),
        ),
        (
            {"INNGEST_GATEWAY_TRUSTED_ORIGINS": "https://a.example,"},
            "trusted_origins",
            ("https://a.example",),
        ),
        ({"INNGEST_GATEWAY_API_REQUIRE_LOGIN": "true"}, "api_require_login", True),
        ({"INNGEST_GATEWAY_API_REQUIRE_LOGIN": "1"}, "api_require_login", True),
        ({"INNGEST_GATEWAY_API_REQUIRE_LOGIN": "YES"}, "api_require_login", True),
        ({"INNGEST_GATEWAY_API_REQUIRE_LOGIN": "false"}, "api_require_login", False),
        ({"INNGEST_GATEWAY_API_REQUIRE_LOGIN": "0"}, "api_require_login", False),
        ({"INNGEST_GATEWAY_API_REQUIRE_LOGIN": "off"}, "api_require_login", False),
        ({"CREATE_DEMO_USER": "false"}, "create_demo_user", False),
        ({"INNGEST_GATEWAY_API_MAX_BATCH": "5000"}, "api_max_batch", 5000),
        ({"INNGEST_GATEWAY_API_TS_MAX_AGE": "30d"}, "api_ts_max_age", 30 * 86400.0),
        ({"INNGEST_GATEWAY_API_TS_MAX_SKEW": "0"}, "api_ts_max_skew", 0.0),
        ({"INNGEST_GATEWAY_API_TS_MAX_SKEW": "90s"}, "api_ts_max_skew", 90.0),
        ({"INNGEST_GATEWAY_OUTBOX_BATCH_SIZE": "5000"}, "outbox_batch_size", 5000),
        ({"INNGEST_GATEWAY_OUTBOX_CONCURRENCY": "4"}, "outbox_concurrency", 4),
        ({"INNGEST_GATEWAY_API_MAX_EVENT_BYTES": "3145728"}, "api_max_event_bytes", 3145728),
        ({"INNGEST_GATEWAY_API_MAX_BODY_BYTES": "2048"}, "api_max_body_bytes", 2048),
        ({"INNGEST_GATEWAY_SEND_TIMEOUT": "2.5"}, "inngest_send_timeout", 2.5),
        ({"INNGEST_ENV": "feature-x"}, "inngest_env", "feature-x"),
        (
            {"INNGEST_GATEWAY_API_DEFAULT_EVENT": "shop/clicked"},
            "api_default_event",
            "shop/clicked",
        ),
        ({"DATABASE_URL": "sqlite:////tmp/x.db"}, "database_url", "sqlite:////tmp/x.db"),
        ({"LOG_LEVEL": "DEBUG"}, "log_level", "DEBUG"),
    ],
)
def test_values_are_parsed(env: dict[str, str], field: str, value: Any) -> None:
    assert setting_value({**CLOUD, **env}, field) == value


@pytest.mark.parametrize(
    ("spelled", "shown"),
    [("7d", "7d"), ("36h", "36h"), ("5m", "5m"), ("90", "90s"), ("500ms", "500ms"), ("0", "0s")],
)
def test_format_duration_spells_a_duration_as_the_settings_do(spelled: str, shown: str) -> None:
    assert format_duration(parse_duration(spelled)) == shown
    assert parse_duration(shown) == parse_duration(spelled)


def test_unknown_variables_are_ignored() -> None:
    assert load_settings({**CLOUD, "PATH": "/usr/bin", "HOME": "/root"}) == load_settings(CLOUD)


def test_create_app_refuses_to_start_without_a_secret_in_cloud_mode(
    make_app: Callable[..., Flask],
) -> None:
    with pytest.raises(ConfigError) as raised:
        make_app(SECRET_KEY="")

    assert str(raised.value).startswith("SECRET_KEY: ")


def test_wsgi_exits_with_a_clear_message_without_an_event_key(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "SECRET_KEY": "s3cret",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
    }

    done = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert "configuration error: INNGEST_EVENT_KEY: is required outside dev mode" in done.stderr
    assert done.stdout == ""


def test_dev_mode_generates_a_private_secret_and_reuses_it(
    tmp_path: Path, make_app: Callable[..., Flask], inngest: InngestStandIn
) -> None:
    secret_file = tmp_path / "instance" / "secret_key"
    assert not secret_file.exists()

    first = make_app(INNGEST_DEV=inngest.url, SECRET_KEY="")

    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    assert first.config["SECRET_KEY"] == secret

    second = make_app(INNGEST_DEV=inngest.url, SECRET_KEY="")

    assert second.config["SECRET_KEY"] == secret
    assert secret_file.read_text().strip() == secret
    with first.app_context():
        create_user("ada@example.com", "Ada Lovelace", PASSWORD)
        db.session.remove()
    client = first.test_client()
    login = client.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert login.status_code == 200
    session = client.get_cookie("session")
    assert session is not None
    other = second.test_client()
    other.set_cookie("session", session.value)
    me = other.get("/auth/me")
    assert me.status_code == 200
    assert me.get_json()["email"] == "ada@example.com"


def test_a_configured_secret_writes_no_file(tmp_path: Path, make_app: Callable[..., Flask]) -> None:
    app = make_app()

    assert app.config["SECRET_KEY"] == "test-session-secret-0123456789abcdef"
    assert not (tmp_path / "instance" / "secret_key").exists()


def test_dotenv_values_are_read_and_the_environment_wins(tmp_path: Path) -> None:
    ours = {
        "GATEWAY_TEST_DOTENV_PLAIN": "plain",
        "GATEWAY_TEST_DOTENV_QUOTED": "with spaces # not a comment",
        "GATEWAY_TEST_DOTENV_EXPORTED": "exported",
    }
    assert not set(ours) & set(os.environ)
    assert "PATH" in os.environ
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# a comment\n"
        "GATEWAY_TEST_DOTENV_PLAIN=plain  # trailing comment\n"
        'GATEWAY_TEST_DOTENV_QUOTED="with spaces # not a comment"\n'
        "export GATEWAY_TEST_DOTENV_EXPORTED=exported\n"
        "PATH=/from/dotenv/only\n"
        "INNGEST_GATEWAY_API_DEFAULT_EVENT=dotenv/event\n"
        "INNGEST_GATEWAY_API_MAX_BATCH=7\n"
    )

    env = environment(dotenv)

    assert {key: env[key] for key in ours} == ours
    assert env["PATH"] == os.environ["PATH"]
    assert env["INNGEST_GATEWAY_API_DEFAULT_EVENT"] == os.environ.get(
        "INNGEST_GATEWAY_API_DEFAULT_EVENT", "dotenv/event"
    )
    assert env["INNGEST_GATEWAY_API_MAX_BATCH"] == os.environ.get(
        "INNGEST_GATEWAY_API_MAX_BATCH", "7"
    )
    assert {key: value for key, value in env.items() if key in os.environ} == dict(os.environ)
    settings = load_settings(
        {
            **CLOUD,
            **{
                k: env[k]
                for k in ("INNGEST_GATEWAY_API_DEFAULT_EVENT", "INNGEST_GATEWAY_API_MAX_BATCH")
            },
        }
    )
    assert settings.api_default_event == env["INNGEST_GATEWAY_API_DEFAULT_EVENT"]
    assert settings.api_max_batch == int(env["INNGEST_GATEWAY_API_MAX_BATCH"])


def test_without_a_dotenv_file_the_environment_is_all(tmp_path: Path) -> None:
    assert environment(tmp_path / "absent.env") == dict(os.environ)


def _example_variables() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^\s*(?:#\s*)?(?:export\s+)?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


@pytest.mark.parametrize(
    "variable", sorted({*_SettingsSchema().fields, *_ServiceSettingsSchema().fields})
)
def test_every_setting_is_listed_in_env_example(variable: str) -> None:
    assert (ROOT / ".env.example").is_file(), ".env.example is missing"

    assert variable in _example_variables()


def test_env_example_as_dotenv_is_a_working_dev_configuration() -> None:
    values = {k: v for k, v in dotenv_values(ROOT / ".env.example").items() if v is not None}

    settings, _ = load_all(values)

    assert settings.inngest_dev is True
    assert settings.inngest_event_key == "NO_EVENT_KEY_SET"
    assert settings.api_default_event == "app/api.posted"
    assert settings.api_allowed_events == ("app/*",)
    assert settings.api_max_event_bytes == 262144


# -- The docs list exactly the declared settings, with their defaults and groups ------------
IDENTITY_FIELDS = {
    name: field for name, field in _IdentitySchema().fields.items() if name != "SECRET_KEY"
}


def _documented_settings() -> dict[str, tuple[str, str, str]]:
    """Each row of the tables of docs/settings.md: its group (heading), default and meaning."""
    text = (ROOT / "docs" / "settings.md").read_text()
    rows: dict[str, tuple[str, str, str]] = {}
    group = ""
    for line in text.splitlines():
        if line.startswith("## "):
            group = line.removeprefix("## ").strip()
        elif line.startswith("| `") and group != "Renamed settings":
            name, default, meaning = (cell.strip() for cell in line.strip("|").split(" | "))
            assert re.fullmatch(r"`[A-Z][A-Z0-9_]*`", name), f"one variable per row: {name}"
            assert name.strip("`") not in rows, f"{name} is listed twice"
            rows[name.strip("`")] = (group, default, meaning)
    return rows


def _example_settings() -> dict[str, tuple[str, str]]:
    """Each variable set in `.env.example`: the section it is in, and its value."""
    rows: dict[str, tuple[str, str]] = {}
    group = ""
    for line in (ROOT / ".env.example").read_text().splitlines():
        heading = re.fullmatch(r"# --- (.+?) -*", line)
        if heading:
            group = heading.group(1)
        elif re.match(r"[A-Z][A-Z0-9_]*=", line):
            name, value = line.split("=", 1)
            assert name not in rows, f"{name} is set twice"
            rows[name] = (group, value)
    return rows


def _documents(field: Any, shown: str, default: Any) -> bool:
    """Whether a documented default (`14d`, or unset) is what the field defaults to."""
    if default is None:
        return shown in ("", UNSET)
    return shown.startswith("`") and field.deserialize(shown.strip("`")) == default


def test_the_declarations_are_grouped_and_named_once() -> None:
    names = [declaration.name for declaration in DECLARATIONS]

    assert len(names) == len(set(names))
    assert {declaration.group for declaration in DECLARATIONS} == set(GROUPS)
    assert {*_SettingsSchema().fields, *_ServiceSettingsSchema().fields} == {
        d.name for d in DECLARATIONS if d.field is not None
    }
    assert GATEWAY_SETTINGS == set(_SettingsSchema().fields)
    assert not GATEWAY_SETTINGS & {d.name for d in SERVICE_SETTINGS}
    assert not set(IDENTITY_FIELDS) & set(names)


def test_the_extensions_keys_are_its_own() -> None:
    """Prefixed, but the Inngest SDK's names; none is Flask's or another extension's."""
    others = set(Flask("probe").config) | {"SECRET_KEY"}

    for name in GATEWAY_SETTINGS:
        assert name.startswith(PREFIX) or name in SDK_NAMES, name
        assert name not in others, name
        assert not name.startswith(("RATELIMIT_", "SESSION_", "SQLALCHEMY_", "WTF_")), name
    assert SDK_NAMES <= GATEWAY_SETTINGS
    # The service's own may take neither Flask's keys nor Flask-Limiter's.
    for declaration in SERVICE_SETTINGS:
        assert declaration.name not in others - {"SECRET_KEY"}, declaration.name
        assert not declaration.name.startswith("RATELIMIT_"), declaration.name


def test_each_old_name_is_refused_naming_the_new_one(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    for old, new in RENAMED.items():
        assert new in {d.name for d in DECLARATIONS}, new
        with pytest.raises(ConfigError) as raised:
            create_app({**base_env, old: "anything"}, instance_path=str(tmp_path / "instance"))
        assert (
            str(raised.value) == f"{old}: was renamed {new}; set {new} instead (docs/settings.md)"
        )
    # Blank, an old name is as good as unset.
    with pytest.raises(ConfigError, match="INNGEST_EVENT_KEY"):
        load_all({"DELIVERY_MODE": " ", "SECRET_KEY": "s3cret"})


def test_the_renamed_table_in_the_docs_is_the_map() -> None:
    text = (ROOT / "docs" / "settings.md").read_text()
    section = text.split("## Renamed settings", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| `([A-Z0-9_]+)` \|$", section, re.MULTILINE)

    assert dict(rows) == RENAMED
    assert len(rows) == len(RENAMED)


def test_the_service_maps_the_same_names_the_extension_reads(
    make_app: Callable[..., Flask],
) -> None:
    """One name per setting: what the service's environment sets is what a host's app.config
    would set."""
    app = make_app(
        INNGEST_GATEWAY_API_DEFAULT_EVENT="app/mapped", INNGEST_GATEWAY_RATELIMIT_API="7/minute"
    )
    host = Flask("host")
    host.config.update(
        SECRET_KEY="s",
        INNGEST_DEV="1",
        INNGEST_GATEWAY_API_DEFAULT_EVENT="app/mapped",
        INNGEST_GATEWAY_RATELIMIT_API="7/minute",
    )
    from inngest_gateway.settings import settings_from_config
    from inngest_gateway.state import gateway_state

    served = gateway_state(app).settings
    hosted = settings_from_config(host.config)
    assert served.api_default_event == hosted.api_default_event == "app/mapped"
    assert served.ratelimit_api == hosted.ratelimit_api == "7/minute"


def test_the_documented_table_is_the_declarations() -> None:
    rows = _documented_settings()

    assert set(rows) == {d.name for d in DECLARATIONS} | set(IDENTITY_FIELDS)
    for declaration in DECLARATIONS:
        assert rows[declaration.name] == (
            declaration.group,
            declaration.shown_default,
            declaration.help,
        ), declaration.name
    for name, field in IDENTITY_FIELDS.items():
        group, shown, _ = rows[name]
        assert group == IDENTITY, name
        assert _documents(field, shown, field.load_default), name
    groups = [group for group, _, _ in rows.values()]
    assert sorted(set(groups), key=groups.index) == list(GROUPS)


def test_env_example_is_the_declarations() -> None:
    rows = _example_settings()

    assert set(rows) == {d.name for d in DECLARATIONS} | set(IDENTITY_FIELDS)
    for declaration in DECLARATIONS:
        expected = declaration.example if declaration.example is not None else declaration.default
        assert rows[declaration.name] == (declaration.group, expected or ""), declaration.name
    for name, field in IDENTITY_FIELDS.items():
        group, value = rows[name]
        assert group == IDENTITY, name
        assert _documents(field, f"`{value}`" if value else "", field.load_default), name


@pytest.mark.parametrize(
    "declaration",
    [d for d in SETTINGS + SERVICE_SETTINGS if d.default is not None],
    ids=lambda d: d.name,
)
def test_each_declared_default_is_what_an_unset_variable_gives(declaration: Declaration) -> None:
    assert declaration.field is not None
    loaded = load_all({"INNGEST_DEV": "1"})

    value = setting_value({"INNGEST_DEV": "1"}, declaration.attribute)

    assert value == declaration.field.deserialize(declaration.default)
    assert load_all({"INNGEST_DEV": "1", declaration.name: declaration.default}) == loaded
