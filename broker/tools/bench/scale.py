"""Scale-out scenarios of `nightjar bench`: brokers and workers as separate processes.

Input: settings (services, models) and simulated ZTF alerts. Output: per run ("cell") the
rate at which `nightjar run` processes in one consumer group drain a backlog produced at
once (when every broker holds partitions) through an external Dask scheduler and `dask
worker`s, and what each alert cost: CPU seconds of every process from /proc, split over
the broker's stages by their measured wall time; the workers' model share comes from an
in-process timing of one batch; peak memory (VmHWM) and back-pressure pauses.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from broker.settings import Settings
from broker.tools.bench import cluster as procs
from broker.tools.bench.cluster import Cluster, Proc
from broker.tools.bench.machine import _machine_busy_seconds as machine_busy_seconds
from broker.tools.bench.workload import produce_spread
from broker.tools.scratch import admin_client, create_topics, delete_topics, drop_database, fresh_id

log = logging.getLogger(__name__)

CONFIG = Path(__file__).resolve().parents[3] / "config" / "nightjar.yaml"
BROKER_STAGES = ("decode", "history", "store", "publish", "commit")
PARTITIONS = 4
DRAIN_TIMEOUT_S = 1200.0
SAMPLE_S = 0.1
# Seconds the workers and scheduler are watched idle before the brokers start.
IDLE_S = 5.0
_METRIC = re.compile(
    r'^(nightjar_stage_seconds_sum)\{stage="(\w+)"\} (\S+)$|^(nightjar_consume_pauses_total) (\S+)$'
)


@dataclass(frozen=True, slots=True)
class CellSpec:
    """One measured run: `workers` 0 is the broker's own LocalCluster (the single-process
    deployment, for reference); otherwise an external scheduler with that many workers."""

    brokers: int
    workers: int
    threads: int
    label: str = ""


@dataclass
class Sample:
    at: float
    committed: int
    cpu: dict[str, float]
    machine_busy: float | None = None


def run_cell(
    settings: Settings,
    spec: CellSpec,
    messages: Sequence[bytes],
    models_dir: Path,
    seed_db: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Produce `messages`, run the processes until every offset is committed, measure."""
    run = fresh_id()
    names = {"in": f"nightjar-scale-{run}-in", "out": f"nightjar-scale-{run}.{{survey}}.out",
             "dead": f"nightjar-scale-{run}.dead", "group": f"nightjar-scale-{run}",
             "db": f"nightjar_scale_{run}"}  # fmt: skip
    admin = admin_client(settings)
    with ExitStack() as cleanup:
        logs = Path(cleanup.enter_context(TemporaryDirectory(prefix="nightjar-scale-")))
        cleanup.callback(drop_database, settings, names["db"])
        topics = [names["in"], names["out"].format(survey="ztf"), names["dead"]]
        cleanup.callback(delete_topics, admin, topics)
        create_topics(admin, [names["in"]], partitions=PARTITIONS)
        create_topics(admin, topics[1:])
        if seed_db is not None:
            seed_db(names["db"])
        produced: list[float] = []

        def produce() -> None:
            started = time.monotonic()
            produce_spread(settings.kafka.bootstrap_servers, names["in"], messages, PARTITIONS)
            produced.append(time.monotonic() - started)

        env = _env(settings, names, models_dir)
        external = Cluster(logs, env)
        cleanup.callback(external.stop)
        idle: dict[str, float] = {}
        if spec.workers:
            external.start(spec.workers, spec.threads)
            idle = idle_cores([*external.workers, external.scheduler])
        brokers = _start_brokers(spec, env, external, logs, cleanup)
        first, last, peaks = _drain(settings, names, brokers, external, len(messages), produce)
        metrics = [scrape(port) for _, port in brokers]
    cell = cell_document(spec, first, last, metrics, peaks, produced_s=produced[0])
    return with_idle(cell, idle)


def idle_cores(processes: Sequence[Proc | None], seconds: float = IDLE_S) -> dict[str, float]:
    """Cores each process keeps busy doing nothing (Dask heartbeats, event loops)."""
    alive = [p for p in processes if p is not None]
    before = {p.name: p.cpu_seconds() for p in alive}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {p.name: round((p.cpu_seconds() - before[p.name]) / elapsed, 4) for p in alive}


def with_idle(cell: dict[str, Any], idle: dict[str, float]) -> dict[str, Any]:
    """The cell, plus the idle cores measured before it and the CPU per alert net of them:
    a fixed cost per process per second, which weighs per alert as the rate falls."""
    if not idle:
        return cell
    rate = cell["alerts_per_s"]
    workers = sum(v for n, v in idle.items() if n.startswith("worker"))
    cpu = cell["cpu_ms_per_alert"]
    cell["idle_cores"] = idle
    cell["cpu_ms_per_alert_net_of_idle"] = {
        "workers": round(cpu["workers"] - 1000 * workers / rate, 3),
        "scheduler": round(cpu["scheduler"] - 1000 * idle.get("scheduler", 0.0) / rate, 3),
    }
    return cell


def _env(settings: Settings, names: dict[str, str], models_dir: Path) -> dict[str, str]:
    return procs.broker_env(
        os.environ,
        {
            "kafka__bootstrap_servers": settings.kafka.bootstrap_servers,
            "kafka__topics": [names["in"]],
            "kafka__group_id": names["group"],
            "kafka__output_topic": names["out"],
            "kafka__dead_letter_topic": names["dead"],
            "kafka__auto_offset_reset": "earliest",
            "mongo__uri": settings.mongo_uri(),
            "mongo__database": names["db"],
            # Measured as a site with several brokers runs them (also with one, for a flat
            # comparison across cells).
            "mongo__repair_light_curves": "true",
            "models__dir": str(models_dir),
            "models__provider": "cpu",
            "filters__definitions": [],
            "dispatch__batch_size": str(settings.dispatch.batch_size),
            "dispatch__max_in_flight": str(settings.dispatch.max_in_flight),
        },
    )


def _start_brokers(
    spec: CellSpec, env: dict[str, str], external: Cluster, logs: Path, cleanup: ExitStack
) -> list[tuple[Proc, int]]:
    started = []
    for index in range(spec.brokers):
        port = procs.free_port()
        extra = {"NIGHTJAR_METRICS__ENABLED": "true", "NIGHTJAR_METRICS__PORT": str(port),
                 "NIGHTJAR_METRICS__HOST": "127.0.0.1",
                 # Static membership as a site runs it: each broker its own name (the
                 # default, the host name, is one name for all of them here).
                 "NIGHTJAR_KAFKA__INSTANCE_NAME": f"bench-broker-{index}"}  # fmt: skip
        if spec.workers:
            extra["NIGHTJAR_DISPATCH__SCHEDULER_ADDRESS"] = external.address
        argv = procs.broker_argv(CONFIG)
        proc = procs.start(f"broker-{index}", argv, {**env, **extra}, logs)
        cleanup.callback(proc.stop)
        started.append((proc, port))
    return started


def _drain(
    settings: Settings,
    names: dict[str, str],
    brokers: list[tuple[Proc, int]],
    external: Cluster,
    total: int,
    produce: Callable[[], None],
) -> tuple[Sample, Sample, dict[str, float]]:
    """Once every broker holds partitions: a sample, the whole backlog produced at once, and
    a sample at the last commit; peak memory of each process. Start-up (models loaded,
    group joined) is left out, and every broker gets its share of the backlog (produced
    earlier, the first broker to join would read all of it before the others joined)."""
    processes = {p.name: p for p, _ in brokers}
    processes.update({p.name: p for p in external.workers})
    if external.scheduler is not None:
        processes["scheduler"] = external.scheduler

    def sample() -> Sample:
        done = procs.committed_total(
            settings.kafka.bootstrap_servers, names["group"], names["in"], PARTITIONS
        )
        cpu = {n: p.cpu_seconds() for n, p in processes.items()}
        if not external.workers:  # the broker's own LocalCluster: its children are workers
            for proc, _ in brokers:
                own = procs.process_cpu_seconds(proc.popen.pid)
                cpu[f"worker-of-{proc.name}"] = cpu[proc.name] - own
                cpu[proc.name] = own
        return Sample(time.monotonic(), done, cpu, machine_busy_seconds())

    def joined() -> bool:
        dead = [p.name for p in processes.values() if not p.running()]
        if dead:
            tails = "\n".join(processes[n].log()[-3000:] for n in dead)
            raise procs.ClusterError(f"exited before the stream: {dead}\n{tails}")
        return all(_reading(p) for p, _ in brokers)

    procs.wait_until(joined, procs.START_TIMEOUT_S, "every broker assigned partitions", 0.2)
    first = sample()
    produce()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        now = sample()
        if now.committed >= total:
            break
        dead = [p.name for p in processes.values() if not p.running()]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(processes[n].log()[-3000:] for n in dead)
            raise procs.ClusterError(f"drained {now.committed} of {total}; exited: {dead}\n{tails}")
        time.sleep(SAMPLE_S)
    peaks = {name: round(p.peak_rss_mib(), 1) for name, p in processes.items()}
    return first, now, peaks


def _busy(first: Sample, last: Sample) -> float | None:
    if first.machine_busy is None or last.machine_busy is None:
        return None
    return round((last.machine_busy - first.machine_busy) / max(last.at - first.at, 1e-6), 2)


def _reading(proc: Proc) -> bool:
    return any("assigned" in line and "nothing" not in line for line in proc.log().splitlines())


def scrape(port: int) -> dict[str, float]:
    """The broker's stage seconds (sums) and pauses, from its /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    except OSError as exc:
        log.warning("metrics of the broker on port %d: %s", port, exc)
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match and match.group(1):
            found[match.group(2)] = float(match.group(3))
        elif match:
            found["pauses"] = float(match.group(5))
    return found


def cell_document(
    spec: CellSpec,
    first: Sample,
    last: Sample,
    metrics: list[dict[str, float]],
    peaks: dict[str, float],
    produced_s: float,
) -> dict[str, Any]:
    """Rate and CPU per alert of one cell (from a broker's first partitions to the last commit)."""
    alerts = max(last.committed - first.committed, 1)
    seconds = max(last.at - first.at, 1e-6)
    cpu = {n: last.cpu[n] - first.cpu.get(n, 0.0) for n in last.cpu}
    broker_cpu = sum(v for n, v in cpu.items() if n.startswith("broker"))
    worker_cpu = sum(v for n, v in cpu.items() if n.startswith("worker"))
    stage_wall = {s: sum(m.get(s, 0.0) for m in metrics) for s in BROKER_STAGES}
    wall_total = sum(stage_wall.values()) or 1.0
    broker_ms = 1000 * broker_cpu / alerts
    return {
        "label": spec.label or f"{spec.brokers}b x {spec.workers}w",
        "brokers": spec.brokers,
        "workers": spec.workers,
        "threads_per_worker": spec.threads,
        "alerts": alerts,
        "seconds": round(seconds, 2),
        "alerts_per_s": round(alerts / seconds, 1),
        "produce_seconds": round(produced_s, 2),
        "cpu_ms_per_alert": {
            "brokers": round(broker_ms, 3),
            # The brokers' CPU split over stages by each stage's share of their timed wall time.
            "broker_stages": {
                s: round(broker_ms * w / wall_total, 3) for s, w in stage_wall.items()
            },
            "workers": round(1000 * worker_cpu / alerts, 3),
            "scheduler": round(1000 * cpu.get("scheduler", 0.0) / alerts, 3),
        },
        "cores_busy": round((broker_cpu + worker_cpu + cpu.get("scheduler", 0.0)) / seconds, 2),
        # The whole machine (other users, Kafka and the database included) over the window.
        "machine_busy_cores": _busy(first, last),
        "broker_stage_wall_s": {s: round(w, 2) for s, w in stage_wall.items()},
        "peak_rss_mib": peaks,
        "pauses": int(sum(m.get("pauses", 0.0) for m in metrics)),
    }
