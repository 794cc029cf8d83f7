"""PgBouncer in transaction mode, from Debian's package, on a loopback port of its own."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from tests.processes import free_port


@contextmanager
def pgbouncer(admin_url: str) -> Iterator[str]:
    """PgBouncer in transaction mode on 127.0.0.1 in front of `admin_url`'s server; its
    admin-style URL (same user and database) through it."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError(
            f"{binary} is missing: `make test` installs it (apt-get install pgbouncer)"
        )
    parts = urlsplit(admin_url)
    # Its own directory, readable by the postgres user PgBouncer runs as.
    directory = Path(tempfile.mkdtemp(prefix="inngest-gateway-pgbouncer-"))
    directory.chmod(0o755)
    port = free_port()
    user = parts.username or "postgres"
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={parts.hostname or "127.0.0.1"} port={parts.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "userlist.txt"}
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
logfile = {directory / "pgbouncer.log"}
"""
    )
    for name in ("userlist.txt", "pgbouncer.ini"):
        (directory / name).chmod(0o644)
    (directory / "pgbouncer.log").touch()
    shutil.chown(directory / "pgbouncer.log", "postgres")
    process = subprocess.Popen(
        [binary, "-u", "postgres", str(directory / "pgbouncer.ini")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(
            ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)], check=False, timeout=10
        ).returncode:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((directory / "pgbouncer.log").read_text())
            time.sleep(0.1)
        yield parts._replace(netloc=f"{user}@127.0.0.1:{port}").geturl()
    finally:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
