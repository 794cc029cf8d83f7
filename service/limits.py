"""Rate limits, declared on the views they guard: posts per user or client IP, logins.

Built on `limits` (Flask-Limiter's own backend) behind a small decorator rather than on
Flask-Limiter itself, whose hooks are app-wide: a host app mounting the gateway keeps its
requests, hooks and headers to itself, and only the decorated views count. The storage
(`RATELIMIT_STORAGE_URI`), the sliding-window-counter strategy and the 429 envelope with
`Retry-After` are what they were under Flask-Limiter.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import make_response, request
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from werkzeug.exceptions import HTTPException

from .errors import APIError, RateLimited
from .settings import Settings
from .state import gateway_state

F = TypeVar("F", bound=Callable[..., Any])


def client_ip() -> str:
    """The client's address, as the proxy in front saw it when the host trusts one."""
    return request.remote_addr or "unknown"


class RateLimiter:
    """Counts hits per key in the configured storage, with a sliding window counter."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.ratelimit_enabled
        self.prefix = settings.ratelimit_key_prefix
        self.storage = storage_from_string(settings.ratelimit_storage_uri)
        # Two counters per key, whatever the rate: a moving window would keep every hit.
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)

    def _refuse(self, item: RateLimitItem, scope: str, key: str) -> RateLimited:
        reset = self.strategy.get_window_stats(item, self.prefix, scope, key).reset_time
        retry = max(1, math.ceil(reset - time.time()))
        return RateLimited(
            f"Too many requests (limit: {item}); try again in {retry} s.",
            headers={"Retry-After": str(retry)},
        )

    def hit(self, limits: str, scope: str, key: str) -> None:
        """Count one hit against every limit, or raise RateLimited at the first one over."""
        for item in parse_many(limits):
            if not self.strategy.hit(item, self.prefix, scope, key):
                raise self._refuse(item, scope, key)

    def check(self, limits: str, scope: str, key: str) -> None:
        """Raise RateLimited if a limit is already used up, without counting a hit."""
        for item in parse_many(limits):
            if not self.strategy.test(item, self.prefix, scope, key):
                raise self._refuse(item, scope, key)


def limit(
    limits: Callable[[], str],
    *,
    scope: str,
    key: Callable[[], str] = client_ip,
    count_when: Callable[[int], bool] | None = None,
) -> Callable[[F], F]:
    """Limit a view: every call counts, or with `count_when` only answers of those statuses.

    With `count_when`, a key already over its limit is refused before the view runs (once
    over, even a request that would not count waits). The app's limiter (storage, prefix,
    RATELIMIT_ENABLED) is looked up when the view is called.
    """

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            limiter = gateway_state().limiter
            if not limiter.enabled:
                return view(*args, **kwargs)
            rates, who = limits(), key()
            if count_when is None:
                limiter.hit(rates, scope, who)
                return view(*args, **kwargs)
            limiter.check(rates, scope, who)
            try:
                response = make_response(view(*args, **kwargs))
            except (APIError, HTTPException) as exc:
                status = exc.status_code if isinstance(exc, APIError) else exc.code or 500
                if count_when(status):
                    limiter.hit(rates, scope, who)
                raise
            if count_when(response.status_code):
                limiter.hit(rates, scope, who)
            return response

        return wrapper  # type: ignore[return-value]

    return decorator
