"""`nightjar run`: the broker service (Kafka in, annotated alerts out) until stopped."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from broker import app
from broker.health import Health, serve
from broker.settings import load_settings

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run the broker", description=__doc__)
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit once the topics stay empty this long (backfills, tests)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if not args.verbose:
        logging.getLogger().setLevel(settings.logging.level)
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("signal %s: finishing batches in flight, then exiting", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    health = Health()
    if settings.metrics.enabled:
        serve(health, settings.metrics.host, settings.metrics.port)
    broker = app.build(settings, stop, health=health)
    stats = broker.run(stop, args.exit_when_idle)
    log.info(
        "done: %d messages, %d stored, %d rejected in %d batches",
        stats.messages, stats.stored, stats.rejected, stats.batches,
    )  # fmt: skip
    return 0
