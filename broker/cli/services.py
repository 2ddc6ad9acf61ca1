"""`nightjar services up|down|status`: Kafka and FerretDB on this machine, without Docker.

The first `up` builds them (Maven jars, a Go binary) into the cache; later ones start in
seconds. Data, logs and pid files live in $NIGHTJAR_SERVICES_DIR (./.nightjar/services).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.tools.services import Layout, Service


EXIT_NOT_RUNNING = 3  # like `systemctl status`: something is not running


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from broker.tools.services import REGISTRY
    from broker.tools.services.base import CACHE_ENV, DATA_ENV

    parser = subparsers.add_parser(
        "services",
        help="start, stop or show the local Kafka and MongoDB-compatible server",
        description=(
            "Run the services Nightjar needs on this machine, bound to 127.0.0.1: "
            + ", ".join(cls.title for cls in REGISTRY.values())
            + f". Build outputs are cached in ${CACHE_ENV} (~/.cache/nightjar); data, "
            f"logs and pid files go to ${DATA_ENV} (./.nightjar/services)."
        ),
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "names",
        nargs="*",
        metavar="SERVICE",
        help=f"only these services ({', '.join(REGISTRY)}); default: all",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds `up` waits for each service to answer (default: per service)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from broker.tools.services import Layout, create, supervisor

    services = create(args.names)
    layout = Layout.from_env(os.environ, Path.cwd())
    if args.action == "up":
        return _up(services, layout, args.timeout)
    if args.action == "down":
        supervisor.down(services, layout, print)
        return 0
    return _status(services, layout)


def _up(services: list[Service], layout: Layout, timeout: float | None) -> int:
    from broker.tools.services import supervisor

    print(f"nightjar services: data, logs and pid files in {layout.data}")
    began = time.monotonic()
    states = supervisor.up(services, layout, print, timeout)
    print(f"ready in {time.monotonic() - began:.1f} s:")
    for state in states:
        print(f"  {state.service.name:<10} {state.service.address():<28} pid {state.pid}")
    print("\nPoint Nightjar at them with:")
    for state in states:
        for key, value in state.service.exports().items():
            print(f"  export {key}={value}")
    print("Stop them with `nightjar services down`.")
    return 0


def _status(services: list[Service], layout: Layout) -> int:
    from broker.tools.services import supervisor

    states = supervisor.status(services, layout)
    rows = [("SERVICE", "STATE", "PID", "ADDRESS", "LOG")]
    for state in states:
        pid = "-" if state.pid is None else str(state.pid)
        log_path = str(layout.log_path(state.service.name))
        rows.append((state.service.name, state.state, pid, state.service.address(), log_path))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    for state in states:
        if state.detail:
            print(f"{state.service.name}: {state.detail}")
    return 0 if all(state.state == "running" for state in states) else EXIT_NOT_RUNNING
