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
from typing import Any

from broker.settings import load_settings

# Run only when asked: processes of their own, minutes each (not part of the default run).
SCALE_OUT = ("scaling", "burst", "long-history")


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
        "--poster-n",
        type=int,
        default=200,
        metavar="N",
        help="filter matches the poster scenario posts to a private Fritz-like service (200)",
    )
    parser.add_argument(
        "--scenario",
        choices=[*SCENARIOS, "both", *SCALE_OUT],
        default="both",
        help="passthrough (models off), models (installed models on CPU), poster (outbox -> "
        "a private Fritz-like service: candidates/s) or both: all three (default); "
        "scaling (1-2 brokers x 1-4 `dask worker`s on an external scheduler, --n alerts per "
        "cell), burst (--n alerts at once, e.g. 40000), long-history (fresh objects against "
        "objects holding 300 points)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="cores and GPUs needed for ZTF's busiest night, Rubin's 333 alerts/s and a "
        "40,000-alert visit in 60 s, from --from FILE or a short measurement",
    )
    parser.add_argument(
        "--from", dest="source", type=Path, default=None, help="a bench JSON with scaling cells"
    )
    parser.add_argument(
        "--utilisation", type=float, default=0.7, help="planned busy share of a core (0.7)"
    )
    parser.add_argument(
        "--gpu-rate", type=float, default=None, metavar="ALERTS_PER_S",
        help="alerts/s one GPU scores with every model (measured or from the vendor)",
    )  # fmt: skip
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
    if min(args.n, args.poster_n, args.latency_n or 1) <= 0:
        print("nightjar bench: --n, --latency-n and --poster-n must be positive", file=sys.stderr)
        return 2
    problem = unreachable(settings)
    if problem is not None:
        print(f"nightjar bench: {problem}", file=sys.stderr)
        return 1
    if args.plan:
        return _plan(args, settings)
    if args.scenario in SCALE_OUT:
        from broker.tools.bench.scaleout import run_scale_out

        document = run_scale_out(settings, args.scenario, args.n, not args.no_progress)
        if args.scenario == "scaling":
            from broker.tools.bench.scaleout import scaling_table

            print(scaling_table(document["scenarios"]["scaling"]), file=sys.stderr)
    else:
        scenarios = SCENARIOS if args.scenario == "both" else (args.scenario,)
        document = run_bench(
            settings,
            args.n,
            scenarios,
            live_n=args.latency_n,
            progress=not args.no_progress,
            poster_n=args.poster_n,
        )
    _emit(document, args.out)
    failed = [name for name, result in document["scenarios"].items() if "error" in result]
    if failed:
        print(f"nightjar bench: scenario {', '.join(failed)} failed (see above)", file=sys.stderr)
        return 1
    return 0


def _emit(document: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(document, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"nightjar bench: written to {out}", file=sys.stderr)


def _plan(args: argparse.Namespace, settings: Any) -> int:
    from broker.tools.bench.plan import costs_from_bench, plan_document, table
    from broker.tools.bench.scaleout import PLAN_N, short_measurement

    if args.source is not None:
        try:
            measured = json.loads(args.source.read_text())
        except (OSError, ValueError) as exc:
            print(f"nightjar bench: cannot read {args.source}: {exc}", file=sys.stderr)
            return 2
    else:
        measured = short_measurement(settings, min(args.n, PLAN_N), not args.no_progress)
    try:
        costs = costs_from_bench(measured)
        document = plan_document(costs, args.utilisation, args.gpu_rate)
    except ValueError as exc:
        print(f"nightjar bench: {exc}", file=sys.stderr)
        return 2
    print(table(document), file=sys.stderr)
    _emit(document, args.out)
    return 0
