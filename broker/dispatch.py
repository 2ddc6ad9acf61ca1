"""Dispatch stage: batches of ScoringInput to Dask workers, never fire-and-forget.

Input: batches from the pipeline. Output: Dask futures of list[AlertResult]. A LocalCluster
is started in-process by default; `dispatch.scheduler_address` joins an external cluster.
Models load once per worker (workers.plugin.AnnotatorPlugin), never shipped with tasks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from distributed import Client, Future, LocalCluster, wait

from broker.records import AlertResult, ScoringInput
from broker.settings import Settings

log = logging.getLogger(__name__)

# A batch is scored as one task per worker thread, so that every thread works on it (a
# batch's latency is its share, not all of it); parts never smaller than this many alerts,
# where the per-task cost would start to show.
MIN_PART = 32
# A round trip to the scheduler: not once per batch.
THREADS_REFRESH_S = 10.0


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
        from workers.plugin import AnnotatorPlugin  # heavy import, only where work runs

        dispatch = self._settings.dispatch
        if dispatch.scheduler_address:
            self.client = Client(dispatch.scheduler_address, timeout=30)
            log.info("joined Dask scheduler %s", dispatch.scheduler_address)
        else:
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
        self.client.register_plugin(AnnotatorPlugin(self._settings.models))

    def submit(self, batch: Sequence[ScoringInput]) -> BatchFuture:
        from workers.plugin import annotate_batch

        if self.client is None:
            raise RuntimeError("Dispatcher.start() was not called")
        parts = split(batch, self.threads())
        # Scatter first: each part (cutouts, several MB) goes straight to a worker instead
        # of through the scheduler inside the task graph, as one piece of data (a list
        # would be scattered element by element: one key per alert). pure=False: a
        # re-submitted batch (after a worker died) must run again.
        data = self.client.scatter(parts, hash=False)
        return BatchFuture([self.client.submit(annotate_batch, d, pure=False) for d in data])

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

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
        self.client = self._cluster = None
