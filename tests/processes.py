"""Real processes for the tests: gunicorn serving the service, in its own process group.

Every wait is bounded and `Server.kill` always ends the whole group, so a hung server
fails a test instead of hanging the suite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
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
    "DELIVERY_MODE",
    "TRUSTED_ORIGINS",
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
            "INNGEST_SEND_TIMEOUT": "5",
            "DATABASE_URL": f"sqlite:///{directory / 'gateway.db'}",
            "CREATE_DEMO_USER": "false",
            # The synchronous path: the answer waits for Inngest (unknown settings are ignored).
            "DELIVERY_MODE": "sync",
            "OUTBOX_EMBEDDED_DELIVERER": "false",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": "2",
            "GUNICORN_GRACEFUL_TIMEOUT": "10",
        }
        | (env or {})
    )
    log_path = directory / "gunicorn.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [str(BIN / "gunicorn"), "wsgi:app", "-c", "gunicorn.conf.py"],
        cwd=ROOT,
        env=settings,
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
