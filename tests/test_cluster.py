"""Three gateway hosts on one PostgreSQL outbox, a real network between them, faults injected
while a load runs through nginx (`tests/cluster.py`): short versions of the scenarios that
`bench/cluster.py` runs in full.

For each: every id answered `202` reaches Inngest, none with two different bodies, and the
backlog empties by itself. Needs root (network namespaces) and PostgreSQL.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.cluster import Cluster, Load, Outcome, loading, settle
from tests.conftest import postgres_from_env
from tests.netns import leftovers

pytestmark = pytest.mark.slow

RATE = 30  # posts per second through nginx
CUT_SECONDS = 10


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    needs_root()
    admin = postgres_from_env()
    with Cluster(tmp_path_factory.mktemp("cluster"), admin_url=admin) as built:
        run = built.network.run
        yield built
    assert leftovers(run) == {"namespaces": [], "links": [], "processes": []}


@pytest.fixture(autouse=True)
def _every_host_up(request: pytest.FixtureRequest) -> None:
    """Each scenario starts from three running hosts and a healthy Inngest."""
    if "cluster" not in request.fixturenames:
        return
    built: Cluster = request.getfixturevalue("cluster")
    built.inngest.reset()  # the last scenario ended with nothing pending
    for gateway in built.hosts:
        gateway.postgres.thaw()
        if gateway.process is None or gateway.process.poll() is not None:
            gateway.start()


def wait_until(condition: object, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def assert_nothing_lost(outcome: Outcome, load: Load) -> None:
    assert outcome.acknowledged > 0, load.statuses()
    assert not outcome.missing, (
        f"{len(outcome.missing)} of {outcome.acknowledged} acknowledged ids never reached "
        f"Inngest: {outcome.missing[:10]}"
    )
    assert not outcome.conflicting, f"ids delivered with two bodies: {outcome.conflicting[:10]}"
    assert outcome.pending == 0, f"{outcome.pending} events still pending"
    assert not outcome.wrong_user, f"events with another user: {outcome.wrong_user[:10]}"
    print(
        f"\n{outcome.acknowledged} acknowledged, all delivered; {outcome.repeats} repeats; "
        f"backlog empty {outcome.seconds_to_empty:.1f} s after the fault ended; "
        f"answers {dict(load.statuses())}"
    )


@pytest.mark.timeout(150)
def test_a_killed_hosts_claimed_batches_are_delivered_by_the_others(cluster: Cluster) -> None:
    cluster.inngest.delay = 1.0  # each batch is in flight for a second
    victim = cluster.hosts[0]
    with loading(cluster, RATE, "kill") as load:
        load.run_for(1.5)
        wait_until(lambda: cluster.claimed_by(victim) > 0, 20, "the host never held a claim")
        claimed = cluster.claimed_by(victim)
        assert victim.kill() >= 3  # the master and both workers, no goodbye
        killed_at = time.monotonic()
        load.run_for(3)
    outcome = settle(cluster, load, killed_at, timeout=60)
    assert claimed > 0
    assert_nothing_lost(outcome, load)
    # Posts in flight on the killed host got nginx's 502; nothing else failed.
    assert set(load.statuses()) <= {202, 502}, load.statuses()


@pytest.mark.timeout(150)
def test_a_host_cut_off_from_postgresql_answers_503_never_202_and_carries_on(
    cluster: Cluster,
) -> None:
    victim = cluster.hosts[1]
    with loading(cluster, RATE, "cut") as load:
        load.run_for(2)
        victim.postgres.freeze()  # holds its connections, forwards nothing
        frozen_at = time.monotonic()
        load.run_for(CUT_SECONDS)
        victim.postgres.thaw()
        thawed_at = time.monotonic()
        load.run_for(6)
    outcome = settle(cluster, load, thawed_at, timeout=60)
    assert_nothing_lost(outcome, load)

    mine = [a for a in load.answers if a.upstream == victim.upstream]
    # Answered while the link was frozen (a second's grace for posts committed just before).
    cut = [a.status for a in mine if frozen_at + 1 < a.at < thawed_at]
    assert cut and set(cut) == {503}, cut
    assert set(load.statuses()) <= {202, 503}, load.statuses()  # never a 500, never a 502
    after = [a.status for a in mine if a.at > thawed_at + 3]
    assert after and set(after) == {202}, after  # once the link is back it carries on


@pytest.mark.timeout(150)
def test_inngest_failing_for_ten_seconds_delays_delivery_and_loses_nothing(
    cluster: Cluster,
) -> None:
    with loading(cluster, RATE, "inngest503") as load:
        load.run_for(2)
        cluster.inngest.fail_next(1_000_000, 503)
        load.run_for(10)
        cluster.inngest.clear_faults()
        recovered_at = time.monotonic()
        load.run_for(2)
    outcome = settle(cluster, load, recovered_at, timeout=90)
    assert_nothing_lost(outcome, load)
    assert set(load.statuses()) == {202}, load.statuses()  # the posts never noticed


@pytest.mark.timeout(120)
def test_a_failed_run_leaves_nothing_behind(tmp_path: Path) -> None:
    needs_root()
    admin = postgres_from_env()
    with (
        pytest.raises(RuntimeError, match="on purpose"),
        Cluster(tmp_path, hosts=1, admin_url=admin) as built,
    ):
        run, database = built.network.run, built.database
        gateway = built.hosts[0]
        pids = gateway.pids()
        assert len(pids) >= 3
        assert built.nginx is not None
        nginx = built.nginx.pid
        listening = [(proxy.listen_host, proxy.port) for proxy in built.proxies]
        raise RuntimeError("on purpose")
    assert leftovers(run) == {"namespaces": [], "links": [], "processes": []}
    for pid in [*pids, nginx]:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), pid
    for address in listening:
        with pytest.raises(OSError):
            socket.create_connection(address, timeout=1).close()
    with psycopg.connect(admin) as connection:
        found = connection.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
    assert found == (0,)
