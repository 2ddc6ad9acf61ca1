"""`nightjar bench`: measure the broker on the local services; prints one JSON document.

A benchmark, not a test: N simulated ZTF alerts are drained from a fresh topic (sustained
alerts/s), then fed at ~70% of that rate (end-to-end latency), with models off
(passthrough) and/or every installed model on CPU (models). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from broker.settings import load_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from broker.tools.bench.main import SCENARIOS

    parser = subparsers.add_parser(
        "bench", help="measure throughput and latency on the local services", description=__doc__
    )
    parser.add_argument(
        "--n", type=int, default=2000, help="alerts in the backlog phase (default 2000)"
    )
    parser.add_argument(
        "--latency-n",
        type=int,
        default=None,
        metavar="N",
        help="alerts in the steady-rate latency phase (default: half of --n)",
    )
    parser.add_argument(
        "--scenario",
        choices=[*SCENARIOS, "both"],
        default="both",
        help="passthrough (models off), models (installed models on CPU) or both (default)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from broker.tools.bench.main import SCENARIOS, run_bench
    from broker.tools.scratch import unreachable

    settings = load_settings(args.config)
    if not args.verbose:
        # Progress bars tell the story; the per-batch INFO lines would drown them.
        logging.getLogger().setLevel(logging.WARNING)
    if args.n <= 0 or (args.latency_n is not None and args.latency_n <= 0):
        print("nightjar bench: --n and --latency-n must be positive", file=sys.stderr)
        return 2
    problem = unreachable(settings)
    if problem is not None:
        print(f"nightjar bench: {problem}", file=sys.stderr)
        return 1
    scenarios = SCENARIOS if args.scenario == "both" else (args.scenario,)
    document = run_bench(
        settings, args.n, scenarios, live_n=args.latency_n, progress=not args.no_progress
    )
    text = json.dumps(document, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"nightjar bench: written to {args.out}", file=sys.stderr)
    failed = [name for name, result in document["scenarios"].items() if "error" in result]
    if failed:
        print(f"nightjar bench: scenario {', '.join(failed)} failed (see above)", file=sys.stderr)
        return 1
    return 0
