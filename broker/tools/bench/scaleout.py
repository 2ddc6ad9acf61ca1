"""The scale-out scenarios: scaling (brokers x workers), burst (one large visit), and
long-history (objects that already hold hundreds of points) against fresh objects.

Input: settings with every model installed, and alert counts. Output: each scenario's
JSON document (cells from broker.tools.bench.scale), with the load average it ran under.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pymongo

from broker.decode import Decoder
from broker.errors import ConfigError
from broker.records import Origin
from broker.settings import Settings
from broker.tools.bench.ceiling import time_workers
from broker.tools.bench.main import SEED, first_batch, simulated
from broker.tools.bench.scale import BROKER_STAGES, CellSpec, run_cell
from broker.tools.bench.workload import cycled, long_history_objects
from broker.tools.models.inventory import model_inventory
from workers.annotate import Annotator

log = logging.getLogger(__name__)

SCALING_CELLS = (
    CellSpec(1, 0, 2, "1 broker, in-process LocalCluster (reference)"),
    *(CellSpec(b, w, max(1, 2 // w)) for w in (1, 2, 4) for b in (1, 2)),
)
# A burst made of this many distinct simulated alerts, cycled with new candids.
BURST_DISTINCT = 2000
LONG_HISTORY_POINTS = 300


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _models_dir(settings: Settings) -> Any:
    if not model_inventory(settings)[0]:
        raise ConfigError(
            f"no ONNX model is installed in {settings.models.dir}; install them with "
            "`nightjar models fetch` (or `make models`)"
        )
    return settings.models.dir.resolve()


def scaling(settings: Settings, n: int, progress: bool) -> dict[str, Any]:
    """Every cell on the same `n` alerts; the workers' model share timed in-process."""
    models = _models_dir(settings)
    messages = simulated(n, progress)
    cells = []
    for spec in SCALING_CELLS:
        before = load()
        log.info("scaling: %d broker(s) x %d worker(s), %d alerts", spec.brokers, spec.workers, n)
        cell = run_cell(settings, spec, messages, models)
        cell["load_average_before"] = before
        cells.append(cell)
        log.info("scaling: %s: %.1f alerts/s", cell["label"], cell["alerts_per_s"])
    return {
        "n": n,
        "cells": cells,
        "worker_model_share": model_share(settings, messages),
        "efficiency": efficiency(cells),
        "load_average_after": load(),
    }


def model_share(settings: Settings, messages: list[bytes]) -> float:
    """Share of the workers' time spent in ONNX Runtime (the rest is stamps and features)."""
    annotator = Annotator.from_settings(settings.models.model_copy(update={"provider": "cpu"}))
    cost = time_workers(annotator, first_batch(settings, messages), threads=1)
    if not cost.annotate_seconds:
        return 1.0
    return round(min(1.0, sum(cost.model_seconds.values()) / cost.annotate_seconds), 3)


def efficiency(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Each external cell's rate and CPU per alert against the single-process reference."""
    reference = cells[0]
    base_rate = reference["alerts_per_s"]
    base_cpu = _total_cpu(reference)
    return {
        cell["label"]: {
            "rate_vs_reference": round(cell["alerts_per_s"] / base_rate, 3),
            "cpu_per_alert_vs_reference": round(_total_cpu(cell) / base_cpu, 3),
        }
        for cell in cells[1:]
    }


def _total_cpu(cell: dict[str, Any]) -> float:
    cpu = cell["cpu_ms_per_alert"]
    return float(cpu["brokers"] + cpu["workers"] + cpu["scheduler"]) or 1e-9


def burst(settings: Settings, n: int, progress: bool) -> dict[str, Any]:
    """`n` alerts produced at once (one large visit); time to clear, memory, pauses."""
    models = _models_dir(settings)
    messages = cycled(simulated(min(n, BURST_DISTINCT), progress), n)
    before = load()
    cell = run_cell(settings, CellSpec(1, 1, 2, f"burst of {n}"), messages, models)
    return {
        **cell,
        # From the visit's first message produced (the broker waiting, models loaded) to
        # every offset committed; producing it took `produce_seconds` of that.
        "time_to_clear_s": round(cell["seconds"], 1),
        "load_average_before": before,
        "load_average_after": load(),
    }


def long_history(settings: Settings, n: int, progress: bool) -> dict[str, Any]:
    """The same alerts on fresh objects, then on objects pre-seeded with long light curves."""
    models = _models_dir(settings)
    messages = simulated(n, progress)
    decoder = Decoder(settings.schemas, settings.kafka.max_message_bytes)
    alerts = [decoder.decode(raw, Origin("bench", 0, i)) for i, raw in enumerate(messages)]
    seeded = long_history_objects(alerts, LONG_HISTORY_POINTS)

    def seed(database: str) -> None:
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(settings.mongo_uri())
        try:
            objects = client[database]["objects"]
            for start in range(0, len(seeded), 50):  # FerretDB: small commands
                objects.insert_many(seeded[start : start + 50])
        finally:
            client.close()

    spec = CellSpec(1, 1, 2)
    before = load()
    fresh = run_cell(settings, spec, messages, models)
    long = run_cell(settings, spec, messages, models, seed_db=seed)
    return {
        "n": n,
        "points_per_object": LONG_HISTORY_POINTS,
        "objects": len(seeded),
        "fresh": fresh,
        "long_history": long,
        "rate_ratio": round(long["alerts_per_s"] / fresh["alerts_per_s"], 3),
        "load_average_before": before,
        "load_average_after": load(),
        "seed": SEED,
    }


SCALE_OUT = {"scaling": scaling, "burst": burst, "long-history": long_history}
# `--plan` without a bench JSON: one single-broker, single-worker cell of this many alerts.
PLAN_N = 500


def run_scale_out(settings: Settings, scenario: str, n: int, progress: bool) -> dict[str, Any]:
    """The bench document of one scale-out scenario."""
    from datetime import UTC, datetime

    from broker import __version__
    from broker.tools.bench.machine import machine

    return {
        "nightjar": __version__,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dispatch": settings.dispatch.model_dump(mode="json"),
        "machine": machine(settings),
        "load_average": load(),
        "scenarios": {scenario: SCALE_OUT[scenario](settings, n, progress)},
    }


def short_measurement(settings: Settings, n: int, progress: bool) -> dict[str, Any]:
    """What `--plan` needs when given no bench JSON: one 1 x 1 cell and the model share."""
    models = _models_dir(settings)
    messages = simulated(n, progress)
    cell = run_cell(settings, CellSpec(1, 1, 2), messages, models)
    share = model_share(settings, messages)
    return {"scenarios": {"scaling": {"cells": [cell], "worker_model_share": share}}}


def scaling_table(result: dict[str, Any]) -> str:
    """The scaling cells as a Markdown table (the README's)."""
    rows = [
        "| brokers x workers (threads) | alerts/s | vs reference | CPU ms/alert: brokers "
        "(decode/history/store/publish) | workers (net of idle) | scheduler | machine busy cores |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell in result["cells"]:
        cpu = cell["cpu_ms_per_alert"]
        stages = "/".join(f"{cpu['broker_stages'][s]:.1f}" for s in BROKER_STAGES[:4])
        ratio = result["efficiency"].get(cell["label"], {}).get("rate_vs_reference", 1.0)
        shape = f"{cell['brokers']} x {cell['workers'] or 'local'} ({cell['threads_per_worker']})"
        net = cell.get("cpu_ms_per_alert_net_of_idle", {}).get("workers")
        workers = f"{cpu['workers']:.1f}" + ("" if net is None else f" ({net:.1f})")
        rows.append(
            f"| {shape} | {cell['alerts_per_s']} | {ratio:.2f} | {cpu['brokers']:.1f} ({stages}) "
            f"| {workers} | {cpu['scheduler']:.1f} | {cell['machine_busy_cores']} |"
        )
    return "\n".join(rows)
