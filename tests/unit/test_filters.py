"""Filter definitions: what the validator accepts, what it refuses and how it says so."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.errors import ConfigError, QueryError
from broker.filters import FilterStage
from broker.query import Matcher, compile_query
from broker.records import ALERT_FIELDS
from broker.settings import DEFAULT_CONFIG, FilterDefinition, FilterSettings, load_settings
from broker.store import AlertDocument

BTS = {
    "annotations.btsbot.score": {"$gte": 0.5},
    "candidate.magpsf": {"$lt": 19},
    "candidate.isdiffpos": {"$in": ["t", "1", True, 1]},
    "$or": [{"candidate.sgscore1": {"$lt": 0.76}}, {"candidate.distpsnr1": {"$gt": 2}}],
}


@pytest.fixture(autouse=True)
def _own_fritz_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports of `nightjar services up` (NIGHTJAR_FRITZ__URL, ...) must not steer these tests."""
    for name in list(os.environ):
        if name.startswith(("NIGHTJAR_FRITZ__", "NIGHTJAR_FILTERS__")):
            monkeypatch.delenv(name)


def test_shipped_config_holds_the_bts_and_comet_filters() -> None:
    definitions = {d.name: d for d in load_settings(DEFAULT_CONFIG).filters.definitions}
    assert set(definitions) >= {"bts", "comets"}
    bts = definitions["bts"].query
    assert bts["annotations.btsbot.score"] == {"$gte": 0.5}
    assert bts["candidate.magpsf"] == {"$lt": 19}
    assert "t" in bts["candidate.isdiffpos"]["$in"]
    assert {"candidate.sgscore1": {"$lt": 0.76}} in bts["$or"]
    assert definitions["comets"].query == {"annotations.tails.score": {"$gte": 0.7}}


def check_query(query: dict[str, Any]) -> Matcher:
    """What the settings and the filter stage do with a filter's query."""
    return compile_query(query, fields=ALERT_FIELDS)


def test_filter_fields_are_the_stored_alert_document_fields() -> None:
    assert frozenset(AlertDocument.__annotations__) == ALERT_FIELDS


def test_a_refused_query_names_its_filter_and_operator() -> None:
    with pytest.raises(QueryError) as caught:
        compile_query({"candidate.magpsf": {"$near": 1}}, name="bright", fields=ALERT_FIELDS)
    assert str(caught.value).startswith("filter 'bright': query.candidate.magpsf.$near:")
    assert "operator $near is not supported" in str(caught.value)


@pytest.mark.parametrize(
    "query",
    [
        BTS,
        {"annotations.tails.score": {"$gte": 0.7}},
        {"survey": "ztf", "candidate.fid": {"$in": [1, 2]}},
        {"candidate.ssnamenr": {"$exists": True, "$ne": None}},
        {"candidate.magpsf": {"$not": {"$gt": 20}}},
        {"objectId": {"$regex": "^ZTF2[0-9]", "$options": "i"}},
        {"annotations.acai.classes": {"$size": 3}},
        {"annotations.acai.votes": {"$elemMatch": {"score": {"$lt": 0.5}, "model": "h"}}},
        {"packet.diaObject.nDiaSources": {"$gte": 2}, "skipped.btsbot": {"$exists": False}},
        {"cutouts.science": {"$type": "binData"}, "broker": {"$regex": "^nightjar"}},
        {"candidate.fid": {"$mod": [2, 1]}, "candidate.rb": {"$type": "double"}},
        {"$nor": [{"candidate.isdiffpos": "f"}], "ingested_at": {"$gte": datetime.now(UTC)}},
    ],
)
def test_accepts_queries_ferretdb_runs(query: dict[str, Any]) -> None:
    check_query(query)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"$where": "this.candid > 0"}, "$where is not allowed"),
        ({"$expr": {"$gt": ["$candidate.magpsf", 19]}}, "$expr is not allowed"),
        ({"candidate.magpsf": {"$near": [1, 2]}}, "$near is not supported"),
        ({"candidate.magpsf": {"$lt": 19, "fid": 1}}, "do not mix operators"),
        ({"candidat.magpsf": {"$lt": 19}}, "'candidat.magpsf' is not a field of the alert"),
        # The light curve lives in objects.lightcurve, not in the alert document.
        ({"prv_candidates.magpsf": {"$lt": 19}}, "'prv_candidates.magpsf' is not a field"),
        ({"candidate..magpsf": {"$lt": 19}}, "not a valid field path"),
        ({"candidate.$magpsf": 1}, "not a valid field path"),
        ({"candidate.magpsf": {"$lt": [19]}}, "$lt needs a number, string or date"),
        ({"candidate.magpsf": {"$gt": True}}, "$gt needs a number, string or date"),
        ({"candidate.magpsf": {"$lt": float("nan")}}, "$lt needs a number"),
        ({"candidate.fid": {"$in": 1}}, "$in needs a list"),
        ({"candidate.fid": {"$exists": "yes"}}, "$exists needs true or false"),
        ({"annotations.x": {"$size": -1}}, "$size needs a non-negative integer"),
        ({"candidate.fid": {"$mod": [0, 1]}}, "$mod needs [divisor, remainder]"),
        ({"objectId": {"$regex": "("}}, "not a valid regular expression"),
        ({"objectId": {"$options": "i"}}, "$options must be letters of 'imsx' next to a $regex"),
        ({"candidate.rb": {"$type": "float"}}, "unknown type 'float'"),
        ({"candidate.rb": {"$type": ["double"]}}, "unknown type ['double']"),
        ({"candidate.rb": {"$type": 6}}, "unsupported type 6"),  # undefined: never stored
        ({"objectId": {"$regex": "a\\z"}}, "not a valid regular expression"),  # PCRE-only
        ({"candidate": {"fid": 1}}, "matching a whole sub-document is not supported"),
        ({"$or": []}, "$or must be a non-empty list"),
        ({"$and": [{"candidate.fid": 1}, "x"]}, "query.$and[1] must be a non-empty mapping"),
        ({}, "query must be a non-empty mapping"),
        ({"candidate.magpsf": {"$not": 19}}, "$not needs a mapping of operators"),
    ],
)
def test_refuses_with_the_reason(query: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_query(query)
    assert reason in str(caught.value)


def _config_with(tmp_path: Path, filters: dict[str, Any]) -> Path:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["filters"] = filters
    path = tmp_path / "nightjar.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_invalid_filter_in_config_names_filter_and_reason(tmp_path: Path) -> None:
    bad = {"name": "bright", "fritz_filter_id": 3, "query": {"candidate.magpsf": {"$near": 1}}}
    with pytest.raises(ConfigError) as caught:
        load_settings(_config_with(tmp_path, {"definitions": [bad]}))
    message = str(caught.value)
    assert "filters.definitions.0" in message
    assert "filter 'bright'" in message
    assert "$near is not supported" in message


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        (
            {"definitions": [{"name": "a", "fritz_filter_id": 1, "query": {"survey": "ztf"}}] * 2},
            "filter names must be unique; repeated: a",
        ),
        ({"topic_template": "nightjar.{survey}"}, "only {filter} may be used"),
        (
            {"definitions": [{"name": "Has Space", "fritz_filter_id": 1, "query": {"jd": 1}}]},
            "String should match pattern",
        ),
        (
            {"definitions": [{"name": "x", "fritz_filter_id": 0, "query": {"jd": 1}}]},
            "fritz_filter_id",
        ),
    ],
)
def test_filter_settings_errors(tmp_path: Path, filters: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_config_with(tmp_path, filters))
    assert reason in str(caught.value)


def test_topic_per_filter() -> None:
    assert FilterSettings().topic_for("bts") == "nightjar.filter.bts"


def test_filter_stage_refuses_unvalidated_definitions_before_touching_mongodb() -> None:
    # Definitions built in code skip pydantic's validators; the stage checks them again.
    definition = FilterDefinition.model_construct(
        name="sneaky", query={"$where": "1"}, fritz_filter_id=1, group_ids=[], enabled=True
    )
    with pytest.raises(ConfigError, match="filter 'sneaky': query: operator \\$where"):
        FilterStage([definition], db=None)  # type: ignore[arg-type]
