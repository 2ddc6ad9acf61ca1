"""broker.errors.retry_transient: what it retries, when it gives up, how long it waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from broker import errors
from broker.errors import BadAlert, TransientError, retry_transient


def failing(times: int, then: str = "done") -> tuple[Callable[[], str], list[int]]:
    """A call raising TransientError `times` times, then returning `then`; and its call log."""
    calls: list[int] = []

    def call() -> str:
        calls.append(len(calls))
        if len(calls) <= times:
            raise TransientError(f"hiccup {len(calls)}")
        return then

    return call, calls


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays retry_transient sleeps, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(errors.time, "sleep", slept.append)
    return slept


def test_retries_until_the_call_succeeds(waits: list[float]) -> None:
    call, calls = failing(3)
    assert retry_transient(call, what="store") == "done"
    assert len(calls) == 4
    assert waits == [0.5, 1.0, 2.0]


def test_gives_up_after_the_attempts_with_the_last_error(waits: list[float]) -> None:
    call, calls = failing(10)
    with pytest.raises(TransientError, match="hiccup 3"):
        retry_transient(call, what="registry", attempts=3)
    assert len(calls) == 3
    assert len(waits) == 2


def test_does_not_retry_other_errors(waits: list[float]) -> None:
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        raise BadAlert("undecodable", "not avro")

    with pytest.raises(BadAlert):
        retry_transient(call, what="decode")
    assert calls == [1] and waits == []


def test_caps_the_delay(waits: list[float]) -> None:
    call, _ = failing(8)
    retry_transient(call, what="commit", first_delay=1.0, max_delay=5.0)
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0]


def test_a_set_stop_ends_the_retries_at_once() -> None:
    stop = threading.Event()
    stop.set()
    call, calls = failing(10)
    started = time.monotonic()
    with pytest.raises(TransientError, match="hiccup 1"):
        retry_transient(call, what="publish", first_delay=60.0, stop=stop)
    assert len(calls) == 1
    assert time.monotonic() - started < 5.0


def test_stop_set_during_a_wait_ends_it() -> None:
    stop = threading.Event()
    call, calls = failing(10)
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match="hiccup 1"):
            retry_transient(call, what="store", first_delay=60.0, stop=stop)
    finally:
        timer.cancel()
    assert len(calls) == 1
    assert time.monotonic() - started < 30.0  # not the 60 s delay
