"""`nightjar demo` without services: run names, settings and the printed tables."""

from __future__ import annotations

from broker.settings import DEFAULT_CONFIG, Settings, load_settings
from broker.tools.demo.report import Candidate, DemoReport, SurveyCounts, format_report, table
from broker.tools.demo.setup import DemoNames, demo_settings, unmatched_topics


def test_demo_topics_match_the_configured_patterns_and_are_fresh() -> None:
    names = DemoNames(run="012345", night="20260102")
    assert names.ztf_topic == "ztf_20260102012345_programid1"
    assert unmatched_topics(names, load_settings(DEFAULT_CONFIG).kafka.topics) == []
    others = [names.input_topic(s) for s in ("winter", "pgir", "turbo", "decam")]
    assert others == ["winter_20260102012345", "pgir_20260102012345", "turbo_20260102012345",
                      "decam_20260102012345"]  # fmt: skip
    unmatched = unmatched_topics(names, ["^ztf_[0-9]+_programid[0-9]+$"])
    assert unmatched == [names.lsst_topic, *others]
    assert unmatched_topics(names, [names.lsst_topic, "^ztf_", *others]) == []
    # Six surveys' input and output topics, the dead-letter topic and two filter topics.
    assert len(set(names.topics(["bts", "comets"]))) == 15
    fresh = DemoNames.fresh()
    assert len(fresh.run) == 6 and fresh.run.isdigit()
    assert len(fresh.night) == 8 and fresh.night.startswith("20")


def test_demo_settings_read_only_the_run_topics() -> None:
    names = DemoNames(run="000042", night="20260102")
    settings = demo_settings(Settings(), names, None)
    # Exact names: the configured patterns would also read everybody else's topics.
    assert settings.kafka.topics[:2] == [names.ztf_topic, names.lsst_topic]
    assert settings.kafka.topics == list(names.inputs().values())
    assert settings.kafka.group_id == "nightjar-demo-000042"
    assert settings.mongo.database == "nightjar_demo_000042"
    assert settings.kafka.output_topic_for("ztf") == "nightjar-demo-000042.ztf.annotated"
    assert settings.filters.topic_for("bts") == "nightjar-demo-000042.filter.bts"


def test_report_tables_show_what_a_user_checks() -> None:
    report = DemoReport(
        surveys=[
            SurveyCounts("ztf", read=12, stored=10, published=10,
                         rejected={"missing_field": 2}, scores={"btsbot": 10, "tails": 0}),
            SurveyCounts("lsst", read=3, stored=3, published=3, scores={"reliability": 3}),
        ],
        filter_matches={"bts": 4},
        outbox={"bts": {"done": 3, "failed": 1}},
        post_failures={"candidates: HTTP 400: candidate # already passed filter 1": 1},
        ranked_by="btsbot",
        top=[Candidate("ZTF25aaaaaal", 2566043011000011, "ztf", 2460000.5, 17.73,
                       {"btsbot": 0.987, "braai": 0.5}, {})],
        model_status={"btsbot": "installed", "tails": "not installed"},
    )  # fmt: skip
    text = format_report(report)
    lines = text.splitlines()
    ztf_row = next(line for line in lines if line.strip().startswith("ztf "))
    assert ztf_row.split()[:5] == ["ztf", "12", "10", "10", "2"]
    assert "(missing_field 2)" in ztf_row
    assert any(line.split() == ["tails", "ztf", "0", "not", "installed"] for line in lines)
    assert any(line.split()[:3] == ["bts", "4", "4"] for line in lines)
    assert "failed posts (1): candidates: HTTP 400" in text
    top = lines[lines.index("Top 5 ZTF candidates by btsbot score") + 2]
    assert top.split() == ["ZTF25aaaaaal", "2566043011000011", "17.73", "0.987", "0.500"]


def test_table_aligns_columns() -> None:
    assert table([("a", "bb"), ("ccc", "d")]) == "  a    bb\n  ccc  d"
