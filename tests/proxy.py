"""A userspace TCP proxy standing for a network link that can misbehave: it adds latency,
drops connections, or freezes (holds its connections and forwards nothing, as a stalled
network path or a hung middlebox does).

While frozen it keeps every connection open, accepts new ones and forwards no byte either
way; its own kernel still acknowledges what a client sends, so neither TCP keepalives nor
`tcp_user_timeout` on the client notice anything. Thawed, it forwards again, and resets the
connections it accepted while frozen. With a drop ratio, each chunk it reads (a query, an
answer, a request...) has that chance of resetting its connection (RST both ways) instead of
going on, as a broken path or a restarted middlebox does: pooled connections that live for
minutes are dropped too, mid-exchange. Delay holds each chunk for that long before it goes
on, never ahead of a chunk queued before it.

These machines have no `tc netem` and no iptables: this proxy is how the tests put faults
on a link, in the root network namespace, listening on loopback or on the address of a
veth link the test made.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit


class LinkProxy:
    """Forwards `listen_host`:`port` to `target`; faults: `freeze()`, `delay`, `drop_ratio`."""

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        *,
        listen_host: str = "127.0.0.1",
        seed: int = 1,
    ) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.delay = 0.0  # seconds each chunk waits before it goes on
        self.drop_ratio = 0.0  # the chance of each chunk read resetting its connection
        self.dropped = 0  # connections cut so far
        self._random = random.Random(seed)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self._holding = threading.Event()  # set by the thread once it forwards nothing
        self._stopped = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._held: list[socket.socket] = []  # accepted while frozen: never connected onwards
        # (due, order, socket, data): chunks held back by the delay, sent in order when due.
        self._queue: list[tuple[float, int, socket.socket, bytes]] = []
        # Per destination: when its last queued chunk is due, and how many are queued. A chunk
        # never overtakes one queued before it, whatever the delay is changed to meanwhile.
        self._last_due: dict[socket.socket, float] = {}
        self._queued: dict[socket.socket, int] = {}
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="link-proxy", daemon=True)

    @property
    def url_netloc(self) -> str:
        """`host:port`, for a URL through the proxy."""
        return f"{self.listen_host}:{self.port}"

    def start(self) -> LinkProxy:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def freeze(self) -> None:
        """From now on forward nothing, either way, and connect no new client onwards: on
        return the proxy's thread has stopped forwarding."""
        self._holding.clear()
        self._frozen.set()
        if self._thread.is_alive():
            self._holding.wait(5)

    def thaw(self) -> None:
        """Forward again. Connections accepted while frozen never reached the other end:
        they are reset, as a path that comes back does to connections it lost."""
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
        self._frozen.clear()

    @property
    def frozen(self) -> bool:
        return self._frozen.is_set()

    @property
    def closed(self) -> bool:
        """Whether it is gone: its thread ended and its listening socket closed."""
        return not self._thread.is_alive() and self._listener.fileno() == -1

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        with self._lock:
            return len(self._peers) // 2 + len(self._held)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        with self._lock:
            for sock in [*self._peers, *self._held, self._listener]:
                with contextlib.suppress(OSError):
                    sock.close()
            self._peers.clear()
            self._held.clear()
        self._selector.close()

    # -- the one thread ----------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stopped.is_set():
            if self._frozen.is_set():
                self._holding.set()
                self._accept_and_hold()
                self._stopped.wait(0.02)
                continue
            self._send_due()
            for key, _ in self._selector.select(timeout=self._next_wait()):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._forward(sock)

    def _next_wait(self) -> float:
        if not self._queue:
            return 0.05
        return max(0.0, min(0.05, self._queue[0][0] - time.monotonic()))

    def _accept_and_hold(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                client, _ = self._listener.accept()
                with self._lock:
                    self._held.append(client)

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            client, _ = self._listener.accept()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                return
            for sock in (client, upstream):
                # As the client and server ends do: a chunk goes now, not after the ACK of
                # the last one (Nagle's wait against a delayed ACK is 40 ms a round trip).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ)
            with self._lock:
                self._peers[client] = upstream
                self._peers[upstream] = client

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and self.drop_ratio and self._random.random() < self.drop_ratio:
            self._reset(sock, peer)
            return
        if self.delay or self._queued.get(peer):
            # An end of stream waits its turn too, behind the data before it.
            due = max(time.monotonic() + self.delay, self._last_due.get(peer, 0.0))
            self._last_due[peer] = due
            self._queued[peer] = self._queued.get(peer, 0) + 1
            heapq.heappush(self._queue, (due, next(self._order), peer, data))
            if not data:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            return
        self._send(sock, peer, data)

    def _send(self, sock: socket.socket, peer: socket.socket, data: bytes) -> None:
        if not data:
            self._drop(sock, peer)
            return
        try:
            peer.setblocking(True)
            peer.settimeout(5)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._drop(sock, peer)

    def _send_due(self) -> None:
        now = time.monotonic()
        while self._queue and self._queue[0][0] <= now:
            _, _, peer, data = heapq.heappop(self._queue)
            self._queued[peer] -= 1
            if not self._queued[peer]:
                del self._queued[peer], self._last_due[peer]
            sock = self._peers.get(peer)
            if sock is not None:  # not dropped meanwhile
                self._send(sock, peer, data)

    def _reset(self, sock: socket.socket, peer: socket.socket) -> None:
        for one in (sock, peer):  # RST, not FIN: a broken path, not a goodbye
            with contextlib.suppress(OSError):
                one.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.dropped += 1
        self._drop(sock, peer)

    def _drop(self, sock: socket.socket, peer: socket.socket) -> None:
        with self._lock:
            for one in (sock, peer):
                self._peers.pop(one, None)
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(one)
                one.close()


def through(proxy: LinkProxy, url: str) -> str:
    """The database URL `url`, reached through `proxy` (its user and password kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=user + proxy.url_netloc))


@contextlib.contextmanager
def freezable_proxy(target_port: int) -> Iterator[LinkProxy]:
    """A started proxy to `target_port` on 127.0.0.1, closed afterwards."""
    proxy = LinkProxy(target_port).start()
    try:
        yield proxy
    finally:
        proxy.close()


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts and never answers: a database host that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]  # the kernel completes connects; nobody answers
    finally:
        listener.close()
