"""Dispatch stage: batches of ScoringInput to Dask workers, never fire-and-forget.

Input: batches from the pipeline. Output: Dask futures of list[AlertResult]. A LocalCluster
is started in-process by default; `dispatch.scheduler_address` joins an external cluster.
Models load once per worker (workers.plugin.AnnotatorPlugin), never shipped with tasks.
An external scheduler that goes away is an outage (SchedulerLost: the pipeline holds its
batches, reconnects, registers the plugin again and resubmits them); a batch whose worker
died is scored one alert at a time (`isolate`) to find the alert that kills workers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from distributed import Client, Future, KilledWorker, LocalCluster, wait
from distributed.client import FutureCancelledError

from broker.errors import SchedulerLost
from broker.records import AlertResult, RejectReason, ScoringInput
from broker.settings import Settings

log = logging.getLogger(__name__)

# A batch is scored as one task per worker thread, so that every thread works on it (a
# batch's latency is its share, not all of it); parts never smaller than this many alerts,
# where the per-task cost would start to show.
MIN_PART = 32
# A round trip to the scheduler: not once per batch.
THREADS_REFRESH_S = 10.0
# Joining an external scheduler: how long one try may block the main loop (Kafka is polled
# between tries), and how long the client tries to reconnect by itself after losing it.
CONNECT_TIMEOUT_S = 10.0
# Isolating: how often the main loop's keep-alive runs while one alert is being scored.
ISOLATION_POLL_S = 0.5
# Why Dask cancels every future of a client that lost its scheduler; any other
# cancellation of ours is a scattered part lost with the worker that held it (it died).
CONNECTION_LOST = "scheduler-connection-lost"


class BatchFuture:
    """The results of a batch scored in parts: done when every part is, in batch order."""

    def __init__(self, parts: Sequence[Future]) -> None:
        self.parts = list(parts)

    def done(self) -> bool:
        return all(part.done() for part in self.parts)

    def result(self, timeout: float | None = None) -> list[AlertResult]:
        """Every part's results, concatenated; TimeoutError if not done within `timeout`."""
        if timeout is not None and not self.done():
            wait(self.parts, timeout=timeout)  # raises TimeoutError
        # No timeout on finished parts: Dask gives up on result(timeout=0) before the data
        # has come back from the worker.
        return [result for part in self.parts for result in part.result()]


def split(batch: Sequence[ScoringInput], threads: int) -> list[list[ScoringInput]]:
    """Contiguous parts, one per thread but none under MIN_PART alerts (at least one)."""
    count = max(1, min(threads, len(batch) // MIN_PART))
    size = math.ceil(len(batch) / count)
    return [list(batch[start : start + size]) for start in range(0, len(batch), size)]


class Dispatcher:
    """Owns the Dask client (and the LocalCluster, when it started one)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._cluster: LocalCluster | None = None
        self.client: Client | None = None
        self._threads, self._threads_at = 1, -math.inf

    def start(self) -> None:
        dispatch = self._settings.dispatch
        if dispatch.scheduler_address:
            try:
                self.reconnect()
            except SchedulerLost as exc:
                # Not fatal: the pipeline reports the outage and keeps trying.
                log.info("Dask scheduler not ready yet (%s): batches wait for it", exc)
            return
        self._cluster = LocalCluster(
            n_workers=dispatch.local_workers,
            threads_per_worker=dispatch.local_threads_per_worker,
            processes=dispatch.local_processes,
            # Any free port: a fixed 8787 clashes with other clusters on the machine.
            dashboard_address=":0",
            silence_logs=logging.WARNING,
        )
        self.client = Client(self._cluster)
        log.info(
            "started a local Dask cluster: %d worker(s) x %d thread(s), %s",
            dispatch.local_workers,
            dispatch.local_threads_per_worker,
            "processes" if dispatch.local_processes else "threads",
        )
        self._register()

    def connected(self) -> bool:
        return self.client is not None and self.client.status == "running"

    def reconnect(self) -> None:
        """Join the scheduler (again) and register the plugin on it; SchedulerLost while it
        cannot be reached or has no worker. A new client blocks up to CONNECT_TIMEOUT_S."""
        address = self._settings.dispatch.scheduler_address
        if self.client is not None and self.client.status == "connecting":
            raise SchedulerLost("lost the Dask scheduler: the client is reconnecting")
        if not self.connected():
            if not address:
                raise SchedulerLost("the local Dask cluster's client is closed")
            self._close_client()
            try:
                self.client = Client(address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise SchedulerLost(f"cannot reach the Dask scheduler {address}: {exc}") from exc
            log.info("joined Dask scheduler %s", address)
        try:
            if not self._client().nthreads():
                raise SchedulerLost(f"the Dask scheduler {address} has no worker yet")
            # A restarted scheduler knows no plugin: its workers (new processes) get it
            # from here, and every worker that joins later from the scheduler.
            self._register()
        except (OSError, TimeoutError) as exc:
            raise SchedulerLost(f"lost the Dask scheduler {address}: {exc}") from exc
        self._threads_at = -math.inf

    def _register(self) -> None:
        from workers.plugin import AnnotatorPlugin  # heavy import, only where work runs

        self._client().register_plugin(AnnotatorPlugin(self._settings.models))

    def lost(self, error: BaseException) -> bool:
        """Whether a batch failed because the scheduler went away (not the batch's doing)."""
        if isinstance(error, SchedulerLost) or not self.connected():
            return True
        return isinstance(error, FutureCancelledError) and error.reason == CONNECTION_LOST

    def worker_died(self, error: BaseException) -> bool:
        """Whether a batch failed because its worker died: KilledWorker, or (scattered
        parts live on one worker only) its part cancelled as lost with that worker."""
        if self.lost(error):
            return False
        return isinstance(error, KilledWorker | FutureCancelledError)

    def submit(self, batch: Sequence[ScoringInput]) -> BatchFuture:
        """The batch's parts, scattered and submitted; SchedulerLost when out of reach."""
        from workers.plugin import annotate_batch

        client = self._client()
        try:
            parts = split(batch, self.threads())
            # Scatter first: each part (cutouts, several MB) goes straight to a worker
            # instead of through the scheduler inside the task graph, as one piece of
            # data (a list would be scattered element by element: one key per alert).
            # pure=False: a re-submitted batch (after a worker died) must run again.
            data = client.scatter(parts, hash=False)
            return BatchFuture([client.submit(annotate_batch, d, pure=False) for d in data])
        except (OSError, TimeoutError, FutureCancelledError) as exc:
            # The scheduler went away, or has no worker to scatter to.
            raise SchedulerLost(f"cannot submit to the Dask scheduler: {exc}") from exc

    def isolate(
        self, batch: Sequence[ScoringInput], keep_alive: Callable[[], None]
    ) -> list[AlertResult]:
        """Results of a batch whose worker died, its alerts scored one at a time, in turn.

        An alert that kills its worker alone comes back rejected as `poison`; the others
        get their scores. The cost is bounded: one task per alert (a few ms each), never
        two at once (an alert in flight beside the killer would be blamed with it), and
        per killer the worker deaths `distributed.scheduler.allowed-failures` allows plus
        one (default 3 + 1: the scheduler tries a task on another worker each time a
        worker dies running it, then raises KilledWorker). Sent without scatter: scattered
        data dies with its worker, which cancels the task instead of retrying it.
        `keep_alive` runs at least every ISOLATION_POLL_S (the consumer stays in its
        group). Raises SchedulerLost if the scheduler goes away meanwhile.
        """
        log.warning(
            "a Dask worker died scoring a batch of %d: scoring its alerts one at a time "
            "to find the one responsible", len(batch),
        )  # fmt: skip
        return [self._score_alone(item, keep_alive) for item in batch]

    def _score_alone(self, item: ScoringInput, keep_alive: Callable[[], None]) -> AlertResult:
        from workers.plugin import annotate_batch

        future = BatchFuture([self._client().submit(annotate_batch, [item], pure=False)])
        try:
            while True:
                keep_alive()
                try:
                    (result,) = future.result(timeout=ISOLATION_POLL_S)
                    return result
                except TimeoutError:
                    continue
        except KilledWorker as exc:
            deaths = exc.allowed_failures + 1
            log.error(
                "alert %s of %s killed its Dask worker %d times scored alone: "
                "dead-lettered as poison", item.candid, item.object_id, deaths,
            )  # fmt: skip
            detail = (
                f"a Dask worker died {deaths} times scoring it alone (KilledWorker; "
                f"distributed.scheduler.allowed-failures = {exc.allowed_failures})"
            )
            return AlertResult(item.candid, rejected=(RejectReason.POISON, detail))
        except Exception as exc:
            if self.lost(exc):
                raise SchedulerLost(f"lost the Dask scheduler while isolating: {exc}") from exc
            log.error(
                "alert %s of %s failed on the workers (%s): stored without scores",
                item.candid, item.object_id, exc,
            )  # fmt: skip
            return AlertResult(item.candid)

    def _client(self) -> Client:
        if self.client is None:
            raise SchedulerLost("not connected to a Dask scheduler")
        if self.client.status != "running":
            raise SchedulerLost(f"Dask client {self.client.status}: the scheduler is gone")
        return self.client

    def threads(self) -> int:
        """Worker threads in the cluster, asked of the scheduler at most every
        THREADS_REFRESH_S (workers may come and go on an external cluster)."""
        if self.client is None:
            return 1
        now = time.monotonic()
        if now - self._threads_at >= THREADS_REFRESH_S:
            self._threads = max(1, sum(self.client.nthreads().values()))
            self._threads_at = now
        return self._threads

    def workers(self) -> dict[str, Any]:
        if self.client is None:
            return {}
        info: dict[str, Any] = self.client.scheduler_info().get("workers", {})
        return info

    def _close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    def close(self) -> None:
        self._close_client()
        if self._cluster is not None:
            self._cluster.close()
        self._cluster = None
