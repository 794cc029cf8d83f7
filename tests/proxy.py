"""A TCP proxy on 127.0.0.1 that can be frozen: a link that holds its connections and forwards
nothing, as a stalled network path or a hung middlebox does.

While frozen it keeps every connection open, accepts new ones and forwards no byte either
way; its own kernel still acknowledges what a client sends, so neither TCP keepalives nor
`tcp_user_timeout` on the client notice anything. Thawed, it forwards again.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit


class FreezableProxy:
    """Forwards 127.0.0.1:`port` to `target_port`; `freeze()` and `thaw()` stop and restart it."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self._stopped = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._held: list[socket.socket] = []  # accepted while frozen: never connected onwards
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="freezable-proxy", daemon=True)

    @property
    def url_netloc(self) -> str:
        """`127.0.0.1:port`, for a database URL through the proxy."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> FreezableProxy:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def freeze(self) -> None:
        """From now on forward nothing, either way, and connect no new client onwards."""
        self._frozen.set()

    def thaw(self) -> None:
        """Forward again (connections accepted while frozen stay dead ends)."""
        self._frozen.clear()

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
        self._selector.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            if self._frozen.is_set():
                self._accept_and_hold()
                self._stopped.wait(0.02)
                continue
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._forward(sock)

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
        if not data:
            self._drop(sock, peer)
            return
        try:
            peer.setblocking(True)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._drop(sock, peer)

    def _drop(self, sock: socket.socket, peer: socket.socket) -> None:
        with self._lock:
            for one in (sock, peer):
                self._peers.pop(one, None)
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(one)
                one.close()


def through(proxy: FreezableProxy, url: str) -> str:
    """The database URL `url`, reached through `proxy` (its user and password kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=user + proxy.url_netloc))


@contextlib.contextmanager
def freezable_proxy(target_port: int) -> Iterator[FreezableProxy]:
    """A started proxy to `target_port` on 127.0.0.1, closed afterwards."""
    proxy = FreezableProxy(target_port).start()
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
