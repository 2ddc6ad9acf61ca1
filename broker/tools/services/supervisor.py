"""Start, check and stop the local services behind `nightjar services up|down|status`.

Input: `Service` entries from the registry and a `Layout`; output: detached processes
(each in its own session, so they outlive the CLI) with a verified pid file and a log in
the data folder, and one `ServiceState` per service.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from broker.errors import ServiceError
from broker.tools.services import pidfile
from broker.tools.services.base import HOST, Layout, Reporter, Service, port_in_use
from broker.tools.services.build import tail

log = logging.getLogger(__name__)

State = Literal["running", "unhealthy", "stopped"]

# Processes started by this Python process, kept so they are reaped once stopped (a
# long-lived caller such as a test session would otherwise collect zombies).
_children: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True, slots=True)
class ServiceState:
    service: Service
    state: State
    pid: int | None
    detail: str = ""


def status(services: Sequence[Service], layout: Layout) -> list[ServiceState]:
    """What runs now: a live pid file of ours, and whether the service answers."""
    states = []
    for service in services:
        record = pidfile.read_live(layout.pid_path(service.name))
        if record is None:
            states.append(ServiceState(service, "stopped", None))
            continue
        reason = service.probe()
        state: State = "running" if reason is None else "unhealthy"
        states.append(ServiceState(service, state, record.pid, reason or ""))
    return states


def up(
    services: Sequence[Service], layout: Layout, report: Reporter, timeout: float | None = None
) -> list[ServiceState]:
    """Build what is missing, start what is not running, wait until every one answers.

    Idempotent: a service already running from this data folder is left as it is.
    Raises ServiceError (with the end of the service's log) when one cannot start.
    """
    layout.data.mkdir(parents=True, exist_ok=True)
    with _locked(layout, report):
        running = {s.name: pidfile.read_live(layout.pid_path(s.name)) for s in services}
        to_start = [service for service in services if running[service.name] is None]
        for service in to_start:
            service.build(layout, report)
        # Every port first: a conflict is reported before anything has been started.
        for service in to_start:
            _check_ports(service)
        for service in services:
            record = running[service.name]
            if record is None:
                pid = _spawn(service, layout)
                report(f"{service.name}: started (pid {pid}); waiting until it answers")
            else:
                report(f"{service.name}: already running (pid {record.pid})")
        started = {service.name for service in to_start}
        return [
            _await_healthy(service, layout, service.name in started, timeout)
            for service in services
        ]


def down(services: Sequence[Service], layout: Layout, report: Reporter) -> None:
    """Stop the services this data folder's pid files name: SIGTERM, then SIGKILL.

    Only processes whose command line and start time match their pid file are
    signalled; anything else on the same ports is left alone.
    """
    if not layout.data.is_dir():
        report(f"nothing to stop: {layout.data} does not exist")
        return
    with _locked(layout, report):
        for service in reversed(services):
            record = pidfile.read_live(layout.pid_path(service.name))
            if record is None:
                report(f"{service.name}: not running")
                continue
            began = time.monotonic()
            graceful = _terminate(record, service.stop_timeout)
            layout.pid_path(service.name).unlink(missing_ok=True)
            took = time.monotonic() - began
            how = (
                "stopped"
                if graceful
                else f"did not stop within {service.stop_timeout:.0f} s; killed"
            )
            report(f"{service.name}: {how} (pid {record.pid}, {took:.1f} s)")


@contextmanager
def _locked(layout: Layout, report: Reporter) -> Iterator[None]:
    """One `up`/`down` at a time per data folder (two `up`s must not start two Kafkas)."""
    with (layout.data / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"waiting for another `nightjar services` using {layout.data} to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_ports(service: Service) -> None:
    for port in service.ports():
        if port_in_use(port.number):
            raise ServiceError(
                f"{service.name}: {HOST}:{port.number} ({port.label}) is already in use by a "
                f"process `nightjar services` did not start from this folder; stop it, or "
                f"pick another port with {port.env}=<port>"
            )


def _spawn(service: Service, layout: Layout) -> int:
    argv = service.prepare(layout)
    log_path = layout.log_path(service.name)
    with log_path.open("ab") as out:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        out.write(f"--- {stamp} nightjar services up: {' '.join(argv)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            argv,
            cwd=layout.workdir(service.name),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the CLI and its terminal's Ctrl-C
        )
    _children.append(process)
    pidfile.write(layout.pid_path(service.name), pidfile.record_for(process.pid, argv))
    log.debug("started %s as pid %d: %s", service.name, process.pid, argv)
    return process.pid


def _await_healthy(
    service: Service, layout: Layout, started_now: bool, timeout: float | None
) -> ServiceState:
    limit = service.start_timeout if timeout is None else timeout
    record = pidfile.read(layout.pid_path(service.name))
    reason: str | None = "not probed yet"
    deadline = time.monotonic() + limit
    while record is not None:
        reason = service.probe()
        if reason is None:
            return ServiceState(service, "running", record.pid)
        if not pidfile.matches(record, pidfile.read_process(record.pid)):
            _reap()
            layout.pid_path(service.name).unlink(missing_ok=True)
            raise _start_failure(service, layout, "exited during start-up")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if record is not None and started_now:
        # Leave nothing half-started behind: the next `up` starts from a clean slate.
        _terminate(record, service.stop_timeout)
        layout.pid_path(service.name).unlink(missing_ok=True)
    raise _start_failure(service, layout, f"did not answer within {limit:.0f} s ({reason})")


def _start_failure(service: Service, layout: Layout, what: str) -> ServiceError:
    log_path = layout.log_path(service.name)
    return ServiceError(
        f"{service.name} {what}. The end of its log {log_path}:\n{tail(log_path)}\n"
        f"(services that did start keep running; `nightjar services down` stops them)"
    )


def _terminate(record: pidfile.PidRecord, grace: float) -> bool:
    """Stop the process (group) of `record`; True when SIGTERM sufficed."""
    _signal(record.pid, signal.SIGTERM)
    if _wait_until(lambda: not _alive(record), grace):
        return True
    log.warning("pid %d ignored SIGTERM for %.0f s; sending SIGKILL", record.pid, grace)
    _signal(record.pid, signal.SIGKILL)
    if not _wait_until(lambda: not _alive(record), 10.0):
        raise ServiceError(f"pid {record.pid} is still alive after SIGKILL")
    return False


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        # Services run in their own session: signal the group so helpers go too.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise ServiceError(f"not allowed to signal pid {pid}: {exc.strerror}") from exc


def _alive(record: pidfile.PidRecord) -> bool:
    _reap()
    return pidfile.matches(record, pidfile.read_process(record.pid))


def _reap() -> None:
    for process in list(_children):
        if process.poll() is not None:
            _children.remove(process)


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
