"""Wait for a condition to hold instead of sleeping a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Short enough that a test goes on right after the condition holds, long enough not to spin.
INTERVAL = 0.02


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    what: str = "the condition",
    interval: float = INTERVAL,
) -> T:
    """The first truthy value ``predicate()`` returns, checked until ``timeout`` seconds have
    passed; an AssertionError naming ``what`` when it never comes.

    For state that only a poll can observe (an HTTP resource, a record another thread fills in);
    a test that can be told (a ``threading.Event``) waits on that instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(min(interval, remaining))
