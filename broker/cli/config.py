"""`nightjar config show`: the effective configuration, secrets masked."""

from __future__ import annotations

import argparse
import json

from broker.settings import load_settings, masked


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show the effective configuration")
    parser.add_argument("action", choices=["show"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    print(json.dumps(masked(settings), indent=2))
    return 0
