"""The Fritz-like API as an entry of `nightjar services`: its token, command line, exports."""

from __future__ import annotations

import socket
import stat
import sys
from pathlib import Path

import pytest

from broker.errors import ConfigError
from broker.tools.services.base import Layout
from broker.tools.services.fritz import FritzService


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_prepare_makes_one_private_token_and_the_command(tmp_path: Path) -> None:
    layout = Layout(cache=tmp_path / "cache", data=tmp_path / "data")
    env = {"NIGHTJAR_SERVICES_FRITZ_PORT": "5123", "NIGHTJAR_SERVICES_FERRETDB_PORT": "27999"}
    service = FritzService(env)
    argv = service.prepare(layout)
    token_file = layout.workdir("fritz") / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text()
    assert len(token.strip()) >= 40
    assert service.prepare(layout) == argv and token_file.read_text() == token  # kept
    assert argv[:5] == [sys.executable, "-m", "broker", "fritz", "serve"]
    assert argv[argv.index("--port") + 1] == "5123"
    assert argv[argv.index("--tokens-file") + 1] == str(token_file)
    assert argv[argv.index("--mongo-uri") + 1] == "mongodb://127.0.0.1:27999"
    assert service.address() == "http://127.0.0.1:5123"


def test_an_explicit_mongo_uri_is_left_to_the_environment(tmp_path: Path) -> None:
    layout = Layout(cache=tmp_path / "cache", data=tmp_path / "data")
    argv = FritzService({"NIGHTJAR_MONGO__URI": "mongodb://db:27017"}).prepare(layout)
    assert "--mongo-uri" not in argv


def test_exports_point_the_poster_at_the_service(tmp_path: Path) -> None:
    env = {"NIGHTJAR_SERVICES_DIR": str(tmp_path), "NIGHTJAR_SERVICES_FRITZ_PORT": "5124"}
    exports = FritzService(env).exports()
    assert exports == {
        "NIGHTJAR_FRITZ__URL": "http://127.0.0.1:5124",
        "NIGHTJAR_FRITZ__TOKEN_FILE": str(tmp_path / "fritz" / "token"),
    }


def test_probe_says_why_when_nothing_answers() -> None:
    port = free_port()
    reason = FritzService({"NIGHTJAR_SERVICES_FRITZ_PORT": str(port)}).probe()
    assert reason is not None and f"http://127.0.0.1:{port}/healthz" in reason


def test_bad_port_variable() -> None:
    with pytest.raises(ConfigError, match="NIGHTJAR_SERVICES_FRITZ_PORT"):
        FritzService({"NIGHTJAR_SERVICES_FRITZ_PORT": "web"})
