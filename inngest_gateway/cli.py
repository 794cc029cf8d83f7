"""`flask inngest-gateway ...`: the gateway's one CLI group, in a host and the service.

`flask inngest-gateway outbox create|status|deliver|retry|purge` acts on the outbox of the
current app's gateway.
"""

from __future__ import annotations

import signal
import threading

import click
from flask.cli import AppGroup
from sqlalchemy import delete, update
from sqlalchemy.exc import SQLAlchemyError

from .db import OwnDatabase
from .outbox.model import DEAD, PENDING, columns, now_ms, table, transaction
from .outbox.queries import status
from .settings import parse_duration
from .state import gateway_state

cli = AppGroup("inngest-gateway", help="The Inngest gateway's operator commands.")
outbox_cli = AppGroup("outbox", help="See and act on the events waiting for delivery.")
cli.add_command(outbox_cli)


def _database() -> OwnDatabase:
    """The outbox database of the current app's gateway, which the commands act on."""
    database = gateway_state().outbox_db
    if not database.ensure_schema():
        raise click.ClickException("the outbox database is unavailable")
    return database


def make_due(database: OwnDatabase, *, dead: bool) -> int:
    """Make pending events due now; with `dead`, move the dead-lettered ones back instead."""
    now = now_ms()
    if dead:
        statement = (
            update(table)
            .where(columns.state == DEAD)
            .values(
                state=PENDING,
                next_attempt_at=now,
                attempts=0,
                batch_seed=None,
                finished_at=None,
                created_at=now,
            )
        )
    else:
        statement = update(table).where(columns.state == PENDING).values(next_attempt_at=now)
    with transaction(database):
        count: int = database.session.execute(statement).rowcount  # type: ignore[attr-defined]
    return count


def purge_dead(database: OwnDatabase, older_than_seconds: float) -> int:
    """Delete the events dead-lettered at least this long ago; how many there were."""
    cutoff = now_ms() - int(older_than_seconds * 1000)
    with transaction(database):
        count: int = database.session.execute(
            delete(table).where(columns.state == DEAD, columns.finished_at <= cutoff)
        ).rowcount  # type: ignore[attr-defined]
    return count


@outbox_cli.command("deliver")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
def deliver_command(once: bool) -> None:
    """Run a deliverer in the foreground (SIGTERM or Ctrl-C drains and stops it)."""
    state = gateway_state()
    if state.settings.inngest_event_key is None:
        raise click.ClickException("INNGEST_EVENT_KEY is not set: nothing can be delivered")
    worker = state.deliverer
    if once:
        total = 0
        while (sent := worker.run_once()) > 0:
            total += sent
        click.echo(f"handled {total} event(s)")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.ensure_running()
    click.echo(f"deliverer {worker.name} running; SIGTERM or Ctrl-C to stop")
    while not stop.wait(1.0):
        pass
    worker.stop()


@outbox_cli.command("create")
def create_command() -> None:
    """Create the outbox table in the outbox's database, for an app without migrations."""
    database = gateway_state().outbox_db
    try:
        database.create_all()
    except SQLAlchemyError as exc:
        message = f"could not create the outbox table: {type(exc).__name__}"
        raise click.ClickException(message) from None
    click.echo(f"the outbox table is in {database.engine.url.render_as_string()}")


@outbox_cli.command("status")
def status_command() -> None:
    """Pending, in flight, dead, and the age of the oldest pending event."""
    for key, value in status(_database()).items():
        click.echo(f"{key}: {value}")


@outbox_cli.command("retry")
@click.option("--dead", "dead", is_flag=True, help="Move dead-lettered events back to pending.")
def retry_command(dead: bool) -> None:
    """Make pending events due now; with --dead, retry the dead-lettered ones too."""
    count = make_due(_database(), dead=dead)
    click.echo(f"{count} event(s) due for delivery now")


@outbox_cli.command("purge")
@click.option("--dead", "dead", is_flag=True, required=True, help="Purge dead-lettered events.")
@click.option(
    "--older-than", default="0s", show_default=True, help="Only those dead this long, e.g. 7d."
)
def purge_command(dead: bool, older_than: str) -> None:
    """Delete dead-lettered events for good."""
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    click.echo(f"purged {purge_dead(_database(), seconds)} dead event(s)")
