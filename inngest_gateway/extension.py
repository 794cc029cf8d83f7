"""`InngestGateway`: the Flask extension that serves `POST /api` in any app with Flask-Login.

```python
app = Flask(__name__)
login_manager = LoginManager(app)   # the host's own users and login
gateway = InngestGateway(app)       # or InngestGateway() then gateway.init_app(app)
```

Everything it adds lives in its blueprint (view, hooks, error handlers, rate limit, CORS)
and under `app.extensions["inngest_gateway"]`; the host's request class, error handlers,
logging, headers, cookies and proxy handling are left alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask
from flask.cli import AppGroup

from . import api, browser, outbox, poster
from .db import OwnDatabase, database_url
from .delivery import Delivery
from .inngest import InngestClient
from .limits import RateLimiter
from .login import check_login_url
from .outbox import Deliverer, OutboxBase, Writer
from .settings import GATEWAY_SETTINGS, Settings, load_settings
from .state import EXTENSION_KEY, GatewayState, gateway_state

log = logging.getLogger(__name__)

cli = AppGroup("inngest-gateway", help="The Inngest gateway's operator commands.")
cli.add_command(outbox.outbox_cli)


def _text(value: Any) -> str:
    """A config value as the environment would spell it: lists comma-separated, durations
    (timedelta) in seconds, byte strings decoded."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_text(item) for item in value)
    if isinstance(value, timedelta):
        # Fixed point to the microsecond, timedelta's resolution: `:g` keeps six digits only.
        return f"{value.total_seconds():f}"
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _settings_source(app: Flask, environ: Mapping[str, str]) -> dict[str, str]:
    """Each of the gateway's settings from `app.config` when set there, else the environment."""
    source = {name: value for name, value in environ.items() if name in GATEWAY_SETTINGS}
    for name in GATEWAY_SETTINGS:
        value = app.config.get(name)
        if value is not None:
            source[name] = _text(value)
    return source


class InngestGateway:
    """Serves `POST /api` (events to Inngest) in the app it is bound to.

    `user_serializer(user)` turns the host's Flask-Login user into `data.user` (default:
    the user's primary key, `poster.user_key`, plus `email` and `name` when present); its
    `id` also names the poster, so it must be stable per user. `url_prefix` and `path` place
    the endpoint; `redirect_to` (a path, or a function returning one) is where a form post
    lands when it names no page to go back to. `login_url` (a path or an http(s) URL), else
    the host's Flask-Login `login_view`, is where a form post that needs a login
    (API_REQUIRE_LOGIN) is sent, with `next`; other posts get the 401. `settings`, already
    loaded, replaces app.config and the environment (the standalone service passes its own).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        user_serializer: Callable[[Any], dict[str, Any]] | None = None,
        url_prefix: str | None = None,
        path: str = "/api",
        redirect_to: str | Callable[[], str] = "/",
        login_url: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.user_serializer = user_serializer or poster.default_user_serializer
        self.url_prefix = url_prefix
        self.path = path
        self.redirect_to = redirect_to
        self.login_url = check_login_url(login_url) if login_url else None
        self.settings = settings
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the settings, make the sender, outbox and limiter, register the blueprint and CLI.

        A missing or invalid setting raises `settings.ConfigError`. In outbox mode the
        deliverer's senders start in a process that serves the app, so a stored backlog
        goes out without waiting for a post; not in `flask` commands, and in gunicorn's
        master under `preload_app` only in each worker it forks (see
        `Delivery.start_when_serving`).
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "InngestGateway is already set up on this app: call init_app once per app "
                "(a second gateway would run a second deliverer and register the same routes)"
            )
        rule = self.path if self.url_prefix is None else _join(self.url_prefix, self.path)
        _refuse_served_path(app, rule)
        settings = self.settings or load_settings(_settings_source(app, os.environ))
        url = settings.outbox_database_url or _instance_sqlite(app.instance_path)
        outbox_db = OwnDatabase(
            database_url(url, app.instance_path),
            OutboxBase.metadata,
            sqlite_synchronous=settings.sqlite_synchronous,
            write_timeout=settings.outbox_write_timeout,
        )
        client = InngestClient(settings)
        writer = Writer(settings, outbox_db)
        deliverer = Deliverer(app, settings, client, outbox_db)
        app.extensions[EXTENSION_KEY] = GatewayState(
            settings=settings,
            client=client,
            outbox_db=outbox_db,
            writer=writer,
            deliverer=deliverer,
            delivery=Delivery(settings, client, writer, deliverer),
            limiter=RateLimiter(settings),
            user_serializer=self.user_serializer,
            redirect_to=self.redirect_to,
            login_url=self.login_url,
        )
        outbox_db.ensure_schema()  # a database still down is retried by the first post
        blueprint = api.blueprint(settings, self.path)
        _exempt_from_form_csrf(app, blueprint)
        app.register_blueprint(blueprint, url_prefix=self.url_prefix)
        # After the POST rule, so that POST (and its OPTIONS) match that one first.
        app.url_map.add(api.FallbackRule(rule, endpoint=api.FALLBACK_ENDPOINT))
        app.view_functions[api.FALLBACK_ENDPOINT] = api.method_not_allowed
        app.cli.add_command(cli)
        app.add_template_global(browser.script_tag, "inngest_gateway_script")
        app.extensions[EXTENSION_KEY].delivery.start_when_serving()

    def start(self, app: Flask) -> None:
        """Start this process's deliverer senders now (outbox mode, when embedded); idempotent."""
        gateway_state(app).delivery.start()

    def stop(self, app: Flask) -> int:
        """Stop this process's deliverer, delivering what is stored for OUTBOX_DRAIN_SECONDS.

        For a host's gunicorn `worker_exit`; the deliverer also stops at interpreter exit.
        Returns how many events were delivered while draining.
        """
        return gateway_state(app).delivery.stop()


def _exempt_from_form_csrf(app: Flask, blueprint: Blueprint) -> None:
    """Exempt the gateway's blueprint from Flask-WTF's CSRFProtect, bound before or after us.

    CSRFProtect wants a form token in every post, which browsers posting events (the client,
    `fetch`, a plain form) do not carry; the gateway refuses posts from other origins itself
    (`csrf.protect`: Origin, Sec-Fetch-Site and the cookies' SameSite), so its own check is
    the one that applies on its routes. A CSRFProtect bound later is exempted at the
    blueprint's first request: Flask runs a blueprint's URL value preprocessors before any
    `before_request` hook, CSRFProtect's included, and only for the blueprint's own requests.
    Call before the blueprint is registered.
    """

    def exempt() -> bool:
        protect = app.extensions.get("csrf")
        if protect is None or not callable(getattr(protect, "exempt", None)):
            return False
        protect.exempt(blueprint)
        return True

    if exempt():
        return
    done = False

    @blueprint.url_value_preprocessor
    def exempt_once(_endpoint: str | None, _values: dict[str, Any] | None) -> None:
        nonlocal done
        if not done:
            done = exempt()


def _refuse_served_path(app: Flask, path: str) -> None:
    """Refuse to mount where a host rule already answers: one of the two would be hidden."""
    for rule in app.url_map.iter_rules():
        if rule.rule == path:
            methods = ", ".join(sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))
            raise RuntimeError(
                f"InngestGateway cannot serve {path}: the app already has a rule for it "
                f"({methods} -> {rule.endpoint}); mount it elsewhere with url_prefix= (or path=)"
            )


def _join(prefix: str, path: str) -> str:
    return "/".join((prefix.rstrip("/"), path.lstrip("/")))


def _instance_sqlite(instance_path: str) -> str:
    os.makedirs(instance_path, exist_ok=True)
    return f"sqlite:///{os.path.join(instance_path, 'inngest-gateway-outbox.db')}"
