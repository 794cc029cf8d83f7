"""Gunicorn settings for production; each can be overridden by an environment variable."""

import multiprocessing
import os
import shutil
import sys
import tempfile


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _dotenv(name: str) -> str:
    """A setting the service reads from `.env` too (the environment wins, as in the service)."""
    from service.environment import environment

    return environment().get(name) or ""


bind = _env("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(_env("GUNICORN_WORKERS", str(multiprocessing.cpu_count() * 2 + 1)))
worker_class = "gthread"
# In sync mode each post waits for Inngest (tens of milliseconds away in production): a waiting
# thread costs memory, not CPU, so each worker keeps more of them (see bench/README.md).
SYNC_THREADS = 32
_sync = _env("INNGEST_GATEWAY_DELIVERY_MODE", _dotenv("INNGEST_GATEWAY_DELIVERY_MODE"))
threads = int(_env("GUNICORN_THREADS", str(SYNC_THREADS if _sync.strip() == "sync" else 4)))
# A request may wait INNGEST_GATEWAY_SEND_TIMEOUT (10 s by default) for Inngest.
timeout = int(_env("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(_env("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(_env("GUNICORN_KEEPALIVE", "5"))
loglevel = _env("GUNICORN_LOG_LEVEL", "info")
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None  # the service logs each request
errorlog = "-"
# The service decides which forwarded headers to trust (TRUSTED_PROXIES); gunicorn trusts none:
# no scheme headers, and no forwarder headers either (gunicorn's default takes SCRIPT_NAME and
# PATH_INFO from 127.0.0.1, so any local process could move the app's root, and with it every
# redirect, to `//other.host`). nginx (deploy/nginx.conf) sends none of them.
secure_scheme_headers: dict[str, str] = {}
forwarder_headers = ""
forwarded_allow_ips = ""
# Requests that gunicorn refuses outright, before the app sees them.
limit_request_line = 8190
limit_request_fields = 100


def on_starting(server):  # type: ignore[no-untyped-def]
    """Check the settings once in the master: a bad one stops gunicorn, not each worker in turn.

    The metrics directory comes first: the modules that check the settings import
    prometheus-client, which picks in-process or file-backed values once, at its import.
    """
    _metrics_directory()
    from inngest_gateway import ConfigError
    from service.environment import environment
    from service.identity import check_users_query, load_identity_settings, user_lookup
    from service.settings import load_all

    try:
        load_all(environment())
        lookup = user_lookup(load_identity_settings(environment()))
        try:
            check_users_query(lookup)  # against the users database, when it answers
        finally:
            lookup.dispose()
    except ConfigError as exc:
        on_exit(server)  # no worker will use the directory just made
        sys.exit(f"inngest-gateway: configuration error: {exc}")


_CREATED_METRICS_DIR = "INNGEST_GATEWAY_CREATED_METRICS_DIR"


def _metrics_directory() -> None:
    """prometheus-client's multiprocess mode: each worker's values go to files in one directory.

    Set before the workers fork (and import prometheus-client), so they all see it. An
    operator's PROMETHEUS_MULTIPROC_DIR is emptied of the last run's files; without one, a
    fresh temporary directory is made, and removed when gunicorn exits.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))
    else:
        path = tempfile.mkdtemp(prefix="inngest-gateway-metrics-")
        os.environ[_CREATED_METRICS_DIR] = path
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """A worker is gone: drop its live gauges (its counters still count)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the metrics directory made in on_starting (not one the operator named)."""
    path = os.environ.get(_CREATED_METRICS_DIR)
    if path and path == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(path, ignore_errors=True)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """After the fork: leave the parent's database connections alone, start the deliverer."""
    from inngest_gateway.state import gateway_state
    from service.db import db

    with worker.wsgi.app_context():
        db.engine.dispose(close=False)  # with preload_app, the pool holds the parent's sockets
    gateway_state(worker.wsgi).delivery.start()  # the outbox's own engine resets itself


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """On a worker's way out: deliver within the outbox's drain time, hand back claims."""
    from inngest_gateway.state import EXTENSION_KEY

    app = getattr(worker, "wsgi", None)
    if app is not None and EXTENSION_KEY in app.extensions:
        app.extensions[EXTENSION_KEY].delivery.stop()
