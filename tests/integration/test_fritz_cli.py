"""`nightjar fritz serve` as `nightjar services up` runs it: a process, a token file, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from pymongo.database import Database

from broker import __main__ as cli
from broker.tools.services.base import Layout
from broker.tools.services.fritz import FritzService
from tests.helpers import poll_until

pytestmark = pytest.mark.skipif(
    "fritz" not in cli.COMMANDS, reason="broker/__main__.py COMMANDS does not list 'fritz' yet"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_service_process_serves_and_stops(
    tmp_path: Path, mongo_uri: str, mongo_db: Database[dict[str, object]]
) -> None:
    port = free_port()
    env = {"NIGHTJAR_SERVICES_FRITZ_PORT": str(port), "NIGHTJAR_MONGO__URI": mongo_uri,
           "NIGHTJAR_FRITZ__SERVER__DATABASE": mongo_db.name}  # fmt: skip
    service = FritzService(env)
    layout = Layout(cache=tmp_path / "cache", data=tmp_path / "data")
    argv = service.prepare(layout)
    log_path = tmp_path / "fritz.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=env | _path_env(), stdout=log, stderr=log)
    try:
        poll_until(lambda: service.probe() is None, timeout=30, message="the service answers")
        token = service.token_file(layout).read_text().strip()
        response = requests.get(
            f"{service.address()}/api/sysinfo",
            headers={"Authorization": f"token {token}"},
            timeout=5,
        )
        assert response.json()["data"]["database"] == mongo_db.name
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _path_env() -> dict[str, str]:
    # PYTHONPATH too: where it points the tests at a checkout, the service process must
    # import the same broker and nightjar_fritz (services/fritz) as the test does.
    keys = ("PATH", "HOME", "PYTHONPATH")
    return {key: os.environ[key] for key in keys if key in os.environ}
