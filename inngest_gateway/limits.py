"""Rate limits, declared on the views they guard: posts per user or client IP, logins.

Built on `limits` (Flask-Limiter's own backend) behind a small decorator rather than on
Flask-Limiter itself, whose hooks are app-wide: a host app mounting the gateway keeps its
requests, hooks and headers to itself, and only the decorated views count. The storage
(`INNGEST_GATEWAY_RATELIMIT_STORAGE_URI`), the sliding-window-counter strategy and the 429 envelope
with
`Retry-After` are what they were under Flask-Limiter.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import make_response, request
from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from werkzeug.exceptions import HTTPException

from .errors import APIError, RateLimited
from .settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def client_ip() -> str:
    """The client's address, as the proxy in front saw it when the host trusts one."""
    return request.remote_addr or "unknown"


class LocalWindows(Storage):
    """`memory://`: the sliding-window counters of this process, for limits' strategy.

    The arithmetic is the library's (its `SlidingWindowCounterRateLimiter` runs on top); what
    differs from its `MemoryStorage` is the upkeep: that storage starts a timer thread to
    expire counters whenever the last one has ended, which under load is a new thread every
    few requests. Here one lock guards the counters, a check and its increment happen under
    it (no over-admission to undo), and counters of ended windows are dropped on the way,
    at most once a second.
    """

    STORAGE_SCHEME = None  # made by RateLimiter for `memory://`, never looked up by scheme
    PRUNE_SECONDS = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}  # window key -> (count, expires at)
        self._pruned_at = 0.0

    # The plain counter of limits' Storage, on the same table (for its other strategies).
    @property
    def base_exceptions(self) -> type[Exception]:
        return ValueError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._lock:
            self._prune(now)
            count, expires_at = self._counts.get(key, (0, 0.0))
            if expires_at <= now:
                count, expires_at = 0, now + expiry
            self._counts[key] = (count + amount, expires_at)
            return count + amount

    def get(self, key: str) -> int:
        with self._lock:
            return self._count(key, time.time())

    def get_expiry(self, key: str) -> float:
        with self._lock:
            return self._counts.get(key, (0, time.time()))[1]

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count, self._counts = len(self._counts), {}
            return count

    def clear(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)

    @staticmethod
    def _keys(key: str, expiry: int, now: float) -> tuple[str, str]:
        return f"{key}/{int((now - expiry) / expiry)}", f"{key}/{int(now / expiry)}"

    def _count(self, key: str, now: float) -> int:
        count, expires_at = self._counts.get(key, (0, 0.0))
        return count if expires_at > now else 0

    def _window(self, key: str, expiry: int, now: float) -> tuple[int, float, int, float]:
        """As limits' storages give it: previous count and TTL, current count and TTL."""
        previous_key, current_key = self._keys(key, expiry, now)
        previous, current = self._count(previous_key, now), self._count(current_key, now)
        previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous, previous_ttl, current, current_ttl

    def _prune(self, now: float) -> None:
        if now - self._pruned_at >= self.PRUNE_SECONDS:
            self._pruned_at = now
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}

    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if amount > limit:
            return False
        now = time.time()
        with self._lock:
            self._prune(now)
            previous, previous_ttl, current, _ = self._window(key, expiry, now)
            if math.floor(previous * previous_ttl / expiry + current) + amount > limit:
                return False
            current_key = self._keys(key, expiry, now)[1]
            # A counter lives two windows, as in limits' storages: the current, then the previous.
            expires_at = self._counts.get(current_key, (0, now + 2 * expiry))[1]
            self._counts[current_key] = (current + amount, expires_at)
            return True

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = time.time()
        with self._lock:
            return self._window(key, expiry, now)

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        with self._lock:
            for window in self._keys(key, expiry, time.time()):
                self._counts.pop(window, None)


class RateLimiter:
    """Counts hits per key in the configured storage, with a sliding window counter."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.ratelimit_enabled
        self.prefix = settings.ratelimit_key_prefix
        uri = settings.ratelimit_storage_uri
        local = uri.partition(":")[0] == "memory"
        storage: Any = LocalWindows() if local else storage_from_string(uri)
        self.storage = storage
        self._parsed: dict[str, list[RateLimitItem]] = {}
        # Two counters per key, whatever the rate: a moving window would keep every hit.
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)

    def _refuse(self, item: RateLimitItem, scope: str, key: str) -> RateLimited:
        reset = self.strategy.get_window_stats(item, self.prefix, scope, key).reset_time
        retry = max(1, math.ceil(reset - time.time()))
        return RateLimited(
            f"Too many requests (limit: {item}); try again in {retry} s.",
            headers={"Retry-After": str(retry)},
        )

    def _items(self, limits: str) -> list[RateLimitItem]:
        items = self._parsed.get(limits)
        if items is None:
            items = self._parsed[limits] = parse_many(limits)
        return items

    def hit(self, limits: str, scope: str, key: str) -> None:
        """Count one hit against every limit, or raise RateLimited at the first one over."""
        for item in self._items(limits):
            if not self.strategy.hit(item, self.prefix, scope, key):
                raise self._refuse(item, scope, key)

    def check(self, limits: str, scope: str, key: str) -> None:
        """Raise RateLimited if a limit is already used up, without counting a hit."""
        for item in self._items(limits):
            if not self.strategy.test(item, self.prefix, scope, key):
                raise self._refuse(item, scope, key)


def limit(
    limits: Callable[[], str],
    *,
    limiter: Callable[[], RateLimiter],
    scope: str,
    key: Callable[[], str] = client_ip,
    count_when: Callable[[int], bool] | None = None,
) -> Callable[[F], F]:
    """Limit a view: every call counts, or with `count_when` only answers of those statuses.

    With `count_when`, a key already over its limit is refused before the view runs (once
    over, even a request that would not count waits). `limiter()` gives the app's limiter
    (storage, prefix, INNGEST_GATEWAY_RATELIMIT_ENABLED) when the view is called.
    """

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            app_limiter = limiter()
            if not app_limiter.enabled:
                return view(*args, **kwargs)
            rates, who = limits(), key()
            if count_when is None:
                app_limiter.hit(rates, scope, who)
                return view(*args, **kwargs)
            app_limiter.check(rates, scope, who)
            try:
                response = make_response(view(*args, **kwargs))
            except (APIError, HTTPException) as exc:
                status = exc.status_code if isinstance(exc, APIError) else exc.code or 500
                if count_when(status):
                    app_limiter.hit(rates, scope, who)
                raise
            if count_when(response.status_code):
                app_limiter.hit(rates, scope, who)
            return response

        return wrapper  # type: ignore[return-value]

    return decorator
