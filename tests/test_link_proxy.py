"""The tests' own link proxy (`tests/proxy.py`): what the cluster scenarios rely on."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from tests.proxy import LinkProxy


@contextlib.contextmanager
def sink() -> Iterator[tuple[int, list[bytes]]]:
    """A server on 127.0.0.1 that keeps every chunk its one client sends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.05)
    received: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():  # a client may never come (held by a frozen proxy)
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(None)
                while data := connection.recv(65536):
                    received.append(data)
            return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        done.set()
        thread.join(5)
        listener.close()
    assert not thread.is_alive()


def test_a_chunk_never_overtakes_one_queued_before_it_when_the_delay_changes() -> None:
    with sink() as (port, received):
        proxy = LinkProxy(port).start()
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                proxy.delay = 0.3
                client.sendall(b"first;")
                time.sleep(0.1)  # the first chunk is queued, due in 0.2 s
                proxy.delay = 0.0
                client.sendall(b"second;")
                deadline = time.monotonic() + 5
                while b"".join(received) != b"first;second;":
                    assert time.monotonic() < deadline, received
                    time.sleep(0.01)
        finally:
            proxy.close()
    assert proxy.closed


def test_thawing_resets_the_connections_accepted_while_frozen() -> None:
    with sink() as (port, _received):
        proxy = LinkProxy(port).start()
        try:
            proxy.freeze()
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                time.sleep(0.1)  # accepted and held
                assert proxy.connections == 1
                proxy.thaw()
                try:
                    ended = client.recv(1) == b""
                except ConnectionResetError:
                    ended = True
                assert ended  # at once, not after a timeout of the client's
        finally:
            proxy.close()
