"""`nightjar demo`: a newcomer's first command (`make demo`); the whole broker in a minute.

Starts the local services if needed, installs the models from the reference mirror when
none is installed, replays simulated and real sample alerts to fresh demo topics, runs
the broker until they are done, then prints what happened and where to look.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from broker.settings import load_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from broker.tools.demo.main import DEFAULT_REFERENCE

    parser = subparsers.add_parser(
        "demo", help="run the whole broker on demo alerts and show the results", description=__doc__
    )
    parser.add_argument("--ztf", type=int, default=500, help="simulated ZTF alerts (default 500)")
    parser.add_argument("--lsst", type=int, default=200, help="simulated LSST alerts (default 200)")
    parser.add_argument(
        "--others",
        type=int,
        default=5,
        help="simulated alerts of each other survey: WINTER, PGIR, TURBO, DECam (default 5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument(
        "--reference",
        type=Path,
        default=DEFAULT_REFERENCE,
        help="real sample alerts and the models mirror (default: ../shared/reference)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(".nightjar/demo"),
        help="folder for the gallery PNG and the last run's names (default .nightjar/demo)",
    )
    parser.add_argument("--no-post", action="store_true", help="do not post to the Fritz-like API")
    parser.add_argument(
        "--post-wait",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="after the broker is done, wait until every filter match is posted, at most "
        "this long (default 300; what is left: nightjar post)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from broker.tools.demo.main import DemoOptions, run_demo
    from broker.tools.demo.report import format_report
    from broker.tools.demo.where import where_to_look

    settings = load_settings(args.config)
    if not args.verbose:
        # The steps and progress bars tell the story; per-batch INFO lines would drown them.
        logging.getLogger().setLevel(logging.WARNING)
        # Refused posts are summed up in the filters table (e.g. candidates an earlier
        # demo already posted to the Fritz-like service); one log line each is noise here.
        logging.getLogger("broker.post.sender").setLevel(logging.CRITICAL)
    if min(args.ztf, args.lsst, args.others, args.seed) < 0:
        print("nightjar demo: --ztf, --lsst, --others and --seed must be >= 0", file=sys.stderr)
        return 2
    options = DemoOptions(
        ztf=args.ztf,
        lsst=args.lsst,
        others=args.others,
        seed=args.seed,
        reference=args.reference if args.reference.is_dir() else None,
        state_dir=args.dir,
        post=not args.no_post,
        post_timeout_s=max(0.0, args.post_wait),
        progress=not args.no_progress,
    )
    result = run_demo(settings, options, say)
    stats = result.stats
    print(
        f"\nNightjar demo run {result.names.run}: {sum(result.produced.values())} messages "
        f"replayed, {stats.stored} stored, {stats.rejected} rejected in {stats.batches} batches"
    )
    print()
    print(format_report(result.report))
    print()
    print(where_to_look(result))
    return 0


def say(line: str) -> None:
    print(f"demo: {line}", file=sys.stderr, flush=True)
