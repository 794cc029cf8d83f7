"""A paced load: POSTs sent at a fixed rate, evenly spaced, whatever the answers take.

wrk and hey measure at saturation or in bursts (hey's workers all tick together), where the
latency is queueing. This sends request i at start + i / rate over keep-alive connections
(a new one when none is idle, up to `--connections`), so the offered rate holds however slow
the answers are, and each request's latency is counted from the moment it was due: a request
that waited for a free connection counts that wait (no coordinated omission).

    python bench/paced.py URL --rate 1000 --seconds 20 --body JSON --cookie 'session=...'

A request whose turn for a connection comes after the window is not sent (`unsent`: the
target could not keep up). Prints one JSON object: offered and served rate, p50/p99/p99.9 in
ms of the requests sent, statuses, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from urllib.parse import urlsplit


def percentile(ordered: list[float], share: float) -> float:
    """The nearest-rank percentile of an ascending list (`share` 0.99 for p99)."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(share * len(ordered))))
    return ordered[rank - 1]


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send one request, read its whole answer; the status and whether to keep the socket."""
        self.writer.write(request)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed by the server")
        status = int(status_line.split(b" ", 2)[1])
        length, keep = 0, True
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        if length:
            await self.reader.readexactly(length)
        return status, keep

    def close(self) -> None:
        self.writer.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = args.body.encode()
    request = (
        f"POST {url.path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Cookie: {args.cookie}\r\n\r\n"
    ).encode() + body
    idle: list[Connection] = []
    opened = 0
    free = asyncio.Condition()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = unsent = 0
    total = int(args.rate * args.seconds)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    end = start + args.seconds

    async def one(due: float) -> None:
        nonlocal opened, errors, unsent
        async with free:
            while not idle and opened >= args.connections:
                await free.wait()
            if loop.time() > end:
                # Its turn came after the load's window: the target did not keep up.
                unsent += 1
                free.notify()
                return
            conn = idle.pop() if idle else None
            if conn is None:
                opened += 1
        try:
            if conn is None:
                reader, writer = await asyncio.open_connection(host, port)
                conn = Connection(reader, writer)
            status, keep = await asyncio.wait_for(conn.exchange(request), args.timeout)
        except (OSError, TimeoutError, ValueError, IndexError):
            errors += 1
            if conn is not None:
                conn.close()
            async with free:
                opened -= 1
                free.notify()
            return
        latencies.append((loop.time() - due) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        async with free:
            if keep:
                idle.append(conn)
            else:
                conn.close()
                opened -= 1
            free.notify()

    tasks: list[asyncio.Task[None]] = []
    sent = 0
    began = time.monotonic()
    while sent < total:
        now = loop.time()
        due_count = min(total, int((now - start) * args.rate) + 1) if now >= start else 0
        while sent < due_count:
            tasks.append(asyncio.create_task(one(start + sent / args.rate)))
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / args.rate - loop.time()))
    await asyncio.wait(tasks, timeout=args.timeout + 5)
    elapsed = time.monotonic() - began
    for conn in idle:
        conn.close()
    ordered = sorted(latencies)
    ok = sum(count for status, count in statuses.items() if 200 <= status < 300)
    return {
        "offered": args.rate,
        "served": len(ordered) / elapsed if elapsed > 0 else 0.0,
        "requests": total,
        "answered": len(ordered),
        "unsent": unsent,
        # Failed exchanges, non-2xx answers, and requests still unanswered at the end.
        "errors": errors + (len(ordered) - ok) + (total - len(ordered) - errors - unsent),
        "statuses": statuses,
        "p50_ms": percentile(ordered, 0.50),
        "p99_ms": percentile(ordered, 0.99),
        "p999_ms": percentile(ordered, 0.999),
        "connections_opened_at_most": args.connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--cookie", default="")
    parser.add_argument("--connections", type=int, default=256, help="most open at once")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
