"""The outbox: accepted events are committed to the database, then delivered to Inngest.

`model` is the table and its states; `writer` commits each request's events before the
answer (group commit); `deliverer` claims, sends and settles batches in the background;
`queries` reads the outbox's state, one way for the CLI, `/readyz` and metrics. The
`flask inngest-gateway outbox` commands are in `inngest_gateway.cli`.
"""

from .deliverer import Claimed, Deliverer
from .model import DEAD, DELIVERED, PENDING, OutboxBase, OutboxEvent, now_ms
from .queries import check_writable, pending_count, status
from .writer import Writer

__all__ = [
    "DEAD",
    "DELIVERED",
    "PENDING",
    "Claimed",
    "Deliverer",
    "OutboxBase",
    "OutboxEvent",
    "Writer",
    "check_writable",
    "now_ms",
    "pending_count",
    "status",
]
