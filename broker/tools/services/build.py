"""Build steps of the local services: find the tools, run them, cache what they make.

Input: sources under the repository's services/ folder and a tool (mvn, go); output: a
finished folder under the cache, named by a digest of those sources, so a changed pin
builds afresh and an interrupted build never leaves a half-filled folder behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from broker.errors import ServiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tool:
    """A program a service needs, and where a newcomer gets it."""

    command: str
    what: str
    install: str


JAVA = Tool(
    "java",
    "a Java 17+ runtime",
    "install it with `sudo apt-get install default-jre-headless` (or run `make venv`)",
)
MAVEN = Tool(
    "mvn", "Apache Maven", "install it with `sudo apt-get install maven` (or run `make venv`)"
)
GO = Tool(
    "go",
    "Go 1.24 or newer",
    "install Go 1.24+ from https://go.dev/dl/ and put its bin/ on PATH (the golang-go "
    "package of Debian 12 is Go 1.19, too old; newer distributions' golang-go will do)",
)


def require(tool: Tool, purpose: str) -> str:
    """The absolute path of `tool`; ServiceError with the install hint when missing."""
    path = shutil.which(tool.command)
    if path is None:
        raise ServiceError(
            f"{purpose} needs `{tool.command}` ({tool.what}), which is not on PATH: {tool.install}"
        )
    return path


def source_digest(paths: Iterable[Path]) -> str:
    """A short digest of the files' names and contents: the cache key of a build."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            raise ServiceError(
                f"cannot read {path} ({exc.strerror}); `nightjar services` runs from a "
                "checkout of the repository (its services/ folder holds the build files)"
            ) from exc
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def build_once(target: Path, step: Callable[[Path], None]) -> Path:
    """Run `step(folder)` unless `target` exists, then move the folder to `target`.

    The step writes into a private temporary folder that is renamed only when it
    succeeded, so `target` existing means a complete build.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        step(scratch)
        try:
            scratch.rename(target)
        except OSError:
            # Another `services up` finished the same build first: theirs is as good.
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def run_step(
    argv: list[str],
    *,
    what: str,
    cwd: Path,
    log_path: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run one build command with its output appended to `log_path`.

    Raises ServiceError carrying the end of the log when it fails or runs too long.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.debug("running %s in %s (log %s)", argv, cwd, log_path)
    with log_path.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            completed = subprocess.run(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(
                f"{what} did not finish within {timeout:.0f} s; see {log_path}"
            ) from exc
        except OSError as exc:
            raise ServiceError(f"{what} could not run {argv[0]}: {exc.strerror}") from exc
    if completed.returncode != 0:
        raise ServiceError(
            f"{what} failed (exit status {completed.returncode}); the end of {log_path}:\n"
            f"{tail(log_path)}"
        )


def tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a text file (empty when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
