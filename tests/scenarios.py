"""The faults the cluster harness injects while a load runs, one function a scenario.

`tests/test_cluster.py` runs short versions of some in `make test`; `bench/cluster.py` runs
all of them, repeats the kill, and prints a table. Each returns a `Run`: what reached
Inngest of what the load was told was accepted, the answers, and `problems`, the broken
guarantees (empty when the scenario passed):

- every id answered `202` reaches the stand-in, no id with two different bodies, every
  event with its poster's user, and the outbox empties by itself;
- the answers are the ones the fault allows (a killed host's posts in flight: nginx's 502;
  a database that cannot commit: 503; never a 500);
- what the scenario itself promises (below).
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tests.cluster import Cluster, GatewayHost, Load, Outcome, loading, settle
from tests.waiting import wait_until


@dataclass
class Run:
    scenario: str
    outcome: Outcome
    statuses: Counter[int]
    problems: list[str]
    facts: dict[str, Any] = field(default_factory=dict)


def problems_of(
    outcome: Outcome, load: Load, allowed: set[int], faulty: dict[str, set[int]] | None = None
) -> list[str]:
    """The guarantees every scenario keeps, broken. Every host may answer `allowed`; the
    hosts in `faulty` (by address) also what their fault allows."""
    found = []
    if not outcome.acknowledged:
        found.append(f"nothing was acknowledged: {dict(load.statuses())}")
    if outcome.missing:
        found.append(
            f"{len(outcome.missing)} of {outcome.acknowledged} acknowledged ids never reached "
            f"Inngest: {outcome.missing[:5]}"
        )
    if outcome.pending:
        found.append(f"{outcome.pending} events still pending")
    if outcome.conflicting:
        found.append(f"ids delivered with two bodies: {outcome.conflicting[:5]}")
    if outcome.wrong_user:
        found.append(f"events with another user than their poster's: {outcome.wrong_user[:5]}")
    if outcome.violations:
        found.append(f"requests Inngest would refuse: {outcome.violations[:3]}")
    unexpected = Counter(
        (answer.host or "no host", answer.status)
        for answer in load.answers
        if answer.status not in allowed | (faulty or {}).get(answer.host, set())
    )
    if unexpected:
        found.append(f"answers no fault allows: {dict(unexpected)}")
    return found


def _run(
    scenario: str,
    cluster: Cluster,
    load: Load,
    since: float,
    settle_within: float,
    allowed: set[int],
    faulty: dict[str, set[int]] | None = None,
) -> Run:
    outcome = settle(cluster, load, since, timeout=settle_within)
    return Run(scenario, outcome, load.statuses(), problems_of(outcome, load, allowed, faulty))


def kill_a_host(
    cluster: Cluster,
    *,
    rate: float,
    victim: int = 0,
    inngest_delay: float = 1.0,
    after: float = 3.0,
    settle_within: float = 60,
) -> Run:
    """Every process of one host SIGKILLed while it holds claims (Inngest answering after
    `inngest_delay`, so batches are in flight): the others deliver them once the leases run
    out. Only the killed host's posts may fail (nginx's 502 for those in flight). The host
    stays down; `cluster.revive()` starts it again."""
    gateway = cluster.hosts[victim]
    cluster.inngest.delay = inngest_delay
    with loading(cluster, rate, f"kill{gateway.starts}-{time.time_ns()}") as load:
        load.run_for(1.0)
        # A claim taken in the last half second: its batch is still in flight at the kill.
        wait_until(lambda: cluster.claimed_by(gateway, within=0.5) > 0, 20, pause=0.05)
        pids = gateway.pids()
        killed = gateway.kill()
        killed_at = time.monotonic()
        # Leases the dead processes still hold: what the others must take over.
        orphaned = cluster.claimed_by(gateway, pids)
        load.run_for(after)
    run = _run(
        "kill a host", cluster, load, killed_at, settle_within, {202}, {gateway.upstream: {502}}
    )
    run.facts.update(claims_of_the_dead=orphaned, processes_killed=killed)
    if not orphaned:
        run.problems.append("the host held no claim when it died: nothing was taken over")
    if killed < 3:
        run.problems.append(f"only {killed} processes killed (a master and two workers)")
    return run


def cut_from_postgres(
    cluster: Cluster,
    *,
    rate: float,
    seconds: float = 10,
    victim: int = 1,
    after: float = 6.0,
    settle_within: float = 60,
) -> Run:
    """One host's link to PostgreSQL frozen for `seconds` while nginx still sends it posts: it
    answers 503, never 202, the other hosts go on answering 202, and once the link is back
    it carries on."""
    gateway = cluster.hosts[victim]
    with loading(cluster, rate, f"cut-{time.time_ns()}") as load:
        load.run_for(2)
        gateway.postgres.freeze()
        frozen_at = time.monotonic()
        load.run_for(seconds)
        gateway.postgres.thaw()
        thawed_at = time.monotonic()
        load.run_for(after)
    run = _run(
        "cut a host off from PostgreSQL",
        cluster,
        load,
        thawed_at,
        settle_within,
        {202},
        {gateway.upstream: {503}},
    )

    def answered(host: str, since: float, until: float) -> Counter[int]:
        return Counter(a.status for a in load.answers if a.host == host and since < a.at < until)

    # Answered while the link was frozen (a second's grace for posts committed just before).
    cut = answered(gateway.upstream, frozen_at + 1, thawed_at)
    others = sum(
        answered(other.upstream, frozen_at + 1, thawed_at)[202]
        for other in cluster.hosts
        if other is not gateway
    )
    later = answered(gateway.upstream, thawed_at + 3, float("inf"))
    run.facts.update(while_cut=dict(cut), others_while_cut=others, after=dict(later))
    if not cut or set(cut) != {503}:
        run.problems.append(f"the cut-off host answered {dict(cut)} while cut, not 503s")
    # The others carry on: at least half of their share of the posts, answered 202.
    expected = rate * (thawed_at - frozen_at - 1) * (len(cluster.hosts) - 1) / len(cluster.hosts)
    if others < expected / 2:
        run.problems.append(f"the other hosts answered {others} posts while it was cut")
    if not later or set(later) != {202}:
        run.problems.append(f"the host answered {dict(later)} after the link came back")
    return run


def restart_postgres(
    cluster: Cluster, *, rate: float, after: float = 8.0, settle_within: float = 90
) -> Run:
    """PostgreSQL restarted (fast shutdown: every connection cut) under load."""
    port = str(urlsplit(cluster.admin_url).port or 5432)
    listed = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    # The cluster serving the run's database: Ver Cluster Port Status ...
    version, name = next(
        line.split()[:2] for line in listed.splitlines() if line.split()[2:3] == [port]
    )
    with loading(cluster, rate, f"pgrestart-{time.time_ns()}") as load:
        load.run_for(2)
        began = time.monotonic()
        subprocess.run(
            [
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                version,
                "main",
                "restart",
                "-m",
                "fast",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        restarted_at = time.monotonic()
        load.run_for(after)
    run = _run("restart PostgreSQL", cluster, load, restarted_at, settle_within, {202, 503})
    run.facts.update(restart_seconds=round(restarted_at - began, 1))
    late = Counter(a.status for a in load.answers if a.at > restarted_at + 3)
    if not late or set(late) != {202}:
        run.problems.append(f"answers 3 s after the restart: {dict(late)}")
    return run


def inngest_unavailable(
    cluster: Cluster,
    *,
    rate: float,
    seconds: float = 10,
    after: float = 2.0,
    settle_within: float = 90,
) -> Run:
    """Inngest answers 503 for `seconds`, then recovers: the posts never notice."""
    with loading(cluster, rate, f"inngest503-{time.time_ns()}") as load:
        load.run_for(2)
        cluster.inngest.fail_next(1_000_000, 503)
        load.run_for(seconds)
        cluster.inngest.clear_faults()
        recovered_at = time.monotonic()
        load.run_for(after)
    return _run("Inngest 503 for 10 s", cluster, load, recovered_at, settle_within, {202})


def flaky_links(
    cluster: Cluster,
    *,
    rate: float,
    seconds: float = 20,
    delay: float = 0.005,
    drop_ratio: float = 0.01,
    settle_within: float = 90,
) -> Run:
    """Every link (each host to PostgreSQL and to Inngest) adds `delay` to every chunk and,
    at `drop_ratio` of the chunks it reads, resets the connection mid-query or mid-request,
    throughout."""
    dropped_before = sum(proxy.dropped for proxy in cluster.proxies)
    for proxy in cluster.proxies:
        proxy.delay, proxy.drop_ratio = delay, drop_ratio
    try:
        with loading(cluster, rate, f"flaky-{time.time_ns()}") as load:
            load.run_for(seconds)
        ended = time.monotonic()
        # The faults stay on until everything is delivered: delivery copes with them too.
        run = _run(
            "5 ms and 1% of chunks reset on every link",
            cluster,
            load,
            ended,
            settle_within,
            {202, 503},
        )
    finally:
        for proxy in cluster.proxies:
            proxy.delay, proxy.drop_ratio = 0.0, 0.0
    dropped = sum(proxy.dropped for proxy in cluster.proxies) - dropped_before
    run.facts.update(connections_dropped=dropped)
    if not dropped:
        run.problems.append("no connection was dropped: the fault never happened")
    return run


def kill_a_shared_nothing_host(
    cluster: Cluster, *, rate: float, down: float = 5.0, settle_within: float = 90
) -> Run:
    """Each host on its own SQLite outbox: one is killed with events stored and not yet
    delivered (its link to Inngest frozen until it is back); every event it acknowledged
    waits while it is down, and is delivered once it is started again on the same disk."""
    assert cluster.shared_nothing
    gateway: GatewayHost = cluster.hosts[0]
    gateway.inngest.freeze()
    with loading(cluster, rate, f"sqlitekill-{time.time_ns()}") as load:
        load.run_for(3)
        gateway.kill()
        load.run_for(2)
    acknowledged_there = {
        i for a in load.answers if a.host == gateway.upstream and a.status == 202 for i in a.ids
    }
    time.sleep(down)
    arrived_while_down = acknowledged_there & set(cluster.inngest.accepted_ids())
    waiting = cluster.pending(gateway)
    gateway.start()
    gateway.inngest.thaw()
    restarted_at = time.monotonic()
    run = _run(
        "kill a host with its own SQLite",
        cluster,
        load,
        restarted_at,
        settle_within,
        {202},
        {gateway.upstream: {502}},
    )
    run.facts.update(waiting_while_down=waiting, acknowledged_by_it=len(acknowledged_there))
    if not acknowledged_there:
        run.problems.append("the killed host had acknowledged nothing")
    if arrived_while_down or waiting < len(acknowledged_there):
        run.problems.append(
            f"of {len(acknowledged_there)} events it acknowledged, {len(arrived_while_down)} "
            f"arrived while it was down and {waiting} waited on its disk"
        )
    return run
