"""Request/response shapes: what the poster sends, what the service accepts, as SkyPortal
documents them (handlers/api/candidate, photometry, thumbnail and annotation docstrings)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from nightjar_fritz.faults import FaultPlan, Faults
from nightjar_fritz.payloads import (
    AnnotationPost,
    ApiError,
    CandidatePost,
    ThumbnailPost,
    parse,
    photometry_rows,
)
from nightjar_fritz.web import Request, error, success

from broker.post.outbox import JobDoc, new_job
from broker.post.skyportal import annotation_payload, candidate_payload
from broker.post.thumbnails import cutout_png
from broker.records import FilterMatch

PASSED_AT = datetime(2020, 2, 2, 7, 30, 1, 123456, tzinfo=UTC)
ALERT: dict[str, Any] = {
    "_id": "ztf:1127561440015015001",
    "ra": 151.2,
    "dec": 22.5,
    "candidate": {"drb": 0.9999, "magpsf": 18.2},
    "annotations": {
        "btsbot": {"score": 0.8712345678, "version": "v1.0.1"},
        "braai": {"score": 0.99, "version": "d6_m9"},
        "tails": {"score": 0.01, "version": "x", "x": 3.0, "y": 4.0},
        "broken": {"version": "no score"},
    },
}


def job(group_ids: tuple[int, ...] = (4, 5)) -> JobDoc:
    match = FilterMatch(
        "bts", ALERT["_id"], 1127561440015015001, "ZTF20aahgyet", "ztf", 7, group_ids
    )
    return new_job(match, PASSED_AT)


def test_candidate_payload_fields() -> None:
    payload = candidate_payload(job(), ALERT, "Nightjar")
    # SkyPortal: ObjPost + filter_ids (required), passing_alert_id, passed_at (required).
    assert payload == {
        "id": "ZTF20aahgyet",
        "ra": 151.2,
        "dec": 22.5,
        "filter_ids": [7],
        "passing_alert_id": 1127561440015015001,
        "passed_at": "2020-02-02T07:30:01.123456",
        "origin": "Nightjar",
        "score": 0.9999,
    }
    parsed = parse(CandidatePost, json.loads(json.dumps(payload)))
    assert parsed.passed_at == PASSED_AT


def test_annotation_payload_fields() -> None:
    payload = annotation_payload(job(), ALERT)
    assert re.match(r"^\w+", payload["origin"]), "SkyPortal: origin must match ^\\w+"
    assert payload["origin"] == "nightjar:bts"
    assert payload["data"] == {
        "candid": 1127561440015015001,
        "braai": 0.99,
        "btsbot": 0.871235,
        "tails": 0.01,
    }
    assert payload["group_ids"] == [4, 5]
    assert parse(AnnotationPost, payload).data == payload["data"]
    assert "group_ids" not in annotation_payload(job(group_ids=()), ALERT)


def test_thumbnail_payload_is_accepted() -> None:
    buffer = io.BytesIO()
    fits.PrimaryHDU(np.arange(63 * 63, dtype=np.float32).reshape(63, 63)).writeto(buffer)
    png = cutout_png(gzip.compress(buffer.getvalue()), "difference")
    payload = {"obj_id": "ZTF20aahgyet", "data": base64.b64encode(png).decode(), "ttype": "sub"}
    assert parse(ThumbnailPost, payload).png() == png


@pytest.mark.parametrize(
    ("model", "body", "names"),
    [
        (CandidatePost, {"id": "ZTF1", "ra": 1.0, "dec": 2.0}, ["filter_ids", "passed_at"]),
        (
            CandidatePost,
            {"id": "Z", "ra": 400, "filter_ids": [1], "passed_at": "x"},
            ["ra", "passed_at"],
        ),
        (ThumbnailPost, {"obj_id": "Z", "data": "AAAA", "ttype": "sdss9"}, ["ttype"]),
        (AnnotationPost, {"origin": ":x", "data": {}}, ["origin", "data"]),
    ],
)
def test_validation_errors_name_the_fields(
    model: type[Any], body: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(ApiError) as caught:
        parse(model, body)
    assert caught.value.status == 400
    for name in names:
        assert f"{name}:" in caught.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"obj_id": "Z", "mjd": [1.0], "filter": "ztfg", "magsys": "ab", "zp": 23.9}, "fluxerr"),
        ({"obj_id": "Z", "instrument_id": 1, "mjd": [1.0, 2.0], "filter": "ztfg", "magsys": "ab",
          "zp": 23.9, "fluxerr": [1.0]}, "same length (fluxerr=1, mjd=2)"),
        ({"obj_id": "Z", "instrument_id": 1, "mjd": 1.0, "filter": "sdssq", "magsys": "ab",
          "zp": 23.9, "fluxerr": 1.0}, "filter[0]: 'sdssq' is not an allowed bandpass"),
        ({"obj_id": "Z", "instrument_id": 1, "mjd": 1.0, "filter": "ztfg", "magsys": "ab",
          "zp": 23.9, "fluxerr": -1.0}, "fluxerr[0]: must be positive"),
        ({"obj_id": "Z", "instrument_id": 1, "mjd": 1.0, "filter": "ztfg", "magsys": "ab",
          "limiting_mag": 20.0, "mag": 19.0, "magerr": None}, "must both be given or both null"),
    ],
)  # fmt: skip
def test_photometry_errors_name_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError) as caught:
        photometry_rows(body)
    assert message in caught.value.message


def test_magnitude_form_is_normalised_to_flux() -> None:
    rows = photometry_rows(
        {"obj_id": "Z", "instrument_id": 1, "mjd": [1.0, 2.0], "filter": "ztfr", "magsys": "ab",
         "limiting_mag": [20.0, 20.5], "mag": [18.9, None], "magerr": [0.1, None]}
    )  # fmt: skip
    assert rows[0].flux == pytest.approx(100.0)
    assert rows[1].flux is None and rows[1].fluxerr == pytest.approx(
        10 ** (-0.4 * (20.5 - 23.9)) / 3
    )


def test_other_zero_points_are_rescaled() -> None:
    (row,) = photometry_rows(
        {"obj_id": "Z", "instrument_id": 1, "mjd": 1.0, "filter": "ztfg", "magsys": "ab",
         "zp": 25.0, "flux": 10 ** (0.4 * (25.0 - 18.9)), "fluxerr": 1.0}
    )  # fmt: skip
    assert row.flux == pytest.approx(100.0)


def test_envelopes() -> None:
    ok = json.loads(success({"id": 3}).body)
    assert ok["status"] == "success" and ok["data"] == {"id": 3}
    failed = error(400, "ra: bad")
    assert failed.status == 400
    assert json.loads(failed.body)["status"] == "error"
    assert json.loads(failed.body)["message"] == "ra: bad"


def test_request_body_must_be_json() -> None:
    with pytest.raises(ApiError, match="not valid JSON"):
        Request("POST", "/api/candidates", {}, {}, b"{nope").json()


def test_fault_plan_counts_down() -> None:
    faults = Faults()
    faults.set(FaultPlan(mode="error", status=503, count=2, methods=["POST"]))
    assert faults.take("GET", "/api/candidates") is None
    assert faults.take("POST", "/api/candidates") is not None
    assert faults.take("POST", "/api/thumbnail") is not None
    assert faults.take("POST", "/api/thumbnail") is None
    assert faults.state()["injected"] == 2
