"""A stopped wall clock, as a fixture for both conftests (the service's and the extension's)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import time_machine


@pytest.fixture
def stopped_clock() -> Iterator[time_machine.Coordinates]:
    """The wall clock (time.time, datetime.now) stopped 17.5 s into the current minute.

    Moved only by the test (`shift`); the monotonic clock, and so every timeout, runs on.
    Rate-limit windows of a minute start on the minute, so their ends are known exactly.
    """
    start = time.time() // 60 * 60 + 17.5
    with time_machine.travel(start, tick=False) as clock:
        yield clock
