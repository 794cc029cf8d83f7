"""One way in for accepted events: stored in the outbox, or sent to Inngest before the answer.

The view hands its events to `Delivery.submit` and answers with the status it returns;
the mode switch, waking the deliverer, counting and the translation of Inngest's failures
into the error catalogue all live here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

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
        """Run this process's deliverer thread, if the settings want one here (fork-safe)."""
        if self.settings.delivery_mode == "outbox" and self.settings.outbox_embedded_deliverer:
            self.deliverer.ensure_running()

    def stop(self) -> int:
        """Stop this process's deliverer, draining within OUTBOX_DRAIN_SECONDS."""
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
