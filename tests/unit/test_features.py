"""workers.features: BTSbot's 25 metadata columns and ACAI's 25 features."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker.records import Cutouts, ScoringInput
from workers.features import (
    ACAI_COLUMNS,
    BTSBOT_COLUMNS,
    MissingFeature,
    acai_features,
    btsbot_features,
    detections_so_far,
)
from workers.models.registry import load_registry

REGISTRY = Path(__file__).resolve().parents[2] / "config" / "models.yaml"
TIME_COLUMNS = {"age", "days_since_peak", "days_to_peak"}
NO_CUTOUTS = Cutouts(b"", b"", b"")


def item(candidate: dict[str, Any], history: list[dict[str, Any]] | None = None) -> ScoringInput:
    history = history or []
    return ScoringInput(
        "ztf", 1, "ZTFtest", 0.0, 0.0, candidate["jd"], candidate, tuple(history), NO_CUTOUTS
    )


def usage_rows(reference: Path) -> list[dict[str, Any]]:
    with (reference / "models" / "btsbot" / "usage_candidates.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def test_column_orders_match_the_registry() -> None:
    registry = load_registry(REGISTRY)
    assert registry.get("btsbot").inputs[1].columns == BTSBOT_COLUMNS
    for name in ("acai_h", "acai_v", "acai_o", "acai_n", "acai_b"):
        assert registry.get(name).inputs[0].columns == ACAI_COLUMNS


def test_btsbot_features_reproduce_the_worked_example(reference: Path) -> None:
    """Each row's history = the object's other rows in the example (as stored detections)."""
    rows = usage_rows(reference)
    for index, row in enumerate(rows):
        history = [r for r in rows if r["objectId"] == row["objectId"] and r is not row]
        features = btsbot_features(item(row, history), row["new_drb"])
        for column, value in zip(BTSBOT_COLUMNS, features, strict=True):
            # The example's jd column is rounded to 1e-3 d; its ages were computed unrounded.
            atol = 1.5e-3 if column in TIME_COLUMNS else 1e-5
            assert value == pytest.approx(row[column], abs=atol, rel=1e-6), (index, column)


def test_acai_features_are_the_candidate_columns(reference: Path) -> None:
    row = usage_rows(reference)[0]
    expected = np.asarray([row[c] for c in ACAI_COLUMNS], np.float32)
    np.testing.assert_array_equal(acai_features(item(row)), expected)


def test_detections_so_far_rules() -> None:
    candidate = {"jd": 10.0, "magpsf": 18.0, "candid": 5, "jdstarthist": 2.0}
    history: list[dict[str, Any]] = [
        {"jd": 3.0, "magpsf": 19.0, "candid": 1, "isdiffpos": "t"},
        {"jd": 3.0, "magpsf": 19.0, "candid": 1, "isdiffpos": "t"},  # stored + packet copy
        {"jd": 4.0, "magpsf": 17.5, "candid": 2, "isdiffpos": "f"},  # negative: counts
        {"jd": 5.0, "magpsf": None, "candid": None, "diffmaglim": 20.0},  # upper limit
        {"jd": 6.0, "magpsf": 17.5, "candid": 3, "fid": 2},  # ties the peak, later
        {"jd": 12.0, "magpsf": 15.0, "candid": 9},  # after this alert
        {"jd": 10.0, "magpsf": 18.0, "candid": 5},  # this alert, stored
    ]
    scoring = item(candidate, history)
    assert detections_so_far(scoring) == [(3.0, 19.0), (4.0, 17.5), (6.0, 17.5), (10.0, 18.0)]
    features = dict(zip(BTSBOT_COLUMNS, _btsbot(scoring), strict=True))
    assert features["peakmag_so_far"] == 17.5 and features["maxmag_so_far"] == 19.0
    # jd_first comes from jdstarthist (2.0), earlier than any detection at hand.
    assert features["age"] == 8.0
    # The first detection at the peak magnitude is the one at jd 4.
    assert features["days_since_peak"] == 6.0 and features["days_to_peak"] == 2.0


def _btsbot(scoring: ScoringInput) -> np.ndarray:
    fields = {c: 1.0 for c in BTSBOT_COLUMNS}
    fields.update({"ncovhist": 10.0, "ndethist": 4.0, **scoring.candidate})
    full = item(fields, [dict(entry) for entry in scoring.history])
    features = btsbot_features(full, 0.75)
    assert features[BTSBOT_COLUMNS.index("nnotdet")] == 6.0
    assert features[BTSBOT_COLUMNS.index("new_drb")] == 0.75
    return features


def test_a_missing_field_is_named() -> None:
    candidate = {c: 1.0 for c in ACAI_COLUMNS} | {"jd": 1.0, "drb": None}
    with pytest.raises(MissingFeature, match="drb"):
        acai_features(item(candidate))
