"""Helpers shared by the test suites: deadline polling instead of fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.1,
    message: str = "condition",
) -> T:
    """Call `predicate` until it returns something truthy, and return that value.

    Raises AssertionError naming `message` and the last value seen when `timeout`
    seconds pass first. The predicate is always called at least once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{message} not reached within {timeout:.1f} s (last value: {value!r})"
            )
        time.sleep(interval)
