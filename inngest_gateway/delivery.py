"""One way in for accepted events: stored in the outbox, or sent to Inngest before the answer.

The view hands its events to `Delivery.submit` and answers with the status it returns;
the mode switch, suppressed sends (tests), the recorders, waking the deliverer, counting and
the translation of Inngest's failures into the error catalogue all live here.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

from flask import Flask, request_started

from . import metrics, sends
from .errors import NotConfigured, UpstreamRejected, UpstreamUnavailable
from .events import Event
from .inngest import InngestClient, InngestRejected, InngestUnavailable
from .outbox import Deliverer, Writer
from .settings import Settings

log = logging.getLogger(__name__)


class Delivery:
    """Outbox mode: commit, wake the deliverer, answer 202. Sync mode: send, answer 200."""

    def __init__(
        self,
        settings: Settings,
        client: InngestClient,
        writer: Writer,
        deliverer: Deliverer,
        *,
        in_app_database: bool = False,
    ) -> None:
        self.settings = settings
        self.client = client
        self.writer = writer
        self.deliverer = deliverer
        self.app = deliverer.app
        self._recorders: list[list[dict[str, Any]]] = []
        self._recorders_lock = threading.Lock()
        self._said_not_configured: set[str] = set()  # the missing keys already logged
        # Events are (or may be) written in a host's transactions: deliver them in sync mode too.
        self._staged = in_app_database

    def submit(self, events: Sequence[Event]) -> int:
        """Store or send the events; the success status to answer, or an APIError raised.

        Suppressed (INNGEST_GATEWAY_SUPPRESS_SEND, by default while the app is testing), the
        events are
        checked and answered alike but neither sent nor stored; recorders see them either way.
        """
        outbox = self.settings.delivery_mode == "outbox"
        if not self.suppressed():
            self._check_configured()
            if outbox:
                self.writer.db.ensure_schema()  # a database still down fails the store: 503
                self.writer.store(events)
                self.start()
                self.deliverer.notify()
            else:
                self._send(events)
        self._record(events)
        metrics.events_accepted(len(events))
        return 202 if outbox else 200

    def submit_in(self, target: sends.Target, events: Sequence[Event]) -> None:
        """Write the events in the host's transaction on `target`; the rest after its commit.

        Once it commits they are recorded, counted, and the deliverer is started and woken
        (in sync mode too: these events are in the outbox); if it rolls back, none of that.
        Suppressed, nothing is written and the recorders see the events at the commit.
        """
        if self.suppressed():
            sends.after_commit(target, lambda: self._record(events))
            return
        self._check_configured()
        sends.stage(
            target,
            events,
            lambda: self._committed(events),
            most_events=self.settings.outbox_batch_size,
            most_bytes=self.settings.outbox_max_batch_bytes,
        )

    def _committed(self, events: Sequence[Event]) -> None:
        self._staged = True
        self._record(events)
        metrics.events_accepted(len(events))
        self.start()
        self.deliverer.notify()

    def suppressed(self) -> bool:
        """Whether posts are answered but nothing goes to Inngest (the setting, or testing)."""
        setting = self.settings.suppress_send
        return self.app.testing if setting is None else setting

    def start(self) -> None:
        """Run this process's deliverer, if the settings want one here; restarted after a fork.

        Called at each post and at the first request this app serves in a process (Flask's
        `request_started` signal), never while the app is only loaded: a `flask` command,
        or gunicorn's master preloading the app for the workers it forks, serve no request.
        """
        if not self._embedded() or self.suppressed():
            return
        if self.settings.inngest_event_key is None:
            self._not_configured()
            return
        self.deliverer.ensure_running()

    def _request_started(self, _sender: Flask, **_: Any) -> None:
        self.start()

    def connect(self, app: Flask) -> None:
        """Start the deliverer at the first request the app serves in each process."""
        # Weak: the app holds this Delivery; the signal must not keep either alive.
        request_started.connect(self._request_started, app)

    def record(self) -> list[dict[str, Any]]:
        """A new list that gets each accepted event, as Inngest would receive it."""
        events: list[dict[str, Any]] = []
        with self._recorders_lock:
            self._recorders.append(events)
        return events

    def stop_recording(self, events: list[dict[str, Any]]) -> None:
        """Stop filling a list made by `record`."""
        with self._recorders_lock:
            self._recorders = [kept for kept in self._recorders if kept is not events]

    def _record(self, events: Sequence[Event]) -> None:
        with self._recorders_lock:
            recorders = list(self._recorders)
        for recorder in recorders:
            recorder.extend(json.loads(event.body) for event in events)

    def _check_configured(self) -> None:
        if self.settings.inngest_event_key is None:
            raise self._not_configured()

    def _not_configured(
        self,
        name: str = "INNGEST_EVENT_KEY",
        until: str = "nothing is delivered until it is (or set INNGEST_DEV=1 for the Inngest "
        "dev server)",
    ) -> NotConfigured:
        """The error for a post while `name` is missing; logged at ERROR once per key."""
        if name not in self._said_not_configured:
            self._said_not_configured.add(name)
            log.error("%s is not set: posts are answered 503 not_configured and %s", name, until)
        return NotConfigured(f"The gateway is not configured yet: {name} is not set.")

    def check_secret_key(self) -> None:
        """Refuse a post (`503 not_configured`) while the app has no SECRET_KEY, dev mode or not.

        It signs the session that names the poster and keeps an anonymous poster's scope, and
        the poster tag: without it Flask has no session to give. `init_app` lets an app
        without it load, so that its `flask` commands run; the key is read here, at each
        post, as Flask reads it, so one set after `init_app` counts.
        """
        secret = self.app.secret_key
        if not (secret.strip() if isinstance(secret, str) else secret):
            raise self._not_configured("SECRET_KEY", "Flask has no session until it is")

    def _embedded(self) -> bool:
        outbox = self.settings.delivery_mode == "outbox" or self._staged
        return outbox and self.settings.outbox_embedded_deliverer

    def stop(self) -> int:
        """Stop this process's deliverer, draining within INNGEST_GATEWAY_OUTBOX_DRAIN_SECONDS."""
        return self.deliverer.stop()

    def _send(self, events: Sequence[Event]) -> None:
        try:
            self.client.send([event.body for event in events])
        except InngestUnavailable as exc:
            log.warning("Inngest unavailable: %s", exc)
            retry = str(max(1, math.ceil(exc.retry_after)))
            raise UpstreamUnavailable(headers={"Retry-After": retry}) from None
        except InngestRejected as exc:
            log.error("Inngest refused the events: %s", exc)
            raise UpstreamRejected() from None
        metrics.events_delivered(len(events))
