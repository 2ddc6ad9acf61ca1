"""Dispatch stage: batches of ScoringInput to Dask workers, never fire-and-forget.

Input: batches from the pipeline. Output: Dask futures of list[AlertResult]. A LocalCluster
is started in-process by default; `dispatch.scheduler_address` joins an external cluster.
Models load once per worker (workers.plugin.AnnotatorPlugin), never shipped with tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from distributed import Client, Future, LocalCluster

from broker.records import ScoringInput
from broker.settings import Settings

log = logging.getLogger(__name__)


class Dispatcher:
    """Owns the Dask client (and the LocalCluster, when it started one)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._cluster: LocalCluster | None = None
        self.client: Client | None = None

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

    def submit(self, batch: Sequence[ScoringInput]) -> Future:
        from workers.plugin import annotate_batch

        if self.client is None:
            raise RuntimeError("Dispatcher.start() was not called")
        # Scatter first: the batch (cutouts, several MB) goes straight to a worker instead
        # of through the scheduler inside the task graph. pure=False: a re-submitted
        # batch (after a worker died) must run again.
        data = self.client.scatter(list(batch), hash=False)
        return self.client.submit(annotate_batch, data, pure=False)

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
