"""`nightjar` / `python -m broker`: the command line. Wiring only.

Each sub-command lives in `broker/cli/<name>.py` with `add_parser(subparsers)` and
`run(args) -> int`; adding a command adds a file and one name below.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from broker import __version__
from broker.errors import ConfigError, NightjarError

COMMANDS = (
    "run",
    "replay",
    "simulate",
    "services",
    "config",
    "models",
    "score",
    "bench",
    "demo",
    "post",
    "fritz",
    "tails",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nightjar",
        description="Nightjar: a streaming alert broker for ZTF and Rubin/LSST.",
    )
    parser.add_argument("--version", action="version", version=f"nightjar {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML configuration (default: $NIGHTJAR_CONFIG or config/nightjar.yaml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"broker.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"broker.cli.{name}":
                raise
            continue  # command not built yet in this checkout
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"nightjar: configuration error: {exc}", file=sys.stderr)
        return 2
    except NightjarError as exc:
        print(f"nightjar: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
