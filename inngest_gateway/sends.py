"""Events from the host's own code: `InngestGateway.send`, in its database transaction or not.

In a transaction (an SQLAlchemy `Session` or `Connection`, or Flask-SQLAlchemy's `db.session`
when the gateway was given `db=`), the events are rows of the outbox table written in that
transaction: they exist once it commits and never if it rolls back, and the deliverer is
woken after the commit. Outside one, they are committed to the outbox (or, in sync mode,
sent) before `send` returns, as a post's are.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, has_request_context, request
from flask_login import current_user
from sqlalchemy import Connection, MetaData, Table, event, insert, inspect
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, scoped_session

from .errors import OutboxUnavailable
from .events import Event, build_events
from .inngest import id_seed
from .outbox.model import PENDING, now_ms, table
from .settings import Settings

log = logging.getLogger(__name__)

# A host event's `id` is scoped to the app, never to a poster: no browser can post an id
# that makes the app's own event a duplicate (posters' scopes are `user:` and `anonymous:`).
APP_SCOPE = "app"
# Where a Session keeps what to run when its current transaction commits, and the batch its
# events are written into, until the transaction ends.
_STAGED = "inngest_gateway_staged"
_BATCH = "inngest_gateway_batch"
# The same for a Connection: its open batch by the transaction object (a Connection's `info`
# outlives it), and what to run at its COMMIT; and the Connections listened to.
_CONNECTION_BATCHES: weakref.WeakKeyDictionary[Any, _Batch] = weakref.WeakKeyDictionary()
_CONNECTION_STAGED: weakref.WeakKeyDictionary[Connection, dict[Any, list[Callable[[], None]]]] = (
    weakref.WeakKeyDictionary()
)
_LISTENED: weakref.WeakSet[Connection] = weakref.WeakSet()
# One statement for every send (a Session picks its bind from it, as for the write).
_INSERT = insert(table)
# The engines whose database was seen to have the outbox table: checked once each.
_TABLE_FOUND: weakref.WeakSet[Engine] = weakref.WeakSet()


@dataclass
class _Batch:
    """The batch one transaction's events go into: one seed, so one request to Inngest."""

    seed: str
    events: int = 0
    body_bytes: int = 1  # the request body's `[`

    def fits(self, size: int, most_events: int, most_bytes: int) -> bool:
        """Whether one more event of `size` bytes (and its comma or `]`) keeps to the limits."""
        return self.events + 1 <= most_events and self.body_bytes + size + 1 <= most_bytes

    def add(self, size: int) -> None:
        self.events += 1
        self.body_bytes += size + 1


class _Current:
    def __repr__(self) -> str:
        return "CURRENT_USER"


CURRENT_USER: Any = _Current()

Target = Session | scoped_session[Session] | Connection


def outbox_table(metadata: MetaData) -> Table:
    """The outbox table in the host's `metadata`, so that its migrations create it.

    Flask-Migrate and Alembic's autogenerate then add it like one of the host's own tables.
    The same name, columns and indexes as the gateway's own outbox table; called again, the
    table already there is returned.
    """
    found = metadata.tables.get(table.name)
    return found if found is not None else table.to_metadata(metadata)


def user_of(serializer: Callable[[Any], dict[str, Any]], user: Any) -> dict[str, Any] | None:
    """`data.user` for a host event: the current user in a request, else the one given.

    A dict is taken as it is (it needs an `id`); any other object is a user for the
    gateway's `user_serializer`, `serializer`; None is nobody.
    """
    if user is CURRENT_USER:
        user = _logged_in_user()
    if user is None:
        return None
    serialized = dict(user) if isinstance(user, Mapping) else serializer(user)
    if serialized.get("id") in (None, ""):
        raise TypeError("the user of an event must have a non-empty 'id'")
    return serialized


def _logged_in_user() -> Any:
    """The host's Flask-Login user in a request (by any loader the host has), else None."""
    if not has_request_context() or not hasattr(current_app, "login_manager"):
        return None
    return current_user._get_current_object() if current_user.is_authenticated else None


def _request_meta(received_at: int) -> dict[str, Any] | None:
    """What the request the code runs in knows (`data.request`); None outside a request."""
    if not has_request_context():
        return None
    return {
        "id": g.get("request_id"),
        "client_request_id": g.get("client_request_id"),
        "received_at": received_at,
        "ip": request.remote_addr,
        "user_agent": request.user_agent.string or None,
    }


def build(
    settings: Settings,
    serializer: Callable[[Any], dict[str, Any]],
    events: Mapping[str, Any] | Sequence[Any],
    user: Any,
) -> list[Event]:
    """Check host events as posted ones are checked, and build them; or raise the APIError.

    `settings` and `serializer` are the gateway's settings and `user_serializer`.
    """
    single = isinstance(events, Mapping)
    items = [dict(events)] if single else [item for item in events]
    received_at = now_ms()
    return build_events(
        items,
        batch=not single,
        settings=settings,
        user=user_of(serializer, user),
        request_meta=_request_meta(received_at),
        scope=lambda: APP_SCOPE,
        received_at=received_at,
    )


def stage(
    target: Target,
    events: Sequence[Event],
    committed: Callable[[], None],
    *,
    most_events: int,
    most_bytes: int,
) -> None:
    """Write the events as outbox rows in `target`'s current transaction.

    The events of one transaction share a batch seed, so the deliverer claims and sends them
    together, in the order written, and retries them together (the same seed, the same
    internal ids); when they would pass a batch's limits (`most_events`, `most_bytes` of
    request body), the rest start another batch. `committed` runs once that transaction has
    committed; never if it rolls back (nor for a savepoint rolled back inside it).
    """
    if isinstance(target, scoped_session):
        target = target()  # this thread's session, once for every event
    _check_table(target)
    now = now_ms()
    batch = _open_batch(target)
    rows = []
    for item in events:
        size = len(item.body)
        if batch is None or not batch.fits(size, most_events, most_bytes):
            batch = _Batch(seed=id_seed())
        batch.add(size)
        rows.append(
            {
                "event_id": item.id,
                "name": item.name,
                "body": item.body.decode(),
                "size": size,
                "state": PENDING,
                "created_at": now,
                "next_attempt_at": now,
                "attempts": 0,
                "batch_seed": batch.seed,
            }
        )
    target.execute(_INSERT, rows)  # begins the transaction, if nothing had yet
    _keep_open_batch(target, batch)
    after_commit(target, committed)


def _check_table(target: Session | Connection) -> None:
    """Raise OutboxUnavailable, naming the command, if `target`'s database has no outbox table.

    An INSERT into a missing table fails with the database's own error and, on PostgreSQL,
    aborts the host's whole transaction. The question is asked in that same transaction (it
    sees a table created there, and takes no lock a second connection would wait for), once
    per engine that has the table. A connection whose `schema_translate_map` would move the
    table elsewhere (a schema per tenant, say) is refused: the deliverer reads one table.
    """
    if isinstance(target, Session):
        connection = target.connection(bind_arguments={"clause": _INSERT})
    else:
        connection = target
    translate = connection.get_execution_options().get("schema_translate_map") or {}
    if translate.get(table.schema, table.schema) != table.schema:
        raise RuntimeError(
            "send(session=...): the connection's schema_translate_map moves the outbox table "
            f"to schema {translate[table.schema]!r}, where no deliverer reads it; send on a "
            "connection without it"
        )
    if connection.engine in _TABLE_FOUND:
        return
    if not inspect(connection).has_table(table.name, schema=table.schema):
        raise OutboxUnavailable(
            f"The database has no {table.name} table yet: run the app's migrations (the table "
            "is in db.metadata) or `flask inngest-gateway outbox create`."
        )
    _TABLE_FOUND.add(connection.engine)


def _open_batch(target: Session | Connection) -> _Batch | None:
    """The batch the next event of `target`'s transaction joins while it has room."""
    if isinstance(target, Session):
        batch: _Batch | None = target.info.get(_BATCH)
        return batch
    transaction = target.get_transaction()
    return _CONNECTION_BATCHES.get(transaction) if transaction is not None else None


def _keep_open_batch(target: Session | Connection, batch: _Batch | None) -> None:
    if batch is None:
        return
    if isinstance(target, Session):
        target.info[_BATCH] = batch
    elif (transaction := target.get_transaction()) is not None:
        _CONNECTION_BATCHES[transaction] = batch


def after_commit(target: Target, committed: Callable[[], None]) -> None:
    """Run `committed` when the transaction `target` is in commits (dropped on rollback).

    On a Session or a Connection, a savepoint (`begin_nested`) released hands its callbacks
    to the transaction around it, one rolled back drops them. On a Session they run when its
    outermost transaction commits, after the database's COMMIT. On a Connection, SQLAlchemy
    has no event after the COMMIT: they run as the COMMIT is issued (so a COMMIT that then
    fails has run them: they may wake the deliverer, count and record events that were never
    stored; nothing is sent for them).
    """
    if isinstance(target, scoped_session):
        target = target()
    current = target.get_nested_transaction() or target.get_transaction()
    if isinstance(target, Session):
        staged: dict[Any, list[Callable[[], None]]] = target.info.setdefault(_STAGED, {})
        staged.setdefault(current, []).append(committed)
        return
    _CONNECTION_STAGED.setdefault(target, {}).setdefault(current, []).append(committed)
    if target not in _LISTENED:  # four listeners per Connection, holding no events
        _LISTENED.add(target)
        event.listen(target, "commit", _connection_committed)
        event.listen(target, "rollback", _connection_rolled_back)
        event.listen(target, "release_savepoint", _connection_savepoint_released)
        event.listen(target, "rollback_savepoint", _connection_savepoint_rolled_back)


def _connection_committed(connection: Connection) -> None:
    for callbacks in _CONNECTION_STAGED.pop(connection, {}).values():
        for committed in callbacks:
            _run(committed)


def _connection_rolled_back(connection: Connection) -> None:
    _CONNECTION_STAGED.pop(connection, None)


def _ending_savepoints(connection: Connection, name: str) -> list[Any]:
    """The savepoint `name` as it is released or rolled back, and those still open inside it
    (innermost first); empty if it is not among the Connection's open ones.

    SQLAlchemy keeps no public link from a savepoint to the one around it: its
    NestedTransaction's `_savepoint` and `_previous_nested` (there since 2.0.0) are read
    with getattr, and without them nothing is found (the events then count at the COMMIT).
    """
    chain = []
    nested = connection.get_nested_transaction()
    while nested is not None:
        chain.append(nested)
        if getattr(nested, "_savepoint", None) == name:
            return chain
        nested = getattr(nested, "_previous_nested", None)
    return []


def _connection_savepoint_released(connection: Connection, name: str, _context: Any) -> None:
    staged = _CONNECTION_STAGED.get(connection)
    ending = _ending_savepoints(connection, name)
    if not staged or not ending:
        return
    # Theirs become the savepoint's around it, or the transaction's.
    around = getattr(ending[-1], "_previous_nested", None) or connection.get_transaction()
    for nested in reversed(ending):
        staged.setdefault(around, []).extend(staged.pop(nested, []))


def _connection_savepoint_rolled_back(connection: Connection, name: str, _context: Any) -> None:
    staged = _CONNECTION_STAGED.get(connection)
    if not staged:
        return
    for nested in _ending_savepoints(connection, name):
        staged.pop(nested, None)  # with the events of savepoints released into it


def _run(committed: Callable[[], None]) -> None:
    """After the host's commit: its data and the events are stored whatever happens here, so
    a failure (starting the deliverer, say) is logged, never raised into the host's commit;
    the deliverer's poll sends the events anyway."""
    try:
        committed()
    except Exception:
        log.exception("after a commit with events: the deliverer was not woken")


@event.listens_for(Session, "after_commit")
def _session_committed(session: Session) -> None:
    staged = session.info.get(_STAGED)
    if not staged:
        return
    nested = session.get_nested_transaction()
    if nested is not None:  # a savepoint released: its events are the enclosing transaction's
        released = staged.pop(nested, [])
        if released:
            staged.setdefault(nested.parent, []).extend(released)
        return
    for callbacks in session.info.pop(_STAGED, {}).values():
        for committed in callbacks:
            _run(committed)


@event.listens_for(Session, "after_transaction_end")
def _session_transaction_ended(session: Session, transaction: Any) -> None:
    # A savepoint rolled back: its events were never stored (one released handed its own on).
    # The outermost transaction ended: after a commit the callbacks already ran; after a
    # rollback (or a close) nothing may run for them.
    staged = session.info.get(_STAGED)
    if staged:
        staged.pop(transaction, None)
    if transaction.parent is None:
        session.info.pop(_STAGED, None)
        session.info.pop(_BATCH, None)


def bind_url(target: Target) -> URL:
    """The database URL `target` writes to."""
    if isinstance(target, scoped_session):
        target = target()
    bind = target.get_bind() if isinstance(target, Session) else target
    return bind.engine.url


def same_database(one: URL, other: URL) -> bool:
    """Whether two URLs name the same database, whatever driver or password they use."""
    if one.get_backend_name() != other.get_backend_name():
        return False
    if one.get_backend_name() == "sqlite":
        return _sqlite_path(one) == _sqlite_path(other)
    return (one.host or "localhost", one.port, one.database) == (
        other.host or "localhost",
        other.port,
        other.database,
    )


def _sqlite_path(url: URL) -> str:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return database
    return os.path.realpath(database)
