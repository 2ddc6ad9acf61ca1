"""broker.history: light-curve points, their identity, and merging stored with packet history."""

from __future__ import annotations

import math
from typing import Any

import pytest

from broker import history
from broker.decode import Decoder
from broker.settings import SchemaSettings
from broker.surveys import tables
from broker.tools.simulate import simulate


def ztf_detection(candid: int, jd: float, **fields: Any) -> dict[str, Any]:
    return {"candid": candid, "jd": jd, "fid": 1, "magpsf": 18.0, **fields}


def ztf_limit(jd: float, fid: int = 1) -> dict[str, Any]:
    return {"candid": None, "jd": jd, "fid": fid, "diffmaglim": 20.5}


def test_point_keeps_the_survey_fields_with_a_value_in_a_fixed_order() -> None:
    entry = {"magpsf": float("nan"), "jd": 2460000.5, "candid": 7, "unrelated": 1, "rb": math.inf}
    entry |= {"fid": 2, "isdiffpos": None, "diffmaglim": 20.1}
    point = history.point("ztf", entry)
    assert list(point) == ["candid", "jd", "fid", "diffmaglim"]  # point_fields order
    assert point["candid"] == 7 and point["jd"] == 2460000.5
    # NaN, infinity, null and absent fields are all left out (they read as None).
    assert "magpsf" not in point and "rb" not in point and "isdiffpos" not in point
    assert "unrelated" not in point
    full = {name: 1.0 for name in tables("ztf").point_fields}
    assert tuple(history.point("ztf", full)) == tables("ztf").point_fields


def test_point_key_is_the_detection_id_else_time_and_band() -> None:
    assert history.point_key("ztf", ztf_detection(5, 1.0)) == ("id", 5)
    assert history.point_key("ztf", ztf_limit(2.0, fid=2)) == ("t", 2.0, 2)
    assert history.point_key("lsst", {"diaSourceId": 9, "midpointMjdTai": 3.0}) == ("id", 9)
    forced = {"diaForcedSourceId": 4, "midpointMjdTai": 3.0, "band": "g"}
    assert history.point_key("lsst", forced) == ("t", 3.0, "g")


def test_a_detection_has_the_same_key_as_candidate_and_as_history_entry() -> None:
    """The candidate and a later packet's prv_candidate of one detection differ in fields
    (ZTF prv_candidates have no drb) but must be the same point."""
    as_candidate = history.point("ztf", ztf_detection(11, 5.0, drb=0.9, magzpsciunc=1e-6))
    as_history = history.point("ztf", ztf_detection(11, 5.0))
    assert as_candidate != as_history
    assert history.point_key("ztf", as_candidate) == history.point_key("ztf", as_history)


def test_merge_deduplicates_sorts_and_prefers_the_packet() -> None:
    stored = [
        history.point("ztf", ztf_detection(1, 1.0)),
        history.point("ztf", ztf_limit(2.0)),
        history.point("ztf", ztf_detection(3, 3.0)),
    ]
    packet = [ztf_detection(3, 3.0, drb=0.8), ztf_limit(2.0), ztf_detection(4, 4.0)]
    merged = history.merge("ztf", packet, stored)
    assert [entry["jd"] for entry in merged] == [1.0, 2.0, 3.0, 4.0]
    assert merged[2]["drb"] == 0.8  # the packet's entry won: it carries every field
    assert merged[1] is packet[1]


def test_merge_drops_the_alerts_own_detection() -> None:
    stored = [
        history.point("ztf", ztf_detection(1, 1.0)),
        history.point("ztf", ztf_detection(2, 2.0)),
    ]
    merged = history.merge("ztf", [], stored, exclude_id=2)
    assert [entry["candid"] for entry in merged] == [1]


def test_merge_puts_entries_without_a_time_last() -> None:
    packet = [ztf_detection(1, float("nan")), ztf_detection(2, 2.0), {"candid": 3, "jd": None}]
    merged = history.merge("ztf", packet, [])
    assert [entry["candid"] for entry in merged][:1] == [2]
    assert {entry["candid"] for entry in merged[1:]} == {1, 3}


def test_merge_with_upper_limits_in_two_bands_at_one_time_keeps_both() -> None:
    merged = history.merge("ztf", [ztf_limit(2.0, fid=1), ztf_limit(2.0, fid=2)], [])
    assert len(merged) == 2


def test_clean_replaces_nan_at_any_depth_and_keeps_the_rest() -> None:
    value = {"a": [1.0, float("nan"), {"b": -math.inf}], "c": "x", "d": (2, None), "e": b"\x00"}
    assert history.clean(value) == {
        "a": [1.0, None, {"b": None}],
        "c": "x",
        "d": [2, None],
        "e": b"\x00",
    }
    assert history.clean_value(float("nan")) is None and history.clean_value(3) == 3


@pytest.mark.parametrize("survey", ["ztf", "lsst"])
def test_alert_points_are_the_history_then_the_candidate_each_once(survey: str) -> None:
    decoder = Decoder(SchemaSettings(), 4 << 20)
    alerts = [decoder.decode(sim.data) for sim in simulate(survey, 40, seed=2)]
    alert = max(alerts, key=lambda a: len(a.history))
    assert alert.history, "the simulated stream should have an alert with history"
    points = history.alert_points(alert)
    assert len(points) == len(alert.history) + 1
    assert history.point_key(survey, points[-1]) == ("id", alert.candid)
    keys = [history.point_key(survey, point) for point in points]
    assert len(keys) == len(set(keys))
