"""Several gateway hosts on one machine, a real network between them, faults on its links.

`Cluster` builds, for one run:

- a network namespace per host (`tests.netns`), joined to the root namespace by a veth link;
- in each host, the standalone service under gunicorn (2 workers, outbox mode, the
  production settings but for the timings a test can wait for), listening on the host's
  own address;
- on the root side of each link, one `LinkProxy` to PostgreSQL and one to the stand-in
  Inngest: the host reaches either only through them, so a test can delay, drop or freeze
  one host's link to one of them;
- nginx on 127.0.0.1, balancing over the hosts (deploy/nginx.conf with three upstream
  servers), answering each request's upstream in `X-Upstream`;
- the stand-in Inngest on 127.0.0.1.

With PostgreSQL every host shares one database, made for the run and dropped after it;
with SQLite (`shared_nothing=True`) each host has its own file under the run's directory.
`Load` posts through nginx at a fixed rate, logged in, and records every answer.

Everything the run made (namespaces, links, processes, the database) is removed when the
`Cluster` context ends, a failed run included; `tests.netns.leftovers()` tells what any run
left behind. Needs root and nginx.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import requests

from tests.conftest import PASSWORD, SECRET_KEY
from tests.netns import Host, Network
from tests.processes import BIN, ROOT, SITE, Nginx, clean_env, free_port, start_nginx
from tests.proxy import LinkProxy
from tests.standin import InngestStandIn

EMAIL = "load@example.com"
# Every address here is loopback or the run's own links: no proxy of the environment's.
HTTP = requests.Session()
HTTP.trust_env = False
PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"  # makes and drops the run's database
HOST_PORT = 8000

# Production settings, but for timings a test can wait for: a lease of seconds, not a minute.
HOST_SETTINGS = {
    "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
    # The limiter runs as in production, but all load comes from one address.
    "INNGEST_GATEWAY_RATELIMIT_API": "10000000 per minute",
    "TRUSTED_PROXIES": "1",
    "CREATE_DEMO_USER": "false",
    "GUNICORN_WORKERS": "2",
    "GUNICORN_GRACEFUL_TIMEOUT": "10",
    "INNGEST_GATEWAY_SEND_TIMEOUT": "3",
    "INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS": "6",
    "INNGEST_GATEWAY_OUTBOX_DRAIN_SECONDS": "3",
}


@dataclass
class SocatLink:
    """A link served by socat (see `Cluster(fast_links=True)`): it forwards, nothing else."""

    listen_host: str
    port: int

    @property
    def url_netloc(self) -> str:
        return f"{self.listen_host}:{self.port}"


@dataclass
class GatewayHost:
    """One host: its namespace, its two links, its gunicorn master (None while down)."""

    host: Host
    directory: Path
    postgres: LinkProxy | SocatLink
    inngest: LinkProxy | SocatLink
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def upstream(self) -> str:
        return f"{self.host.address}:{HOST_PORT}"

    @property
    def url(self) -> str:
        return f"http://{self.upstream}"

    @property
    def log_path(self) -> Path:
        return self.directory / "gunicorn.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pids(self) -> list[int]:
        """The host's gunicorn master and workers now."""
        from tests.netns import pids_in

        return pids_in(self.host.namespace)

    def start(self) -> None:
        """gunicorn in the host's namespace; returns once it answers /healthz."""
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.host.command(str(BIN / "gunicorn"), "wsgi:app", "-c", "gunicorn.conf.py"),
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 40
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log()[-4000:]}")
            with contextlib.suppress(requests.RequestException):
                if HTTP.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer /healthz:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def kill(self) -> int:
        """SIGKILL every process of the host, no goodbye; how many there were."""
        killed = self.host.kill_all()
        if self.process is not None:
            self.process.wait(timeout=10)
        return killed

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops a host; SIGKILL what is left after 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


class Cluster:
    """`hosts` gateway hosts behind nginx, one stand-in Inngest, PostgreSQL or SQLite."""

    def __init__(
        self,
        directory: Path,
        *,
        hosts: int = 3,
        shared_nothing: bool = False,
        fast_links: bool = False,
        settings: dict[str, str] | None = None,
        inngest_delay: float = 0.0,
        admin_url: str = ADMIN_URL,
        postgres_via: str | None = None,
    ) -> None:
        # The hosts' links lead to this server (PgBouncer, say) instead of admin_url's.
        self.postgres_via = postgres_via
        self.directory = directory
        self.admin_url = admin_url
        self.shared_nothing = shared_nothing
        # socat on each link instead of LinkProxy: C speed, no faults (figures of scale).
        self.fast_links = fast_links
        self.links: list[subprocess.Popen[bytes]] = []
        self.settings = HOST_SETTINGS | (settings or {})
        self.size = hosts
        self.inngest_delay = inngest_delay
        self.network = Network()
        self.inngest = InngestStandIn()
        self.hosts: list[GatewayHost] = []
        self.proxies: list[LinkProxy] = []
        self.database = f"igw_{self.network.run}"
        self.nginx: Nginx | None = None
        self.url = ""
        self._created_database = False

    # -- building and tearing down -----------------------------------------------------
    def __enter__(self) -> Cluster:
        try:
            self._build()
        except BaseException:
            with contextlib.suppress(Exception):  # the build's own error is the one to see
                self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def database_url(self, netloc: str = "") -> str:
        """The run's PostgreSQL database, at `netloc` (a proxy) or directly."""
        parts = urlsplit(self.admin_url)
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        netloc = netloc or parts.netloc.rsplit("@", 1)[-1]
        return parts._replace(netloc=user + netloc, path=f"/{self.database}").geturl()

    def _build(self) -> None:
        self.inngest.start()
        self.inngest.delay = self.inngest_delay
        server = urlsplit(self.postgres_via or self.admin_url)
        postgres_host, postgres_port = server.hostname or "127.0.0.1", server.port or 5432
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        self._created_database = True
        for number in range(1, self.size + 1):
            host = self.network.add(f"h{number}")
            directory = self.directory / host.name
            directory.mkdir(parents=True, exist_ok=True)
            inngest_port = int(urlsplit(self.inngest.url).port or 0)
            postgres: LinkProxy | SocatLink
            inngest: LinkProxy | SocatLink
            if self.fast_links:
                postgres = self._socat(host.gateway, postgres_host, postgres_port)
                inngest = self._socat(host.gateway, "127.0.0.1", inngest_port)
            else:
                postgres = LinkProxy(
                    postgres_port, postgres_host, listen_host=host.gateway, seed=number
                ).start()
                inngest = LinkProxy(inngest_port, listen_host=host.gateway, seed=number).start()
                self.proxies += [postgres, inngest]
            # One users table for every host, in PostgreSQL; the outbox there too, or
            # (shared nothing) in a SQLite file on the host's own disk.
            own_outbox = (
                {"INNGEST_GATEWAY_OUTBOX_DATABASE_URL": f"sqlite:///{self.outbox_file(directory)}"}
                if self.shared_nothing
                else {}
            )
            gateway = GatewayHost(host, directory, postgres, inngest)
            gateway.env = (
                {k: v for k, v in clean_env(directory).items() if k.lower() not in PROXY_VARIABLES}
                | {
                    "SECRET_KEY": SECRET_KEY,
                    "INNGEST_EVENT_KEY": self.inngest.default_key,
                    "INNGEST_BASE_URL": f"http://{inngest.url_netloc}",
                    # Its name in pg_stat_activity: connections counted per host.
                    "DATABASE_URL": self.database_url(postgres.url_netloc)
                    + f"?application_name={host.name}",
                    "GUNICORN_BIND": f"{host.address}:{HOST_PORT}",
                }
                | own_outbox
                | self.settings
            )
            self.hosts.append(gateway)
        self._create_user(self.hosts[0].env | {"DATABASE_URL": self.database_url()})
        with ThreadPoolExecutor(len(self.hosts)) as pool:  # the hosts boot side by side
            list(pool.map(GatewayHost.start, self.hosts))
        self._start_nginx()

    def _socat(self, listen: str, host: str, port: int) -> SocatLink:
        link = SocatLink(listen, free_port())
        onward = f"TCP:{host}:{port},nodelay"  # as LinkProxy: no Nagle wait
        tag = f"socat-{self.network.namespace_prefix}link"  # for leftovers()
        command = (
            f"exec -a {tag} socat TCP-LISTEN:{link.port},bind={listen},reuseaddr,fork,"
            f"nodelay,backlog=512 {onward}"
        )
        self.links.append(
            subprocess.Popen(
                ["bash", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        return link

    def _create_user(self, env: dict[str, str]) -> None:
        command = [str(BIN / "flask"), "--app", "wsgi", "users", "create", EMAIL]
        command += ["--name", "Load", "--password", PASSWORD]
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def _start_nginx(self) -> None:
        directory = self.directory / f"nginx-{self.network.namespace_prefix}"  # leftovers()
        directory.mkdir(exist_ok=True)
        self.nginx = start_nginx(directory, 0, render=self._site)
        self.url = self.nginx.url

    def _site(self, port: int, _tls_port: int, _directory: Path) -> str:
        """deploy/nginx.conf, balancing over the hosts, on a loopback port."""
        site = SITE.read_text()
        servers = "\n    ".join(
            f"server {gateway.upstream} max_fails=1 fail_timeout=5s;" for gateway in self.hosts
        )
        for old, new in (
            ("server 127.0.0.1:8000;", servers),
            ("listen 80;", f"listen 127.0.0.1:{port};"),
            # Several hosts: a request nginx could not hand to one host goes to the next;
            # a POST that reached a host is never sent again (nginx's rule for POST).
            ("proxy_next_upstream off;", "proxy_next_upstream error timeout;"),
            ("location / {", "location / {\n        add_header X-Upstream $upstream_addr always;"),
        ):
            assert old in site, old
            site = site.replace(old, new, 1)
        return site

    def close(self) -> None:
        """Remove everything the run made, whatever state it is in: every step is tried,
        and the first that failed is raised at the end."""
        errors: list[BaseException] = []

        def step(action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the other steps still run
                errors.append(exc)

        if self.nginx is not None:
            step(self.nginx.kill)  # its process group: the workers too
        for link in self.links:  # socat and its children
            step(lambda link=link: _kill_group(link))
        step(self.network.remove)  # every process in the hosts' namespaces goes with them
        for gateway in self.hosts:
            if gateway.process is not None:
                step(lambda gateway=gateway: gateway.process and gateway.process.wait(10))
        for proxy in self.proxies:
            step(proxy.close)
        step(self.inngest.stop)
        if self._created_database:
            step(self._drop_database)
        if errors:
            raise errors[0]

    def _drop_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        self._created_database = False

    # -- looking ---------------------------------------------------------------------
    def login(self) -> str:
        """A session cookie for the load's user, through nginx."""
        deadline = time.monotonic() + 30
        while True:
            response = HTTP.post(
                f"{self.url}/auth/login", json={"email": EMAIL, "password": PASSWORD}, timeout=10
            )
            if response.status_code == 200 and response.cookies:
                return "; ".join(f"{k}={v}" for k, v in response.cookies.items())
            if time.monotonic() > deadline:
                raise RuntimeError(f"login answered {response.status_code}: {response.text}")
            time.sleep(0.2)

    @staticmethod
    def outbox_file(directory: Path) -> Path:
        return directory / "outbox.db"

    def pending(self, gateway: GatewayHost | None = None) -> int:
        """Events stored and not yet delivered: in the shared database, or (shared nothing)
        in every host's file or `gateway`'s."""
        query = "SELECT count(*) FROM outbox_events WHERE state = 'pending'"
        if not self.shared_nothing:
            with psycopg.connect(self.database_url()) as connection:
                row = connection.execute(query).fetchone()
            return int(row[0]) if row else 0
        total = 0
        for one in [gateway] if gateway else self.hosts:
            path = self.outbox_file(one.directory)
            if path.exists():
                with contextlib.closing(sqlite3.connect(path, timeout=10)) as connection:
                    with contextlib.suppress(sqlite3.OperationalError):  # no table yet
                        total += connection.execute(query).fetchone()[0]
        return total

    def revive(self) -> None:
        """Every link healthy, every host running, Inngest answering at once: a scenario's start."""
        self.inngest.reset()
        for proxy in self.proxies:
            proxy.thaw()
            proxy.delay, proxy.drop_ratio = 0.0, 0.0
        for gateway in self.hosts:
            if gateway.process is None or gateway.process.poll() is not None:
                gateway.start()

    def claimed_by(
        self, gateway: GatewayHost, pids: list[int] | None = None, *, within: float | None = None
    ) -> int:
        """Events under a live lease of one of `gateway`'s processes, or of `pids` (those
        of a host that is gone); only leases taken in the last `within` seconds, if given
        (PostgreSQL only)."""
        names = [f"%:{pid}:%" for pid in (gateway.pids() if pids is None else pids)]
        if not names:
            return 0
        now_ms = int(time.time() * 1000)
        if within is not None:  # a lease runs out LEASE_SECONDS after it was taken
            lease = float(self.settings["INNGEST_GATEWAY_OUTBOX_LEASE_SECONDS"])
            now_ms += int((lease - within) * 1000)
        with psycopg.connect(self.database_url()) as connection:
            row = connection.execute(
                "SELECT count(*) FROM outbox_events WHERE state = 'pending' "
                "AND claim_expires_at > %s AND claimed_by LIKE ANY(%s)",
                (now_ms, names),
            ).fetchone()
        return int(row[0]) if row else 0


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started in a session of its own, and its group; reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


# -- the load --------------------------------------------------------------------------
@dataclass
class Answer:
    cid: str
    status: int  # 0: no answer (the connection broke)
    ids: list[str]
    upstream: str  # nginx's $upstream_addr: "a, b" when a host refused and the next answered
    at: float  # when the answer came
    sent_at: float

    @property
    def host(self) -> str:
        """The host that answered."""
        return self.upstream.rsplit(", ", 1)[-1]


class Load:
    """Posts one event at a time through nginx at `rate` per second, from `clients` threads.

    Each event carries a client id (`id`, and `data.cid`) of its own; every answer is kept.
    Every `anonymous_every`-th post goes without the session cookie: a logged-in post reads
    the login before it stores, an anonymous one only stores.
    """

    def __init__(
        self,
        url: str,
        cookie: str,
        rate: float,
        *,
        label: str = "load",
        clients: int | None = None,
        anonymous_every: int = 4,
    ) -> None:
        self.anonymous_every = anonymous_every
        self.url = urlsplit(url)
        self.label = label
        self.cookie = cookie
        self.rate = rate
        # Enough clients that posts stuck for seconds on one host (a frozen link holds each
        # for up to twice the write timeout) do not hold back the posts to the others.
        self.clients = clients or max(32, min(512, int(rate * 12)))
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = 0
        self._started = 0.0
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        self._started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True)
            for n in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self._threads)

    def run_for(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _turn(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _client(self, number: int) -> None:
        connection: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            turn = self._turn()
            due = self._started + turn / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                break
            cid = f"{self.label}-{turn}"
            body = json.dumps(
                {"name": "app/cluster", "id": cid, "data": {"cid": cid, "turn": turn}}
            )
            if connection is None:
                connection = http.client.HTTPConnection(
                    self.url.hostname or "127.0.0.1", self.url.port, timeout=30
                )
            sent_at = time.monotonic()
            try:
                headers = {"Content-Type": "application/json"}
                if turn % self.anonymous_every:
                    headers["Cookie"] = self.cookie
                connection.request("POST", "/api", body, headers)
                response = connection.getresponse()
                payload = response.read()
                status = response.status
                upstream = response.getheader("X-Upstream", "")
                ids = json.loads(payload).get("ids", []) if 200 <= status < 300 else []
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException, ValueError):
                status, ids, upstream = 0, [], ""
                if connection is not None:
                    connection.close()
                connection = None
            with self._lock:
                self.answers.append(Answer(cid, status, ids, upstream, time.monotonic(), sent_at))
        if connection is not None:
            connection.close()

    # -- what came back --------------------------------------------------------------
    def acknowledged(self) -> dict[str, str]:
        """Every id answered 2xx, and the client id of its event."""
        with self._lock:
            return {i: a.cid for a in self.answers if 200 <= a.status < 300 for i in a.ids}

    def accepted_per_second(self, since: float, until: float) -> float:
        """Posts answered 2xx between two moments (time.monotonic()), per second."""
        with self._lock:
            done = sum(1 for a in self.answers if 200 <= a.status < 300 and since < a.at <= until)
        return done / (until - since)

    def statuses(self, upstream: str | None = None) -> Counter[int]:
        with self._lock:
            return Counter(
                a.status for a in self.answers if upstream is None or a.upstream == upstream
            )


@dataclass
class Outcome:
    """What reached Inngest of what the load was told was accepted."""

    acknowledged: int
    delivered: int
    missing: list[str]
    pending: int  # still stored, not delivered, when the wait ended
    repeats: int  # deliveries of an id beyond its first
    conflicting: list[str]  # ids that reached Inngest with two different bodies
    wrong_user: list[str]  # ids whose event's user is not the poster's (logged in or not)
    violations: list[str]  # requests the real Inngest would have refused
    # From the end of the fault until every acknowledged id arrived and none was pending.
    seconds_to_empty: float


def settle(cluster: Cluster, load: Load, since: float, timeout: float) -> Outcome:
    """Wait (at most `timeout`) until every acknowledged id reached the stand-in and the
    outbox is empty; what reached it."""
    acknowledged = load.acknowledged()
    deadline = time.monotonic() + timeout
    while True:
        arrived = set(cluster.inngest.accepted_ids())
        missing = sorted(set(acknowledged) - arrived)
        # Arrived is not enough: an event whose answer was lost stays pending, to be sent
        # again once its lease runs out.
        pending = cluster.pending()
        if (not missing and not pending) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    seconds = time.monotonic() - since
    time.sleep(0.5)  # a repeat still in flight lands
    bodies: dict[str, set[str]] = defaultdict(set)
    counts: Counter[str] = Counter()
    wrong_user: set[str] = set()
    for event in cluster.inngest.accepted_events():
        logged_in = event["data"]["turn"] % load.anonymous_every != 0
        if bool(event["data"].get("user")) != logged_in:
            wrong_user.add(event["id"])
        counts[event["id"]] += 1
        bodies[event["id"]].add(json.dumps(event, sort_keys=True))
    return Outcome(
        acknowledged=len(acknowledged),
        delivered=len(counts),
        missing=missing,
        pending=pending,
        repeats=sum(n - 1 for n in counts.values()),
        conflicting=sorted(i for i, b in bodies.items() if len(b) > 1),
        wrong_user=sorted(wrong_user),
        violations=list(cluster.inngest.violations),
        seconds_to_empty=seconds,
    )


@contextlib.contextmanager
def loading(cluster: Cluster, rate: float, label: str) -> Iterator[Load]:
    """A load through the cluster's nginx, stopped on the way out."""
    load = Load(cluster.url, cluster.login(), rate, label=label).start()
    try:
        yield load
    finally:
        load.stop()
