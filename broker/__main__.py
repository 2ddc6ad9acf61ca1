"""`nightjar` / `python -m broker`: the command line. Wiring only.

Each sub-command lives in `broker/cli/<name>.py` with `add_parser(subparsers)` and
`run(args) -> int`; adding a command adds a file and one name below.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
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
    "dashboards",
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv`, only the named command's module is imported.

    `nightjar run` then loads the service and nothing of the tools (tests/unit/test_layout.py);
    `nightjar --help`, or an unknown command, imports every command to list them all.
    """
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
    named = _command_in(argv)
    for name in (named,) if named else COMMANDS:
        try:
            module = importlib.import_module(f"broker.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"broker.cli.{name}":
                raise
            continue  # command not built yet in this checkout
        try:
            module.add_parser(subparsers)
        except ModuleNotFoundError as exc:
            _unavailable(subparsers, name, exc)
    return parser


def _unavailable(
    subparsers: argparse._SubParsersAction, name: str, missing: ModuleNotFoundError
) -> None:
    """A tool whose libraries this install lacks (the service images leave out the [tools]
    and [convert] extras): listed, and saying what to install, instead of breaking --help."""
    hint = f"needs {missing.name}: pip install 'nightjar[tools,convert]'"
    parser = subparsers.add_parser(name, help=f"(not installed here: {hint})", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)

    def refuse(args: argparse.Namespace) -> int:
        print(f"nightjar {name}: not available in this install ({hint})", file=sys.stderr)
        return 2

    parser.set_defaults(run=refuse)


def _command_in(argv: Sequence[str] | None) -> str | None:
    """The command named in `argv` (the first word that is not an option or its value)."""
    words = list(sys.argv[1:] if argv is None else argv)
    while words:
        word = words.pop(0)
        if word == "--config":
            words = words[1:]
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
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
