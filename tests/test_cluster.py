"""Three gateway hosts on one PostgreSQL outbox, a real network between them, faults injected
while a load runs through nginx (`tests/cluster.py`, `tests/scenarios.py`): short versions
of the scenarios that `bench/cluster.py` runs in full.

For each: every id answered `202` reaches Inngest, none with two different bodies or
another user, the answers are the ones the fault allows, and the outbox empties by itself.
Needs root (network namespaces) and PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests import scenarios
from tests.cluster import Cluster
from tests.conftest import postgres_from_env
from tests.netns import leftovers

pytestmark = pytest.mark.slow

RATE = 30  # posts per second through nginx
NOTHING = {"namespaces": [], "links": [], "processes": []}


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead and not yet reaped by init, is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


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
    assert leftovers(run) == NOTHING


@pytest.fixture
def healthy(cluster: Cluster) -> Cluster:
    """Three running hosts, healthy links, Inngest answering at once."""
    cluster.revive()
    return cluster


def passed(run: scenarios.Run) -> None:
    outcome = run.outcome
    print(
        f"\n{run.scenario}: {outcome.acknowledged} acknowledged, {outcome.repeats} repeats, "
        f"empty {outcome.seconds_to_empty:.1f} s after the fault, answers "
        f"{dict(run.statuses)}, {run.facts}"
    )
    assert not run.problems, run.problems


@pytest.mark.timeout(150)
def test_a_killed_hosts_claimed_batches_are_delivered_by_the_others(healthy: Cluster) -> None:
    run = scenarios.kill_a_host(healthy, rate=RATE)
    passed(run)
    assert run.facts["claims_of_the_dead"] > 0


@pytest.mark.timeout(150)
def test_a_host_cut_off_from_postgresql_answers_503_never_202_and_carries_on(
    healthy: Cluster,
) -> None:
    run = scenarios.cut_from_postgres(healthy, rate=RATE)
    passed(run)
    assert set(run.facts["while_cut"]) == {503}
    assert run.facts["others_while_cut"] > 0
    assert set(run.facts["after"]) == {202}


@pytest.mark.timeout(150)
def test_inngest_failing_for_ten_seconds_delays_delivery_and_loses_nothing(
    healthy: Cluster,
) -> None:
    run = scenarios.inngest_unavailable(healthy, rate=RATE)
    passed(run)
    assert set(run.statuses) == {202}  # the posts never noticed


@pytest.mark.timeout(120)
def test_a_failed_run_leaves_nothing_behind(tmp_path: Path) -> None:
    needs_root()
    admin = postgres_from_env()
    with (
        pytest.raises(RuntimeError, match="on purpose"),
        Cluster(tmp_path, hosts=1, admin_url=admin) as built,
    ):
        run, database = built.network.run, built.database
        pids = built.hosts[0].pids()
        assert len(pids) >= 3  # gunicorn's master and two workers
        assert built.nginx is not None
        nginx = built.nginx.process.pid
        proxies = list(built.proxies)
        assert proxies and not any(proxy.closed for proxy in proxies)
        raise RuntimeError("on purpose")
    assert leftovers(run) == NOTHING
    for pid in [*pids, nginx]:
        assert not running(pid), pid
    assert all(proxy.closed for proxy in proxies)
    with psycopg.connect(admin) as connection:
        found = connection.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
    assert found == (0,)
