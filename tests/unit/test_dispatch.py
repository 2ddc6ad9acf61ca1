"""broker.dispatch without a cluster: how a batch is cut into parts, and how the parts'
results come back (in order, all or nothing) through BatchFuture."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, cast

import pytest

from broker.dispatch import MIN_PART, THREADS_REFRESH_S, BatchFuture, Dispatcher, split
from broker.settings import Settings


@pytest.mark.parametrize(
    ("alerts", "threads", "sizes"),
    [
        (500, 2, [250, 250]),
        (501, 2, [251, 250]),
        (500, 3, [167, 167, 166]),
        (MIN_PART * 2 - 1, 4, [MIN_PART * 2 - 1]),  # two parts would be under MIN_PART
        (MIN_PART * 2, 4, [MIN_PART, MIN_PART]),
        (5, 8, [5]),
        (1, 1, [1]),
    ],
)
def test_a_batch_is_cut_into_contiguous_parts_one_per_thread(
    alerts: int, threads: int, sizes: list[int]
) -> None:
    batch = cast(Any, list(range(alerts)))
    parts = split(batch, threads)
    assert [len(part) for part in parts] == sizes
    assert [item for part in parts for item in part] == batch


def done_with(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def test_results_come_back_in_batch_order_once_every_part_is_done() -> None:
    late: Future[Any] = Future()
    batch = BatchFuture(cast(Any, [done_with([1, 2]), late, done_with([5])]))
    assert not batch.done()
    late.set_result([3, 4])
    assert batch.done()
    assert batch.result() == [1, 2, 3, 4, 5]


def test_a_failed_part_fails_the_batch() -> None:
    failed: Future[Any] = Future()
    failed.set_exception(RuntimeError("worker died"))
    batch = BatchFuture(cast(Any, [done_with([1]), failed]))
    assert batch.done()
    with pytest.raises(RuntimeError, match="worker died"):
        batch.result()


def test_the_thread_count_is_asked_of_the_scheduler_once_per_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    class Client:
        def nthreads(self) -> dict[str, int]:
            calls.append(1)
            return {"tcp://a": 2, "tcp://b": 3}

    clock = [100.0]
    monkeypatch.setattr("broker.dispatch.time.monotonic", lambda: clock[0])
    dispatcher = Dispatcher(Settings())
    assert dispatcher.threads() == 1  # not started: one part per batch
    dispatcher.client = cast(Any, Client())
    assert [dispatcher.threads() for _ in range(5)] == [5] * 5
    assert len(calls) == 1
    clock[0] += THREADS_REFRESH_S
    assert dispatcher.threads() == 5 and len(calls) == 2
