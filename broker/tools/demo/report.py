"""What the demo run produced, counted where a user would look, and printed as tables.

Input: the run's database (alerts, objects, rejected, outbox), its Kafka topics and the
broker's consume counters. Output: `DemoReport` (per survey: read, stored, published,
rejected by reason, scores per model; filters; top candidates) and its text tables.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from pymongo.database import Database

from broker.errors import ConfigError
from broker.settings import Settings
from broker.surveys import surveys as survey_names
from broker.tools.demo.setup import DemoNames
from broker.tools.scratch import topic_counts
from workers.models.manifest import read_manifest
from workers.models.registry import ModelSpec, load_registry

TOP = 5
# Candidates are ranked by the first of these scores that any ZTF alert has.
RANKING = ("btsbot", "drb")
# Scores shown beside each top candidate, when present.
CANDIDATE_SCORES = ("btsbot", "braai", "drb", "acai_h", "acai_v", "acai_o", "acai_n", "acai_b")


@dataclass
class SurveyCounts:
    survey: str
    read: int
    stored: int
    published: int
    rejected: dict[str, int] = field(default_factory=dict)
    scores: dict[str, int] = field(default_factory=dict)


@dataclass
class Candidate:
    object_id: str
    candid: int
    survey: str
    jd: float
    magpsf: float | None
    scores: dict[str, float]
    cutouts: dict[str, bytes]


@dataclass
class DemoReport:
    surveys: list[SurveyCounts]
    filter_matches: dict[str, int]  # messages on each filter's topic
    outbox: dict[str, dict[str, int]]  # filter -> job status -> count
    post_failures: dict[str, int]  # why outbox jobs failed -> count
    ranked_by: str
    top: list[Candidate]
    model_status: dict[str, str] = field(default_factory=dict)  # installed, packet, missing


def collect(settings: Settings, names: DemoNames, db: Database[Any]) -> DemoReport:
    filters = [d.name for d in settings.filters.definitions if d.enabled]
    filter_topics = {name: settings.filters.topic_for(name) for name in filters}
    outputs = {survey: names.output_topic(survey) for survey in survey_names()}
    counts = topic_counts(settings, [*outputs.values(), *filter_topics.values()])
    inputs = names.inputs()
    rejected = rejected_by_survey(db, {topic: survey for survey, topic in inputs.items()})
    registry = load_registry(settings.models.registry)
    tally = tally_alerts(db)
    surveys = [
        SurveyCounts(
            survey=survey,
            read=consumed(inputs[survey]),
            stored=tally.stored[survey],
            published=counts[outputs[survey]],
            rejected=rejected.get(survey, {}),
            scores={
                name: tally.scores[survey][name]
                for name, spec in registry.models.items()
                if spec.survey == survey
            },
        )
        for survey in survey_names()
    ]
    ranked_by, top = top_candidates(db, tally)
    outbox, failures = outbox_counts(db, filters)
    return DemoReport(
        surveys=surveys,
        filter_matches={name: counts[topic] for name, topic in filter_topics.items()},
        outbox=outbox,
        post_failures=failures,
        ranked_by=ranked_by,
        top=top,
        model_status={
            name: model_status(spec, settings.models.dir) for name, spec in registry.models.items()
        },
    )


@dataclass
class AlertTally:
    """One pass over the stored alerts (FerretDB scans whole documents for every query)."""

    stored: Counter[str] = field(default_factory=Counter)
    scores: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    # model -> (score, objectId, _id) of ZTF alerts, for the ranking
    ranked: dict[str, list[tuple[float, str, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )


def tally_alerts(db: Database[Any]) -> AlertTally:
    tally = AlertTally()
    for doc in db["alerts"].find({}, {"survey": 1, "objectId": 1, "annotations": 1}):
        survey = str(doc.get("survey"))
        tally.stored[survey] += 1
        for model, value in (doc.get("annotations") or {}).items():
            tally.scores[survey][model] += 1
            score = value.get("score") if isinstance(value, Mapping) else None
            if survey == "ztf" and model in RANKING and isinstance(score, int | float):
                tally.ranked[model].append((float(score), str(doc["objectId"]), str(doc["_id"])))
    return tally


def model_status(spec: ModelSpec, models_dir: Path) -> str:
    if not spec.needs_files:
        return "from the packet"
    try:
        return "installed" if read_manifest(models_dir, spec) is not None else "not installed"
    except ConfigError as exc:
        return f"broken ({exc})"[:60]


def consumed(topic: str) -> int:
    """Messages the broker read from `topic` in this process (its consume counter)."""
    value = REGISTRY.get_sample_value("nightjar_consume_messages_total", {"topic": topic})
    return int(value or 0)


def rejected_by_survey(
    db: Database[Any], survey_of_topic: Mapping[str, str]
) -> dict[str, dict[str, int]]:
    """Reason counts per survey; undecodable messages have no survey, their topic tells."""
    counts: dict[str, Counter[str]] = {}
    for doc in db["rejected"].find({}, {"reason": 1, "survey": 1, "origin": 1}):
        topic = str((doc.get("origin") or {}).get("topic"))
        survey = doc.get("survey") or survey_of_topic.get(topic, "unknown")
        counts.setdefault(survey, Counter())[str(doc.get("reason"))] += 1
    return {survey: dict(counter) for survey, counter in counts.items()}


def outbox_counts(
    db: Database[Any], filters: Sequence[str]
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Jobs per filter and status, and why jobs failed (ids blanked so that alike errors merge)."""
    counts: dict[str, Counter[str]] = {name: Counter() for name in filters}
    failures: Counter[str] = Counter()
    for job in db["outbox"].find({}, {"filter": 1, "status": 1, "last_error": 1}):
        status = str(job.get("status"))
        counts.setdefault(str(job.get("filter")), Counter())[status] += 1
        if status == "failed":
            failures[re.sub(r"\b(ZTF\w+|\d{6,})\b", "#", str(job.get("last_error")))[:160]] += 1
    return {name: dict(counter) for name, counter in counts.items()}, dict(failures)


def top_candidates(db: Database[Any], tally: AlertTally) -> tuple[str, list[Candidate]]:
    """The best alert of each of the best ZTF objects by BTSbot (by drb without BTSbot)."""
    for model in RANKING:
        best: dict[str, tuple[float, str]] = {}
        for score, object_id, alert_id in sorted(tally.ranked.get(model, []), reverse=True):
            best.setdefault(object_id, (score, alert_id))
            if len(best) == TOP:
                break
        if not best:
            continue
        ids = [alert_id for _, alert_id in best.values()]
        projection = {"objectId": 1, "candid": 1, "survey": 1, "jd": 1, "candidate.magpsf": 1,
                      "annotations": 1, "cutouts": 1}  # fmt: skip
        docs = {doc["_id"]: doc for doc in db["alerts"].find({"_id": {"$in": ids}}, projection)}
        return model, [_candidate(docs[alert_id]) for alert_id in ids if alert_id in docs]
    return RANKING[0], []


def _candidate(doc: Mapping[str, Any]) -> Candidate:
    annotations = doc.get("annotations") or {}
    return Candidate(
        object_id=str(doc["objectId"]),
        candid=int(doc["candid"]),
        survey=str(doc.get("survey", "ztf")),
        jd=float(doc.get("jd") or 0.0),
        magpsf=(doc.get("candidate") or {}).get("magpsf"),
        scores={
            name: float(value["score"])
            for name, value in annotations.items()
            if isinstance(value, Mapping) and isinstance(value.get("score"), int | float)
        },
        cutouts={k: bytes(v) for k, v in (doc.get("cutouts") or {}).items()},
    )


def format_report(report: DemoReport) -> str:
    """The tables printed at the end of the demo."""
    parts = [_survey_table(report), _score_table(report), _filter_table(report)]
    parts.append(_top_table(report))
    return "\n\n".join(parts)


def _survey_table(report: DemoReport) -> str:
    rows = [("survey", "read", "stored", "published", "rejected (by reason)")]
    for s in report.surveys:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(s.rejected.items()))
        total = sum(s.rejected.values())
        rows.append((s.survey, str(s.read), str(s.stored), str(s.published),
                     f"{total}" + (f" ({reasons})" if reasons else "")))  # fmt: skip
    return "Alerts\n" + table(rows)


def _score_table(report: DemoReport) -> str:
    rows = [("model", "survey", "alerts scored", "model files")]
    for s in report.surveys:
        for model, count in s.scores.items():
            rows.append((model, s.survey, str(count), report.model_status.get(model, "?")))
    return "Model scores\n" + table(rows)


def _filter_table(report: DemoReport) -> str:
    rows = [("filter", "matches (filter topic)", "outbox jobs (by status)")]
    for name in sorted(set(report.filter_matches) | set(report.outbox)):
        statuses = report.outbox.get(name, {})
        detail = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
        jobs = sum(statuses.values())
        rows.append((name, str(report.filter_matches.get(name, 0)),
                     f"{jobs}" + (f" ({detail})" if detail else "")))  # fmt: skip
    lines = ["Filters", table(rows)]
    lines += [
        f"  failed posts ({n}): {reason}" for reason, n in sorted(report.post_failures.items())
    ]
    return "\n".join(lines)


def _top_table(report: DemoReport) -> str:
    title = f"Top {TOP} ZTF candidates by {report.ranked_by} score"
    if not report.top:
        return f"{title}\n  none: no ZTF alert has a {report.ranked_by} score"
    shown = [m for m in CANDIDATE_SCORES if any(m in c.scores for c in report.top)]
    rows = [("objectId", "candid", "magpsf", *shown)]
    for c in report.top:
        mag = "-" if c.magpsf is None else f"{c.magpsf:.2f}"
        scores = [f"{c.scores[m]:.3f}" if m in c.scores else "-" for m in shown]
        rows.append((c.object_id, str(c.candid), mag, *scores))
    return f"{title}\n" + table(rows)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, indented by two."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    return "\n".join(lines)
