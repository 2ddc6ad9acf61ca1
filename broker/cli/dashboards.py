"""`nightjar dashboards check`: the Grafana dashboards without Grafana.

Validates every dashboard's JSON (ids, queries, datasource uids, grid); with --prometheus,
runs each panel query there, reports those returning no data and the alert rules not
loaded; with --render, draws each panel as a PNG from that Prometheus' recent data.
Exits 1 on any problem, so CI and the compose test can call it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.tools.observe import Dashboard, Prometheus


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dashboards", help="check the Grafana dashboards and alert rules", description=__doc__
    )
    actions = parser.add_subparsers(dest="dashboards_action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate, query and optionally render them")
    check.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="dashboards folder (default: deploy/grafana/dashboards)",
    )
    check.add_argument("--prometheus", metavar="URL", help="run every panel query here")
    check.add_argument(
        "--rate-interval",
        default="5m",
        help="what $__rate_interval stands for in the queries (default 5m)",
    )
    check.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a dashboard variable's value, e.g. dead_letter_topic=ztf.deadletter (repeatable)",
    )
    check.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="re-run the queries for up to S seconds until each has data (default 0: once). "
        "rate() needs two scrapes of a counter, so a panel shows data up to two scrape "
        "intervals after the first alert; a check right after traffic should wait 60",
    )
    check.add_argument("--render", type=Path, metavar="DIR", help="write one PNG per panel here")
    check.add_argument(
        "--minutes", type=float, default=30.0, help="time span the PNGs show (default 30)"
    )
    parser.set_defaults(run=run)


def _query_until_ok(
    args: argparse.Namespace,
    dashboards: list[Dashboard],
    prometheus: Prometheus,
    overrides: dict[str, str],
) -> tuple[list[str], bool]:
    from broker.tools import observe

    deadline = time.monotonic() + max(0.0, args.wait)
    while True:
        results = observe.check_queries(dashboards, prometheus, args.rate_interval, overrides)
        lines, ok = observe.report(results, observe.expected_empty())
        if ok or time.monotonic() >= deadline:
            return lines, ok
        missing = sum(line.startswith(("NO DATA", "ERROR")) for line in lines)
        print(f"{missing} queries without data yet; asking again in 5 s", flush=True)
        time.sleep(5.0)


def run(args: argparse.Namespace) -> int:
    from broker.tools import observe

    dashboards, problems = observe.load_dashboards(args.dir or observe.DASHBOARDS_DIR)
    for problem in problems:
        print(f"PROBLEM  {problem}")
    print(f"{len(dashboards)} dashboards, {sum(len(d.panels) for d in dashboards)} panels")
    if args.prometheus is None:
        if args.render is not None:
            print("nightjar dashboards: --render needs --prometheus URL")
            return 2
        return 1 if problems else 0
    prometheus = observe.Prometheus(args.prometheus)
    overrides = dict(v.split("=", 1) for v in args.var if "=" in v)
    lines, queries_ok = _query_until_ok(args, dashboards, prometheus, overrides)
    print("\n".join(lines))
    missing = observe.rules_not_loaded(prometheus)
    for line in missing:
        print(f"RULE     {line}")
    print(f"{len(observe.rule_names()) - len(missing)} of {len(observe.rule_names())} rules loaded")
    if args.render is not None:
        written = observe.render(
            dashboards, prometheus, args.render, args.minutes * 60, overrides=overrides
        )
        print(f"{len(written)} PNGs in {args.render}")
    return 0 if queries_ok and not problems and not missing else 1
