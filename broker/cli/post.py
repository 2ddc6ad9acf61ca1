"""`nightjar post`: send filter matches from the outbox to SkyPortal/Fritz until stopped.

Jobs are written by the filter stage of `nightjar run`; this command can run as its own
process (several at once are safe) or be left to the thread inside `nightjar run`.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from types import FrameType

import pymongo

from broker.health import Health, serve
from broker.post.outbox import Outbox
from broker.post.sender import Sender
from broker.settings import Settings, load_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "post",
        help="post filter matches to SkyPortal/Fritz (the outbox sender)",
        description=(
            "Claim outbox jobs and make their SkyPortal calls (candidate, photometry, "
            "thumbnails, annotations); each call succeeds once even across restarts. "
            "The token comes from NIGHTJAR_FRITZ__TOKEN or fritz.token_file."
        ),
    )
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        default=None,
        help="exit once no job has been due for this long (default: run until stopped)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="queue jobs that failed (e.g. after a rejected token) again before sending",
    )
    parser.add_argument(
        "--status", action="store_true", help="print outbox job counts by status and exit"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (default: none)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.status:
        print(json.dumps(_counts(settings), sort_keys=True))
        return 0
    sender = Sender.from_settings(settings)
    if args.retry_failed:
        queued = sender.outbox.retry_failed()
        print(f"nightjar post: {queued} failed job(s) queued again")
    health = Health()
    if args.metrics_port is not None:
        serve(health, settings.metrics.host, args.metrics_port)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sender.run(stop, exit_when_idle=args.exit_when_idle, health=health)
    return 0


def _counts(settings: Settings) -> dict[str, int]:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        settings.mongo_uri(), serverSelectionTimeoutMS=settings.mongo.timeout_ms
    )
    try:
        return Outbox(client[settings.mongo.database]).counts()
    finally:
        client.close()
