"""`nightjar-fritz serve` (or `python -m nightjar_fritz serve`): the service on its own.

Input: the command line, a config file laid out as Nightjar's (its fritz.server, mongo and
filters sections) and NIGHTJAR_* variables. Output: the API and the candidates page until
SIGTERM; exit status 2 naming the field on a configuration error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nightjar_fritz import __version__
from nightjar_fritz.config import ConfigError, load_config

PROG = "nightjar-fritz"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Nightjar's Fritz-like service: a SkyPortal API subset and a candidates "
        "page, backed by MongoDB.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = actions.add_parser("serve", help="serve the API and the candidates page")
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML file with fritz.server, mongo and filters sections "
        "(default $NIGHTJAR_CONFIG, else ./config/nightjar.yaml when present)",
    )
    serve.add_argument("--host", default=None, help="address to bind (default fritz.server.host)")
    serve.add_argument(
        "--port", type=int, default=None, help="port to bind (default fritz.server.port)"
    )
    serve.add_argument(
        "--tokens-file",
        type=Path,
        default=None,
        help="file of accepted API tokens, one per line (default fritz.server.tokens_file)",
    )
    serve.add_argument(
        "--mongo-uri", default=None, help="MongoDB to store into (default mongo.uri)"
    )
    return parser


def serve(args: argparse.Namespace) -> int:
    from nightjar_fritz.server import FritzServer  # pymongo and the HTTP stack: only to serve

    if args.tokens_file is not None and not args.tokens_file.is_file():
        raise ConfigError(f"--tokens-file: {args.tokens_file} does not exist")
    overrides = {"fritz.server.tokens_file": args.tokens_file, "mongo.uri": args.mongo_uri}
    config = load_config(args.config, overrides=overrides)
    server = FritzServer(config, host=args.host, port=args.port)
    print(f"{PROG}: serving on {server.url} (candidates page at {server.url}/)", flush=True)
    server.serve_until_signalled()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return serve(args)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
