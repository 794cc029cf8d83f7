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

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from flask import Blueprint, Flask
from sqlalchemy.engine import make_url

from . import api, browser, poster, sends
from .cli import cli
from .db import OwnDatabase, database_url
from .delivery import Delivery
from .inngest import InngestClient
from .limits import RateLimiter
from .login import check_login_url
from .outbox import Deliverer, OutboxBase, Writer
from .settings import Settings, settings_from_config
from .state import EXTENSION_KEY, GatewayState, gateway_state

log = logging.getLogger(__name__)


class InngestGateway:
    """Serves `POST /api` (events to Inngest) in the app it is bound to.

    `user_serializer(user)` turns the host's Flask-Login user into `data.user` (default:
    the user's primary key, `poster.user_key`, plus `email` and `name` when present); its
    `id` also names the poster, so it must be stable per user. `url_prefix` and `path` place
    the endpoint; `redirect_to` (a path, or a function returning one) is where a form post
    lands when it names no page to go back to. `login_url` (a path or an http(s) URL), else
    the host's Flask-Login `login_view`, is where a form post that needs a login
    (INNGEST_GATEWAY_API_REQUIRE_LOGIN) is sent, with `next`; other posts get the 401.
    `settings`, already loaded, replaces app.config (the standalone service passes its own).
    Settings come from app.config only (`INNGEST_GATEWAY_...` keys, the Inngest SDK's names,
    Flask's `SECRET_KEY`; docs/settings.md), never from the process environment.

    `db`, the host's Flask-SQLAlchemy object, puts the outbox in the app's own database
    (unless INNGEST_GATEWAY_OUTBOX_DATABASE_URL names another): its table joins `db.metadata`
    for the host's migrations, and `send` writes in `db.session`'s transaction.
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
        db: Any = None,
    ) -> None:
        self.user_serializer = user_serializer or poster.default_user_serializer
        self.url_prefix = url_prefix
        self.path = path
        self.redirect_to = redirect_to
        self.login_url = check_login_url(login_url) if login_url else None
        self.settings = settings
        self.db = db
        if db is not None:
            sends.outbox_table(db.metadata)  # for the host's migrations and db.create_all()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the settings, make the sender, outbox and limiter, register the blueprint and CLI.

        An invalid setting raises `settings.ConfigError`; a missing INNGEST_EVENT_KEY or
        SECRET_KEY does not (posts answer `503 not_configured` until it is set), so `flask`
        commands run without them. Nothing is written here: the outbox (and the instance
        folder) is made at the first post or deliverer start. In outbox mode the deliverer
        starts with the first request a process serves (a stored backlog goes out without
        waiting for a post), and again in a process forked after that; never in a process
        that only loads the app. While the app is testing and
        INNGEST_GATEWAY_OUTBOX_DATABASE_URL is unset, the outbox is a file of this app's own
        in a temporary folder, removed at exit, not the instance folder's.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "InngestGateway is already set up on this app: call init_app once per app "
                "(a second gateway would run a second deliverer and register the same routes)"
            )
        rule = self.path if self.url_prefix is None else _join(self.url_prefix, self.path)
        _refuse_served_path(app, rule)
        settings = self.settings or settings_from_config(app.config, require_keys=False)
        in_app = self.db is not None and settings.outbox_database_url is None
        url = settings.outbox_database_url or (
            self._app_database_url(app)
            if in_app
            else _private_sqlite()
            if app.testing
            else _instance_sqlite(app.instance_path)
        )
        outbox_db = OwnDatabase(
            database_url(url, app.instance_path),
            OutboxBase.metadata,
            sqlite_synchronous=settings.sqlite_synchronous,
            write_timeout=settings.outbox_write_timeout,
            make_folder=settings.outbox_database_url is None and not in_app,
            # In the app's database the app's migrations (or `outbox create`) make the table.
            create_tables=not in_app,
        )
        # Where send() writes by default: db.session while the outbox is in the app's database
        # (INNGEST_GATEWAY_OUTBOX_DATABASE_URL unset, or naming that database), else nowhere
        # but the gateway's own outbox, committed before send returns.
        in_transaction = in_app or (
            self.db is not None
            and sends.same_database(outbox_db.engine.url, make_url(self._app_database_url(app)))
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
            delivery=Delivery(settings, client, writer, deliverer, in_app_database=in_transaction),
            limiter=RateLimiter(settings),
            user_serializer=self.user_serializer,
            redirect_to=self.redirect_to,
            login_url=self.login_url,
            host_db=self.db if in_transaction else None,
        )
        blueprint = api.blueprint(settings, self.path)
        _exempt_from_form_csrf(app, blueprint)
        app.register_blueprint(blueprint, url_prefix=self.url_prefix)
        # After the POST rule, so that POST (and its OPTIONS) match that one first.
        app.url_map.add(api.FallbackRule(rule, endpoint=api.FALLBACK_ENDPOINT))
        app.view_functions[api.FALLBACK_ENDPOINT] = api.method_not_allowed
        app.cli.add_command(cli)
        app.add_template_global(browser.script_tag, "inngest_gateway_script")
        app.extensions[EXTENSION_KEY].delivery.connect(app)

    def _app_database_url(self, app: Flask) -> str:
        """The URL of the host's Flask-SQLAlchemy engine, password included (never logged)."""
        with app.app_context():
            url: str = self.db.engine.url.render_as_string(hide_password=False)
        return url

    def send(
        self,
        events: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        user: Any = sends.CURRENT_USER,
        session: sends.Target | None = None,
    ) -> list[str]:
        """Send one event (a dict: `name`, `data`, optional `id`, `ts`, `v`) or a list of them.

        Checked as posted events are (names, sizes, INNGEST_GATEWAY_EVENT_SCHEMAS, `ts`); an
        invalid one raises the `errors.APIError` a post would get (`ValidationFailed`, ...)
        before anything is written. `data.user` is `user`: by default the logged-in user in
        a request, nobody outside one; a user object (serialized as for posts), a dict, or
        None. A given `id` is scoped to the app (the same `id` gives the same event id, so
        Inngest deduplicates a repeat), never to a poster.

        In a transaction: `session` (an SQLAlchemy Session or Connection on the outbox's
        database), else `db.session` when the gateway was given `db` and the outbox is in
        that database (INNGEST_GATEWAY_OUTBOX_DATABASE_URL unset, or naming it). The events
        are written in it and delivered after it commits; a rollback leaves nothing.
        Otherwise they are stored (sync mode: sent to Inngest) before this returns, or the
        APIError is raised. Needs an app context. Returns the events' ids.
        """
        state = gateway_state()
        built = sends.build(state.settings, state.user_serializer, events, user)
        db = state.host_db
        target = session if session is not None else db.session if db is not None else None
        if target is None:
            state.delivery.submit(built)
        else:
            _check_outbox_database(target, state.outbox_db)
            state.delivery.submit_in(target, built)
        return [item.id for item in built]

    @contextlib.contextmanager
    def record_events(self, app: Flask | None = None) -> Iterator[list[dict[str, Any]]]:
        """Collect the events posted to `app` (default: the current app) within the block.

        Each as Inngest receives it (`name`, `data` with `data.user`, `id`, `ts`), whether
        sent, stored or suppressed (INNGEST_GATEWAY_SUPPRESS_SEND, on by default under
        `TESTING`); for a
        host's tests, as Flask-Mail's `record_messages`.
        """
        delivery = gateway_state(app).delivery
        events = delivery.record()
        try:
            yield events
        finally:
            delivery.stop_recording(events)

    def start(self, app: Flask) -> None:
        """Start this process's deliverer senders now (outbox mode, when embedded); idempotent."""
        gateway_state(app).delivery.start()

    def stop(self, app: Flask) -> int:
        """Stop this process's deliverer, delivering what is stored for a while.

        How long: INNGEST_GATEWAY_OUTBOX_DRAIN_SECONDS.

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


def _check_outbox_database(target: sends.Target, database: OwnDatabase) -> None:
    """Refuse to write events where no deliverer looks: the session must be the outbox's."""
    if not sends.same_database(sends.bind_url(target), database.engine.url):
        raise RuntimeError(
            "send(session=...): the session's database is not the outbox's; pass db= to "
            "InngestGateway (the outbox then lives in the app's database) or set "
            "INNGEST_GATEWAY_OUTBOX_DATABASE_URL to the session's database"
        )


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
    """The outbox file in the instance folder; `OwnDatabase` makes the folder when it connects."""
    return f"sqlite:///{os.path.join(instance_path, 'inngest-gateway-outbox.db')}"


def _private_sqlite() -> str:
    """An outbox file of its own for an app under test, in a temporary folder removed at exit.

    Tests never share the dev server's outbox (its backlog, its events), nor each other's.
    """
    folder = os.path.join(tempfile.gettempdir(), f"inngest-gateway-test-{uuid.uuid4().hex}")
    atexit.register(_remove_folder, folder, os.getpid())
    return f"sqlite:///{os.path.join(folder, 'outbox.db')}"


def _remove_folder(folder: str, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child exiting: its parent still uses it
        shutil.rmtree(folder, ignore_errors=True)
