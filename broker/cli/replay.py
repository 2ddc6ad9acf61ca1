"""`nightjar replay`: produce alert files, folders or ZTF nightly archives into a topic.

ZTF container files go as they are; LSST container files are re-framed the way Rubin
sends them (Confluent framing). Exits 1 when any delivery failed or nothing was found.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from broker.kafka_config import client_config
from broker.settings import load_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay", help="produce alert files into a Kafka topic", description=__doc__
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help=".avro files, folders, .tar.gz"
    )
    parser.add_argument("--topic", required=True, help="Kafka topic to produce to")
    parser.add_argument(
        "--bootstrap", default=None, help="HOST:PORT (default: kafka.bootstrap_servers)"
    )
    parser.add_argument("--compression", choices=["lz4", "none"], default="lz4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from broker.tools.replay import default_producer_config, replay_paths

    settings = load_settings(args.config)
    bootstrap = args.bootstrap or settings.kafka.bootstrap_servers
    config = default_producer_config(
        bootstrap, args.compression, _security_only(client_config(settings))
    )
    try:
        stats = replay_paths(args.paths, args.topic, config, progress=not args.no_progress)
    except OSError as exc:
        print(f"nightjar replay: {exc}", file=sys.stderr)
        return 1
    print(
        f"{stats.files} files -> {stats.messages} messages ({stats.bytes / 1e6:.1f} MB) "
        f"to {args.topic} at {bootstrap}: {stats.delivered} delivered, {stats.failed} failed"
    )
    for error in stats.errors:
        print(f"  delivery error: {error}", file=sys.stderr)
    if stats.messages == 0:
        print("nightjar replay: no .avro files found in the given paths", file=sys.stderr)
        return 1
    return 0 if stats.ok else 1


def _security_only(config: dict[str, Any]) -> dict[str, Any]:
    """The shared client settings less the bootstrap address (given explicitly here)."""
    return {k: v for k, v in config.items() if k != "bootstrap.servers"}
