"""Several gateway hosts on one PostgreSQL outbox, faults injected under load: the full run.

Run by hand as root (`make cluster`), never by `make test` (which runs short versions of
the kill, cut-off and Inngest scenarios, tests/test_cluster.py). The harness is the tests'
own (tests/cluster.py, tests/scenarios.py): three network namespaces joined by veth links,
the standalone service under gunicorn (2 workers, outbox mode) in each, nginx balancing over
them, PostgreSQL and the stand-in Inngest reached through a userspace proxy per link that
can delay, drop and freeze. A load posts through nginx at `--rate` per second, 3 posts in 4
logged in, and records every answer.

Scenarios (`--only NAME`, repeatable; all by default):

- kill: every process of one host SIGKILLed while it holds claims (Inngest answering after
  1 s, so batches are in flight), repeated `--kills` times; the host is started again
  between repetitions;
- cut: one host's link to PostgreSQL frozen for 10 s, nginx still sending it posts;
- pg-restart: PostgreSQL restarted (fast shutdown) under load;
- inngest: Inngest answering 503 for 10 s, then recovering;
- flaky: 5 ms added to every chunk, and 1% of chunks resetting their connection instead of
  going on, on every link, throughout;
- sqlite: each host on its own SQLite outbox (shared nothing); one killed with events
  stored, started again on the same disk;
- pgbouncer: the kill and cut scenarios again, every host reaching PostgreSQL through
  PgBouncer in transaction mode;
- scale: 1, 2 and 3 hosts draining one preloaded backlog (`--backlog` events) from a 50 ms
  Inngest while posts go on at full speed: delivery rate and accepted posts per second.

Prints one table; exits 1 if any guarantee was broken.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import scenarios  # noqa: E402
from tests.cluster import ADMIN_URL, Cluster, Load  # noqa: E402
from tests.netns import leftovers, remove_leftovers  # noqa: E402
from tests.pgbouncer import pgbouncer  # noqa: E402

# As the first harness: leases of 10 s (sends of at most 5 s), batches in flight 1 s.
FULL_SETTINGS = {
    "INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS": "10",
    "INNGEST_GATEWAY_SEND_TIMEOUT": "5",
}
RUNS: list[str] = []  # the runs this process made: what it must leave nothing of
SCENARIOS = ("kill", "cut", "pg-restart", "inngest", "flaky", "sqlite", "pgbouncer", "scale")


class Table:
    """Runs grouped by scenario, summed up one row each."""

    def __init__(self) -> None:
        self.runs: dict[str, list[scenarios.Run]] = {}
        self.notes: list[str] = []

    def add(self, name: str, run: scenarios.Run) -> None:
        self.runs.setdefault(name, []).append(run)
        state = "ok" if not run.problems else "FAILED: " + "; ".join(run.problems)
        print(
            f"  {name}: {run.outcome.acknowledged} acknowledged, {run.outcome.repeats} repeats, "
            f"empty after {run.outcome.seconds_to_empty:.1f} s, {dict(run.statuses)} "
            f"{run.facts} {state}",
            flush=True,
        )

    def print(self) -> bool:
        print(
            "\n| scenario | runs | failed | acknowledged | lost | repeats | "
            "empty after (median / max) | answers |"
        )
        print("|---|---|---|---|---|---|---|---|")
        ok = True
        for name, runs in self.runs.items():
            failed = sum(1 for run in runs if run.problems)
            ok = ok and not failed
            answers: Counter[int] = Counter()
            for run in runs:
                answers.update(run.statuses)
            empty = [run.outcome.seconds_to_empty for run in runs]
            print(
                f"| {name} | {len(runs)} | {failed} | "
                f"{sum(r.outcome.acknowledged for r in runs):,} | "
                f"{sum(len(r.outcome.missing) for r in runs)} | "
                f"{sum(r.outcome.repeats for r in runs)} | "
                f"{statistics.median(empty):.1f} / {max(empty):.1f} s | "
                f"{', '.join(f'{s}: {n:,}' for s, n in sorted(answers.items()))} |"
            )
        for note in self.notes:
            print(note)
        return ok


def drop_run_databases(admin_url: str) -> list[str]:
    """Drop the databases runs made (igw_<run>) and left behind."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as admin:
        names = [
            row[0]
            for row in admin.execute(
                "SELECT datname FROM pg_database WHERE datname ~ '^igw_[0-9a-f]{4}$'"
            )
        ]
        for name in names:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    return names


def repeat_kill(
    table: Table, name: str, cluster: Cluster, args: argparse.Namespace, n: int
) -> None:
    for number in range(n):
        cluster.revive()
        table.add(name, scenarios.kill_a_host(cluster, rate=args.rate, victim=number % 3))


def shared_database(args: argparse.Namespace, table: Table, work: Path) -> None:
    wanted = set(args.only or SCENARIOS)
    if not wanted & {"kill", "cut", "pg-restart", "inngest", "flaky"}:
        return
    with Cluster(work / "shared", admin_url=args.admin_url, settings=FULL_SETTINGS) as cluster:
        RUNS.append(cluster.network.run)
        steps: list[tuple[str, Callable[[], scenarios.Run]]] = [
            ("cut", lambda: scenarios.cut_from_postgres(cluster, rate=args.rate)),
            ("pg-restart", lambda: scenarios.restart_postgres(cluster, rate=args.rate)),
            ("inngest", lambda: scenarios.inngest_unavailable(cluster, rate=args.rate)),
            ("flaky", lambda: scenarios.flaky_links(cluster, rate=args.rate)),
        ]
        if "kill" in wanted:
            print(f"kill a host, {args.kills} times", flush=True)
            repeat_kill(table, "kill a host", cluster, args, args.kills)
        for name, step in steps:
            if name in wanted:
                print(name, flush=True)
                cluster.revive()
                run = step()
                table.add(run.scenario, run)


def shared_nothing(args: argparse.Namespace, table: Table, work: Path) -> None:
    with Cluster(
        work / "sqlite", admin_url=args.admin_url, settings=FULL_SETTINGS, shared_nothing=True
    ) as cluster:
        RUNS.append(cluster.network.run)
        for _ in range(args.sqlite_kills):
            cluster.revive()
            run = scenarios.kill_a_shared_nothing_host(cluster, rate=args.rate)
            table.add(run.scenario, run)


def through_pgbouncer(args: argparse.Namespace, table: Table, work: Path) -> None:
    with (
        pgbouncer(args.admin_url) as bouncer,
        Cluster(
            work / "bounced",
            admin_url=args.admin_url,
            settings=FULL_SETTINGS,
            postgres_via=bouncer,
        ) as cluster,
    ):
        RUNS.append(cluster.network.run)
        repeat_kill(table, "PgBouncer: kill a host", cluster, args, max(3, args.kills // 10))
        cluster.revive()
        run = scenarios.cut_from_postgres(cluster, rate=args.rate)
        table.add("PgBouncer: cut a host off", run)


def postgres_connections(url: str, hosts: int) -> list[int]:
    """Each host's connections to PostgreSQL now (by application_name, its name)."""
    import psycopg

    with psycopg.connect(url) as connection:
        counts = dict(
            connection.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity GROUP BY 1"
            ).fetchall()
        )
    return [int(counts.get(f"h{n}", 0)) for n in range(1, hosts + 1)]


def scale(args: argparse.Namespace, work: Path) -> None:
    """1, 2 and 3 hosts draining one backlog from a 50 ms Inngest while posts go on at full
    speed; the posts before the backlog are the reference."""
    from bench import preload, preloaded_left  # bench/bench.py

    print(
        "\n| hosts | backlog | drain | events/s | posts/s before it | posts/s during it "
        "| answers | PostgreSQL connections per host, most at once |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for hosts in (1, 2, 3):
        with Cluster(
            work / f"scale{hosts}",
            hosts=hosts,
            admin_url=args.admin_url,
            settings={"INNGEST_GATEWAY_OUTBOX_MAX_PENDING": str(args.backlog * 3)},
            inngest_delay=0.05,
            fast_links=True,
        ) as cluster:
            RUNS.append(cluster.network.run)
            url = cluster.database_url()
            load = Load(cluster.url, cluster.login(), rate=100_000, label=f"scale{hosts}")
            load.start()
            most = [0] * hosts  # connections open through each host's link to PostgreSQL
            try:
                load.run_for(2)  # warm
                before = time.monotonic()
                load.run_for(5)
                # The hosts' deliverers take the events from the commit on.
                first, last = preload(url, args.backlog, analyze=False)
                began = time.monotonic()
                while preloaded_left(url, first, last) and time.monotonic() - began < 600:
                    for n, now in enumerate(postgres_connections(url, hosts)):
                        most[n] = max(most[n], now)
                    time.sleep(0.1)
                drained = time.monotonic() - began
            finally:
                load.stop()

            print(
                f"| {hosts} | {args.backlog:,} | {drained:.1f} s | {args.backlog / drained:,.0f} "
                f"| {load.accepted_per_second(before, before + 5):,.0f} "
                f"| {load.accepted_per_second(began, began + drained):,.0f} "
                f"| {dict(load.statuses())} | {', '.join(map(str, most))} |",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=SCENARIOS)
    parser.add_argument("--kills", type=int, default=30, help="repetitions of the kill")
    parser.add_argument("--sqlite-kills", type=int, default=3)
    parser.add_argument("--rate", type=float, default=40, help="posts per second")
    parser.add_argument("--backlog", type=int, default=30_000)
    parser.add_argument("--admin-url", default=os.environ.get("TEST_DATABASE_URL") or ADMIN_URL)
    parser.add_argument(
        "--clean",
        action="store_true",
        help="remove what a killed run left (namespaces, links, processes, databases), and stop",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: the hosts are network namespaces")
    if args.clean:
        print(f"removed {remove_leftovers()}; dropped {drop_run_databases(args.admin_url)}")
        return 0
    # SIGTERM (a timeout, kill) unwinds like Ctrl-C: every run removes what it made.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the stand-in's request lines
    wanted = set(args.only or SCENARIOS)
    table = Table()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="inngest-gateway-cluster-") as tmp:
        work = Path(tmp)
        shared_database(args, table, work)
        if "sqlite" in wanted:
            print("sqlite", flush=True)
            shared_nothing(args, table, work)
        if "pgbouncer" in wanted:
            print("pgbouncer", flush=True)
            through_pgbouncer(args, table, work)
        ok = table.print()
        if "scale" in wanted:
            scale(args, work)
    left = {run: found for run in RUNS if any((found := leftovers(run)).values())}
    print(f"\n{time.monotonic() - started:.0f} s; left behind: {left or 'nothing'}")
    return 0 if ok and not left else 1


if __name__ == "__main__":
    raise SystemExit(main())
