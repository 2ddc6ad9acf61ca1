"""Dashboards checked without Grafana: their JSON, their queries, and pictures of them.

Input: the Grafana dashboards (deploy/grafana/dashboards/*.json), the provisioned datasource
uids, and for queries and pictures a Prometheus URL. Output: problems in the JSON, the panel
queries that return no data (those listed in deploy/grafana/empty-when-healthy.yml only show
trouble and may), and one PNG per panel drawn from range queries (`nightjar dashboards`).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = REPO / "deploy" / "grafana" / "dashboards"
DATASOURCES_FILE = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
EXPECTED_EMPTY_FILE = REPO / "deploy" / "grafana" / "empty-when-healthy.yml"
RULES_FILE = REPO / "deploy" / "prometheus" / "rules" / "nightjar.yml"
GRID_COLUMNS = 24
# Grafana's own variables; $__rate_interval is what a rate() window should use.
BUILTIN_VARIABLES = ("__rate_interval", "__interval", "__range")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class DashboardError(Exception):
    """A dashboard file that cannot be read at all (not JSON, not an object)."""


@dataclass(frozen=True, slots=True)
class Target:
    ref_id: str
    expr: str
    legend: str
    instant: bool


@dataclass(frozen=True, slots=True)
class Panel:
    id: int
    title: str
    kind: str
    unit: str
    targets: tuple[Target, ...]


@dataclass(frozen=True, slots=True)
class Dashboard:
    path: Path
    uid: str
    title: str
    panels: tuple[Panel, ...]
    variables: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One panel query's answer at one instant: how many series, or the error."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str
    series: int
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref_id}"


# -- structure ---------------------------------------------------------------------------


def datasource_uids(path: Path = DATASOURCES_FILE) -> set[str]:
    """The uids Grafana provisions (deploy/grafana/provisioning/datasources)."""
    data = yaml.safe_load(path.read_text()) or {}
    return {str(d["uid"]) for d in data.get("datasources", []) if "uid" in d}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DashboardError(f"{path}: not readable as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DashboardError(f"{path}: a dashboard is a JSON object, not {type(data).__name__}")
    return data


def validate(data: Mapping[str, Any], known_uids: set[str]) -> list[str]:
    """Everything wrong with one dashboard's JSON, as sentences; empty when it is sound."""
    problems = [f"no {key!r}" for key in ("uid", "title", "panels") if not data.get(key)]
    version = data.get("schemaVersion")
    if not isinstance(version, int) or version < 36:
        problems.append(f"schemaVersion {version!r}: export it from Grafana 10 or later (>= 36)")
    defined = set(variables(data)) | set(BUILTIN_VARIABLES)
    panels = [p for p in data.get("panels") or [] if isinstance(p, dict)]
    ids = [p.get("id") for p in panels]
    for duplicate in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        problems.append(f"panel id {duplicate!r} is used more than once")
    for panel in panels:
        name = f"panel {panel.get('id')!r} ({panel.get('title', 'untitled')})"
        problems += [f"{name}: {p}" for p in _panel_problems(panel, known_uids, defined)]
    problems += _overlaps(panels)
    return problems


def _panel_problems(panel: Mapping[str, Any], known_uids: set[str], defined: set[str]) -> list[str]:
    problems = [] if isinstance(panel.get("id"), int) else ["no integer id"]
    problems += [] if panel.get("title") else ["no title"]
    problems += _grid_problems(panel.get("gridPos"))
    if panel.get("type") == "row":
        return problems  # a row only groups panels: no query of its own
    problems += _datasource_problems(panel.get("datasource"), known_uids, "panel")
    targets = panel.get("targets") or []
    if not targets:
        problems.append("no targets (queries)")
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs) or not all(refs):
        problems.append(f"refIds must be present and distinct, not {refs}")
    for target in targets:
        ref = target.get("refId", "?")
        expr = str(target.get("expr") or "").strip()
        if not expr:
            problems.append(f"target {ref}: no expr")
        unknown = sorted({v for v in _variables_in(expr) if v not in defined})
        if unknown:
            problems.append(f"target {ref}: undefined variable(s) {', '.join(unknown)}")
        if "datasource" in target:
            problems += _datasource_problems(target["datasource"], known_uids, f"target {ref}")
    return problems


def _datasource_problems(datasource: Any, known_uids: set[str], where: str) -> list[str]:
    uid = datasource.get("uid") if isinstance(datasource, dict) else None
    if uid in known_uids:
        return []
    known = ", ".join(sorted(known_uids)) or "none provisioned"
    return [f"{where}: datasource uid {uid!r} is not provisioned (known: {known})"]


def _grid_problems(grid: Any) -> list[str]:
    if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in "xywh"):
        return ["gridPos needs integer x, y, w and h"]
    x, y, w, h = (grid[k] for k in "xywh")
    if x < 0 or y < 0 or w < 1 or h < 1 or x + w > GRID_COLUMNS:
        return [f"gridPos {grid} is off Grafana's {GRID_COLUMNS}-column grid"]
    return []


def _overlaps(panels: Sequence[Mapping[str, Any]]) -> list[str]:
    """Panels drawn over each other (Grafana would silently move one)."""
    taken: dict[tuple[int, int], Any] = {}
    problems: list[str] = []
    for panel in panels:
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or _grid_problems(grid):
            continue
        x, y, w, h = (grid[k] for k in "xywh")
        cells = {(col, row) for col in range(x, x + w) for row in range(y, y + h)}
        other = next((taken[c] for c in sorted(cells) if c in taken), None)
        if other is not None:
            problems.append(f"panel {panel.get('id')!r} overlaps panel {other!r}")
        taken.update(dict.fromkeys(cells, panel.get("id")))
    return problems


def _variables_in(expr: str) -> set[str]:
    return {a or b for a, b in _VARIABLE.findall(expr)}


def variables(data: Mapping[str, Any]) -> dict[str, str]:
    """Each template variable's current value as a PromQL regex ('All' -> its allValue)."""
    found: dict[str, str] = {}
    for variable in (data.get("templating") or {}).get("list") or []:
        current = (variable.get("current") or {}).get("value", "")
        values = current if isinstance(current, list) else [current]
        if "$__all" in values:
            found[variable["name"]] = variable.get("allValue") or ".*"
        else:
            found[variable["name"]] = "|".join(str(v) for v in values)
    return found


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with $var and ${var} replaced (unknown ones left for Prometheus to refuse)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return _VARIABLE.sub(value, expr)


def load_dashboards(
    folder: Path = DASHBOARDS_DIR, known_uids: set[str] | None = None
) -> tuple[list[Dashboard], list[str]]:
    """Every dashboard in `folder`, and every problem found (prefixed with the file name)."""
    uids = datasource_uids() if known_uids is None else known_uids
    dashboards: list[Dashboard] = []
    problems: list[str] = []
    paths = sorted(folder.glob("*.json"))
    if not paths:
        problems.append(f"{folder}: no dashboard (*.json) here")
    for path in paths:
        try:
            data = read_json(path)
        except DashboardError as exc:
            problems.append(str(exc))
            continue
        found = validate(data, uids)
        problems += [f"{path.name}: {problem}" for problem in found]
        if not found:
            dashboards.append(parse(path, data))
    seen = [d.uid for d in dashboards]
    problems += [
        f"dashboard uid {u!r} is used by several files" for u in set(seen) if seen.count(u) > 1
    ]
    return dashboards, problems


def parse(path: Path, data: Mapping[str, Any]) -> Dashboard:
    """A validated dashboard's panels and queries."""
    panels = tuple(
        Panel(
            panel["id"],
            panel["title"],
            panel.get("type", "timeseries"),
            ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit", "short"),
            tuple(
                Target(t["refId"], t["expr"], t.get("legendFormat", ""), bool(t.get("instant")))
                for t in panel["targets"]
            ),
        )
        for panel in data["panels"]
        if panel.get("type") != "row"
    )
    return Dashboard(path, data["uid"], data["title"], panels, variables(data))


def expected_empty(path: Path = EXPECTED_EMPTY_FILE) -> dict[str, str]:
    """`dashboard uid/panel title/refId` -> why that query may return nothing when healthy."""
    if not path.is_file():
        return {}
    entries = yaml.safe_load(path.read_text()) or []
    return {f"{e['dashboard']}/{e['panel']}/{e['ref_id']}": str(e["reason"]) for e in entries}


# -- Prometheus --------------------------------------------------------------------------


class Prometheus:
    """The few HTTP API calls the checks need."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: Mapping[str, Any]) -> Any:
        response = requests.get(f"{self.url}{path}", params=params, timeout=self.timeout)
        body = response.json() if response.content else {}
        if response.status_code != 200 or body.get("status") != "success":
            error = body.get("error") or response.text[:200]
            raise PrometheusError(f"{path} answered {response.status_code}: {error}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        result: list[dict[str, Any]] = self._get("/api/v1/query", params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": start, "end": end, "step": step}
        result: list[dict[str, Any]] = self._get("/api/v1/query_range", params)["result"]
        return result

    def rule_names(self) -> dict[str, str]:
        """Every loaded rule's name (alert or record) -> its health ('ok', 'err', 'unknown')."""
        groups = self._get("/api/v1/rules", {})["groups"]
        return {r["name"]: r.get("health", "unknown") for g in groups for r in g["rules"]}

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self._get("/api/v1/targets", {})["activeTargets"]
        return active


def rule_names(path: Path = RULES_FILE) -> list[str]:
    """The alert and recording rules a rule file defines."""
    groups = (yaml.safe_load(path.read_text()) or {}).get("groups", [])
    return [r.get("alert") or r["record"] for g in groups for r in g.get("rules", [])]


def rules_not_loaded(prometheus: Prometheus, path: Path = RULES_FILE) -> list[str]:
    """Rules of `path` that Prometheus has not loaded, or evaluates with an error."""
    loaded = prometheus.rule_names()
    return [
        f"{name}: {'not loaded' if name not in loaded else 'health ' + loaded[name]}"
        for name in rule_names(path)
        if loaded.get(name) not in ("ok", "unknown")
    ]


class PrometheusError(Exception):
    """Prometheus refused a query (bad PromQL) or answered something else than success."""


def check_queries(
    dashboards: Iterable[Dashboard],
    prometheus: Prometheus,
    rate_interval: str = "5m",
    overrides: Mapping[str, str] | None = None,
) -> list[QueryResult]:
    """Each panel query, variables substituted (`overrides` first), asked at this instant."""
    results: list[QueryResult] = []
    for dashboard in dashboards:
        values = {**_builtins(rate_interval), **dashboard.variables, **(overrides or {})}
        for panel in dashboard.panels:
            for target in panel.targets:
                expr = substitute(target.expr, values)
                try:
                    series, error = len(prometheus.query(expr)), None
                except (PrometheusError, requests.RequestException) as exc:
                    series, error = 0, str(exc)
                results.append(
                    QueryResult(dashboard.uid, panel.title, target.ref_id, expr, series, error)
                )
    return results


def _builtins(rate_interval: str) -> dict[str, str]:
    return {"__rate_interval": rate_interval, "__interval": "15s", "__range": "1h"}


def report(results: Sequence[QueryResult], allowed: Mapping[str, str]) -> tuple[list[str], bool]:
    """One line per query, and whether every query either has data or is allowed none."""
    lines: list[str] = []
    ok = True
    for result in results:
        if result.error:
            ok = False
            lines.append(f"ERROR    {result.key}: {result.error}")
        elif result.series:
            lines.append(f"ok       {result.key}: {result.series} series")
        elif result.key in allowed:
            lines.append(f"empty    {result.key} (expected: {allowed[result.key]})")
        else:
            ok = False
            lines.append(f"NO DATA  {result.key}: {result.expr}")
    return lines, ok


# -- pictures ----------------------------------------------------------------------------


def render(
    dashboards: Iterable[Dashboard],
    prometheus: Prometheus,
    out_dir: Path,
    seconds: float,
    rate_interval: str = "1m",
    overrides: Mapping[str, str] | None = None,
) -> list[Path]:
    """One small PNG per panel over the last `seconds`, named <dashboard uid>-<panel id>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    end = time.time()
    start, step = end - seconds, max(1.0, seconds / 240)
    written: list[Path] = []
    for dashboard in dashboards:
        values = {**_builtins(rate_interval), **dashboard.variables, **(overrides or {})}
        for panel in dashboard.panels:
            fig, ax = plt.subplots(figsize=(6.0, 2.8), dpi=80)
            if panel.kind == "table":
                _draw_table(ax, panel, values, prometheus)
            else:
                _draw_lines(ax, panel, values, prometheus, (start, end, step))
            ax.set_title(f"{dashboard.title}: {panel.title}", fontsize=9, loc="left")
            fig.tight_layout()
            path = out_dir / f"{dashboard.uid}-{panel.id}.png"
            fig.savefig(path, pil_kwargs={"optimize": True})
            plt.close(fig)
            written.append(path)
    return written


def _draw_lines(
    ax: Any,
    panel: Panel,
    values: Mapping[str, str],
    prometheus: Prometheus,
    window: tuple[float, float, float],
) -> None:
    start, end, _ = window
    # Seconds for a test's short run, minutes for an operator's window.
    scale, unit = (1.0, "seconds") if end - start <= 600 else (60.0, "minutes")
    drawn = 0
    for target in panel.targets:
        for series in prometheus.query_range(substitute(target.expr, values), *window):
            times = [(float(t) - end) / scale for t, _ in series["values"]]
            points = [_number(v) for _, v in series["values"]]
            label = legend(target.legend, series["metric"]) or target.ref_id
            ax.plot(times, points, linewidth=1.2, label=label[:40])
            drawn += 1
    ax.set_xlabel(f"{unit} before the picture was taken", fontsize=7)
    ax.set_ylabel(panel.unit, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=6, loc="upper left", ncol=2, frameon=False)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _draw_table(ax: Any, panel: Panel, values: Mapping[str, str], prometheus: Prometheus) -> None:
    found = [s for t in panel.targets for s in prometheus.query(substitute(t.expr, values))]
    header = sorted({name for series in found for name in series["metric"]})
    rows = [[series["metric"].get(name, "") for name in header] for series in found]
    ax.axis("off")
    if not rows:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    table = ax.table(cellText=rows[:12], colLabels=header, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)


def legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label values."""
    if not template:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), template)


def _number(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else math.nan
