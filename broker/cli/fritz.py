"""`nightjar fritz serve`: the SkyPortal-compatible service (candidates, photometry, page).

Accepted tokens come from NIGHTJAR_FRITZ__SERVER__TOKENS, fritz.server.tokens_file or
--tokens-file; data goes to the MongoDB database fritz.server.database.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from pydantic import SecretStr

from broker.errors import ConfigError
from broker.settings import Settings, load_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fritz",
        help="run the SkyPortal-compatible Fritz-like service",
        description="Serve a SkyPortal API subset and a candidates page, backed by MongoDB.",
    )
    actions = parser.add_subparsers(dest="fritz_action", metavar="ACTION", required=True)
    serve = actions.add_parser("serve", help="serve the API and the candidates page")
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
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from nightjar_fritz.server import FritzServer

    settings = _overridden(load_settings(args.config), args.tokens_file, args.mongo_uri)
    server = FritzServer(settings, host=args.host, port=args.port)
    print(f"nightjar fritz: serving on {server.url} (candidates page at {server.url}/)")

    def _stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it must not run on its thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.serve_forever()
    server.close()
    return 0


def _overridden(settings: Settings, tokens_file: Path | None, mongo_uri: str | None) -> Settings:
    update: dict[str, object] = {}
    if tokens_file is not None:
        if not tokens_file.is_file():
            raise ConfigError(f"--tokens-file: {tokens_file} does not exist")
        server = settings.fritz.server.model_copy(update={"tokens_file": tokens_file})
        update["fritz"] = settings.fritz.model_copy(update={"server": server})
    if mongo_uri is not None:
        update["mongo"] = settings.mongo.model_copy(
            update={"uri": SecretStr(mongo_uri), "uri_file": None}
        )
    return settings.model_copy(update=update)
