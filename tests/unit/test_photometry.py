"""Light curve -> SkyPortal flux photometry: Kowalski's conversion, SkyPortal's fields."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import fastavro
import pytest
from nightjar_fritz.payloads import photometry_rows

from broker.post.photometry import (
    ZERO_POINT,
    PhotPoint,
    flux_to_mag,
    light_curve,
    mag_to_flux,
    photometry_payload,
)
from broker.surveys.lsst import photometry_point as lsst_point
from broker.surveys.ztf import photometry_point as ztf_point

# SkyPortal's PhotFluxFlexible.required_keys (skyportal/models/schema.py).
PHOT_FLUX_REQUIRED = {"magsys", "mjd", "filter", "obj_id", "instrument_id", "fluxerr", "zp"}
DETECTION: dict[str, Any] = {
    "jd": 2458881.5, "fid": 2, "magpsf": 18.9, "sigmapsf": 0.1, "diffmaglim": 20.5,
    "isdiffpos": "t", "ra": 10.0, "dec": -5.0,
}  # fmt: skip
LIMIT: dict[str, Any] = {
    "jd": 2458880.5, "fid": 1, "magpsf": None, "sigmapsf": None, "diffmaglim": 20.0,
    "isdiffpos": None,
}  # fmt: skip


def test_zero_point_23_9_means_microjansky() -> None:
    assert mag_to_flux(ZERO_POINT) == pytest.approx(1.0)
    assert mag_to_flux(18.9) == pytest.approx(100.0)
    assert flux_to_mag(100.0) == pytest.approx(18.9)


def test_detection_as_kowalski_converts_it() -> None:
    point = ztf_point(DETECTION)
    assert point is not None
    assert point.mjd == pytest.approx(58881.0)
    assert point.filter == "ztfr"
    assert point.flux == pytest.approx(100.0)
    assert point.fluxerr == pytest.approx(0.1 * 100.0 * math.log(10) / 2.5)
    assert (point.ra, point.dec) == (10.0, -5.0)


@pytest.mark.parametrize("isdiffpos", ["f", "0", False, 0])
def test_negative_subtraction_gives_negative_flux(isdiffpos: object) -> None:
    point = ztf_point({**DETECTION, "isdiffpos": isdiffpos})
    assert point is not None and point.flux == pytest.approx(-100.0)
    assert point.fluxerr > 0


def test_non_detection_has_null_flux_and_five_sigma_error() -> None:
    point = ztf_point(LIMIT)
    assert point is not None
    assert point.flux is None
    assert point.filter == "ztfg"
    # diffmaglim is a 5-sigma depth: 5 x fluxerr is the limiting flux.
    assert flux_to_mag(5 * point.fluxerr) == pytest.approx(20.0)


@pytest.mark.parametrize(
    "row",
    [
        {**DETECTION, "diffmaglim": -99.0},  # Kowalski drops non-positive limits
        {**DETECTION, "diffmaglim": None},
        {**DETECTION, "fid": 7},
        {**DETECTION, "sigmapsf": None},
        {**DETECTION, "jd": "soon"},
        {**DETECTION, "magpsf": float("nan"), "diffmaglim": float("nan")},
    ],
)
def test_unusable_rows_are_left_out(row: dict[str, object]) -> None:
    assert ztf_point(row) is None


def test_light_curve_merges_deduplicates_and_sorts() -> None:
    alert = {"candidate": DETECTION, "prv_candidates": [LIMIT, DETECTION]}
    stored: list[dict[str, Any]] = [DETECTION, {**LIMIT, "jd": 2458879.5}]
    points = light_curve("ztf", alert, stored)
    assert [p.mjd for p in points] == pytest.approx([58879.0, 58880.0, 58881.0])
    assert [p.flux is None for p in points] == [True, True, False]


def test_unknown_survey_is_refused() -> None:
    with pytest.raises(ValueError, match="no photometry conversion for survey 'ptf'"):
        light_curve("ptf", {})


def test_lsst_nanojansky_to_microjansky() -> None:
    point = lsst_point(
        {"midpointMjdTai": 60800.25, "band": "r", "psfFlux": 25_000.0, "psfFluxErr": 500.0}
    )
    assert point == PhotPoint(mjd=60800.25, filter="lsstr", flux=25.0, fluxerr=0.5)
    assert lsst_point({"midpointMjdTai": 1.0, "band": "q", "psfFluxErr": 1.0}) is None


def test_payload_has_skyportal_required_fields_and_round_trips_the_service_parser() -> None:
    points = light_curve("ztf", {"candidate": DETECTION, "prv_candidates": [LIMIT]})
    payload = photometry_payload("ZTF20aaaaaaa", points, instrument_id=1, group_ids=[3])
    assert set(payload) >= PHOT_FLUX_REQUIRED
    assert payload["magsys"] == ["ab", "ab"] and payload["zp"] == [ZERO_POINT, ZERO_POINT]
    assert payload["group_ids"] == [3] and "stream_ids" not in payload
    columns = {k: v for k, v in payload.items() if isinstance(v, list) and k != "group_ids"}
    assert {len(v) for v in columns.values()} == {2}
    rows = photometry_rows(payload)
    assert [r.flux for r in rows] == [None, pytest.approx(100.0)]
    assert [r.fluxerr for r in rows] == pytest.approx(payload["fluxerr"])


def test_real_alert_light_curve(shared_dir: Path) -> None:
    path = shared_dir / "ztf" / "alerts" / "night-20200202" / "1127561440015015001.avro"
    with path.open("rb") as handle:
        record: Any = next(iter(fastavro.reader(handle)))
    history = record["prv_candidates"] or []
    points = light_curve("ztf", record)
    assert 0 < len(points) <= len(history) + 1
    latest = points[-1]
    candidate = record["candidate"]
    assert latest.mjd == pytest.approx(candidate["jd"] - 2400000.5)
    assert flux_to_mag(abs(latest.flux or 0)) == pytest.approx(candidate["magpsf"], abs=1e-5)
    limits = [p for p in points if p.flux is None]
    assert limits, "this object has upper limits in its history"
    assert all(p.fluxerr > 0 for p in points)
    assert [p.mjd for p in points] == sorted(p.mjd for p in points)
