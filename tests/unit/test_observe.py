"""The dashboards' structure checks (broker/tools/observe.py), and the committed dashboards,
allow-list and alert rules checked against them and against the metrics the code defines."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from broker import __main__ as cli
from broker.tools import observe

REPO = Path(__file__).resolve().parents[2]
UIDS = {"prometheus"}


def dashboard() -> dict[str, Any]:
    """A small sound dashboard: two panels side by side and a variable."""
    ds = {"type": "prometheus", "uid": "prometheus"}

    def panel(pid: int, x: int, expr: str) -> dict[str, Any]:
        target = {"refId": "A", "datasource": dict(ds), "expr": expr}
        grid = {"x": x, "y": 0, "w": 12, "h": 8}
        title = f"panel {pid}"
        return {"id": pid, "type": "timeseries", "title": title, "datasource": dict(ds),
                "gridPos": grid, "targets": [target]}  # fmt: skip

    survey = {"name": "survey", "current": {"value": ["$__all"]}, "allValue": ".*"}
    stored = 'sum(rate(nightjar_store_alerts_total{survey=~"$survey"}[$__rate_interval]))'
    return {
        "uid": "test",
        "title": "Test",
        "schemaVersion": 39,
        "templating": {"list": [survey]},
        "panels": [panel(1, 0, stored), panel(2, 12, "max(nightjar_consume_paused)")],
    }


def first_target(d: dict[str, Any]) -> dict[str, Any]:
    target: dict[str, Any] = d["panels"][0]["targets"][0]
    return target


def test_a_sound_dashboard_has_no_problem() -> None:
    assert observe.validate(dashboard(), UIDS) == []


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: d["panels"][1].update(id=1), "panel id 1 is used more than once"),
        (lambda d: first_target(d).update(expr=" "), "target A: no expr"),
        (lambda d: d["panels"][0].update(targets=[]), "no targets"),
        (lambda d: d["panels"][0]["datasource"].update(uid="cloud"), "'cloud' is not provisioned"),
        (lambda d: first_target(d)["datasource"].update(uid="x"), "target A: datasource uid 'x'"),
        (lambda d: d["panels"][1]["gridPos"].update(x=16), "off Grafana's 24-column grid"),
        (lambda d: d["panels"][1]["gridPos"].update(x=6), "panel 2 overlaps panel 1"),
        (lambda d: d["panels"][0].pop("gridPos"), "gridPos needs integer x, y, w and h"),
        (lambda d: d["panels"][0]["targets"].append(first_target(d)), "refIds must be"),
        (lambda d: d["templating"]["list"].clear(), "undefined variable(s) survey"),
        (lambda d: d.update(schemaVersion=16), "schemaVersion 16"),
        (lambda d: d.pop("uid"), "no 'uid'"),
    ],
)  # fmt: skip
def test_each_kind_of_damage_is_named(damage: Any, problem: str) -> None:
    broken = copy.deepcopy(dashboard())
    damage(broken)
    problems = observe.validate(broken, UIDS)
    assert any(problem in p for p in problems), problems


def test_rows_need_no_query() -> None:
    data = dashboard()
    data["panels"].append({"id": 3, "type": "row", "title": "More", "gridPos":
                           {"x": 0, "y": 8, "w": 24, "h": 1}})  # fmt: skip
    assert observe.validate(data, UIDS) == []
    assert [p.id for p in observe.parse(Path("t.json"), data).panels] == [1, 2]


def test_variables_are_substituted_all_as_a_regex() -> None:
    data = dashboard()
    values = {**observe.variables(data), "__rate_interval": "5m"}
    expr = observe.substitute(data["panels"][0]["targets"][0]["expr"], values)
    assert expr == 'sum(rate(nightjar_store_alerts_total{survey=~".*"}[5m]))'
    data["templating"]["list"][0]["current"] = {"value": ["ztf", "lsst"]}
    assert observe.variables(data) == {"survey": "ztf|lsst"}
    assert observe.substitute("${survey} $unknown", {"survey": "ztf"}) == "ztf $unknown"


def test_legend_format() -> None:
    labels = {"__name__": "x", "topic": "ztf", "partition": "0"}
    assert observe.legend("{{topic}}[{{ partition }}]", labels) == "ztf[0]"
    assert observe.legend("", labels) == "partition=0, topic=ztf"


def test_load_reports_files_and_duplicate_uids(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(dashboard()))
    (tmp_path / "b.json").write_text(json.dumps(dashboard()))
    (tmp_path / "c.json").write_text("{not json")
    dashboards, problems = observe.load_dashboards(tmp_path, UIDS)
    assert len(dashboards) == 2
    assert any(p.startswith(f"{tmp_path / 'c.json'}: not readable as JSON") for p in problems)
    assert "dashboard uid 'test' is used by several files" in problems
    assert observe.load_dashboards(tmp_path / "none", UIDS)[1][0].endswith(
        "no dashboard (*.json) here"
    )


def test_report_tells_data_expected_empty_missing_and_errors() -> None:
    results = [
        observe.QueryResult("d", "p", "A", "up", 2),
        observe.QueryResult("d", "p", "B", "errors", 0),
        observe.QueryResult("d", "q", "A", "absent_metric", 0),
        observe.QueryResult("d", "q", "B", "rate(", 0, "bad_data: parse error"),
    ]
    lines, ok = observe.report(results, {"d/p/B": "only when broken"})
    assert not ok
    assert [line.split()[0] for line in lines] == ["ok", "empty", "NO", "ERROR"]
    assert observe.report(results[:2], {"d/p/B": "only when broken"})[1]


# -- the committed files ----------------------------------------------------------------


def test_committed_dashboards_are_sound() -> None:
    dashboards, problems = observe.load_dashboards()
    assert problems == []
    assert {d.uid for d in dashboards} == {
        "nightjar-pipeline",
        "nightjar-models",
        "nightjar-posting",
    }
    assert observe.datasource_uids() == {"prometheus"}


def test_expected_empty_entries_name_existing_queries() -> None:
    dashboards, _ = observe.load_dashboards()
    keys = {
        f"{d.uid}/{p.title}/{t.ref_id}" for d in dashboards for p in d.panels for t in p.targets
    }
    allowed = observe.expected_empty()
    assert allowed and set(allowed) <= keys, set(allowed) - keys


def defined_metrics() -> set[str]:
    """Series names the code exports: names as defined, plus a histogram's three series."""
    names: set[str] = set()
    for path in (REPO / "broker" / "metrics.py", REPO / "workers" / "runtime.py"):
        for kind, name in re.findall(
            r'(Counter|Gauge|Histogram)\(\s*"(nightjar_\w+)"', path.read_text()
        ):
            names.add(name)
            if kind == "Histogram":
                names.update(f"{name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    return names


def test_every_nightjar_metric_queried_is_defined() -> None:
    dashboards, _ = observe.load_dashboards()
    exprs = [t.expr for d in dashboards for p in d.panels for t in p.targets]
    exprs.append(observe.RULES_FILE.read_text())
    used = {name for expr in exprs for name in re.findall(r"\bnightjar_\w+", expr)}
    assert used and used <= defined_metrics(), used - defined_metrics()


def test_every_rule_has_a_promtool_test_that_fires_it() -> None:
    alerts = [n for n in observe.rule_names() if not n.startswith("nightjar:")]
    tests = "\n".join(p.read_text() for p in (observe.RULES_FILE.parent / "tests").glob("*.yml"))
    for alert in alerts:
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels", tests), alert
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts: \[\]", tests), alert


def test_cli_checks_the_structure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "dashboards" in cli.COMMANDS
    assert cli.main(["dashboards", "check"]) == 0
    assert "3 dashboards, 20 panels" in capsys.readouterr().out
    broken = dashboard()
    broken["panels"][1]["id"] = 1
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert cli.main(["dashboards", "check", "--dir", str(tmp_path)]) == 1
    assert "PROBLEM  broken.json: panel id 1 is used more than once" in capsys.readouterr().out


def test_wait_asks_again_until_every_query_has_data(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A counter born with the first alert has no rate() until its second scrape: --wait
    asks again (every 5 s) until the panels fill, and gives up at its deadline."""
    from broker.cli import dashboards as command

    answers = iter([0, 0, 3])
    asked: list[float] = []

    def check(*_: Any) -> list[observe.QueryResult]:
        return [observe.QueryResult("d", "p", "A", "rate(x[5m])", next(answers))]

    monkeypatch.setattr(observe, "check_queries", check)
    monkeypatch.setattr(command.time, "sleep", asked.append)
    args = cli.build_parser().parse_args(["dashboards", "check", "--wait", "60"])
    lines, ok = command._query_until_ok(args, [], observe.Prometheus("http://x"), {})
    assert ok and lines == ["ok       d/p/A: 3 series"] and asked == [5.0, 5.0]
    assert "1 queries without data yet; asking again in 5 s" in capsys.readouterr().out

    answers = iter([0, 0])
    args = cli.build_parser().parse_args(["dashboards", "check"])
    lines, ok = command._query_until_ok(args, [], observe.Prometheus("http://x"), {})
    assert not ok and lines == ["NO DATA  d/p/A: rate(x[5m])"]
