"""The Fritz-like API (`nightjar fritz serve`) as a local service next to Kafka and FerretDB.

Input: the port variable and the FerretDB address; output: a token file in the data folder
(made once), and the command line. `nightjar post` finds the service and its token through
the exported NIGHTJAR_FRITZ__URL and NIGHTJAR_FRITZ__TOKEN_FILE.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

import requests

from broker.tools.services.base import HOST, Layout, Port, Reporter, Service, port_from_env
from broker.tools.services.ferretdb import FerretDBService

PORT_ENV = "NIGHTJAR_SERVICES_FRITZ_PORT"


class FritzService(Service):
    name = "fritz"
    title = "Nightjar's Fritz-like API (SkyPortal subset and candidates page)"
    start_timeout = 30.0
    stop_timeout = 10.0

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.port = port_from_env(self.env, PORT_ENV, 5000, "Fritz-like API port")

    def ports(self) -> list[Port]:
        return [self.port]

    def build(self, layout: Layout, report: Reporter) -> None:
        """Nothing to build: the service is part of the installed package."""

    def token_file(self, layout: Layout | None = None) -> Path:
        layout = layout or Layout.from_env(self.env, Path.cwd())
        return layout.workdir(self.name) / "token"

    def prepare(self, layout: Layout) -> list[str]:
        token_file = self.token_file(layout)
        if not token_file.is_file():
            token_file.parent.mkdir(parents=True, exist_ok=True)
            # A random local token; `cat` it to open the candidates page (/?token=...).
            descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        argv = [sys.executable, "-m", "broker", "fritz", "serve", "--host", HOST]
        argv += ["--port", str(self.port.number), "--tokens-file", str(token_file)]
        if not self.env.get("NIGHTJAR_MONGO__URI"):
            argv += ["--mongo-uri", FerretDBService(self.env).address()]
        return argv

    def probe(self) -> str | None:
        try:
            response = requests.get(f"{self.address()}/healthz", timeout=2)
        except requests.RequestException as exc:
            return f"no answer at {self.address()}/healthz: {exc.__class__.__name__}"
        if response.status_code != 200:
            return f"{self.address()}/healthz answered HTTP {response.status_code}"
        return None

    def address(self) -> str:
        return f"http://{HOST}:{self.port.number}"

    def exports(self) -> dict[str, str]:
        return {
            "NIGHTJAR_FRITZ__URL": self.address(),
            "NIGHTJAR_FRITZ__TOKEN_FILE": str(self.token_file()),
        }
