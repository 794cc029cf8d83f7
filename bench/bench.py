"""Benchmark `POST /api` under real gunicorn, against the stand-in Inngest, on loopback.

Run by hand (`make bench`), never by `make test`. Everything is measured in one run, each
target under gunicorn with `--workers` workers: the service with its production settings
(gunicorn.conf.py: gthread, `--threads` threads per worker), the yardsticks as a plain Flask
app runs by default (bench/floor.conf.py: gunicorn's sync workers, one request at a time):

- floor: bench/floor.py, bare Flask + Flask-Login, `POST /ok` answering {"status":"ok"};
- sdk: the same app's `POST /sdk`, calling inngest-py's `send_sync` (the SDK peer);
- outbox: the service's `POST /api`, INNGEST_GATEWAY_DELIVERY_MODE=outbox (202 once the event is
  committed);
- sync: the service's `POST /api`, INNGEST_GATEWAY_DELIVERY_MODE=sync (200 once Inngest accepted
  it).

Every post is a logged-in user's: the bench logs in once per target and wrk sends that
session cookie (bench/post.lua). The service runs with its production log level (JSON access
log at INFO, to a file), metrics and its rate limits (raised: all load comes from one
address). Each target is driven with keep-alive connections and with a new connection per
request, with the stand-in Inngest answering at once and after `--delay-ms`; each scenario is
shown as a ratio to the floor of the same run and connection mode (sync also to the SDK peer).
The RSS of each gunicorn worker is read at the start and the end of each target's load.

The delivery scenario preloads `--delivery-events` events into the outbox (SQLite, and
PostgreSQL when TEST_DATABASE_URL is set; that database's outbox table is emptied), starts
the service against the slow stand-in and times the drain while posts keep coming.

It ends with one table: the per-request cost goals beside the figures, met or not met. Needs wrk
(`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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
BENCH_EMAIL = "bench@example.com"
BENCH_PASSWORD = "bench-password-0123456789"
# What a page posts: {"data": {"example": "data"}}, with an event name.
BODY = json.dumps({"name": "app/bench", "data": {"example": "data"}}, separators=(",", ":"))
# The service's and gunicorn's settings are dropped from the inherited environment, so that
# every scenario runs with exactly the settings below.
SETTING_PREFIXES = (
    "INNGEST_",
    "GUNICORN_",
    "API_",
    "OUTBOX_",
    "FLASK_",
    "RATELIMIT_",
    "SESSION_",
    "LOG_",
    "METRICS_",
    "USERS_",
    "SQLITE_",
    "LOGIN_RATELIMIT_",
)
SETTINGS = (
    "SECRET_KEY",
    "DATABASE_URL",
    "INNGEST_GATEWAY_DELIVERY_MODE",
    "INNGEST_GATEWAY_TRUSTED_ORIGINS",
    "IDENTITY",
    "PROMETHEUS_MULTIPROC_DIR",
    "TRUSTED_PROXIES",
)
MARKER = "BENCH_JSON "
POST_CHUNK = 2.0  # seconds per round of posts during a drain
STEADY_TIMEOUT = 30.0  # seconds the steady load waits for an answer
MODES = ("keep-alive", "close")


class BenchError(Exception):
    """The benchmark could not run (a process did not start, wrk failed, ...)."""


@dataclass(frozen=True)
class Target:
    """One thing served under gunicorn: the floor app, the SDK peer, or the service.

    The floor and the SDK peer run with bench/floor.conf.py: gunicorn's default (sync)
    workers, as many as the service's.
    """

    name: str
    app: str  # gunicorn's app argument
    path: str
    delivery_mode: str
    calls_inngest: bool


FLOOR = Target("floor", "bench.floor:app", "/ok", "outbox", False)
SDK = Target("sdk", "bench.floor:app", "/sdk", "outbox", True)
OUTBOX = Target("outbox", "wsgi:app", "/api", "outbox", True)
SYNC = Target("sync", "wsgi:app", "/api", "sync", True)
TARGETS = (FLOOR, SDK, OUTBOX, SYNC)


@dataclass
class Result:
    """What wrk measured for one target, connection mode and Inngest delay."""

    target: Target
    mode: str
    delay_ms: float | None  # None: the target never calls Inngest
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    notes: list[str] = field(default_factory=list)
    # The workers' CPU time (user + system) over the requests served, every round.
    cpu_ms_per_request: float = 0.0

    @property
    def label(self) -> str:
        delay = "-" if self.delay_ms is None else f"{self.delay_ms:g} ms"
        return f"{self.target.name} ({self.mode}, Inngest {delay})"

    @property
    def non_2xx(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


@dataclass
class Memory:
    """RSS (MiB) of each gunicorn worker when a target's load began and when it ended."""

    label: str
    start: dict[int, float]
    end: dict[int, float]

    @property
    def growth(self) -> float:
        """The largest growth of a worker present at both ends (MiB); workers that changed count."""
        common = set(self.start) & set(self.end)
        if not common or common != set(self.start) or common != set(self.end):
            return float("inf")  # a worker was replaced: its growth is unknown
        return max(self.end[pid] - self.start[pid] for pid in common)

    def text(self) -> str:
        pids = sorted(set(self.start) | set(self.end))
        return ", ".join(
            f"{self.start.get(pid, float('nan')):.0f} -> {self.end.get(pid, float('nan')):.0f} MiB"
            for pid in pids
        )


@dataclass
class Delivery:
    """The drain of a preloaded outbox."""

    database: str
    preloaded: int
    pending_at_ready: int
    seconds: float | None
    left: int
    posts: Result | None
    notes: list[str] = field(default_factory=list)
    # The same service's posts once the backlog is gone: what "without a backlog" means.
    posts_after: Result | None = None

    @property
    def rate(self) -> float | None:
        if self.seconds is None or self.seconds <= 0:
            return None
        return self.pending_at_ready / self.seconds


@dataclass
class Steady:
    """A target at a fixed offered rate (bench/paced.py), below saturation: cost, not queueing."""

    target: Target
    delay_ms: float | None  # None: the target never calls Inngest
    offered: float  # req/s asked for
    achieved: float  # req/s served
    p50_ms: float
    p99_ms: float
    p999_ms: float
    requests: int
    errors: int  # non-2xx answers and requests that got no answer
    unsent: int = 0  # due, but no connection was free before the load's window ended


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


def service_env(
    workdir: Path,
    inngest_url: str,
    delivery_mode: str,
    database_url: str,
    args: argparse.Namespace,
    port: int,
) -> dict[str, str]:
    """The environment of every gunicorn (and `flask users`) the bench starts."""
    return (
        clean_env(workdir)
        | {
            "SECRET_KEY": SECRET_KEY,
            "INNGEST_EVENT_KEY": EVENT_KEY,
            "INNGEST_BASE_URL": inngest_url,
            "DATABASE_URL": database_url,
            "INNGEST_GATEWAY_DELIVERY_MODE": delivery_mode,
            # Every post must be a logged-in user's: a lost login shows as 401 errors.
            "INNGEST_GATEWAY_API_REQUIRE_LOGIN": "true",
            # The limiter runs as in production, but all load comes from one address.
            "INNGEST_GATEWAY_RATELIMIT_API": "10000000 per minute",
            "CREATE_DEMO_USER": "false",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": str(args.workers),
        }
        | ({"GUNICORN_THREADS": str(args.threads)} if args.threads else {})
        | dict(args.set)
    )


def create_user(env: dict[str, str], workdir: Path) -> None:
    """The bench's user in the service's database (`flask users create`)."""
    command = [str(BIN / "flask"), "--app", "wsgi", "users", "create", BENCH_EMAIL]
    command += ["--name", "Bench", "--password", BENCH_PASSWORD]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0 and "already" not in (done.stdout + done.stderr):
        raise BenchError(f"flask users create failed:\n{done.stdout}\n{done.stderr}")


@contextmanager
def gunicorn(
    target: Target, env: dict[str, str], port: int, workdir: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A target under gunicorn, in its own process group; yields its URL and master."""
    log_path = workdir / f"gunicorn-{target.name}.log"
    config = "gunicorn.conf.py" if target.app == "wsgi:app" else "bench/floor.conf.py"
    command = [str(BIN / "gunicorn"), target.app, "-c", config]
    process = start(command, env, log_path)
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    try:
        wait_for(process, answering, f"gunicorn ({target.name})", log_path, timeout=30)
        yield url, process
    finally:
        kill_group(process, grace=15)
        # The log goes with the temporary directory: show its end if it has errors.
        tail = log_tail(log_path, 400)
        if "Traceback" in tail:
            print(f"  note: gunicorn logged tracebacks; the end of its log:\n{log_tail(log_path)}")


def login(target: Target, url: str) -> str:
    """Log in once; the Cookie header that carries the session."""
    if target.app == "wsgi:app":
        path = "/auth/login"
        body = json.dumps({"email": BENCH_EMAIL, "password": BENCH_PASSWORD}).encode()
    else:
        path, body = "/login", b"{}"
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 30
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            cookies = [
                value.split(";", 1)[0]
                for name, value in response.getheaders()
                if name.lower() == "set-cookie"
            ]
            if response.status == 200 and cookies:
                return "; ".join(cookies)
            problem = f"login answered {response.status} with {len(cookies)} cookie(s)"
        except OSError as exc:
            problem = f"login failed: {type(exc).__name__}"
        finally:
            connection.close()
        if time.monotonic() > deadline:
            raise BenchError(problem)
        time.sleep(0.2)


def worker_rss(master: int) -> dict[int, float]:
    """RSS in MiB of each child of the gunicorn master, from /proc."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            status = (entry / "status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields["PPid"].strip()) == master:
                found[int(entry.name)] = int(fields["VmRSS"].split()[0]) / 1024
    return found


def workers_cpu(master: int) -> float:
    """CPU seconds (user + system) used so far by the children of the gunicorn master."""
    tick = os.sysconf("SC_CLK_TCK")
    used = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == master:
                used += (int(fields[11]) + int(fields[12])) / tick
    return used


# -- py-spy ----------------------------------------------------------------------------------


@contextmanager
def profiled(
    args: argparse.Namespace, name: str, pids: list[int], seconds: float
) -> Iterator[None]:
    """With --profile: py-spy samples each worker while the body runs (the first round only).

    Each worker's samples go to DIR/<name>-<pid>.txt as collapsed stacks (flamegraph.pl and
    speedscope read them); `profile_report` sums them up.
    """
    directory: Path | None = args.profile
    if directory is None or any(directory.glob(f"{name}-*.txt")):
        yield
        return
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(seconds))),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--gil",  # only the thread holding the GIL: where the CPU time goes
                "--output",
                str(directory / f"{name}-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    try:
        yield
    finally:
        for spy_process in spies:
            try:
                spy_process.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                spy_process.kill()


def _frame_name(frame: str) -> str:
    """`function (path/to/file.py:line)` -> `function (file.py)`: one name per function."""
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    marker = "site-packages/"
    short = path.split(marker, 1)[1] if marker in path else path.replace(str(ROOT) + "/", "")
    return f"{function} ({short})"


def profile_report(directory: Path, name: str, top: int = 30) -> str:
    """The functions most samples were in (inclusive) or at (self).

    py-spy leaves out threads that are idle (waiting on a socket, a lock or a condition),
    so the shares are of the time spent working.
    """
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for path in sorted(directory.glob(f"{name}-*.txt")):
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            frames = [_frame_name(f) for f in stack.split(";") if " (" in f]
            if not frames:
                continue
            count = int(count_text)
            total += count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count
            own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return f"  profile {name}: no samples (is py-spy installed and allowed to attach?)"
    lines = [f"  profile {name}: {total} busy samples; inclusive % (self %) per function"]
    for frame, count in sorted(inclusive.items(), key=lambda item: -item[1])[:top]:
        lines.append(
            f"    {100 * count / total:5.1f}% ({100 * own.get(frame, 0) / total:4.1f}%)  {frame}"
        )
    return "\n".join(lines)


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
    wrk: str, url: str, mode: str, seconds: float, cookie: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Run wrk once (POST BODY with the cookie) and return the summary post.lua prints."""
    command = [
        wrk,
        f"--threads={args.wrk_threads}",
        f"--connections={args.connections}",
        f"--duration={seconds:g}s",
        f"--timeout={args.timeout:g}s",
        "--latency",
        f"--script={LUA}",
        url,
        "--",
        "POST",
        mode,
        BODY,
        cookie,
    ]
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


def run_paced(
    url: str, offered: float, seconds: float, cookie: str, args: argparse.Namespace
) -> dict[str, Any]:
    """bench/paced.py: POSTs at `offered` req/s, evenly spaced; its JSON summary."""
    command = [str(BIN / "python"), str(Path(__file__).resolve().parent / "paced.py"), url]
    command += ["--rate", f"{offered:g}", "--seconds", f"{seconds:g}", "--body", BODY]
    command += ["--cookie", cookie, "--connections", str(args.steady_connections)]
    # A slow answer is a latency, not an error: only one that never comes within 30 s is.
    command += ["--timeout", f"{max(args.timeout, STEADY_TIMEOUT):g}"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + STEADY_TIMEOUT + 60
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"paced.py did not finish within {seconds + args.timeout + 30:g}s"
        ) from None
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"paced.py failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def rate(summary: dict[str, Any]) -> float:
    return float(summary["requests"]) / (float(summary["duration_us"]) / 1e6)


def summarise(
    target: Target, mode: str, delay_ms: float | None, rounds: list[dict[str, Any]]
) -> Result:
    """The median round's throughput and latency; the errors of every round."""
    summary = sorted(rounds, key=rate)[len(rounds) // 2]
    statuses: dict[int, int] = {}
    socket_errors: dict[str, int] = {}
    notes: list[str] = []
    for each in rounds:
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
        target=target,
        mode=mode,
        delay_ms=delay_ms,
        requests_per_second=rate(summary),
        p50_ms=summary["latency_us"]["p50"] / 1000,
        p99_ms=summary["latency_us"]["p99"] / 1000,
        requests=sum(each["requests"] for each in rounds),
        statuses=statuses,
        socket_errors=socket_errors,
        notes=notes,
        cpu_ms_per_request=1000
        * sum(r.get("cpu_s", 0.0) for r in rounds)
        / max(1, sum(each["requests"] for each in rounds)),
    )


# -- the outbox ------------------------------------------------------------------------------


def outbox_pending(url: str) -> int:
    """Events waiting in the outbox, from GET /readyz."""
    status, body = http_get(f"{url}/readyz", timeout=5)
    if status != 200:
        raise BenchError(f"/readyz answered {status}: {body[:300]!r}")
    return int(json.loads(body)["outbox"]["pending"])


def sqlalchemy_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def preload(database_url: str, count: int, *, analyze: bool = True) -> tuple[int, int]:
    """Empty the outbox table and store `count` pending events; the range of their ids.

    `analyze=False` returns at the commit (deliverers already running start at once)."""
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import create_engine, delete, func, insert, select

    from inngest_gateway.outbox.model import PENDING, OutboxBase, now_ms, table

    engine = create_engine(sqlalchemy_url(database_url))
    try:
        OutboxBase.metadata.create_all(engine)
        now = now_ms()
        with engine.begin() as connection:
            connection.execute(delete(table))
            for chunk in range(0, count, 5000):
                rows = []
                for n in range(chunk, min(chunk + 5000, count)):
                    event_id = f"bench-preload-{now}-{n}"
                    event = {"name": "app/bench", "data": {"n": n}, "id": event_id, "ts": now}
                    body = json.dumps(event, separators=(",", ":"))
                    rows.append(
                        {
                            "event_id": event_id,
                            "name": "app/bench",
                            "body": body,
                            "size": len(body.encode()),
                            "state": PENDING,
                            "created_at": now,
                            "next_attempt_at": now,
                            "attempts": 0,
                        }
                    )
                connection.execute(insert(table), rows)
            # The table was emptied in this transaction: every row in it is ours.
            low, high = connection.execute(select(func.min(table.c.id), func.max(table.c.id))).one()
        if analyze and engine.dialect.name == "postgresql":
            # What autovacuum does after a bulk load; on a server with it off, the dead rows
            # of every earlier run would otherwise be measured too.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql(f"VACUUM ANALYZE {table.name}")
        return int(low) - 1, int(high)
    finally:
        engine.dispose()


def preloaded_left(database_url: str, first: int, last: int) -> int:
    """How many of the preloaded events are still pending (read from the database itself)."""
    from sqlalchemy import and_, create_engine, func, select

    from inngest_gateway.outbox.model import PENDING, table

    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as connection:
            where = and_(table.c.id > first, table.c.id <= last, table.c.state == PENDING)
            return int(connection.execute(select(func.count()).where(where)).scalar())
    finally:
        engine.dispose()


def delivery(wrk: str, database: str, database_url: str, args: argparse.Namespace) -> Delivery:
    """Preload the outbox, start the service against the slow stand-in, time the drain."""
    from sqlalchemy.exc import OperationalError

    with tempfile.TemporaryDirectory(prefix="inngest-gateway-bench-") as tmp:
        workdir = Path(tmp)
        if database == "sqlite":
            database_url = f"sqlite:///{workdir / 'gateway.db'}"
        port = free_port()
        notes: list[str] = []
        with standin(args.delay_ms, workdir) as inngest_url:
            env = service_env(workdir, inngest_url, "outbox", database_url, args, port)
            # Room for the posts beside the preloaded events (the default is 100,000, at
            # which posts are refused, 503 outbox_full, until the drain makes room).
            env["INNGEST_GATEWAY_OUTBOX_MAX_PENDING"] = str(2 * args.delivery_events + 100_000)
            create_user(env, workdir)
            first, last = preload(database_url, args.delivery_events)
            with gunicorn(OUTBOX, env, port, workdir) as (url, _):
                began = time.monotonic()
                at_ready = preloaded_left(database_url, first, last)
                cookie = login(OUTBOX, url)
                posts: list[dict[str, Any]] = []
                failures: list[str] = []
                drained = threading.Event()

                def post() -> None:
                    # Short rounds for as long as the drain lasts: only those that ended
                    # before it did count, so no post is measured without a backlog.
                    try:
                        while not drained.is_set() and time.monotonic() - began < limit:
                            chunk = run_wrk(
                                wrk, url + OUTBOX.path, "keep-alive", POST_CHUNK, cookie, args
                            )
                            chunk["during_drain"] = not drained.is_set()
                            posts.append(chunk)
                    except BenchError as exc:
                        failures.append(str(exc))

                limit = args.drain_timeout

                poster = threading.Thread(target=post, daemon=True)
                poster.start()
                left = at_ready
                seconds: float | None = None
                while time.monotonic() - began < args.drain_timeout:
                    try:
                        left = preloaded_left(database_url, first, last)
                    except OperationalError:  # a busy database: read again
                        time.sleep(0.1)
                        continue
                    if left == 0:
                        seconds = time.monotonic() - began
                        break
                    # Not more often: each look counts the range, which costs the database.
                    time.sleep(0.25)
                drained.set()
                poster.join(POST_CHUNK + args.timeout + 60)
                notes += [f"posts during the drain: {failure}" for failure in failures]
                after = None
                if seconds is not None:
                    reference = run_wrk(
                        wrk, url + OUTBOX.path, "keep-alive", args.duration, cookie, args
                    )
                    after = summarise(OUTBOX, "keep-alive", args.delay_ms, [reference])
                if seconds is None:
                    notes.append(f"{left} preloaded events left after {args.drain_timeout:g}s")
        during = [chunk for chunk in posts if chunk["during_drain"]]
        if posts and not during:
            notes.append(f"the drain ended within the first {POST_CHUNK:g}s of posts")
        result = drain_posts(args.delay_ms, during) if during else None
        return Delivery(database, last - first, at_ready, seconds, left, result, notes, after)


def merged_percentile(rounds: list[dict[str, Any]], share: float) -> float:
    """A percentile (µs) of several wrk rounds' requests together: each round's latency at
    every tenth of a percent stands for a thousandth of its requests."""
    points = sorted(
        (value, r["requests"] / len(r["quantiles_us"]))
        for r in rounds
        for value in r["quantiles_us"]
    )
    total, seen = sum(weight for _, weight in points), 0.0
    for value, weight in points:
        seen += weight
        if seen >= share * total:
            return float(value)
    return float(points[-1][0]) if points else float("nan")


def drain_posts(delay_ms: float, chunks: list[dict[str, Any]]) -> Result:
    """The posts of every round that ended during the drain: their rate over all those
    rounds, the median round's p50, and the p99 of all their requests together."""
    summary = summarise(OUTBOX, "keep-alive", delay_ms, chunks)
    summary.requests_per_second = sum(float(c["requests"]) for c in chunks) / (
        sum(float(c["duration_us"]) for c in chunks) / 1e6
    )
    summary.p99_ms = merged_percentile(chunks, 0.99) / 1000
    summary.notes = [
        f"{len(chunks)} rounds of {POST_CHUNK:g}s during the drain: "
        + ", ".join(
            f"{rate(c):.0f} req/s p99 {c['latency_us']['p99'] / 1000:.0f} ms" for c in chunks
        )
    ]
    return summary


# -- the scenarios -------------------------------------------------------------------------


def measure_target(
    wrk: str,
    target: Target,
    delay_ms: float,
    inngest_url: str,
    args: argparse.Namespace,
) -> tuple[list[Result], Memory, Steady | None]:
    """Start the target, log in, then per connection mode: warm up and measure the rounds.

    Then the steady load: `--steady-share` of the floor's keep-alive rate of this run (the
    floor runs first), offered for `--steady-seconds`.
    """
    steady: Steady | None = None
    with tempfile.TemporaryDirectory(prefix="inngest-gateway-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        database_url = f"sqlite:///{workdir / 'gateway.db'}"
        env = service_env(workdir, inngest_url, target.delivery_mode, database_url, args, port)
        if target.app == "wsgi:app":
            create_user(env, workdir)
        results: list[Result] = []
        with gunicorn(target, env, port, workdir) as (url, master):
            cookie = login(target, url)
            start_rss: dict[int, float] = {}
            for mode in MODES:
                if args.warmup > 0:
                    run_wrk(wrk, url + target.path, mode, args.warmup, cookie, args)
                # At the start of the measured load: after the first warm-up, which fills
                # the caches and pools a worker keeps.
                start_rss = start_rss or worker_rss(master.pid)
                rounds = []
                for index in range(args.rounds):
                    name = f"{target.name}-{mode}-{delay_ms:g}ms"
                    with profiled(args, name, list(worker_rss(master.pid)), args.duration):
                        cpu_before = workers_cpu(master.pid)
                        summary = run_wrk(wrk, url + target.path, mode, args.duration, cookie, args)
                        summary["cpu_s"] = workers_cpu(master.pid) - cpu_before
                        rounds.append(summary)
                    if index == 0 and args.profile:
                        print(profile_report(args.profile, name), flush=True)
                delay = delay_ms if target.calls_inngest else None
                results.append(summarise(target, mode, delay, rounds))
            if target is FLOOR and args.steady_rate is None:
                args.steady_rate = args.steady_share * results[0].requests_per_second
            if args.steady_seconds > 0 and args.steady_rate:
                offered = float(args.steady_rate)
                paced = run_paced(url + target.path, offered, args.steady_seconds, cookie, args)
                steady = Steady(
                    target=target,
                    delay_ms=delay_ms if target.calls_inngest else None,
                    offered=offered,
                    achieved=float(paced["served"]),
                    p50_ms=float(paced["p50_ms"]),
                    p99_ms=float(paced["p99_ms"]),
                    p999_ms=float(paced["p999_ms"]),
                    requests=int(paced["requests"]),
                    errors=int(paced["errors"]),
                    unsent=int(paced["unsent"]),
                )
            if target.delivery_mode == "outbox" and target.app == "wsgi:app":
                began = time.monotonic()
                while outbox_pending(url) and time.monotonic() - began < args.drain_timeout:
                    time.sleep(0.1)
                left = outbox_pending(url)
                if left:
                    results[-1].notes.append(f"{left} events not drained after the load")
            end_rss = worker_rss(master.pid)
        label = f"{target.name}" + (f", Inngest {delay_ms:g} ms" if target.calls_inngest else "")
        return results, Memory(label, start_rss, end_rss), steady


def soak(wrk: str, args: argparse.Namespace) -> Memory:
    """The service in outbox mode under `--soak` seconds of keep-alive posts: RSS at both ends.

    The start is taken after a minute of warm-up posts, in which a worker fills what it keeps
    up to a bound (SQLite's page cache of each pooled connection, up to 2 MiB each; the
    statement caches); the RSS of each worker is also printed every minute, to show a trend.
    """
    with tempfile.TemporaryDirectory(prefix="inngest-gateway-bench-") as tmp:
        workdir = Path(tmp)
        with standin(0.0, workdir) as inngest_url:
            port = free_port()
            database_url = f"sqlite:///{workdir / 'gateway.db'}"
            env = service_env(workdir, inngest_url, "outbox", database_url, args, port)
            create_user(env, workdir)
            with gunicorn(OUTBOX, env, port, workdir) as (url, master):
                cookie = login(OUTBOX, url)
                warmup = max(args.warmup, 60.0)
                run_wrk(wrk, url + OUTBOX.path, "keep-alive", warmup, cookie, args)
                start = worker_rss(master.pid)
                first = ", ".join(f"{rss:.0f}" for _, rss in sorted(start.items()))
                print(f"  soak: RSS after {warmup:g}s of warm-up {first} MiB", flush=True)
                left, served = args.soak, 0
                while left > 0:
                    chunk = min(60.0, left)
                    done = run_wrk(wrk, url + OUTBOX.path, "keep-alive", chunk, cookie, args)
                    served += int(done["requests"])
                    left -= chunk
                    now = ", ".join(
                        f"{rss:.0f}" for _, rss in sorted(worker_rss(master.pid).items())
                    )
                    print(
                        f"  soak: {args.soak - left:g}s, {served} posts, RSS {now} MiB", flush=True
                    )
                end = worker_rss(master.pid)
        return Memory(f"outbox, {args.soak:g}s soak ({served} posts)", start, end)


# -- the report ------------------------------------------------------------------------------


def render(rows: list[tuple[str, ...]], left: int = 1) -> str:
    """Aligned columns; the first row is the header, the first `left` columns go left."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Report:
    def __init__(
        self,
        results: list[Result],
        memory: list[Memory],
        deliveries: list[Delivery],
        args: argparse.Namespace,
        steadies: list[Steady] | None = None,
    ) -> None:
        self.results, self.memory, self.deliveries, self.args = results, memory, deliveries, args
        self.steadies = steadies or []

    def steady(self, name: str, delay: float | None) -> Steady | None:
        return next(
            (s for s in self.steadies if s.target.name == name and s.delay_ms == delay), None
        )

    def steady_table(self) -> str:
        rows: list[tuple[str, ...]] = [
            ("scenario", "Inngest", "offered req/s", "served req/s", "p50 ms", "p99 ms")
            + ("p99.9 ms", "requests", "not sent", "errors")
        ]
        for st in self.steadies:
            rows.append(
                (
                    st.target.name,
                    "-" if st.delay_ms is None else f"{st.delay_ms:g} ms",
                    f"{st.offered:.0f}",
                    f"{st.achieved:.0f}",
                    f"{st.p50_ms:.1f}",
                    f"{st.p99_ms:.1f}",
                    f"{st.p999_ms:.1f}",
                    str(st.requests),
                    str(st.unsent),
                    str(st.errors),
                )
            )
        return render(rows, left=2)

    def find(self, name: str, mode: str, delay: float | None) -> Result | None:
        return next(
            (
                r
                for r in self.results
                if r.target.name == name and r.mode == mode and r.delay_ms == delay
            ),
            None,
        )

    def ratio(self, name: str, mode: str, delay: float | None, base: str) -> float | None:
        result = self.find(name, mode, delay)
        other = self.find(base, mode, None if base == "floor" else delay)
        if result is None or other is None or other.requests_per_second <= 0:
            return None
        return result.requests_per_second / other.requests_per_second

    def scenarios(self) -> str:
        header = ("scenario", "connections", "Inngest", "req/s", "p50 ms", "p99 ms")
        header += ("CPU ms/req", "requests", "errors", "x floor", "x sdk")
        rows: list[tuple[str, ...]] = [header]
        for r in self.results:
            to_floor = self.ratio(r.target.name, r.mode, r.delay_ms, "floor")
            to_sdk = (
                self.ratio(r.target.name, r.mode, r.delay_ms, "sdk")
                if r.target.name == "sync"
                else None
            )
            rows.append(
                (
                    r.target.name,
                    r.mode,
                    "-" if r.delay_ms is None else f"{r.delay_ms:g} ms",
                    f"{r.requests_per_second:.0f}",
                    f"{r.p50_ms:.1f}",
                    f"{r.p99_ms:.1f}",
                    f"{r.cpu_ms_per_request:.2f}",
                    str(r.requests),
                    str(r.errors),
                    "-" if to_floor is None else f"{to_floor:.2f}",
                    "-" if to_sdk is None else f"{to_sdk:.2f}",
                )
            )
        return render(rows, left=3)

    def goals(self) -> str:
        """The goals of the per-request cost work, each beside its figure of this run."""
        slow = self.args.delay_ms
        rows: list[tuple[str, ...]] = [("goal", "figure", "result")]

        def add(goal: str, value: float | None, text: str, met: bool | None) -> None:
            verdict = "no figure" if value is None or met is None else "met" if met else "NOT MET"
            rows.append((goal, text if value is not None else "-", verdict))

        def fig(value: float | None, spec: str = ".2f") -> str:
            return "-" if value is None else format(value, spec)

        for mode in MODES:
            for delay, times in ((slow, 13.0), (0.0, 1.0)):
                value = self.ratio("sync", mode, delay, "sdk")
                add(
                    f"sync >= {times:g} x sdk, Inngest {delay:g} ms, {mode}",
                    value,
                    fig(value),
                    None if value is None else value >= times,
                )
        for mode in MODES:
            for delay in (0.0, slow):
                value = self.ratio("outbox", mode, delay, "floor")
                add(
                    f"outbox >= 0.50 x floor, Inngest {delay:g} ms, {mode}",
                    value,
                    fig(value),
                    None if value is None else value >= 0.5,
                )
        floor = self.steady("floor", None)
        for delay in (0.0, slow):
            for name, allowed in (("outbox", 0.0), ("sync", delay)):
                st = self.steady(name, delay)
                bound = None if floor is None else allowed + 2 * floor.p99_ms
                extra = f"{delay:g} ms + " if allowed else ""
                add(
                    f"steady load: {name} p99 <= {extra}2 x floor p99, Inngest {delay:g} ms",
                    None if st is None or bound is None else st.p99_ms,
                    "-" if st is None or bound is None else f"{st.p99_ms:.1f} / {bound:.1f} ms",
                    None if st is None or bound is None else st.p99_ms <= bound,
                )
        for d in self.deliveries:
            unloaded = d.posts_after
            add(
                f"drain >= 5000 events/s to a {slow:g} ms Inngest, {d.database}"
                f" ({d.preloaded} events)",
                d.rate,
                f"{fig(d.rate, '.0f')} events/s",
                None if d.rate is None else d.rate >= 5000,
            )
            if d.posts is None:
                continue
            if unloaded is not None and unloaded.requests_per_second > 0:
                share = d.posts.requests_per_second / unloaded.requests_per_second
                add(
                    f"posts during the drain >= 0.50 x after it, {d.database}",
                    share,
                    f"{d.posts.requests_per_second:.0f} / "
                    f"{unloaded.requests_per_second:.0f} req/s = {share:.2f}",
                    share >= 0.5,
                )
            add(
                f"posts during the drain: p99 < 200 ms, {d.database}",
                d.posts.p99_ms,
                f"{d.posts.p99_ms:.1f} ms",
                d.posts.p99_ms < 200,
            )
        for m in self.memory:
            growth = m.growth
            add(
                f"no RSS growth per worker (<= 5 MiB), {m.label}",
                growth,
                "worker replaced" if growth == float("inf") else f"+{growth:.1f} MiB",
                growth <= 5.0,
            )
        errors = sum(r.errors for r in self.results)
        errors += sum(d.posts.errors for d in self.deliveries if d.posts is not None)
        errors += sum(d.posts_after.errors for d in self.deliveries if d.posts_after is not None)
        errors += sum(st.errors for st in self.steadies)
        add("every answer 2xx, no socket errors", float(errors), str(errors), errors == 0)
        return render(rows)

    def text(self) -> str:
        args = self.args
        lines = [
            f"gunicorn: {args.workers} workers for every target; the service gthread,"
            f" {args.threads or 'gunicorn.conf.py default'} threads per worker, floor and sdk"
            " gunicorn's default sync"
            f" workers (bench/floor.conf.py, no keep-alive); wrk: {args.connections} connections,"
            f" {args.wrk_threads} threads,"
            f" {args.duration:g}s x {args.rounds} round(s) (median) after {args.warmup:g}s"
            f" warm-up; {os.cpu_count()} CPUs",
            "service: production log level (INFO, JSON access log), metrics, rate limits"
            " (raised), a logged-in user, SQLite; x floor: over the floor of the same run and"
            " connection mode",
        ]
        if args.set:
            overridden = ", ".join(f"{name}={value}" for name, value in args.set)
            lines.append(f"NOT the production defaults: --set {overridden}")
        lines += [
            "",
            self.scenarios() if self.results else "(no load scenario run)",
            "",
        ]
        if self.steadies:
            lines += [
                f"steady load: a fixed offered rate ({args.steady_share:g} x the floor's"
                f" keep-alive req/s unless --steady-rate), evenly spaced by bench/paced.py over"
                f" up to {args.steady_connections} keep-alive connections, latency from each"
                f" request's due time, {args.steady_seconds:g}s per target:",
                self.steady_table(),
                "",
            ]
        for r in self.results:
            lines += [f"note for {r.label}: {note}" for note in r.notes]
            if r.errors:
                statuses = ", ".join(
                    f"{s}: {c}" for s, c in sorted(r.statuses.items()) if not 200 <= s < 300
                )
                sockets = ", ".join(f"{k}: {c}" for k, c in r.socket_errors.items())
                lines.append(
                    f"errors in {r.label}: non-2xx {r.non_2xx} ({statuses or 'none'});"
                    f" socket errors ({sockets or 'none'})"
                )
        lines.append("")
        lines.append("RSS per worker, start -> end of the load:")
        lines += [f"  {m.label}: {m.text()}" for m in self.memory]
        for d in self.deliveries:
            took = "not drained" if d.seconds is None else f"{d.seconds:.2f} s"
            posts = (
                "no posts measured"
                if d.posts is None
                else f"posts meanwhile {d.posts.requests_per_second:.0f} req/s,"
                f" p99 {d.posts.p99_ms:.1f} ms, {d.posts.errors} errors"
            )
            lines.append(
                f"delivery, {d.database}: {d.preloaded} preloaded, {d.pending_at_ready} pending"
                f" when the service answered, drained in {took}; {posts}"
                + (
                    ""
                    if d.posts_after is None
                    else f"; after it {d.posts_after.requests_per_second:.0f} req/s,"
                    f" p99 {d.posts_after.p99_ms:.1f} ms"
                )
            )
            lines += [f"  note: {note}" for note in d.notes + (d.posts.notes if d.posts else [])]
            if d.posts is not None and d.posts.errors:
                statuses = ", ".join(
                    f"{s}: {c}" for s, c in sorted(d.posts.statuses.items()) if not 200 <= s < 300
                )
                lines.append(f"  errors in the posts: {statuses or 'socket errors only'}")
        lines += ["", self.goals()]
        return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds of load per round")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of warm-up load")
    parser.add_argument(
        "--rounds", type=int, default=3, help="measured rounds per scenario; the median is shown"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--timeout", type=float, default=5, help="wrk request timeout, seconds")
    parser.add_argument("--workers", type=int, default=2, help="GUNICORN_WORKERS")
    parser.add_argument(
        "--threads",
        type=int,
        help="GUNICORN_THREADS (unset: gunicorn.conf.py's default for the delivery mode)",
    )
    parser.add_argument(
        "--steady-seconds",
        type=float,
        default=20,
        help="seconds of the steady load per target and delay (0: none)",
    )
    parser.add_argument(
        "--steady-share",
        type=float,
        default=0.4,
        help="the steady load's offered rate, as a share of the floor's keep-alive req/s",
    )
    parser.add_argument(
        "--steady-rate", type=float, help="the steady load's offered rate in req/s (else a share)"
    )
    parser.add_argument(
        "--steady-connections",
        type=int,
        default=128,
        help="the steady load's most keep-alive connections open at once (bench/paced.py)",
    )
    parser.add_argument(
        "--delay-ms", type=float, default=50, help="the slow stand-in's delay per request"
    )
    parser.add_argument(
        "--delivery-events", type=int, default=100_000, help="events preloaded into the outbox"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=300, help="seconds to wait for an outbox to drain"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=("floor", "sdk", "outbox", "sync", "delivery", "soak"),
        help="run only these (the ratios need floor and sdk)",
    )
    parser.add_argument(
        "--soak",
        type=float,
        default=600,
        help="seconds of outbox posts at the end, RSS per worker at both ends (0: none)",
    )
    parser.add_argument("--verbose", action="store_true", help="print wrk's own output")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every target (e.g. LOG_LEVEL=WARNING, to see what it costs); "
        "the figures are then not the production defaults'",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample each worker with py-spy during the first round of each scenario; "
        "collapsed stacks go to DIR, a summary is printed",
    )
    args = parser.parse_args(argv)
    if args.connections < args.wrk_threads:
        parser.error("--connections must be at least --wrk-threads")
    if any("=" not in item for item in args.set):
        parser.error("--set takes NAME=VALUE")
    args.set = [tuple(item.split("=", 1)) for item in args.set]
    if args.rounds < 1 or args.delivery_events < 1:
        parser.error("--rounds and --delivery-events must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("python", "gunicorn", "flask"):
        if not (BIN / tool).exists():
            sys.exit(f"bench: {BIN / tool} is missing; run `make bench` to create the venv")
    wrk = ensure_wrk()
    if (ROOT / ".env").exists():
        print("note: .env exists; settings it has that the bench does not set apply too")
    wanted = set(args.only or ("floor", "sdk", "outbox", "sync", "delivery", "soak"))
    results: list[Result] = []
    memory: list[Memory] = []
    deliveries: list[Delivery] = []
    steadies: list[Steady] = []
    try:
        for delay in (0.0, args.delay_ms):
            with tempfile.TemporaryDirectory(prefix="inngest-gateway-bench-") as tmp:
                with standin(delay, Path(tmp)) as inngest_url:
                    for target in TARGETS:
                        if target.name not in wanted or (delay and not target.calls_inngest):
                            continue
                        print(f"running {target.name} (Inngest {delay:g} ms) ...", flush=True)
                        found, rss, steady = measure_target(wrk, target, delay, inngest_url, args)
                        for r in found:
                            print(
                                f"  {r.mode}: {r.requests_per_second:.0f} req/s,"
                                f" p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms,"
                                f" {r.cpu_ms_per_request:.2f} CPU ms/req, {r.errors} error(s)",
                                flush=True,
                            )
                        if steady is not None:
                            print(
                                f"  steady: {steady.offered:.0f} req/s offered,"
                                f" {steady.achieved:.0f} served, p50 {steady.p50_ms:.1f} ms,"
                                f" p99 {steady.p99_ms:.1f} ms, p99.9 {steady.p999_ms:.1f} ms,"
                                f" {steady.errors} error(s)",
                                flush=True,
                            )
                            steadies.append(steady)
                        results += found
                        memory.append(rss)
        if "delivery" in wanted:
            databases = [("sqlite", "")]
            if os.environ.get("TEST_DATABASE_URL"):
                databases.append(("postgresql", os.environ["TEST_DATABASE_URL"]))
            else:
                print("note: TEST_DATABASE_URL is not set; delivery runs on SQLite only")
            for name, url in databases:
                print(f"running delivery ({name}, {args.delivery_events} events) ...", flush=True)
                deliveries.append(delivery(wrk, name, url, args))
        if "soak" in wanted and args.soak > 0:
            print(f"running soak (outbox, {args.soak:g}s) ...", flush=True)
            memory.append(soak(wrk, args))
    except BenchError as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    print()
    print(Report(results, memory, deliveries, args, steadies).text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
