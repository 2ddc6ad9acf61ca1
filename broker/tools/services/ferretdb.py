"""FerretDB v1.24.2 (MongoDB wire protocol on SQLite) as the local MongoDB server.

Input: services/ferretdb (go.mod + go.sum pin every module, main.go embeds FerretDB) and
the port variable; output: the `ferretdb` binary in the cache, a SQLite data folder,
and its command line.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from broker.errors import ServiceError
from broker.tools.services import build
from broker.tools.services.base import HOST, SOURCES, Layout, Port, Reporter, Service, port_from_env

log = logging.getLogger(__name__)

FERRETDB_VERSION = "v1.24.2"
SOURCE = SOURCES / "ferretdb"
# Files of services/ferretdb/patches/ laid over the vendored FerretDB source before building
# (the Go toolchain refuses overlays of module-cache files, hence `go mod vendor`):
# metadata.go (indexes), collection.go (_id $in pushed down to SQLite), fsql_tx.go and
# fsql_db.go (no debug-log formatting of every statement's arguments when debug is off),
# msg_createindexes.go (the legacy index option "ns" ignored, as MongoDB does: mongorestore
# sends it with every index it restores), msg_update.go (each statement of an update
# command closes its query before the next: upstream holds one SQLite connection per
# statement until the command ends, and concurrent commands of 50 statements exhausted
# the pool of 100 and hung the database for good).
PATCHES = {
    "patches/metadata.go": (
        "github.com/FerretDB/FerretDB/internal/backends/sqlite/metadata/metadata.go"
    ),
    "patches/collection.go": "github.com/FerretDB/FerretDB/internal/backends/sqlite/collection.go",
    "patches/fsql_tx.go": "github.com/FerretDB/FerretDB/internal/util/fsql/tx.go",
    "patches/fsql_db.go": "github.com/FerretDB/FerretDB/internal/util/fsql/db.go",
    "patches/msg_createindexes.go": (
        "github.com/FerretDB/FerretDB/internal/handler/msg_createindexes.go"
    ),
    "patches/msg_update.go": "github.com/FerretDB/FerretDB/internal/handler/msg_update.go",
}
SOURCE_FILES = ("go.mod", "go.sum", "main.go", *PATCHES)
PORT_ENV = "NIGHTJAR_SERVICES_FERRETDB_PORT"
MIN_GO = (1, 24)  # FerretDB v1.24.2's go.mod says `go 1.24`


def parse_go_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `go env GOVERSION` output such as 'go1.26.8' or 'go1.24rc1'."""
    match = re.search(r"go(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_go(go: str) -> None:
    """ServiceError when the `go` found is too old to build FerretDB."""
    try:
        completed = subprocess.run(
            [go, "env", "GOVERSION"], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"cannot run `{go} env GOVERSION`: {exc}") from exc
    found = parse_go_version(completed.stdout)
    if found is None or found < MIN_GO:
        shown = completed.stdout.strip() or completed.stderr.strip() or "an unknown version"
        raise ServiceError(
            f"building FerretDB {FERRETDB_VERSION} needs Go {MIN_GO[0]}.{MIN_GO[1]} or newer, "
            f"but {go} is {shown}: {build.GO.install}"
        )


class FerretDBService(Service):
    name = "ferretdb"
    title = f"FerretDB {FERRETDB_VERSION} (MongoDB wire protocol, SQLite backend)"
    start_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.port = port_from_env(self.env, PORT_ENV, 27017, "FerretDB (MongoDB) port")

    def ports(self) -> list[Port]:
        return [self.port]

    def binary(self, layout: Layout) -> Path:
        digest = build.source_digest(SOURCE / name for name in SOURCE_FILES)
        return layout.cache / "ferretdb" / f"{FERRETDB_VERSION}-{digest}" / "ferretdb"

    def build(self, layout: Layout, report: Reporter) -> None:
        binary = self.binary(layout)
        if binary.is_file():
            return
        go = build.require(build.GO, f"Building FerretDB {FERRETDB_VERSION}")
        check_go(go)
        build_log = layout.cache / "ferretdb" / "build.log"
        report(
            f"ferretdb: building FerretDB {FERRETDB_VERSION} with Go into {binary.parent} "
            f"(first run only, a few minutes on a small machine; log {build_log})"
        )

        def compile_binary(folder: Path) -> None:
            work = folder / "src"
            shutil.copytree(SOURCE, work)
            # go.sum pins every module; `go mod vendor` copies them so the patches can apply.
            build.run_step(
                [go, "mod", "vendor"], what="go mod vendor", cwd=work, log_path=build_log,
                timeout=3600,
            )  # fmt: skip
            for patch, target in PATCHES.items():
                shutil.copyfile(work / patch, work / "vendor" / target)
            argv = [go, "build", "-trimpath", "-buildvcs=false", "-mod=vendor"]
            argv += ["-o", str(folder / "ferretdb"), "."]
            build.run_step(argv, what="go build", cwd=work, log_path=build_log, timeout=3600)
            shutil.rmtree(work)

        began = time.monotonic()
        build.build_once(binary.parent, compile_binary)
        report(f"ferretdb: built ({time.monotonic() - began:.0f} s)")

    def prepare(self, layout: Layout) -> list[str]:
        data = layout.workdir(self.name) / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [
            str(self.binary(layout)),
            f"--listen-addr={HOST}:{self.port.number}",
            "--handler=sqlite",
            # WAL (FerretDB's default) with synchronous=NORMAL: a commit survives a crash of
            # FerretDB or of the broker, not a power cut of this machine (the last commits
            # may roll back; production runs MongoDB). FULL syncs every upsert: the light-
            # curve updates cost 3x more (0.92 -> 0.31 ms each, measured).
            f"--sqlite-url={data.as_uri()}/?_pragma=synchronous(normal)",
            "--log-level=warn",
        ]

    def probe(self) -> str | None:
        client: MongoClient[dict[str, object]] = MongoClient(
            self.address(),
            serverSelectionTimeoutMS=1500,
            connectTimeoutMS=1500,
            directConnection=True,
        )
        try:
            client.admin.command("ping")
        except PyMongoError as exc:
            # pymongo appends the whole topology description; the first part says it all.
            first = str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0]
            return f"no answer to ping at {self.address()}: {first}"
        finally:
            client.close()
        return None

    def address(self) -> str:
        return f"mongodb://{HOST}:{self.port.number}"

    def exports(self) -> dict[str, str]:
        return {"NIGHTJAR_MONGO__URI": self.address()}
