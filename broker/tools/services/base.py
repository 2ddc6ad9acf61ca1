"""What a local service is: the contract every entry of the services registry fulfils.

Input: the environment (ports, folders); output: `Layout` (where builds, data, logs
and pid files go) and the `Service` base class that `kafka.py`, `ferretdb.py`, ...
implement. The supervisor only ever talks to this interface.
"""

from __future__ import annotations

import abc
import errno
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from broker.errors import ConfigError

# User-facing progress lines ("building Kafka ..."); the CLI prints them.
Reporter = Callable[[str], None]

CACHE_ENV = "NIGHTJAR_CACHE"
DATA_ENV = "NIGHTJAR_SERVICES_DIR"
HOST = "127.0.0.1"  # local services never listen beyond this machine

# The repository's services/ folder (pom.xml, go.mod): present in a checkout or an
# editable install, which is where `nightjar services` is meant to run.
SOURCES = Path(__file__).resolve().parents[3] / "services"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where things live. `cache` holds build outputs shared by every checkout of this
    user; `data` holds one checkout's databases, logs and pid files."""

    cache: Path
    data: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str], cwd: Path) -> Layout:
        cache = env.get(CACHE_ENV) or str(Path.home() / ".cache" / "nightjar")
        data = env.get(DATA_ENV) or str(cwd / ".nightjar" / "services")
        return cls(cache=Path(cache).expanduser().absolute(), data=Path(data).absolute())

    def workdir(self, name: str) -> Path:
        return self.data / name

    def log_path(self, name: str) -> Path:
        return self.data / name / f"{name}.log"

    def pid_path(self, name: str) -> Path:
        return self.data / name / f"{name}.pid"


@dataclass(frozen=True, slots=True)
class Port:
    """A TCP port a service listens on, and the variable that moves it."""

    label: str
    number: int
    env: str


def port_from_env(env: Mapping[str, str], name: str, default: int, label: str) -> Port:
    """The port in environment variable `name`, or `default`; ConfigError when invalid."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return Port(label=label, number=default, env=name)
    try:
        number = int(raw)
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise ConfigError(f"{name} must be a TCP port number from 1 to 65535, got {raw!r}")
    return Port(label=label, number=number, env=name)


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something already listens on host:port (so our service could not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port in TIME_WAIT from a service we just stopped is free to use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


class Service(abc.ABC):
    """One local service. Subclasses set the class attributes and implement the methods;
    adding a service to `broker.tools.services.REGISTRY` is all the supervisor needs."""

    name: ClassVar[str]  # short, used for folders and on the command line
    title: ClassVar[str]  # for people: "Apache Kafka 3.9.1 (KRaft)"
    start_timeout: ClassVar[float] = 60.0  # seconds from start to healthy
    stop_timeout: ClassVar[float] = 20.0  # seconds of SIGTERM grace before SIGKILL

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env: Mapping[str, str] = os.environ if env is None else env

    @abc.abstractmethod
    def ports(self) -> list[Port]:
        """Every port the service binds; checked free before it starts."""

    @abc.abstractmethod
    def build(self, layout: Layout, report: Reporter) -> None:
        """Make the build outputs exist under layout.cache (quick when cached); raise
        ServiceError naming the missing tool or the failing step."""

    @abc.abstractmethod
    def prepare(self, layout: Layout) -> list[str]:
        """Write configuration and initialise data under layout.workdir(name); return
        the command line that runs the service in the foreground."""

    @abc.abstractmethod
    def probe(self) -> str | None:
        """None when the service answers like a client needs it to; else why not."""

    @abc.abstractmethod
    def address(self) -> str:
        """What a client connects to, e.g. '127.0.0.1:9092'."""

    @abc.abstractmethod
    def exports(self) -> dict[str, str]:
        """NIGHTJAR_* variables that point the broker at this service."""
