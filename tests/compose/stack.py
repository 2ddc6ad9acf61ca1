"""The compose stack as the test drives it: the README's commands, ports, and waits.

`make compose-test` runs tests/compose/run.sh, which builds the images and runs pytest here
with NIGHTJAR_COMPOSE_TEST=1; everything below goes through `make up`/`make down` and
`docker compose`, exactly as an operator types them, plus the test's stand-in override.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.pipeline_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "reference"
OVERRIDE = REPO / "tests" / "compose" / "docker-compose.standins.yml"
PROJECT = "nightjar-compose-test"
# Host ports the stack publishes (docker-compose.yml), with the variables that move them.
PORTS = {
    "NIGHTJAR_KAFKA_PORT": 29092,
    "NIGHTJAR_MONGO_PORT": 27018,
    "NIGHTJAR_BROKER_METRICS_PORT": 9108,
    "NIGHTJAR_FRITZ_PORT": 5000,
    "NIGHTJAR_PROMETHEUS_PORT": 9090,
    "NIGHTJAR_DASK_DASHBOARD_PORT": 8787,
}
T = TypeVar("T")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def choose_ports() -> dict[str, int]:
    """The README's ports where free; another engineer's service on one moves only that one."""
    return {name: port if port_is_free(port) else free_port() for name, port in PORTS.items()}


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 2.0) -> T:
    """Poll `check` until it returns something other than None (or False); fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last is not None and last is not False:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class Stack:
    """One compose project on this machine's Docker engine."""

    ports: dict[str, int]
    secrets: dict[str, str] = field(
        default_factory=lambda: {
            "NIGHTJAR_FRITZ_TOKEN": "compose-test-token",
            "GRAFANA_ADMIN_PASSWORD": "compose-test-password",
        }
    )

    @property
    def env(self) -> dict[str, str]:
        """What an operator's .env says, as environment variables (they win over a .env)."""
        env = dict(os.environ)
        env.update({name: str(port) for name, port in self.ports.items()})
        env.update(self.secrets)
        env.update(
            COMPOSE_FILE=f"docker-compose.yml{os.pathsep}{OVERRIDE.relative_to(REPO)}",
            COMPOSE_PROJECT_NAME=PROJECT,
            COMPOSE_PROFILES="fritz",
            NIGHTJAR_MODELS_MIRROR=str(SHARED / "models"),
        )
        return env

    def run(self, argv: list[str], timeout: float = 900, cwd: Path = REPO) -> str:
        """A command (in the repository root); its output is in the failure message."""
        env = self.env
        if cwd != REPO:  # elsewhere, the same compose files (and project) by absolute path
            env["COMPOSE_FILE"] = os.pathsep.join(
                str(REPO / name) for name in env["COMPOSE_FILE"].split(os.pathsep)
            )
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{output[-4000:]}"
        return done.stdout

    def compose(self, *args: str, timeout: float = 900) -> str:
        return self.run(["docker", "compose", *args], timeout=timeout)

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json", *([service] if service else []))
        # Compose prints one JSON object per line (older versions: one JSON list).
        rows: list[dict[str, Any]] = []
        for line in out.splitlines():
            parsed = json.loads(line) if line.strip() else []
            rows += parsed if isinstance(parsed, list) else [parsed]
        return rows

    def leftovers(self) -> dict[str, list[str]]:
        """The project's containers, volumes and networks still on the engine."""
        label = f"label=com.docker.compose.project={PROJECT}"
        found = {}
        for kind, argv in {
            "containers": ["docker", "ps", "--all", "--quiet", "--filter", label],
            "volumes": ["docker", "volume", "ls", "--quiet", "--filter", label],
            "networks": ["docker", "network", "ls", "--quiet", "--filter", label],
        }.items():
            found[kind] = self.run(argv, timeout=60).split()
        return found

    # -- addresses on the host -----------------------------------------------------------

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.ports['NIGHTJAR_KAFKA_PORT']}"

    @property
    def mongo(self) -> str:
        return f"mongodb://127.0.0.1:{self.ports['NIGHTJAR_MONGO_PORT']}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.ports['NIGHTJAR_PROMETHEUS_PORT']}"

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"


def readme_commands(heading: str) -> list[str]:
    """The lines of the first ```bash block under `heading` in README.md, as written there."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n{heading}\n")
    block = text.index("```bash\n", start) + len("```bash\n")
    return [line for line in text[block : text.index("```", block)].splitlines() if line]


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)
