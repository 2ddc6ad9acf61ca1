"""The numbers `nightjar bench` reports: percentiles, per-stage costs, targets, JSON shape.

Input: measured durations, latencies and counts of one scenario. Output: the plain-data
scenario document (JSON-ready), with the target and whether it is met. Pure functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# What the broker is meant to sustain on one machine (alerts/s), and the share of the
# model-only ceiling the pipeline should reach (the rest is Kafka, MongoDB and Dask).
TARGETS: dict[str, dict[str, float]] = {
    "passthrough": {"sustained_alerts_per_s": 1000.0},
    "models": {"sustained_alerts_per_s": 200.0, "fraction_of_ceiling": 0.8},
    # A busy night's filter matches (broker.tools.bench.poster says how it is reckoned).
    "poster": {"candidates_per_s": 8.0},
}
# Pipeline stages in the order they run (broker.pipeline times each per batch).
STAGE_ORDER = ("decode", "history", "store", "publish", "commit")
# The broker keeps up with a paced stream when it finishes it at nearly the offered rate.
KEPT_UP_FRACTION = 0.95


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0-100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    """{p50, p99, max, n} in ms, rounded to 0.1 ms; None values when nothing was measured."""
    if not latencies_ms:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {
        "p50": round(percentile(latencies_ms, 50), 1),
        "p99": round(percentile(latencies_ms, 99), 1),
        "max": round(max(latencies_ms), 1),
        "n": len(latencies_ms),
    }


def latencies_ms(pairs: Sequence[tuple[int, int | None]], since_ms: int) -> list[float]:
    """Output timestamp - source timestamp of the messages whose source is at/after `since_ms`."""
    return [float(out - src) for out, src in pairs if src is not None and src >= since_ms]


@dataclass
class WorkerCost:
    """The workers' share, timed in-process on one batch with the workers' thread settings."""

    alerts: int
    annotate_seconds: float
    model_seconds: dict[str, float] = field(default_factory=dict)
    threads: int = 1
    ceiling_alerts_per_s: float | None = None

    @property
    def annotate_ms_per_alert(self) -> float:
        return 1000 * self.annotate_seconds / self.alerts if self.alerts else 0.0


def split_stages(
    stages: Mapping[str, float],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Top-level stages, and the parts timed inside them (`store_objects` is part of `store`).

    Parts are already counted in their stage: summing every name would count them twice.
    """
    top: dict[str, float] = {}
    parts: dict[str, dict[str, float]] = {}
    for name, seconds in stages.items():
        parent = next((p for p in stages if p != name and name.startswith(f"{p}_")), None)
        if parent is None:
            top[name] = seconds
        else:
            parts.setdefault(parent, {})[name] = seconds
    return top, parts


# Stages the pipeline's writer thread runs, beside the main thread's (broker/pipeline.py).
WRITER_STAGES = frozenset({"store", "publish"})


def stage_breakdown(
    stages: Mapping[str, float], wall_seconds: float, alerts: int, workers: WorkerCost | None
) -> dict[str, Any]:
    """Seconds and ms/alert per stage (with its parts), the rest of the loop, and the workers."""
    per_alert = 1000 / alerts if alerts else 0.0

    def cost(seconds: float) -> dict[str, float]:
        return {"seconds": round(seconds, 4), "ms_per_alert": round(seconds * per_alert, 3)}

    top, parts = split_stages(stages)
    names = [s for s in STAGE_ORDER if s in top] + sorted(set(top) - set(STAGE_ORDER))
    table: dict[str, Any] = {}
    for name in names:
        table[name] = cost(top[name])
        if name in parts:
            table[name]["parts"] = {part: cost(sec) for part, sec in sorted(parts[name].items())}
    # The main thread's time outside its stages: submitting to Dask (scatter) and waiting
    # for the workers or the writer. The writer's stages overlap the main thread's.
    main = sum(seconds for name, seconds in top.items() if name not in WRITER_STAGES)
    table["main_thread_waiting"] = cost(max(0.0, wall_seconds - main))
    table["wall"] = cost(wall_seconds)
    if workers is not None:
        table["workers"] = workers_document(workers)
    table["bottleneck"] = bottleneck(stages, alerts, workers)
    return table


def workers_document(workers: WorkerCost) -> dict[str, Any]:
    ms = 1000 / workers.alerts if workers.alerts else 0.0
    return {
        "timed_on_alerts": workers.alerts,
        "threads": workers.threads,
        "annotate_ms_per_alert": round(workers.annotate_ms_per_alert, 3),
        "models_ms_per_alert": {
            name: round(seconds * ms, 3) for name, seconds in workers.model_seconds.items()
        },
    }


def bottleneck(stages: Mapping[str, float], alerts: int, workers: WorkerCost | None) -> str:
    """The slowest side per alert: the main thread, the writer thread or the workers.

    The three run side by side (reading, storing and publishing, scoring), so the
    pipeline goes as fast as the slowest of them, when the machine has the cores for it.
    """
    if not alerts:
        return "unknown"
    top, parts = split_stages(stages)
    sides = {
        "main thread": {n: s for n, s in top.items() if n not in WRITER_STAGES},
        "writer thread": {n: s for n, s in top.items() if n in WRITER_STAGES},
    }
    side_ms = {side: 1000 * sum(own.values()) / alerts for side, own in sides.items()}
    threads = max(1, workers.threads) if workers else 1
    worker_ms = workers.annotate_ms_per_alert / threads if workers else 0.0
    side = max(side_ms, key=lambda name: side_ms[name])
    if worker_ms > side_ms[side]:
        return f"workers ({worker_ms:.2f} ms/alert over {threads} threads)"
    own = sides[side]
    if not own:
        return "unknown"
    slowest = max(own, key=lambda name: own[name])
    inner = parts.get(slowest, {})
    detail = f" ({max(inner, key=lambda name: inner[name])})" if inner else ""
    return f"{side} ({side_ms[side]:.2f} ms/alert), mostly {slowest}{detail}"


def target_check(scenario: str, sustained: float, fraction: float | None) -> dict[str, Any]:
    """The scenario's target and whether every part of it is met."""
    target = TARGETS.get(scenario, {})
    met = sustained >= target.get("sustained_alerts_per_s", 0.0)
    if "fraction_of_ceiling" in target:
        met = met and fraction is not None and fraction >= target["fraction_of_ceiling"]
    return {"target": dict(target), "meets_target": bool(met)}


def phase_document(
    before: Mapping[str, float],
    after: Mapping[str, float],
    batches: int,
    alerts: int,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """The latency phase: offered and achieved rate, batching, per-stage cost.

    `seconds` runs from the first paced message to the last one finished; when the broker
    finishes clearly slower than alerts arrive (`kept_up` false), the latencies measure a
    growing queue rather than the pipeline's own delay. Parts of a stage (`store_objects`)
    are listed beside it and already included in it.
    """
    per_alert = 1000 / alerts if alerts else 0.0
    achieved = alerts / seconds if seconds > 0 else 0.0
    return {
        "rate_alerts_per_s": round(rate, 1),
        "achieved_alerts_per_s": round(achieved, 1),
        "kept_up": bool(alerts) and achieved >= KEPT_UP_FRACTION * rate,
        "alerts": alerts,
        "batches": batches,
        "mean_batch_alerts": round(alerts / batches, 1) if batches else None,
        "stages_ms_per_alert": {
            name: round((after[name] - before.get(name, 0.0)) * per_alert, 3) for name in after
        },
    }


def scenario_document(
    scenario: str,
    alerts: int,
    wall_seconds: float,
    stages: Mapping[str, float],
    latencies: Sequence[float],
    workers: WorkerCost | None,
    latency_phase: Mapping[str, Any] | None = None,
    cpu: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One scenario's JSON: throughput, latency, stages, CPU use, ceiling and target."""
    sustained = alerts / wall_seconds if wall_seconds > 0 else 0.0
    ceiling = workers.ceiling_alerts_per_s if workers else None
    fraction = sustained / ceiling if ceiling else None
    document: dict[str, Any] = {
        "alerts": alerts,
        "sustained_alerts_per_s": round(sustained, 1),
        "latency_ms": latency_summary(latencies),
        "latency_phase": dict(latency_phase or {}),
        "stages_seconds": stage_breakdown(stages, wall_seconds, alerts, workers),
        "cpu_during_backlog": dict(cpu or {}),
    }
    if scenario == "models":
        document["model_only_ceiling_alerts_per_s"] = None if ceiling is None else round(ceiling, 1)
        document["fraction_of_ceiling"] = None if fraction is None else round(fraction, 3)
    document.update(target_check(scenario, sustained, fraction))
    return document
