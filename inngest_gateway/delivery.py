"""One way in for accepted events: stored in the outbox, or sent to Inngest before the answer.

The view hands its events to `Delivery.submit` and answers with the status it returns;
the mode switch, waking the deliverer, counting and the translation of Inngest's failures
into the error catalogue all live here.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import weakref
from collections.abc import Sequence
from types import FrameType

import click
from flask.helpers import get_debug_flag
from werkzeug.serving import is_running_from_reloader

from . import metrics
from .errors import UpstreamRejected, UpstreamUnavailable
from .events import Event
from .inngest import InngestClient, InngestRejected, InngestUnavailable
from .outbox import Deliverer, Writer
from .settings import Settings

log = logging.getLogger(__name__)


class Delivery:
    """Outbox mode: commit, wake the deliverer, answer 202. Sync mode: send, answer 200."""

    def __init__(
        self, settings: Settings, client: InngestClient, writer: Writer, deliverer: Deliverer
    ) -> None:
        self.settings = settings
        self.client = client
        self.writer = writer
        self.deliverer = deliverer

    def submit(self, events: Sequence[Event]) -> int:
        """Store or send the events; the success status to answer, or an APIError raised."""
        if self.settings.delivery_mode == "outbox":
            self.writer.store(events)
            self.start()
            self.deliverer.notify()
            status = 202
        else:
            self._send(events)
            status = 200
        metrics.events_accepted(len(events))
        return status

    def start(self) -> None:
        """Run this process's deliverer, if the settings want one here (fork-safe)."""
        if self._embedded():
            self.deliverer.ensure_running()

    def start_when_serving(self) -> None:
        """Start the deliverer in a process that serves the app, or after the fork that makes one.

        Not in a `flask` command other than `run` (a command must exit at once), nor in the
        `flask run` reloader's watching process. In gunicorn's master loading the app for
        `preload_app`, a thread would be forked into every worker half-way through whatever it
        was doing (a lock held, a SQLite call under way): the master runs none, and each
        process forked from it starts its own.
        """
        if not self._embedded() or _running_a_command():
            return
        if _in_preforking_master():
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _start_in_child(ref))
            return
        self.start()

    def _embedded(self) -> bool:
        return self.settings.delivery_mode == "outbox" and self.settings.outbox_embedded_deliverer

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


def _running_a_command() -> bool:
    """True while a `flask` command other than `run` (or `run`'s reloader watcher) loads the app."""
    context = click.get_current_context(silent=True)
    if context is None:
        return False  # gunicorn, a WSGI server, a script, the tests: not a command
    if context.command.name != "run":
        return True
    reload = context.params.get("reload")
    reloading = get_debug_flag() if reload is None else bool(reload)
    return reloading and not is_running_from_reloader()  # the watcher; its child serves


def _in_preforking_master() -> bool:
    """True while gunicorn's master loads the app before forking its workers (`preload_app`)."""
    arbiter = sys.modules.get("gunicorn.arbiter")
    setup = getattr(getattr(arbiter, "Arbiter", None), "setup", None)
    code = getattr(setup, "__code__", None)
    if code is None:
        return False
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _start_in_child(ref: weakref.ref[Delivery]) -> None:
    """After a fork of the master that deferred it: this child serves, so it delivers."""
    delivery = ref()
    if delivery is not None:
        try:
            delivery.start()
        except Exception:  # a fork handler must not raise into the forking code
            log.exception("could not start the outbox deliverer after fork")
