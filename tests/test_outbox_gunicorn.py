"""Crash safety under real gunicorn: SIGKILL the whole service mid-load, start it again,
and every event it acknowledged still reaches Inngest, any repeat with the same id.

Runs on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from inngest_gateway.db import database_url as normalize_url
from tests.conftest import SECRET_KEY
from tests.processes import BIN, ROOT, Server, clean_env, free_port, start_gunicorn
from tests.standin import InngestStandIn

pytestmark = pytest.mark.slow

TOTAL_EVENTS = 3000
CLIENTS = 6
OUTBOX_ENV = {
    "INNGEST_GATEWAY_RATELIMIT_ENABLED": "false",  # one client address sends all of the load
    "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
    "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "true",
    "INNGEST_GATEWAY_OUTBOX_RETRY_BASE": "50ms",
    "INNGEST_GATEWAY_OUTBOX_RETRY_MAX": "500ms",
    "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.1",
    "INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS": "2",
    "INNGEST_GATEWAY_SEND_TIMEOUT": "1",
    "INNGEST_GATEWAY_OUTBOX_DRAIN_SECONDS": "3",
}


class Load:
    """Client threads posting batches of 1-5 events, each event named by the client.

    Every event carries its client-chosen name in `data.cid` (whatever ids the server
    derives): `sent` holds all of them, `acknowledged` those of 2xx answers, `refused` those
    of any other answer; a post that got no answer (the server was killed) is in none but
    `sent`.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: set[str] = set()
        self.acknowledged: set[str] = set()
        self.refused: set[str] = set()
        self.failed_posts = 0
        self.wrong_answers = 0  # 2xx answers not naming one id per event
        self._sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def acked(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _take(self, size: int) -> int:
        with self._lock:
            size = min(size, TOTAL_EVENTS - self._sent)
            self._sent += size
            return size

    def _client(self, number: int) -> None:
        sequence = 0
        with requests.Session() as session:
            while not self._stop.is_set():
                size = self._take(1 + sequence % 5)
                if size <= 0:
                    return
                cids = [f"c{number}-{sequence}-{i}" for i in range(size)]
                batch = [{"name": "app/load", "id": cid, "data": {"cid": cid}} for cid in cids]
                sequence += 1
                with self._lock:
                    self.sent.update(cids)
                try:
                    response = session.post(self.url, json=batch, timeout=10)
                except requests.RequestException:
                    with self._lock:
                        self.failed_posts += 1
                    time.sleep(0.05)
                    continue
                with response, self._lock:
                    if 200 <= response.status_code < 300:
                        if len(response.json()["ids"]) != size:
                            self.wrong_answers += 1
                        self.acknowledged.update(cids)
                    else:
                        self.refused.update(cids)
                        self.failed_posts += 1

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self._stop.set()


def outbox_counts(database_url: str) -> tuple[int, int]:
    """Straight from the database: events pending, and how many of them were tried at least once."""
    engine = create_engine(normalize_url(database_url, ""))
    try:
        with engine.connect() as connection:
            pending, tried = connection.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE attempts > 0) "
                    "FROM outbox_events WHERE state = 'pending'"
                )
            ).one()
    finally:
        engine.dispose()
    return int(pending), int(tried)


def delivered_cids(inngest: InngestStandIn) -> set[str]:
    return {event["data"]["cid"] for event in list(inngest.accepted)}


def wait_for(condition: Any, timeout: float, message: Any) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(message())
        time.sleep(0.1)


@pytest.mark.timeout(360)
def test_sigkill_midway_loses_no_acknowledged_event(
    tmp_path: Path, inngest: InngestStandIn, database_url: str
) -> None:
    env = OUTBOX_ENV | {"DATABASE_URL": database_url}
    port = free_port()
    inngest.fail_ratio = 0.3  # Inngest fails part of the time throughout
    server = start_gunicorn(tmp_path, inngest, port=port, env=env)
    restarted: Server | None = None
    load = Load(f"{server.url}/api")
    try:
        load.start()
        wait_for(
            lambda: load.acked() >= TOTAL_EVENTS // 2,
            60,
            lambda: f"only {load.acked()} acknowledged before the kill:\n{server.output()}",
        )
        # Inngest goes down, so that the kill finds events stored and not yet delivered.
        inngest.fail_ratio = 1.0
        wait_for(
            lambda: outbox_counts(database_url)[0] >= 20,
            30,
            lambda: f"the outbox did not fill up:\n{server.output()}",
        )
        os.killpg(server.process.pid, signal.SIGKILL)  # master and workers, no goodbye
        server.process.wait(timeout=10)
        pending_at_kill, _ = outbox_counts(database_url)
        acked_before_kill = load.acked()
        assert pending_at_kill > 0  # the restart has something to recover
        inngest.fail_ratio = 0.3

        restarted = start_gunicorn(tmp_path, inngest, port=port, env=env)
        load.join(timeout=120)
        assert load.acked() > acked_before_kill  # the load went on after the restart

        wait_for(
            lambda: load.acknowledged <= delivered_cids(inngest),
            90,
            lambda: (
                f"{len(load.acknowledged - delivered_cids(inngest))} acknowledged events "
                f"never reached Inngest:\n{restarted.output() if restarted else ''}"
            ),
        )
        time.sleep(1.0)  # anything still in flight has landed
    finally:
        server.kill()
        if restarted is not None:
            restarted.kill()

    delivered = delivered_cids(inngest)
    assert load.wrong_answers == 0
    assert load.acknowledged <= delivered  # every 2xx reached Inngest
    assert delivered <= load.sent  # nothing reached it that no client sent
    assert not delivered & load.refused  # and nothing that was answered with an error
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in inngest.accepted:
        copies[event["data"]["cid"]].append(event)
    for cid, events in copies.items():
        # A repeat is the same event, same id: Inngest runs functions once per id.
        assert all(
            json.dumps(e, sort_keys=True) == json.dumps(events[0], sort_keys=True) for e in events
        ), cid


@pytest.mark.timeout(120)
def test_sigterm_drains_the_outbox_before_exit(
    tmp_path: Path, inngest: InngestStandIn, database_url: str
) -> None:
    inngest.fail_next(10_000, 503)  # Inngest is failing while the events come in
    env = OUTBOX_ENV | {
        "DATABASE_URL": database_url,
        "INNGEST_GATEWAY_OUTBOX_DRAIN_SECONDS": "5",
        # After one failure the deliverer threads wait 30-60 s: only the drain can deliver.
        "INNGEST_GATEWAY_OUTBOX_RETRY_BASE": "60s",
        "INNGEST_GATEWAY_OUTBOX_RETRY_MAX": "60s",
    }
    server = start_gunicorn(tmp_path, inngest, env=env)
    try:
        with requests.Session() as session:
            ids = []
            for n in range(20):
                with session.post(f"{server.url}/api", json={"id": f"drain-{n}"}, timeout=10) as r:
                    assert r.status_code == 202
                    ids += r.json()["ids"]
        wait_for(
            lambda: outbox_counts(database_url) == (20, 20),
            20,
            lambda: f"not every event was tried once: {outbox_counts(database_url)}",
        )
        inngest.reset()  # Inngest recovers just as the service is told to stop
        time.sleep(0.5)
        assert inngest.accepted_ids() == []  # the threads are backing off

        os.killpg(server.process.pid, signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.kill()

    assert sorted(inngest.accepted_ids()) == sorted(ids)
    assert outbox_counts(database_url) == (0, 0)


@pytest.mark.timeout(150)
def test_outbox_deliver_command_runs_alone_and_stops_on_sigterm(
    tmp_path: Path, inngest: InngestStandIn, database_url: str
) -> None:
    """`flask inngest-gateway outbox deliver`: the deliverer as its own process, web workers
    without one."""
    env = clean_env(tmp_path) | {
        "SECRET_KEY": SECRET_KEY,
        "INNGEST_EVENT_KEY": inngest.event_key,
        "INNGEST_BASE_URL": inngest.url,
        "DATABASE_URL": database_url,
        "CREATE_DEMO_USER": "false",
        "INNGEST_GATEWAY_OUTBOX_POLL_SECONDS": "0.1",
    }
    server = start_gunicorn(
        tmp_path,
        inngest,
        env=OUTBOX_ENV | env | {"INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "false"},
    )
    try:
        sent: list[str] = []
        with requests.Session() as session:
            for n in range(5):
                with session.post(f"{server.url}/api", json={"id": f"alone-{n}"}, timeout=10) as r:
                    assert r.status_code == 202
                    sent += r.json()["ids"]
        time.sleep(0.5)
        assert inngest.accepted_ids() == []  # no deliverer in the web workers

        with (tmp_path / "deliver.log").open("wb") as log:
            deliverer = subprocess.Popen(
                [str(BIN / "flask"), "--app", "wsgi", "inngest-gateway", "outbox", "deliver"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                wait_for(
                    lambda: len(inngest.accepted_ids()) == 5,
                    30,
                    lambda: (tmp_path / "deliver.log").read_text(),
                )
                deliverer.send_signal(signal.SIGTERM)
                assert deliverer.wait(timeout=20) == 0
            finally:
                if deliverer.poll() is None:
                    os.killpg(deliverer.pid, signal.SIGKILL)
                    deliverer.wait(timeout=5)
    finally:
        server.kill()

    assert sorted(inngest.accepted_ids()) == sorted(sent)
    assert "running" in (tmp_path / "deliver.log").read_text()
