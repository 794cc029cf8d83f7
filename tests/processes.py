"""Real processes for the tests: gunicorn serving the service, in its own process group.

Every wait is bounded and `Server.kill` always ends the whole group, so a hung server
fails a test instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import requests

from tests.conftest import SECRET_KEY
from tests.standin import InngestStandIn

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SETTING_PREFIXES = ("INNGEST_", "GUNICORN_", "API_", "OUTBOX_", "FLASK_")
SETTINGS = (
    "SECRET_KEY",
    "DATABASE_URL",
    "INNGEST_GATEWAY_DELIVERY_MODE",
    "INNGEST_GATEWAY_TRUSTED_ORIGINS",
    "LOG_LEVEL",
    "CREATE_DEMO_USER",
)


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any of the service's or gunicorn's settings.

    HOME is private so gunicorn's control socket (~/.gunicorn/gunicorn.ctl) is not shared
    between servers.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SETTING_PREFIXES) and k not in SETTINGS
    }
    env["HOME"] = str(home)
    return env


def run_flask(
    app: str, directory: Path, env: Mapping[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`flask --app <app> <args>` as an operator runs it: the settings in `env` only."""
    return subprocess.run(
        [str(BIN / "flask"), "--app", app, *args],
        cwd=ROOT,
        env=clean_env(directory) | dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def gunicorn_refusal(tmp_path: Path, settings: Mapping[str, str]) -> tuple[str, str]:
    """Start gunicorn with `settings` from an empty directory, expecting its master to refuse:
    the one configuration-error line it printed, and all it printed. No worker may boot."""
    env = clean_env(tmp_path) | dict(settings) | {"PYTHONPATH": str(ROOT)}
    env["GUNICORN_BIND"] = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        [str(BIN / "gunicorn"), "wsgi:app", "-c", str(ROOT / "gunicorn.conf.py")],
        cwd=tmp_path,  # no developer's .env fills a gap
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Booting worker" not in output, output  # refused in the master
    (line,) = [line for line in output.splitlines() if "configuration error" in line]
    return line, output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A gunicorn master, its log, and its URL."""

    process: subprocess.Popen[bytes]
    log_file: IO[bytes]
    log_path: Path
    url: str

    def output(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """Stop the whole process group, whatever state it is in."""
        try:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if self.group_alive():
                os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            try:
                self.process.wait(timeout=5)
            finally:
                self.log_file.close()


def launch(command: Sequence[str], env: Mapping[str, str], log_path: Path, port: int) -> Server:
    """Start a server process on a loopback port, its output in `log_path`; wait until healthy."""
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        list(command),
        cwd=ROOT,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(process, log_file, log_path, f"http://127.0.0.1:{port}")
    try:
        wait_until_healthy(server)
    except BaseException:
        server.kill()
        raise
    return server


def start_gunicorn(
    directory: Path,
    standin: InngestStandIn,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """gunicorn with 2 workers on a loopback port, settings pointing at the stand-in.

    Sync delivery unless `env` says otherwise; `env` overrides any setting.
    """
    port = port or free_port()
    settings = (
        clean_env(directory)
        | {
            "SECRET_KEY": SECRET_KEY,
            "INNGEST_EVENT_KEY": standin.default_key,
            "INNGEST_BASE_URL": standin.url,
            "INNGEST_GATEWAY_SEND_TIMEOUT": "5",
            "DATABASE_URL": f"sqlite:///{directory / 'gateway.db'}",
            "CREATE_DEMO_USER": "false",
            # The synchronous path: the answer waits for Inngest (unknown settings are ignored).
            "INNGEST_GATEWAY_DELIVERY_MODE": "sync",
            "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "false",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": "2",
            "GUNICORN_GRACEFUL_TIMEOUT": "10",
        }
        | (env or {})
    )
    command = [str(BIN / "gunicorn"), "wsgi:app", "-c", "gunicorn.conf.py"]
    return launch(command, settings, directory / "gunicorn.log", port)


def wait_until_healthy(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(f"gunicorn exited with {server.process.returncode}:\n{server.output()}")
            try:
                with session.get(f"{server.url}/healthz", timeout=2) as response:
                    if response.status_code == 200 and response.json() == {"status": "ok"}:
                        return
            except requests.RequestException:
                pass  # not listening yet, or listening while the workers still boot
            time.sleep(0.1)
    pytest.fail(f"gunicorn did not answer /healthz within {timeout}s:\n{server.output()}")


NGINX = "/usr/sbin/nginx"
SITE = ROOT / "deploy" / "nginx.conf"


@dataclass
class Nginx:
    """A real nginx serving deploy/nginx.conf on loopback ports."""

    process: subprocess.Popen[bytes]
    directory: Path
    url: str
    https_url: str
    certificate: Path
    stderr: IO[bytes]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.stderr.close()

    def log(self) -> str:
        parts = [(self.directory / name) for name in ("error.log", "access.log")]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())


def render_site(upstream_port: int, port: int, tls_port: int, directory: Path) -> str:
    """deploy/nginx.conf as it is, but for loopback ports, plus the same server over TLS."""
    site = SITE.read_text()
    assert "listen 80;" in site and "server 127.0.0.1:8000;" in site
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
    server = site[site.index("server {") :]
    plain = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    tls = server.replace(
        "listen 80;",
        f"listen 127.0.0.1:{tls_port} ssl;\n"
        f"    ssl_certificate {directory / 'cert.pem'};\n"
        f"    ssl_certificate_key {directory / 'key.pem'};",
    )
    return plain + "\n" + tls


def start_nginx(
    directory: Path,
    upstream_port: int,
    render: Callable[[int, int, Path], str] | None = None,
) -> Nginx:
    """nginx in the foreground, in its own process group, with its files under `directory`.

    `render(port, tls_port, directory)` gives another site than deploy/nginx.conf.
    """
    if not Path(NGINX).exists():
        pytest.fail(f"{NGINX} is missing: `make test` installs it (apt-get install nginx)")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(directory / "key.pem"),
            "-out",
            str(directory / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port, tls_port = free_port(), free_port()
    site = (
        render(port, tls_port, directory)
        if render is not None
        else render_site(upstream_port, port, tls_port, directory)
    )
    (directory / "site.conf").write_text(site)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / sub).mkdir(exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    (directory / "nginx.conf").write_text(
        f"""{user}
worker_processes 1;
daemon off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log {directory / "access.log"};
    client_body_temp_path {directory / "body"};
    proxy_temp_path {directory / "proxy"};
    fastcgi_temp_path {directory / "fastcgi"};
    uwsgi_temp_path {directory / "uwsgi"};
    scgi_temp_path {directory / "scgi"};
    include {directory / "site.conf"};
}}
"""
    )
    check = subprocess.run(
        [NGINX, "-t", "-c", str(directory / "nginx.conf"), "-p", str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    stderr = (directory / "stderr.log").open("wb")
    process = subprocess.Popen(
        [NGINX, "-c", str(directory / "nginx.conf"), "-p", str(directory)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )
    server = Nginx(
        process,
        directory,
        f"http://127.0.0.1:{port}",
        f"https://127.0.0.1:{tls_port}",
        directory / "cert.pem",
        stderr,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"nginx did not start:\n{server.log()}")
            time.sleep(0.05)
