"""Waiting for a condition, in bounded time, without a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], seconds: float, pause: float = 0.02) -> bool:
    """Whether `condition()` came true within `seconds`, asked every `pause` seconds."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
    return True
