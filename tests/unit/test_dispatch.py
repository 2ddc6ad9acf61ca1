"""broker.dispatch without a cluster: how a batch is cut into parts, how the parts' results
come back (in order, all or nothing) through BatchFuture, how a batch whose worker died is
scored one alert at a time, and how a lost scheduler is joined again."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import pytest
from distributed import KilledWorker
from distributed.client import FutureCancelledError

from broker.dispatch import (
    CONNECT_TIMEOUT_S,
    CONNECTION_LOST,
    MIN_PART,
    THREADS_REFRESH_S,
    BatchFuture,
    Dispatcher,
    split,
)
from broker.errors import SchedulerLost
from broker.records import AlertResult, Annotation, Cutouts, RejectReason, ScoringInput
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


# -- a worker that dies, a scheduler that goes away ------------------------------------


class FakeClient:
    """A Dask client stand-in: futures done at once. A part holding a killer's candid
    fails as Dask fails it: scattered, cancelled with its lost data; alone, KilledWorker
    once its fourth worker has died. `lose_after` submissions, it loses its scheduler."""

    def __init__(self, killers: Iterable[int] = (), lose_after: int | None = None) -> None:
        self.killers = set(killers)
        self.lose_after = lose_after
        self.status = "running"
        self.workers = {"tcp://127.0.0.1:1": 1}
        self.submitted: list[tuple[list[int], bool]] = []  # (candids, scattered)
        self.plugins: list[Any] = []

    def nthreads(self) -> dict[str, int]:
        return self.workers

    def scatter(self, parts: list[list[ScoringInput]], hash: bool) -> list[Scattered]:
        return [Scattered(part) for part in parts]

    def submit(self, fn: Any, data: Any, pure: bool) -> Future[list[AlertResult]]:
        scattered = isinstance(data, Scattered)
        items: list[ScoringInput] = data.items if scattered else data
        self.submitted.append(([i.candid for i in items], scattered))
        future: Future[list[AlertResult]] = Future()
        if self.lose_after is not None and len(self.submitted) > self.lose_after:
            self.status = "closed"
            future.set_exception(FutureCancelledError("key", CONNECTION_LOST))
        elif self.killers & {i.candid for i in items}:
            worker = SimpleNamespace(address="tcp://127.0.0.1:1")
            failure = FutureCancelledError("key", "already forgotten")
            future.set_exception(failure if scattered else KilledWorker("key", worker, 3))
        else:
            scores = (Annotation("model", "v1", 0.5),)
            future.set_result([AlertResult(i.candid, annotations=scores) for i in items])
        return future

    def register_plugin(self, plugin: Any) -> None:
        self.plugins.append(plugin)

    def close(self) -> None:
        self.status = "closed"


@dataclass
class Scattered:
    items: list[ScoringInput]


def inputs(count: int) -> list[ScoringInput]:
    cutouts = Cutouts(b"", b"", b"")
    return [
        ScoringInput("ztf", 100 + i, f"ZTF{i}", 1.0, 2.0, 3.0, {}, (), cutouts)
        for i in range(count)
    ]


def dispatcher_with(client: FakeClient) -> Dispatcher:
    dispatcher = Dispatcher(Settings())
    dispatcher.client = cast(Any, client)
    return dispatcher


def test_a_worker_killing_alert_is_found_alone_and_the_others_scored() -> None:
    client = FakeClient(killers={103})
    dispatcher = dispatcher_with(client)
    batch = inputs(6)
    future = dispatcher.submit(batch)
    with pytest.raises(FutureCancelledError) as failed:
        future.result()
    assert dispatcher.worker_died(failed.value) and not dispatcher.lost(failed.value)

    client.submitted.clear()
    polls: list[int] = []
    results = dispatcher.isolate(batch, lambda: polls.append(1))
    # One alert per task, in batch order, never scattered (so that Dask retries it on
    # another worker), the consumer polled while each one runs.
    assert client.submitted == [([i.candid], False) for i in batch]
    assert len(polls) >= len(batch)
    assert [r.candid for r in results] == [i.candid for i in batch]
    assert all(r.annotations and r.rejected is None for r in results if r.candid != 103)
    (poison,) = [r for r in results if r.candid == 103]
    assert poison.rejected is not None and not poison.annotations
    reason, detail = poison.rejected
    assert reason == RejectReason.POISON
    assert "died 4 times scoring it alone" in detail


def test_an_alert_that_raises_alone_is_stored_without_scores() -> None:
    client = FakeClient()
    dispatcher = dispatcher_with(client)
    batch = inputs(3)
    original = client.submit

    def submit(fn: Any, data: Any, pure: bool) -> Future[list[AlertResult]]:
        if data[0].candid == 101:
            future: Future[list[AlertResult]] = Future()
            future.set_exception(ValueError("a bug in a model"))
            return future
        return original(fn, data, pure)

    client.submit = submit  # type: ignore[method-assign]
    results = dispatcher.isolate(batch, lambda: None)
    assert [(r.candid, bool(r.annotations), r.rejected) for r in results] == [
        (100, True, None),
        (101, False, None),
        (102, True, None),
    ]


def test_a_scheduler_lost_while_isolating_is_an_outage_not_a_verdict() -> None:
    client = FakeClient(killers={100}, lose_after=2)
    dispatcher = dispatcher_with(client)
    with pytest.raises(SchedulerLost):
        dispatcher.isolate(inputs(5), lambda: None)
    assert len(client.submitted) == 3 and not dispatcher.connected()
    with pytest.raises(SchedulerLost):
        dispatcher.submit(inputs(1))  # at once: no try against a closed client


def test_reconnecting_waits_for_a_worker_and_registers_the_plugin_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings.model_validate({"dispatch": {"scheduler_address": "tcp://127.0.0.1:9"}})
    dispatcher = Dispatcher(settings)
    empty = FakeClient()
    empty.workers = {}
    clients: list[Any] = [OSError("refused"), empty, FakeClient()]

    def connect(address: str, timeout: float) -> FakeClient:
        assert (address, timeout) == ("tcp://127.0.0.1:9", CONNECT_TIMEOUT_S)
        client = clients.pop(0)
        if isinstance(client, Exception):
            raise client
        return cast(FakeClient, client)

    monkeypatch.setattr("broker.dispatch.Client", connect)
    dispatcher.start()  # the scheduler is not up yet: no error, not connected
    assert not dispatcher.connected()
    with pytest.raises(SchedulerLost, match="no worker"):
        dispatcher.reconnect()
    assert empty.plugins == []
    empty.status = "connecting"  # the client's own reconnection: not replaced meanwhile
    with pytest.raises(SchedulerLost, match="reconnecting"):
        dispatcher.reconnect()
    empty.status = "closed"
    dispatcher.reconnect()
    assert dispatcher.connected() and empty.status == "closed"
    assert [type(p).__name__ for p in cast(FakeClient, dispatcher.client).plugins] == [
        "AnnotatorPlugin"
    ]
