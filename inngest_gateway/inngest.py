"""The Inngest sender: the one module that makes outbound HTTP requests."""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import os
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

from . import metrics
from .settings import Settings
from .version import __version__

log = logging.getLogger(__name__)

SDK_HEADER = f"inngest-gateway:v{__version__}"
USER_AGENT = f"inngest-gateway/{__version__}"
CONNECT_TIMEOUT = 3.05
BACKOFF_BASE = 0.1
BACKOFF_CAP = 5.0
# Connections to Inngest kept open per process: one per thread that may send at once (sync
# mode's gunicorn threads, the deliverer's senders); past it, urllib3 opens and drops more.
POOL_SIZE = 128


class InngestError(Exception):
    """Inngest did not accept the events."""


class InngestUnavailable(InngestError):
    """Inngest could not be reached, kept failing or answered too slowly within the send's time."""

    def __init__(
        self,
        message: str,
        retry_after: float,
        upstream_retry_after: float | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.upstream_retry_after = upstream_retry_after
        # The last attempt's HTTP status; None when it got no answer (timeout, connection).
        self.upstream_status = upstream_status


class InngestRejected(InngestError):
    """Inngest answered that the events are not acceptable; retrying will not help."""

    def __init__(self, status: int, message: str, accepted: int = 0) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.error = message
        self.accepted = accepted


@dataclass(frozen=True)
class SendResult:
    """What Inngest answered to a successful send."""

    internal_ids: list[str]
    attempts: int


def id_seed(now: float | None = None) -> str:
    """A fresh `x-inngest-event-id-seed`: milliseconds and 10 random bytes, as the SDKs make it."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{millis},{base64.b64encode(os.urandom(10)).decode()}"


def encode_batch(events: Sequence[bytes]) -> bytes:
    """Join events already encoded as JSON into one JSON array."""
    return b"[" + b",".join(events) + b"]"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff with jitter: half fixed, half random, so retries spread out."""
    ceiling: float = min(cap, base * (2**attempt))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def lease_deadline(
    expires_at_ms: int, lease_seconds: float, deadline: float | None = None
) -> float:
    """When a send under a lease ending at `expires_at_ms` (epoch ms) must be over.

    A tenth of the lease before it ends, as a `time.monotonic()` value, so the outcome is
    recorded while the lease still holds and no other deliverer can have taken the batch
    over; never later than `deadline`.
    """
    left = expires_at_ms / 1000 - time.time() - lease_seconds / 10
    until = time.monotonic() + left
    return until if deadline is None else min(until, deadline)


# -- the time budget on the socket ----------------------------------------------------------
#
# requests' read timeout bounds each socket read, so an answer that trickles in a byte at a
# time never trips it. While a send runs, its thread carries the send's deadline; every
# recv and send on the sender's sockets first sets the socket's timeout to the time left,
# so the budget holds for the whole exchange however many reads it takes (status line,
# headers, body), and a read past it fails as a timeout. urllib3 closes a connection that
# failed mid-answer, so a half-read one never goes back to the pool.
#
# Connecting is ours too (`_connect`): each address gets the connect timeout or the time
# left, whichever is shorter, and the socket then gets what is left for the TLS handshake.
# CPython runs the whole handshake under one deadline taken from the socket's timeout, so
# the handshake ends by the send's deadline however slowly the server speaks. Only name
# resolution is not bounded: getaddrinfo takes no timeout (the system resolver's own
# timeouts and retries apply), so a slow DNS answer can still overrun the budget.

_sending = threading.local()


def _arm(sock: Any) -> None:  # a socket of the sender's pool
    deadline: float | None = getattr(_sending, "deadline", None)
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the send's time budget ran out")
    sock.settimeout(left)


class _Deadline:
    """Every send and receive of a socket ends by the sending thread's deadline.

    A mixin of no state (`__slots__ = ()`), so a live socket can take the subclass as it is;
    TLS sockets get it too (their sendall loops over send, their recv_into over read).
    """

    __slots__ = ()

    def recv(self, *args: Any, **kwargs: Any) -> Any:
        _arm(self)
        return super().recv(*args, **kwargs)  # type: ignore[misc]

    def recv_into(self, *args: Any, **kwargs: Any) -> Any:
        _arm(self)
        return super().recv_into(*args, **kwargs)  # type: ignore[misc]

    def send(self, *args: Any, **kwargs: Any) -> Any:
        _arm(self)
        return super().send(*args, **kwargs)  # type: ignore[misc]

    def sendall(self, *args: Any, **kwargs: Any) -> Any:
        _arm(self)
        return super().sendall(*args, **kwargs)  # type: ignore[misc]


class _DeadlineSocket(_Deadline, socket.socket):
    __slots__ = ()


class _DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    __slots__ = ()


def _bind_deadline(sock: Any) -> None:
    # Same memory layout, so the live socket can take the subclass as it is. Anything
    # else (TLS inside a TLS proxy) keeps requests' per-read timeout.
    if type(sock) is socket.socket:
        sock.__class__ = _DeadlineSocket
    elif type(sock) is ssl.SSLSocket:
        sock.__class__ = _DeadlineSSLSocket


def _connect(conn: HTTPConnection) -> socket.socket:
    """urllib3's `_new_conn`, with every step after name resolution ending by the deadline."""
    deadline: float = _sending.deadline
    configured = conn.timeout if isinstance(conn.timeout, int | float) else None
    try:
        # Not bounded by the deadline: see the comment above.
        addresses = socket.getaddrinfo(
            conn._dns_host.strip("[]"), conn.port, allowed_gai_family(), socket.SOCK_STREAM
        )
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    error: OSError = OSError("getaddrinfo returned no address")
    for family, kind, proto, _, address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            error = TimeoutError("the send's time budget ran out")
            break
        sock = socket.socket(family, kind, proto)
        try:
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(left if configured is None else min(configured, left))
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(address)
            # What is left, for the TLS handshake that follows (urllib3 then sets the
            # read timeout itself, and our sockets arm each read with the time left).
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the send's time budget ran out")
            sock.settimeout(left if configured is None else min(configured, left))
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sys.audit("http.client.connect", conn, conn.host, conn.port)
        return sock
    if isinstance(error, TimeoutError):
        raise ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out within the send's time budget"
        ) from error
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error}") from error


class _DeadlineHTTPConnection(HTTPConnection):
    """Connects (and, for HTTPS, shakes hands) within the send's deadline, and binds it to
    every later read and write of the socket."""

    def _new_conn(self) -> socket.socket:
        if getattr(_sending, "deadline", None) is None:
            return super()._new_conn()
        return _connect(self)

    def connect(self) -> None:
        super().connect()
        _bind_deadline(self.sock)


class _DeadlineHTTPSConnection(_DeadlineHTTPConnection, HTTPSConnection):
    """The same over TLS: HTTPSConnection's own connect() wraps the socket made above."""


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter, with connections whose sockets keep the send's deadline."""

    _pools = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = self._pools
        return manager


class _Retryable(Exception):
    def __init__(
        self, reason: str, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.status = status


def _body(response: requests.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _read_environment_once(session: requests.Session, url: str) -> None:
    """What requests reads from the environment for each request, read once for our one URL.

    A session that trusts the environment looks up the proxy variables (with `NO_PROXY`)
    and `~/.netrc` again on every request, which cost a send more than building its
    request. The URL never changes, so the answer does not either: the proxies, CA bundle
    (`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`) and netrc credentials that would apply are
    fixed on the session, and it stops reading the environment per request.
    """
    settings = session.merge_environment_settings(url, {}, None, None, None)
    session.proxies = {k: v for k, v in settings["proxies"].items() if v}
    session.verify = settings["verify"]
    session.auth = requests.utils.get_netrc_auth(url)
    session.trust_env = False


class InngestClient:
    """Sends batches of encoded events to the event API, retrying what is worth retrying."""

    def __init__(self, settings: Settings) -> None:
        self._url = settings.event_api_url
        self.origin = settings.inngest_origin
        self._key = settings.inngest_event_key
        self._timeout = settings.inngest_send_timeout
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "x-inngest-sdk": SDK_HEADER,
        }
        if settings.inngest_env:
            self._headers["x-inngest-env"] = settings.inngest_env
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        self._template: requests.PreparedRequest | None = None
        self._pid = 0

    @property
    def session(self) -> requests.Session:
        """One pooled session per process, made after any fork so no socket is shared."""
        with self._lock:
            if self._session is None or self._pid != os.getpid():
                session = requests.Session()
                adapter = _DeadlineAdapter(
                    pool_connections=1, pool_maxsize=POOL_SIZE, max_retries=0
                )
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                _read_environment_once(session, self._url)
                self._template = session.prepare_request(
                    requests.Request("POST", self._url, headers=self._headers, data=b"")
                )
                self._session, self._pid = session, os.getpid()
            return self._session

    def _post(self, body: bytes, seed: str, timeout: tuple[float, float]) -> requests.Response:
        """One POST through the session's adapter, without a session's per-request work.

        `Session.request` merges cookies, hooks, auth and environment settings and resolves
        redirects on every call: a third of a sync-mode post's CPU. None of it changes
        between sends (one URL, fixed headers, the environment read once, no redirects
        followed), so the request is prepared once and each send copies it.
        """
        session = self.session
        prepared = cast(requests.PreparedRequest, self._template).copy()
        prepared.body = body
        prepared.headers["Content-Length"] = str(len(body))
        prepared.headers["x-inngest-event-id-seed"] = seed
        adapter = session.get_adapter(self._url)
        response = adapter.send(
            prepared,
            timeout=timeout,
            verify=True if session.verify is None else session.verify,
            proxies=session.proxies,
        )
        response.content  # noqa: B018  # read it all now, within the deadline
        return response

    def redact(self, text: str) -> str:
        """Remove the event key from text that may quote the URL (exception messages do)."""
        return text.replace(self._key, "***") if self._key else text

    def send(
        self,
        events: Sequence[bytes],
        *,
        seed: str | None = None,
        deadline: float | None = None,
        retry: bool = True,
    ) -> SendResult:
        """Send events, retrying connection errors, 5xx and 429 until the deadline.

        The whole send, retries included, ends within INNGEST_GATEWAY_SEND_TIMEOUT, or by
        `deadline` (a `time.monotonic()` value) when that comes first, however slowly
        Inngest answers. The same body and `x-inngest-event-id-seed` go out on every
        attempt, so Inngest derives the same internal ids and the events' own ids
        deduplicate any repeat. With `retry=False` one attempt is made and its failure
        raised, for callers that keep the events and schedule their own retries.
        """
        body = encode_batch(events)
        seed = seed or id_seed()
        start = time.monotonic()
        budget = start + self._timeout
        deadline = budget if deadline is None else min(budget, deadline)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(body, seed, len(events), attempt, deadline)
            except _Retryable as exc:
                delay = exc.retry_after if exc.retry_after is not None else backoff(attempt - 1)
                remaining = deadline - time.monotonic()
                if not retry or delay >= remaining:
                    raise InngestUnavailable(
                        f"gave up after {attempt} attempt(s) in "
                        f"{time.monotonic() - start:.2f}s; last: {exc}",
                        retry_after=min(max(delay, 1.0), 60.0),
                        upstream_retry_after=exc.retry_after,
                        upstream_status=exc.status,
                    ) from None
                metrics.events_retried(len(events))
                log.info(
                    "retrying Inngest send in %.2fs (attempt %d failed: %s)",
                    delay,
                    attempt,
                    exc,
                )
                time.sleep(delay)

    def _attempt(
        self, body: bytes, seed: str, count: int, attempt: int, deadline: float
    ) -> SendResult:
        began = time.monotonic()
        remaining = deadline - began
        if remaining <= 0:
            raise _Retryable("no time left")
        _sending.deadline = deadline
        try:
            response = self._post(body, seed, (min(CONNECT_TIMEOUT, remaining), remaining))
        except requests.RequestException as exc:
            # A read that ran out of budget in the body surfaces as a ConnectionError.
            timed_out = isinstance(exc, requests.Timeout) or time.monotonic() >= deadline
            failure = "timeout" if timed_out else "connection_error"
            metrics.upstream_response(failure, time.monotonic() - began)
            reason = self.redact(f"{type(exc).__name__}: {exc}")
            log.warning(
                "Inngest send attempt %d: %s",
                attempt,
                reason,
                extra={
                    "fields": {
                        "batch_size": count,
                        "upstream_status": type(exc).__name__,
                        "latency_ms": round((time.monotonic() - began) * 1000, 1),
                        "attempt": attempt,
                    }
                },
            )
            raise _Retryable("timed out" if timed_out else type(exc).__name__) from None
        finally:
            _sending.deadline = None
        elapsed_ms = (time.monotonic() - began) * 1000
        status = response.status_code
        metrics.upstream_response(status, elapsed_ms / 1000)
        parsed = _body(response)
        log.info(
            "Inngest send attempt %d: HTTP %d, %d event(s), %.0f ms",
            attempt,
            status,
            count,
            elapsed_ms,
            extra={
                "fields": {
                    "batch_size": count,
                    "upstream_status": status,
                    "latency_ms": round(elapsed_ms, 1),
                    "attempt": attempt,
                }
            },
        )
        if status >= 500 or status == 429:
            raise _Retryable(
                f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")), status
            )
        error = parsed.get("error")
        if 200 <= status < 300:
            if not parsed:
                raise _Retryable(f"HTTP {status} without a JSON body", status=status)
            if parsed.get("status", 200) == 200 and not error:
                ids = parsed.get("ids")
                return SendResult(
                    internal_ids=[str(i) for i in ids] if isinstance(ids, list) else [],
                    attempts=attempt,
                )
        accepted = parsed.get("ids")
        message = self.redact(str(error or response.reason or "no reason given"))
        if status in (401, 403, 404):
            message += " (check INNGEST_EVENT_KEY)"
        raise InngestRejected(
            status, message, accepted=len(accepted) if isinstance(accepted, list) else 0
        )
