"""Benchmark `POST /api` under real gunicorn, against the stand-in Inngest, on loopback.

Run by hand (`make bench`), never by `make test`. For each scenario it starts the stand-in
Inngest (`tests/standin.py`, answering at once or after a delay) and the service under
gunicorn with the same configuration, warms up, drives load with wrk for a fixed time, and
reads requests per second, p50/p99 latency and errors from wrk. The scenarios:

- floor: `GET /healthz`, a route that does no work, in the same gunicorn configuration;
- outbox: `POST /api` with DELIVERY_MODE=outbox (202 once the event is committed), plus the
  time the outbox took to drain to zero after the load;
- sync: `POST /api` with DELIVERY_MODE=sync (200 once Inngest accepted the event).

The POST scenarios run with the stand-in answering at once and after `--delay-ms`. Every
non-2xx answer and socket error is counted and printed. Needs wrk (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
LUA = Path(__file__).resolve().parent / "post.lua"
EVENT_KEY = "bench-key"
SECRET_KEY = "bench-secret-key-not-for-production-0123456789abcdef"
BODY = json.dumps({"name": "app/bench", "data": {"n": 1}}, separators=(",", ":"))
# The service's and gunicorn's settings are dropped from the inherited environment, so that
# every scenario runs with exactly the settings below.
SETTING_PREFIXES = ("INNGEST_", "GUNICORN_", "API_", "OUTBOX_", "FLASK_")
SETTINGS = ("SECRET_KEY", "DATABASE_URL", "DELIVERY_MODE", "TRUSTED_ORIGINS", "LOG_LEVEL")
MARKER = "BENCH_JSON "


class BenchError(Exception):
    """The benchmark could not run (a process did not start, wrk failed, ...)."""


@dataclass(frozen=True)
class Scenario:
    """One measured configuration."""

    name: str
    path: str
    method: str
    delivery_mode: str
    delay_ms: float | None  # None: the route never calls Inngest

    @property
    def label(self) -> str:
        delay = "-" if self.delay_ms is None else f"{self.delay_ms:g} ms"
        return f"{self.name} (delay {delay})"


@dataclass
class Result:
    """What wrk measured for one scenario, and the outbox drain time where it applies."""

    scenario: Scenario
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    pending_after_load: int | None = None
    drain_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def non_2xx(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without the service's settings, with a private HOME.

    A private HOME keeps gunicorn's control socket (~/.gunicorn) apart from other servers.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(SETTING_PREFIXES) and key not in SETTINGS
    }
    env["HOME"] = str(home)
    return env


def start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a process in its own process group, its output going to `log_path`."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_group(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the process group, wait at most `grace` seconds, then SIGKILL what is left."""
    with suppress(ProcessLookupError):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)
        os.killpg(process.pid, signal.SIGKILL)  # workers may outlive their master
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a process's log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET; error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_for(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    what: str,
    log_path: Path,
    timeout: float,
) -> None:
    """Poll `ready()` until it is true; fail if the process exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode}:\n{log_tail(log_path)}")
        with suppress(OSError):
            if ready():
                return
        time.sleep(0.1)
    raise BenchError(f"{what} was not ready within {timeout:g}s:\n{log_tail(log_path)}")


@contextmanager
def standin(delay_ms: float, workdir: Path) -> Iterator[str]:
    """The stand-in Inngest in its own process; yields its URL, kills it on the way out."""
    port = free_port()
    log_path = workdir / "standin.log"
    command = [str(BIN / "python"), "-m", "tests.standin", "--port", str(port)]
    command += ["--event-key", EVENT_KEY, "--delay", str(delay_ms / 1000)]
    process = start(command, clean_env(workdir), log_path)
    try:

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        wait_for(process, listening, "the stand-in", log_path, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_group(process, grace=5)


@contextmanager
def gunicorn(
    scenario: Scenario, inngest_url: str, workdir: Path, args: argparse.Namespace
) -> Iterator[str]:
    """The service under gunicorn in its own process group; yields its URL, then kills it."""
    port = free_port()
    log_path = workdir / "gunicorn.log"
    env = clean_env(workdir) | {
        "SECRET_KEY": SECRET_KEY,
        "INNGEST_EVENT_KEY": EVENT_KEY,
        "INNGEST_BASE_URL": inngest_url,
        "DATABASE_URL": f"sqlite:///{workdir / 'gateway.db'}",
        "DELIVERY_MODE": scenario.delivery_mode,
        "LOG_LEVEL": "WARNING",
        # The limiter runs as in production, but all load comes from one address.
        "RATELIMIT_API": "10000000 per minute",
        "CREATE_DEMO_USER": "false",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(args.workers),
        "GUNICORN_THREADS": str(args.threads),
        "GUNICORN_LOG_LEVEL": "warning",
    }
    command = [str(BIN / "gunicorn"), "wsgi:app", "-c", "gunicorn.conf.py"]
    process = start(command, env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            process,
            lambda: http_get(f"{url}/healthz")[0] == 200,
            "gunicorn",
            log_path,
            timeout=30,
        )
        yield url
    finally:
        kill_group(process, grace=15)
        # The log goes with the scenario's temporary directory: show its end if it has errors.
        tail = log_tail(log_path, 400)
        if "Traceback" in tail:
            print(f"  note: gunicorn logged tracebacks; the end of its log:\n{log_tail(log_path)}")


# -- wrk -------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The path of wrk; installs Debian's package when running as root, else says how."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing; installing Debian's package: apt-get install -y wrk", flush=True)
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, check=False, timeout=300).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=False, timeout=300)
            subprocess.run(install, check=False, timeout=300)
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit("bench: wrk is not installed. Install it with: sudo apt-get install -y wrk")


def run_wrk(
    wrk: str, scenario: Scenario, url: str, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Run wrk once and return the summary that post.lua prints in done()."""
    command = [
        wrk,
        f"--threads={args.wrk_threads}",
        f"--connections={args.connections}",
        f"--duration={seconds:g}s",
        f"--timeout={args.timeout:g}s",
        "--latency",
        f"--script={LUA}",
        url + scenario.path,
        "--",
        scenario.method,
        "keep-alive" if args.keep_alive else "close",
    ]
    if scenario.method == "POST":
        command.append(BODY)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + args.timeout + 30
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + args.timeout + 30:g}s") from None
    if args.verbose:
        print(done.stdout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary: dict[str, Any] = json.loads(lines[-1].removeprefix(MARKER))
    return summary


# -- the outbox ------------------------------------------------------------------------------


def outbox_pending(url: str) -> int:
    """Events waiting in the outbox, from GET /readyz."""
    status, body = http_get(f"{url}/readyz", timeout=5)
    if status != 200:
        raise BenchError(f"/readyz answered {status}: {body[:300]!r}")
    return int(json.loads(body)["outbox"]["pending"])


def wait_drained(url: str, timeout: float) -> tuple[int, float | None]:
    """Pending events right now, and the seconds until none is left (None: not within timeout)."""
    began = time.monotonic()
    first = pending = outbox_pending(url)
    while pending > 0:
        if time.monotonic() - began > timeout:
            return first, None
        time.sleep(0.05)
        pending = outbox_pending(url)
    return first, time.monotonic() - began


# -- one scenario ----------------------------------------------------------------------------


def measure(wrk: str, scenario: Scenario, args: argparse.Namespace) -> Result:
    """Start fresh processes, warm up, measure, and (outbox mode) time the drain."""
    with tempfile.TemporaryDirectory(prefix="inngest-gateway-bench-") as tmp:
        workdir = Path(tmp)
        delay = scenario.delay_ms or 0.0
        with (
            standin(delay, workdir) as inngest_url,
            gunicorn(scenario, inngest_url, workdir, args) as url,
        ):
            notes: list[str] = []
            if args.warmup > 0:
                run_wrk(wrk, scenario, url, args.warmup, args)
            if scenario.delivery_mode == "outbox" and scenario.method == "POST":
                _, drained = wait_drained(url, args.drain_timeout)
                if drained is None:
                    notes.append("the warm-up's events had not drained before the run")
            # Several rounds on the same processes; the median one is reported. A single
            # round can land all of wrk's connections on one worker and halve the figure.
            rounds = [run_wrk(wrk, scenario, url, args.duration, args) for _ in range(args.rounds)]
            pending: int | None = None
            drain: float | None = None
            if scenario.delivery_mode == "outbox" and scenario.method == "POST":
                pending, drain = wait_drained(url, args.drain_timeout)
                if drain is None:
                    notes.append(f"outbox not drained within {args.drain_timeout:g}s")

    def rate(summary: dict[str, Any]) -> float:
        return float(summary["requests"]) / (float(summary["duration_us"]) / 1e6)

    summary = sorted(rounds, key=rate)[len(rounds) // 2]
    latency = summary["latency_us"]
    statuses: dict[int, int] = {}
    socket_errors: dict[str, int] = {}
    for each in rounds:  # errors of every round count, not only the median one's
        counted = sum(each["statuses"].values())
        if counted != each["requests"]:
            notes.append(f"post.lua counted {counted} statuses for {each['requests']} requests")
        for status, count in each["statuses"].items():
            statuses[int(status)] = statuses.get(int(status), 0) + count
        for kind in ("connect", "read", "write", "timeout"):
            if each["errors"][kind]:
                socket_errors[kind] = socket_errors.get(kind, 0) + each["errors"][kind]
    if len(rounds) > 1:
        notes.append("req/s of the rounds: " + ", ".join(f"{rate(r):.0f}" for r in rounds))
    return Result(
        scenario=scenario,
        requests_per_second=rate(summary),
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        requests=sum(each["requests"] for each in rounds),
        statuses=statuses,
        socket_errors=socket_errors,
        pending_after_load=pending,
        drain_seconds=drain,
        notes=notes,
    )


# -- the report ------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    """One row per scenario; errors are non-2xx answers plus socket errors."""
    header = (
        "scenario",
        "Inngest delay",
        "req/s",
        "p50 ms",
        "p99 ms",
        "requests",
        "errors",
        "outbox drain",
    )
    rows = [header]
    for r in results:
        if r.drain_seconds is not None:
            drain = f"{r.pending_after_load} in {r.drain_seconds:.2f} s"
        elif r.pending_after_load is not None:
            drain = f"{r.pending_after_load}: not drained"
        else:
            drain = "-"
        delay = "-" if r.scenario.delay_ms is None else f"{r.scenario.delay_ms:g} ms"
        rows.append(
            (
                r.scenario.name,
                delay,
                f"{r.requests_per_second:.0f}",
                f"{r.p50_ms:.1f}",
                f"{r.p99_ms:.1f}",
                str(r.requests),
                str(r.errors),
                drain,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def error_details(results: list[Result]) -> list[str]:
    """A line for each scenario that had errors: which statuses and which socket errors."""
    lines = []
    for r in results:
        if not r.errors:
            continue
        statuses = ", ".join(
            f"{status}: {count}"
            for status, count in sorted(r.statuses.items())
            if not 200 <= status < 300
        )
        sockets = ", ".join(f"{kind}: {count}" for kind, count in r.socket_errors.items())
        parts = [f"non-2xx {r.non_2xx} ({statuses or 'none'})"]
        parts.append(f"socket errors {sum(r.socket_errors.values())} ({sockets or 'none'})")
        lines.append(f"errors in {r.scenario.label}: " + "; ".join(parts))
    return lines


def ratio(numerator: Result | None, denominator: Result | None) -> str:
    """Throughput of one scenario over another's, or 'n/a'; says when errors are counted in."""
    if numerator is None or denominator is None or denominator.requests_per_second <= 0:
        return "n/a"
    value = f"{numerator.requests_per_second / denominator.requests_per_second:.2f}"
    errors = numerator.errors + denominator.errors
    return f"{value} (includes {errors} error(s))" if errors else value


def report(results: list[Result], args: argparse.Namespace) -> str:
    """The table, the error details, and the ratios the issue asks for."""

    def find(name: str, delay: float | None) -> Result | None:
        return next(
            (r for r in results if r.scenario.name == name and r.scenario.delay_ms == delay), None
        )

    floor, slow = find("floor", None), args.delay_ms
    outbox_fast, outbox_slow = find("outbox", 0.0), find("outbox", slow)
    lines = [
        f"gunicorn: {args.workers} workers x {args.threads} threads (gthread); "
        f"wrk: {args.connections} connections, {args.wrk_threads} threads, "
        f"{args.duration:g}s per scenario after {args.warmup:g}s warm-up; {os.cpu_count()} CPUs",
        "",
        table(results),
        "",
    ]
    details = error_details(results)
    lines += details or ["errors: none (every answer was 2xx, no socket errors)"]
    for r in results:
        lines += [f"note for {r.scenario.label}: {note}" for note in r.notes]
    lines += [
        "",
        f"outbox / floor throughput, Inngest at 0 ms:    {ratio(outbox_fast, floor)}"
        "  (target >= 0.50)",
        f"outbox / floor throughput, Inngest at {slow:g} ms:   {ratio(outbox_slow, floor)}"
        "  (target >= 0.50)",
        f"outbox at {slow:g} ms / outbox at 0 ms throughput: {ratio(outbox_slow, outbox_fast)}"
        "  (target: no drop, ~1.00)",
    ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def scenarios(delay_ms: float) -> list[Scenario]:
    """floor once (it never calls Inngest), then outbox and sync at 0 ms and `delay_ms`."""
    found = [Scenario("floor", "/healthz", "GET", "outbox", None)]
    for mode in ("outbox", "sync"):
        for delay in (0.0, delay_ms):
            found.append(Scenario(mode, "/api", "POST", mode, delay))
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds of load per scenario")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up load")
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="reuse connections (default: a new connection per request, as behind nginx,"
        " which spreads the load over the workers evenly)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="measured rounds per scenario; the median is shown"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--timeout", type=float, default=5, help="wrk request timeout, seconds")
    parser.add_argument("--workers", type=int, default=2, help="GUNICORN_WORKERS")
    parser.add_argument("--threads", type=int, default=4, help="GUNICORN_THREADS")
    parser.add_argument(
        "--delay-ms", type=float, default=50, help="the slow stand-in's delay per request"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=120, help="seconds to wait for the outbox to drain"
    )
    parser.add_argument(
        "--only", action="append", choices=("floor", "outbox", "sync"), help="run only these"
    )
    parser.add_argument("--verbose", action="store_true", help="print wrk's own output")
    args = parser.parse_args(argv)
    if args.connections < args.wrk_threads:
        parser.error("--connections must be at least --wrk-threads")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("python", "gunicorn"):
        if not (BIN / tool).exists():
            sys.exit(f"bench: {BIN / tool} is missing; run `make bench` to create the venv")
    wrk = ensure_wrk()
    if (ROOT / ".env").exists():
        print("note: .env exists; settings it has that the bench does not set apply too")
    results: list[Result] = []
    for scenario in scenarios(args.delay_ms):
        if args.only and scenario.name not in args.only:
            continue
        print(f"running {scenario.label} ...", flush=True)
        try:
            result = measure(wrk, scenario, args)
        except BenchError as exc:
            print(f"bench: {scenario.label} failed: {exc}", file=sys.stderr)
            return 1
        print(
            f"  {result.requests_per_second:.0f} req/s, p50 {result.p50_ms:.1f} ms, "
            f"p99 {result.p99_ms:.1f} ms, {result.errors} error(s)",
            flush=True,
        )
        results.append(result)
    print()
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
