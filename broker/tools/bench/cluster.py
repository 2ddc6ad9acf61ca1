"""Several processes on this machine: an external Dask scheduler, `dask worker`s, brokers.

Input: settings (as NIGHTJAR_* variables for the brokers) and how many of each. Output:
running processes, each in its own session (a SIGKILL of one broker's group leaves the
workers alone), their CPU seconds and peak memory from /proc, and the consumer group's
committed total. Used by `nightjar bench --scenario scaling|burst` and the scale-out test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from broker.errors import NightjarError
from broker.tools.bench.machine import _descendants
from broker.tools.bench.machine import _process_cpu_seconds as process_cpu_seconds

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120.0


class ClusterError(NightjarError):
    """A scheduler, worker or broker of the bench's cluster did not start or finish."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    """One started process (and its children), with where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def pids(self) -> list[int]:
        return [self.popen.pid, *_descendants(self.popen.pid)]

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(pid) for pid in self.pids())

    def peak_rss_mib(self) -> float:
        """Peak resident memory (VmHWM) of the largest process of the group, MiB."""
        return max((_vm_hwm_kib(pid) for pid in self.pids()), default=0) / 1024

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL its session (its own children too), nothing else."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.running():
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start(name: str, argv: Sequence[str], env: Mapping[str, str], logs: Path) -> Proc:
    log_path = logs / f"{name}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log_path)


@dataclass
class Cluster:
    """An external Dask scheduler and `dask worker` processes on 127.0.0.1."""

    logs: Path
    env: Mapping[str, str]
    port: int = field(default_factory=free_port)
    scheduler: Proc | None = None
    workers: list[Proc] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, workers: int, threads: int) -> None:
        argv = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(self.port)]
        self.scheduler = start("scheduler", [*argv, "--no-dashboard"], self.env, self.logs)
        for index in range(workers):
            self.add_worker(index, threads)
        self.wait_for_workers(workers)

    def add_worker(self, index: int, threads: int) -> None:
        argv = [str(BIN / "dask"), "worker", self.address, "--nthreads", str(threads)]
        argv += ["--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "0"]
        argv += ["--name", f"worker-{index}"]
        self.workers.append(start(f"worker-{index}", argv, self.env, self.logs))

    def wait_for_workers(self, count: int, timeout: float = START_TIMEOUT_S) -> None:
        from distributed import Client

        try:
            with Client(self.address, timeout=timeout) as client:
                client.wait_for_workers(count, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            tails = "\n".join(p.log()[-2000:] for p in [self.scheduler, *self.workers] if p)
            message = f"{count} Dask workers did not join {self.address}: {exc}\n{tails}"
            raise ClusterError(message) from exc

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc is not None:
                proc.stop(timeout=10)


def broker_argv(config: Path, exit_when_idle: float | None = None) -> list[str]:
    argv = [str(BIN / "nightjar"), "--config", str(config), "run"]
    return argv if exit_when_idle is None else [*argv, "--exit-when-idle", str(exit_when_idle)]


def broker_env(base: Mapping[str, str], settings: Mapping[str, object]) -> dict[str, str]:
    """`base` without its NIGHTJAR_* variables, plus `settings` as NIGHTJAR_<SECTION>__<KEY>."""
    env = {k: v for k, v in base.items() if not k.startswith("NIGHTJAR_")}
    for name, value in settings.items():
        env[f"NIGHTJAR_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Offsets the group has committed on `topic` (alerts stored and published)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        asked = [TopicPartition(topic, p) for p in range(partitions)]
        return sum(max(0, tp.offset) for tp in consumer.committed(asked, timeout=10))
    finally:
        consumer.close()


def stop_all(procs: Iterable[Proc | None]) -> None:
    for proc in procs:
        if proc is not None:
            proc.stop(timeout=15)


def _vm_hwm_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll `check()` until true; ClusterError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
