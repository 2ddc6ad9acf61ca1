"""What `nightjar bench` ran on, and how busy it was: CPU, memory, software, services.

Input: /proc (Linux), the installed packages and the reachable services. Output: plain
dicts for the benchmark JSON (anything that cannot be found is None, never an error), and
CPU samples that show whether the broker, its workers or the machine was the limit.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pymongo
from pymongo.errors import PyMongoError

from broker.errors import NightjarError
from broker.settings import Settings
from broker.tools.services.base import Layout
from broker.tools.services.ferretdb import FerretDBService
from broker.tools.services.kafka import KAFKA_VERSION, KafkaService
from broker.tools.services.supervisor import status

log = logging.getLogger(__name__)

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine(settings: Settings) -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "onnxruntime": {
            "version": ort.__version__,
            "providers": ort.get_available_providers(),
        },
        "mongodb": mongo_server(settings),
        "kafka": kafka_server(),
    }


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return None


def memory_gib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)  # the file counts KiB
    return None


def mongo_server(settings: Settings) -> dict[str, Any] | None:
    """FerretDB or MongoDB, from buildInfo (FerretDB adds `ferretdbVersion`)."""
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        settings.mongo_uri(), serverSelectionTimeoutMS=3000
    )
    try:
        info = client.admin.command("buildInfo")
    except PyMongoError as exc:
        log.debug("buildInfo failed: %s", exc)
        return None
    finally:
        client.close()
    if "ferretdbVersion" in info:
        return {
            "server": "FerretDB",
            "version": info.get("ferretdbVersion"),
            "mongodb_compatible": info.get("version"),
        }
    return {"server": "MongoDB", "version": info.get("version")}


def kafka_server() -> dict[str, Any]:
    """Kafka's version is known only for the broker `nightjar services up` runs here."""
    layout = Layout.from_env(os.environ, Path.cwd())
    try:
        local = status([KafkaService(os.environ)], layout)[0].state == "running"
    except (NightjarError, OSError) as exc:  # a status probe must never fail the benchmark
        log.debug("kafka status: %s", exc)
        local = False
    if local:
        return {"version": KAFKA_VERSION, "source": "nightjar services (KRaft, single node)"}
    return {"version": None, "source": "external broker (version not queried)"}


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds so far: the whole machine (busy), this process, its descendants, and
    each local service (`nightjar services up`) found running."""

    wall: float
    machine_busy: float | None
    process: float
    descendants: float
    services: dict[str, float]


def cpu_sample() -> CpuSample:
    return CpuSample(
        wall=time.monotonic(),
        machine_busy=_machine_busy_seconds(),
        process=time.process_time(),  # every thread: main loop, librdkafka, pymongo
        descendants=sum(_process_cpu_seconds(pid) for pid in _descendants(os.getpid())),
        services={name: _process_cpu_seconds(pid) for name, pid in _service_pids().items()},
    )


def _service_pids() -> dict[str, int]:
    """Pids of the local Kafka and FerretDB, where this data folder runs them."""
    layout = Layout.from_env(os.environ, Path.cwd())
    try:
        states = status([KafkaService(os.environ), FerretDBService(os.environ)], layout)
    except (NightjarError, OSError) as exc:  # a status probe must never fail the benchmark
        log.debug("services status: %s", exc)
        return {}
    return {s.service.name: s.pid for s in states if s.state == "running" and s.pid}


def cpu_usage(start: CpuSample, end: CpuSample) -> dict[str, float | int | None]:
    """Average cores kept busy between two samples (the Dask workers are descendants)."""
    wall = max(end.wall - start.wall, 1e-9)
    busy = None
    if start.machine_busy is not None and end.machine_busy is not None:
        busy = round((end.machine_busy - start.machine_busy) / wall, 2)
    return {
        "cores": os.cpu_count(),
        "machine_busy_cores": busy,
        "broker_process_cores": round((end.process - start.process) / wall, 2),
        "dask_worker_cores": round(max(0.0, end.descendants - start.descendants) / wall, 2),
        # The servers share the machine: their CPU is part of what an alert costs here.
        **{
            f"{name}_cores": round(max(0.0, end.services[name] - start.services[name]) / wall, 2)
            for name in sorted(start.services.keys() & end.services.keys())
        },
    }


def _machine_busy_seconds(stat: Path = Path("/proc/stat")) -> float | None:
    try:
        first = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    # cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait is busy.
    ticks = [int(value) for value in first[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(p) for p in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            pending.extend(children)
    return found


def _process_cpu_seconds(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0  # exited meanwhile
    # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    fields = text.rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS
