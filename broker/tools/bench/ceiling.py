"""The workers' cost and the model-only ceiling, measured in-process on one batch.

Input: the batch's ScoringInputs and the ModelSettings the workers use. Output: WorkerCost:
seconds of `Annotator.annotate` (stamps, features, every model), each ONNX model's seconds
on the exact tensors it was fed, and the alerts/s ONNX Runtime alone sustains on them with
as many threads as the Dask workers run.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from broker.records import ScoringInput
from broker.tools.bench.stats import WorkerCost
from workers.annotate import Annotator
from workers.models.base import OnnxModel

log = logging.getLogger(__name__)

WARM_UP_ALERTS = 8
# Repeat the model-only pass until it has run at least this long (steadier numbers).
MIN_CEILING_SECONDS = 1.0

Feeds = dict[str, np.ndarray]


def time_workers(annotator: Annotator, inputs: Sequence[ScoringInput], threads: int) -> WorkerCost:
    """Annotate `inputs` once (timed), then time ONNX Runtime alone on the recorded tensors.

    `annotator` is built as on the workers (`Annotator.from_settings(settings.models)`).
    """
    # Each session's first run allocates its buffers: keep that out of the timing.
    annotator.annotate(list(inputs[:WARM_UP_ALERTS]))
    feeds, annotate_seconds = _annotate_recording(annotator, inputs)
    cost = WorkerCost(alerts=len(inputs), annotate_seconds=annotate_seconds, threads=threads)
    if not feeds:
        return cost  # no ONNX model installed: no model-only ceiling to speak of
    cost.model_seconds = {name: _run_once(runs) for name, runs in feeds.items()}
    cost.ceiling_alerts_per_s = model_only_ceiling(feeds, len(inputs), threads)
    return cost


def _annotate_recording(
    annotator: Annotator, inputs: Sequence[ScoringInput]
) -> tuple[dict[str, list[Callable[[], Any]]], float]:
    """Annotate while recording each ONNX model's inputs as ready-to-run session calls."""
    recorded: dict[str, list[Callable[[], Any]]] = {}
    onnx_models = [model for model in annotator.models if isinstance(model, OnnxModel)]
    for model in onnx_models:
        # Wrapping `infer` on the instance captures the tensors exactly as the adapter
        # built them (triplets, BTSbot/ACAI features) without duplicating that code here.
        setattr(model, "infer", _recorder(model, recorded.setdefault(model.name, [])))  # noqa: B010
    try:
        started = time.perf_counter()
        annotator.annotate(list(inputs))
        elapsed = time.perf_counter() - started
    finally:
        for model in onnx_models:
            delattr(model, "infer")
    return {name: runs for name, runs in recorded.items() if runs}, elapsed


def _recorder(model: OnnxModel, runs: list[Callable[[], Any]]) -> Callable[[Feeds], np.ndarray]:
    original = model.infer

    def infer(feeds: Feeds) -> np.ndarray:
        for part in model.slices(feeds):  # the runs OnnxModel.infer makes
            frozen = {name: np.ascontiguousarray(array) for name, array in part.items()}
            runs.append(functools.partial(model.session.run, None, frozen))
        return original(feeds)

    return infer


def _run_once(runs: Sequence[Callable[[], Any]]) -> float:
    started = time.perf_counter()
    for run in runs:
        run()
    return time.perf_counter() - started


def model_only_ceiling(
    feeds: dict[str, list[Callable[[], Any]]], alerts: int, threads: int
) -> float:
    """Alerts/s when `threads` threads each run every model over the batch, back to back."""
    calls = [run for runs in feeds.values() for run in runs]
    one_pass = max(_run_once(calls), 1e-6)
    passes = max(1, math.ceil(MIN_CEILING_SECONDS / one_pass))

    def work() -> None:
        for _ in range(passes):
            _run_once(calls)

    # ONNX Runtime releases the GIL while it runs, as on a Dask worker's threads.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        started = time.perf_counter()
        for future in [pool.submit(work) for _ in range(threads)]:
            future.result()
        elapsed = time.perf_counter() - started
    ceiling = alerts * passes * threads / elapsed
    log.info(
        "model-only ceiling: %d threads x %d passes over %d alerts in %.2f s = %.0f alerts/s",
        threads, passes, alerts, elapsed, ceiling,
    )  # fmt: skip
    return ceiling
