"""CPU time per request of the apps themselves, called as WSGI apps in one thread, no server.

`make bench` measures the service under gunicorn, where the server, its threads and the
deliverer share the CPU with the app and one run differs from the next by up to a quarter
on a shared 2-core machine. This calls the floor (bench/floor.py) and the service's
`POST /api` (outbox mode, a logged-in user, production log level, rate limits on, the
deliverer off) directly, many times, and prints the least CPU time per request over a few
repeats: what the app's own code costs, steady enough to compare two versions of it.

    .venv/bin/python bench/inprocess.py [--requests N] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = "bench-secret-key-not-for-production-0123456789abcdef"
BODY = json.dumps({"name": "app/bench", "data": {"example": "data"}}).encode()
EMAIL, PASSWORD = "bench@example.com", "bench-password-0123456789"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def environ(path: str, cookie: str, body: bytes = BODY) -> dict[str, Any]:
    """A POST as gunicorn hands it to the app."""
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_COOKIE": cookie,
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def call(app: WSGIApp, env: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer["status"], answer["headers"] = status, headers

    body = b"".join(app(env, start_response))
    return answer["status"], answer["headers"], body


def cookies(headers: list[tuple[str, str]]) -> str:
    return "; ".join(v.split(";")[0] for k, v in headers if k.lower() == "set-cookie")


def per_request_us(app: WSGIApp, path: str, cookie: str, requests: int, repeats: int) -> float:
    """The least CPU time per request (µs) over `repeats` runs of `requests` posts."""
    for _ in range(200):  # warm up: caches, pools, first-use imports
        call(app, environ(path, cookie))
    best = float("inf")
    for _ in range(repeats):
        began = time.process_time()
        for _ in range(requests):
            status, _, body = call(app, environ(path, cookie))
        best = min(best, (time.process_time() - began) / requests * 1e6)
        if not status.startswith("20"):
            sys.exit(f"{path} answered {status}: {body[:300]!r}")
    return best


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def heap(app: WSGIApp, cookie: str, posts: int) -> None:
    """What N more posts leave behind: in the Python heap (tracemalloc) and in the RSS."""
    import gc  # noqa: PLC0415
    import tracemalloc  # noqa: PLC0415

    gc.collect()
    tracemalloc.start(5)
    before, rss_before = tracemalloc.take_snapshot(), rss_mib()
    for _ in range(posts):
        call(app, environ("/api", cookie))
    gc.collect()
    after, rss_after = tracemalloc.take_snapshot(), rss_mib()
    tracemalloc.stop()
    grown = after.compare_to(before, "lineno")
    print(
        f"{posts} more posts: Python heap {sum(s.size_diff for s in grown) / 1024:+.0f} KiB,"
        f" RSS {rss_before:.1f} -> {rss_after:.1f} MiB"
    )
    for stat in grown[:3]:
        print(f"  {stat}")


def senders(sends: int, repeats: int) -> None:
    """CPU per send: the service's InngestClient and inngest-py, to the stand-in, one event."""
    import socket  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    import inngest  # noqa: PLC0415

    sys.path.insert(0, str(ROOT))
    from inngest_gateway.inngest import InngestClient  # noqa: PLC0415
    from inngest_gateway.settings import load_settings  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tests.standin", "--port", str(port), "--event-key", "k"]
    standin = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        env = {"SECRET_KEY": SECRET_KEY, "INNGEST_EVENT_KEY": "k", "INNGEST_BASE_URL": url}
        client = InngestClient(load_settings(env))
        body = [b'{"name":"app/bench","data":{"example":"data"},"id":"bench-1","ts":1700000000000}']
        peer = inngest.Inngest(
            app_id="bench-sdk-peer", event_key="k", event_api_base_url=url, is_production=True
        )
        event = inngest.Event(name="app/bench", data={"example": "data"})
        for name, send in (
            ("service InngestClient.send", lambda: client.send(body)),
            ("inngest-py send_sync      ", lambda: peer.send_sync(event)),
        ):
            for _ in range(100):
                send()
            best = float("inf")
            for _ in range(repeats):
                began = time.process_time()
                for _ in range(sends):
                    send()
                best = min(best, (time.process_time() - began) / sends * 1e6)
            print(f"{name}: {best:6.0f} us CPU per send")
    finally:
        standin.kill()
        standin.wait(10)


def floor_app() -> tuple[WSGIApp, str]:
    os.environ.setdefault("SECRET_KEY", SECRET_KEY)
    sys.path.insert(0, str(ROOT / "bench"))
    import floor  # noqa: PLC0415 - reads SECRET_KEY from the environment at import

    _, headers, _ = call(floor.app, environ("/login", "", b"{}"))
    return floor.app, cookies(headers)


def service_app(settings: dict[str, str], workdir: str) -> tuple[WSGIApp, str]:
    sys.path.insert(0, str(ROOT))
    import logging  # noqa: PLC0415

    from service.app import create_app  # noqa: PLC0415
    from service.users import create_user  # noqa: PLC0415

    env = {
        "SECRET_KEY": SECRET_KEY,
        "INNGEST_EVENT_KEY": "bench-key",
        "INNGEST_BASE_URL": "http://127.0.0.1:9",  # never called: no deliverer runs
        "DATABASE_URL": f"sqlite:///{workdir}/gateway.db",
        "INNGEST_GATEWAY_DELIVERY_MODE": "outbox",
        "INNGEST_GATEWAY_API_REQUIRE_LOGIN": "true",
        "INNGEST_GATEWAY_RATELIMIT_API": "10000000 per minute",
        "CREATE_DEMO_USER": "false",
        "INNGEST_GATEWAY_OUTBOX_EMBEDDED_DELIVERER": "false",
        "INNGEST_GATEWAY_OUTBOX_MAX_PENDING": "100000000",
    } | settings
    app = create_app(env)
    for handler in logging.getLogger("service").handlers:  # the lines are made, not shown
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the app
    with app.app_context():
        create_user(EMAIL, "Bench", PASSWORD)
    login = json.dumps({"email": EMAIL, "password": PASSWORD}).encode()
    status, headers, body = call(app, environ("/auth/login", "", login))
    if not status.startswith("200"):
        sys.exit(f"login failed: {status} {body[:300]!r}")
    return app, cookies(headers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="posts per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; the least is shown")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--send",
        type=int,
        default=0,
        metavar="N",
        help="also: CPU per send of the service's sender and of inngest-py's send_sync, "
        "N sends each of one event to the stand-in Inngest",
    )
    parser.add_argument(
        "--heap",
        type=int,
        default=0,
        metavar="N",
        help="then N more posts under tracemalloc: growth of the Python heap and of the RSS",
    )
    args = parser.parse_args()
    if any("=" not in item for item in args.set):
        parser.error("--set takes NAME=VALUE")
    settings = dict(item.split("=", 1) for item in args.set)
    floor, floor_cookie = floor_app()
    floor_us = per_request_us(floor, "/ok", floor_cookie, args.requests, args.repeats)
    with tempfile.TemporaryDirectory(prefix="inngest-gateway-inprocess-") as workdir:
        service, cookie = service_app(settings, workdir)
        service_us = per_request_us(service, "/api", cookie, args.requests, args.repeats)
        if args.heap:
            heap(service, cookie, args.heap)
    if args.send:
        senders(args.send, args.repeats)
    print(f"floor   POST /ok : {floor_us:6.0f} us CPU per request")
    print(f"service POST /api: {service_us:6.0f} us CPU per request (outbox mode, logged in)")
    print(f"service / floor  : {service_us / floor_us:.2f}")
    if settings:
        print("NOT the production defaults: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
