"""`nightjar fritz serve`: the SkyPortal-compatible service (candidates, photometry, page).

The service is its own package (services/fritz, `nightjar-fritz serve` alone); this command
hands it Nightjar's settings. Accepted tokens come from NIGHTJAR_FRITZ__SERVER__TOKENS,
fritz.server.tokens_file or --tokens-file; data goes to the database fritz.server.database.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from broker.errors import ConfigError
from broker.settings import Settings, load_settings

if TYPE_CHECKING:
    from nightjar_fritz.server import FritzServer


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
    settings = _overridden(load_settings(args.config), args.tokens_file, args.mongo_uri)
    server = fritz_server(settings, host=args.host, port=args.port)
    print(f"nightjar fritz: serving on {server.url} (candidates page at {server.url}/)")
    server.serve_until_signalled()
    return 0


def fritz_server(
    settings: Settings, host: str | None = None, port: int | None = None
) -> FritzServer:
    """The service (services/fritz) configured from Nightjar's settings; ConfigError names
    the field as `nightjar` reports it."""
    from nightjar_fritz.config import ConfigError as ServiceConfigError
    from nightjar_fritz.config import config_from
    from nightjar_fritz.server import FritzServer

    server = settings.fritz.server
    sections = {
        "fritz": {"server": {
            **server.model_dump(exclude={"tokens"}),
            "tokens": [token.get_secret_value() for token in server.tokens],
        }},
        "mongo": {"uri": settings.mongo_uri(), "timeout_ms": settings.mongo.timeout_ms},
        "filters": {"definitions": [
            {"name": d.name, "fritz_filter_id": d.fritz_filter_id}
            for d in settings.filters.definitions
        ]},
    }  # fmt: skip
    try:
        return FritzServer(config_from(sections), host=host, port=port)
    except ServiceConfigError as exc:
        raise ConfigError(str(exc)) from exc


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
