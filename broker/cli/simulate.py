"""`nightjar simulate`: write seeded synthetic ZTF or LSST alerts to a folder.

One file per alert, named <candid>.avro, in the survey's wire format (what `nightjar
replay` sends to Kafka). The same --seed writes the same bytes.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

PROGRESS_FROM = 500  # alerts; smaller runs finish before a bar is worth drawing


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from broker.tools.simulate import SIMULATORS

    parser = subparsers.add_parser(
        "simulate",
        help="write synthetic alerts (seeded, reproducible) to a folder",
        description=__doc__,
    )
    parser.add_argument("--survey", choices=sorted(SIMULATORS), required=True)
    parser.add_argument("--n", type=_count, required=True, help="number of alerts")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--seed", type=_count, default=0, help="random seed (default 0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from broker.tools.simulate import simulate

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    kinds: Counter[str] = Counter()
    size = 0
    alerts = simulate(args.survey, args.n, args.seed)
    for alert in tqdm(alerts, total=args.n, unit="alert", disable=args.n < PROGRESS_FROM):
        (out / f"{alert.name}.avro").write_bytes(alert.data)
        kinds[alert.kind] += 1
        size += len(alert.data)
    seconds = time.perf_counter() - started
    summary = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
    print(
        f"wrote {sum(kinds.values())} {args.survey} alerts ({size / 1e6:.1f} MB) to {out} "
        f"in {seconds:.1f} s: {summary or 'none'}"
    )
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value
