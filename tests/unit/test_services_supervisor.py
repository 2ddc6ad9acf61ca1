"""The supervisor and pid files with real processes: small Python TCP listeners stand in
for Kafka and FerretDB so start, probe, idempotency and stop run without the services."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.__main__ import main
from broker.errors import ServiceError
from broker.tools.services import pidfile, supervisor
from broker.tools.services.base import HOST, Layout, Port, Reporter, Service
from tests.helpers import poll_until

LISTENER = """
import signal, socket, sys
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[2] == "broken":
    sys.exit("listener: cannot read its configuration")
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
while True:
    server.accept()[0].close()
"""


class ListenerService(Service):
    """A real process that serves TCP on one port: enough to exercise the supervisor."""

    name = "listener"
    title = "test TCP listener"
    start_timeout = 15.0
    stop_timeout = 0.5

    def __init__(self, port: int, mode: str = "normal") -> None:
        super().__init__({})
        self.port = port
        self.mode = mode
        self.builds = 0

    def ports(self) -> list[Port]:
        return [Port("listener port", self.port, "LISTENER_PORT")]

    def build(self, layout: Layout, report: Reporter) -> None:
        self.builds += 1

    def prepare(self, layout: Layout) -> list[str]:
        layout.workdir(self.name).mkdir(parents=True, exist_ok=True)
        return [sys.executable, "-c", LISTENER, str(self.port), self.mode]

    def probe(self) -> str | None:
        try:
            socket.create_connection((HOST, self.port), timeout=0.5).close()
        except OSError as exc:
            return str(exc)
        return None

    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def exports(self) -> dict[str, str]:
        return {"LISTENER_ADDRESS": self.address()}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    layout = Layout(cache=tmp_path / "cache", data=tmp_path / "data")
    yield layout
    # Whatever a failing test left running is stopped here, never leaked.
    record = pidfile.read_live(layout.pid_path("listener"))
    if record is not None:
        os.killpg(record.pid, signal.SIGKILL)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not ours to stop: it blocks reading its stdin."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield process
    process.kill()
    process.wait()


def test_up_status_down_round_trip(layout: Layout) -> None:
    service = ListenerService(_free_port())
    lines: list[str] = []

    states = supervisor.up([service], layout, lines.append)

    assert [(state.state, state.pid is not None) for state in states] == [("running", True)]
    assert service.probe() is None
    assert supervisor.status([service], layout)[0].state == "running"

    again = supervisor.up([service], layout, lines.append)
    assert again[0].pid == states[0].pid
    assert "listener: already running" in lines[-1]
    assert service.builds == 1  # a running service is not rebuilt

    supervisor.down([service], layout, lines.append)
    assert lines[-1].startswith("listener: stopped (pid")
    assert supervisor.status([service], layout)[0].state == "stopped"
    assert not layout.pid_path("listener").exists()
    # The kernel may take a moment to close the dead process's listening socket.
    poll_until(lambda: service.probe() is not None, timeout=10, message="the port is closed")


def test_sigterm_ignored_means_sigkill(layout: Layout) -> None:
    service = ListenerService(_free_port(), mode="stubborn")
    lines: list[str] = []
    supervisor.up([service], layout, lines.append)

    supervisor.down([service], layout, lines.append)

    assert "did not stop within" in lines[-1] and "killed" in lines[-1]
    assert supervisor.status([service], layout)[0].state == "stopped"


def test_start_failure_shows_the_log(layout: Layout) -> None:
    service = ListenerService(_free_port(), mode="broken")

    with pytest.raises(ServiceError) as caught:
        supervisor.up([service], layout, lambda line: None)

    message = str(caught.value)
    assert "listener exited during start-up" in message
    assert "cannot read its configuration" in message
    assert str(layout.log_path("listener")) in message
    assert not layout.pid_path("listener").exists()


def test_port_taken_by_someone_else(layout: Layout) -> None:
    with socket.socket() as other:
        other.bind((HOST, 0))
        other.listen()
        service = ListenerService(other.getsockname()[1])

        with pytest.raises(
            ServiceError, match=r"already in use .* pick another port with LISTENER_PORT="
        ):
            supervisor.up([service], layout, lambda line: None)


def test_down_leaves_processes_it_did_not_start(
    layout: Layout, sleeper: subprocess.Popen[bytes]
) -> None:
    # A pid file naming a live process that runs something else (a recycled pid).
    foreign = pidfile.PidRecord(pid=sleeper.pid, argv=("java", "kafka.Kafka"), start_ticks=None)
    pidfile.write(layout.pid_path("listener"), foreign)
    lines: list[str] = []

    supervisor.down([ListenerService(_free_port())], layout, lines.append)

    assert lines == ["listener: not running"]
    assert sleeper.poll() is None
    assert not layout.pid_path("listener").exists()


def test_pid_record_matches_only_its_own_process(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    path = tmp_path / "svc.pid"
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    record = pidfile.record_for(sleeper.pid, argv)
    pidfile.write(path, record)

    assert pidfile.read_live(path) == record
    later = pidfile.PidRecord(record.pid, record.argv, (record.start_ticks or 0) + 1)
    assert not pidfile.matches(later, pidfile.read_process(sleeper.pid))

    sleeper.kill()
    sleeper.wait()
    assert pidfile.read_live(path) is None
    assert not path.exists()


def test_zombies_and_corrupt_files_are_not_running(tmp_path: Path) -> None:
    zombie = pidfile.ProcessInfo(argv=(), start_ticks=5, zombie=True)
    assert not pidfile.matches(pidfile.PidRecord(1, (), 5), zombie)

    path = tmp_path / "svc.pid"
    path.write_text("{not json")
    assert pidfile.read_live(path) is None
    assert not path.exists()


def test_read_process_parses_odd_command_names(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cmdline").write_bytes(b"/usr/bin/java\0-cp\0libs/*\0")
    fields = ["S"] + ["0"] * 18 + ["123456"] + ["0"] * 10
    (proc / "42" / "stat").write_text(f"42 (java) x) {' '.join(fields)}\n")

    info = pidfile.read_process(42, proc)

    assert info == pidfile.ProcessInfo(("/usr/bin/java", "-cp", "libs/*"), 123456, zombie=False)
    assert pidfile.read_process(43, proc) is None


def test_cli_status_of_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NIGHTJAR_SERVICES_DIR", str(tmp_path / "services"))
    monkeypatch.setenv("NIGHTJAR_SERVICES_KAFKA_PORT", str(_free_port()))
    monkeypatch.setenv("NIGHTJAR_SERVICES_FERRETDB_PORT", str(_free_port()))

    assert main(["services", "status"]) == 3

    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["SERVICE", "STATE", "PID", "ADDRESS", "LOG"]
    assert [line.split()[:3] for line in out[1:3]] == [
        ["kafka", "stopped", "-"],
        ["ferretdb", "stopped", "-"],
    ]


def test_cli_rejects_unknown_services(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["services", "status", "postgres"]) == 2
    assert "unknown service postgres" in capsys.readouterr().err
