"""Pid files of the local services: which process `nightjar services up` started.

Input: a pid file written at start; output: the live `PidRecord`, or None when the
process is gone or the pid now belongs to someone else. A pid alone is not trusted:
the process's command line and start time must still match what was recorded, so
`down` never signals a process that Nightjar did not start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class PidRecord:
    """What a pid file holds: the process and how to recognise it later."""

    pid: int
    argv: tuple[str, ...]
    # Clock ticks since boot (field 22 of /proc/<pid>/stat): tells a recycled pid apart
    # even when the new process happens to run the same command line.
    start_ticks: int | None


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What the kernel says about a live pid."""

    argv: tuple[str, ...]
    start_ticks: int
    zombie: bool


ProcessReader = Callable[[int], ProcessInfo | None]


def read_process(pid: int, proc: Path = PROC) -> ProcessInfo | None:
    """The command line and start time of `pid`, or None when there is no such process."""
    try:
        raw_cmdline = (proc / str(pid) / "cmdline").read_bytes()
        raw_stat = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name in stat is in parentheses and may itself hold spaces or ')'.
    fields = raw_stat[raw_stat.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    argv = tuple(part.decode(errors="replace") for part in raw_cmdline.split(b"\0") if part)
    return ProcessInfo(argv=argv, start_ticks=int(fields[19]), zombie=fields[0] in ("Z", "X"))


def record_for(pid: int, argv: Sequence[str], reader: ProcessReader = read_process) -> PidRecord:
    """The record to write for a process just started with `argv`."""
    info = reader(pid)
    return PidRecord(pid=pid, argv=tuple(argv), start_ticks=info.start_ticks if info else None)


def matches(record: PidRecord, info: ProcessInfo | None) -> bool:
    """True when `info` describes the very process `record` was written for."""
    if info is None or info.zombie:
        return False
    if record.start_ticks is not None and info.start_ticks != record.start_ticks:
        return False
    return info.argv == record.argv


def write(path: Path, record: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(record)) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def read(path: Path) -> PidRecord | None:
    """The record in `path`; None when absent. A corrupt file is logged and ignored."""
    try:
        data = json.loads(path.read_text())
        return PidRecord(
            pid=int(data["pid"]),
            argv=tuple(str(arg) for arg in data["argv"]),
            start_ticks=None if data.get("start_ticks") is None else int(data["start_ticks"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable pid file %s: %s", path, exc)
        return None


def read_live(path: Path, reader: ProcessReader = read_process) -> PidRecord | None:
    """The record in `path` if its process still runs; a stale file is removed."""
    record = read(path)
    if record is None:
        path.unlink(missing_ok=True)
        return None
    if matches(record, reader(record.pid)):
        return record
    log.info("removing stale pid file %s (pid %d is gone or not ours)", path, record.pid)
    path.unlink(missing_ok=True)
    return None
