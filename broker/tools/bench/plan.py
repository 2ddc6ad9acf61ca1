"""`nightjar bench --plan`: cores (and GPUs) a stream needs, from measured costs per alert.

Input: CPU milliseconds per alert of the brokers and of the workers (model inference and
the preprocessing around it), from a scale-out bench run. Output: for each stream (ZTF's
busiest night, Rubin's sustained rate, a 40,000-alert visit cleared in a minute) the
brokers' and workers' cores, or with GPUs the GPUs and the cores left on CPU. Pure.

cores = alerts/s x CPU seconds per alert / utilisation: CPU per alert was measured flat as
processes were added (the scaling scenario), so cost adds up linearly; `utilisation` keeps
headroom (a core planned at 70% busy). The database and Kafka are sized apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# name: (alerts, seconds to process them in)
STREAMS: dict[str, tuple[float, float]] = {
    "ztf_busiest_night": (1_200_000, 10 * 3600),  # 1.2 million alerts in ~10 h
    "rubin_sustained": (333, 1),  # ~10,000 alerts per 30 s visit
    "rubin_visit_40k_in_60s": (40_000, 60),  # the largest visit, public within a minute
}
DEFAULT_UTILISATION = 0.7


@dataclass(frozen=True, slots=True)
class Costs:
    """CPU milliseconds per alert, as measured (the workers' split from an in-process run)."""

    broker_ms: float
    model_ms: float
    preprocess_ms: float
    scheduler_ms: float = 0.0

    @property
    def worker_ms(self) -> float:
        return self.model_ms + self.preprocess_ms


@dataclass(frozen=True, slots=True)
class Need:
    stream: str
    alerts_per_s: float
    broker_cores: float
    worker_cores_cpu_only: float
    total_cores_cpu_only: int
    gpus: int | None
    worker_cores_with_gpus: float | None
    total_cores_with_gpus: int | None


def need(
    stream: str,
    rate: float,
    costs: Costs,
    utilisation: float = DEFAULT_UTILISATION,
    gpu_alerts_per_s: float | None = None,
) -> Need:
    """What `rate` alerts/s costs; with a GPU rate, models move there, preprocessing stays."""
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be within (0, 1], not {utilisation}")
    if rate < 0:
        raise ValueError(f"rate must be >= 0, not {rate}")

    def cores(ms: float) -> float:
        return rate * ms / 1000 / utilisation

    broker = cores(costs.broker_ms + costs.scheduler_ms)
    workers = cores(costs.worker_ms)
    gpus = workers_gpu = total_gpu = None
    if gpu_alerts_per_s is not None:
        if gpu_alerts_per_s <= 0:
            raise ValueError(f"the GPU rate must be > 0 alerts/s, not {gpu_alerts_per_s}")
        gpus = max(1, math.ceil(rate / (gpu_alerts_per_s * utilisation))) if rate else 0
        workers_gpu = round(cores(costs.preprocess_ms), 2)
        total_gpu = math.ceil(broker + workers_gpu)
    return Need(
        stream,
        round(rate, 1),
        round(broker, 2),
        round(workers, 2),
        math.ceil(broker + workers),
        gpus,
        workers_gpu,
        total_gpu,
    )


def plan(
    costs: Costs, utilisation: float = DEFAULT_UTILISATION, gpu_alerts_per_s: float | None = None
) -> list[Need]:
    return [
        need(name, alerts / seconds, costs, utilisation, gpu_alerts_per_s)
        for name, (alerts, seconds) in STREAMS.items()
    ]


def costs_from_bench(document: Mapping[str, Any]) -> Costs:
    """The single-broker, single-worker cell of a scaling run (else the first cell)."""
    scaling = document.get("scenarios", {}).get("scaling")
    if not scaling or not scaling.get("cells"):
        raise ValueError(
            "no scaling cells in this bench JSON: run `nightjar bench --scenario scaling "
            "--out FILE` first, or `nightjar bench --plan` without --from to measure"
        )
    cells = scaling["cells"]
    cell = next((c for c in cells if c["brokers"] == 1 and c["workers"] == 1), cells[0])
    cpu = cell["cpu_ms_per_alert"]
    model_share = float(scaling.get("worker_model_share", 1.0))
    return Costs(
        broker_ms=cpu["brokers"],
        model_ms=cpu["workers"] * model_share,
        preprocess_ms=cpu["workers"] * (1 - model_share),
        scheduler_ms=cpu.get("scheduler", 0.0),
    )


def plan_document(
    costs: Costs, utilisation: float, gpu_alerts_per_s: float | None
) -> dict[str, Any]:
    return {
        "costs_ms_per_alert": asdict(costs),
        "utilisation": utilisation,
        "gpu_alerts_per_s": gpu_alerts_per_s,
        "streams": {n.stream: asdict(n) for n in plan(costs, utilisation, gpu_alerts_per_s)},
    }


def table(document: Mapping[str, Any]) -> str:
    """The plan as a Markdown table (the README's)."""
    rows = [
        "| stream | alerts/s | broker cores | worker cores (CPU) | total cores (CPU) "
        "| GPUs | worker cores (GPU) | total cores (GPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in document["streams"].values():
        gpu = [n["gpus"], n["worker_cores_with_gpus"], n["total_cores_with_gpus"]]
        cells = [n["stream"], n["alerts_per_s"], n["broker_cores"], n["worker_cores_cpu_only"],
                 n["total_cores_cpu_only"], *("-" if v is None else v for v in gpu)]  # fmt: skip
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)
