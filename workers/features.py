"""Worker stage: tabular model features from a ZTF candidate and the object's history.

Input: a `ScoringInput` (candidate + merged history) and, for BTSbot, the `new_drb` value.
Output: float32 feature vectors in each model's published column order (MODELS.md):
BTSbot's 25 metadata columns and ACAI's 25 features. A missing field raises MissingFeature.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from broker.records import ScoringInput

# Candidate fields BTSbot takes as they are (-999 sentinels kept; the model normalises).
BTSBOT_COLUMNS = (
    "sgscore1",
    "distpsnr1",
    "sgscore2",
    "distpsnr2",
    "fwhm",
    "magpsf",
    "sigmapsf",
    "chipsf",
    "ra",
    "dec",
    "diffmaglim",
    "ndethist",
    "nmtchps",
    "age",
    "days_since_peak",
    "days_to_peak",
    "peakmag_so_far",
    "new_drb",
    "ncovhist",
    "nnotdet",
    "chinr",
    "sharpnr",
    "scorr",
    "sky",
    "maxmag_so_far",
)
ACAI_COLUMNS = (
    "drb",
    "diffmaglim",
    "ra",
    "dec",
    "magpsf",
    "sigmapsf",
    "chipsf",
    "fwhm",
    "sky",
    "chinr",
    "sharpnr",
    "sgscore1",
    "distpsnr1",
    "sgscore2",
    "distpsnr2",
    "sgscore3",
    "distpsnr3",
    "ndethist",
    "ncovhist",
    "scorr",
    "nmtchps",
    "clrcoeff",
    "clrcounc",
    "neargaia",
    "neargaiabright",
)


class MissingFeature(ValueError):
    """The alert lacks a field a model needs (older schema, null value)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"missing feature {name}")
        self.name = name


@dataclass(frozen=True, slots=True)
class LightCurveSoFar:
    """Derived BTSbot features over the object's detections up to this alert."""

    age: float
    days_since_peak: float
    days_to_peak: float
    peakmag_so_far: float
    maxmag_so_far: float


def detections_so_far(item: ScoringInput) -> list[tuple[float, float]]:
    """(jd, magpsf) of every detection with a magnitude up to and including this alert.

    Both isdiffpos signs and every filter count; duplicates (same candid, or same jd when
    candid is absent) are kept once; sorted by jd.
    """
    seen: set[object] = set()
    points: list[tuple[float, float]] = []
    for entry in _with_candidate(item.history, item.candidate):
        jd, mag = entry.get("jd"), entry.get("magpsf")
        if jd is None or mag is None or float(jd) > item.jd:
            continue
        key = ("candid", entry["candid"]) if entry.get("candid") is not None else ("jd", jd)
        if key in seen:
            continue
        seen.add(key)
        points.append((float(jd), float(mag)))
    points.sort(key=lambda point: point[0])
    return points


def _with_candidate(
    history: Iterable[Mapping[str, Any]], candidate: Mapping[str, Any]
) -> Iterable[Mapping[str, Any]]:
    # The candidate goes first so that it wins over a stored copy of itself.
    yield candidate
    yield from history


def light_curve_so_far(item: ScoringInput) -> LightCurveSoFar:
    points = detections_so_far(item)
    if not points:
        raise MissingFeature("magpsf")
    mags = [mag for _, mag in points]
    peak, faintest = min(mags), max(mags)
    jd_peak = next(jd for jd, mag in points if mag == peak)
    jd_first = points[0][0]
    start = item.candidate.get("jdstarthist")
    if start is not None:
        jd_first = min(jd_first, float(start))
    return LightCurveSoFar(
        age=item.jd - jd_first,
        days_since_peak=item.jd - jd_peak,
        days_to_peak=jd_peak - jd_first,
        peakmag_so_far=peak,
        maxmag_so_far=faintest,
    )


def btsbot_features(item: ScoringInput, new_drb: float) -> np.ndarray:
    """BTSbot v1.0.1 metadata: (25,) float32 in the published order."""
    curve = light_curve_so_far(item)
    derived = {
        "age": curve.age,
        "days_since_peak": curve.days_since_peak,
        "days_to_peak": curve.days_to_peak,
        "peakmag_so_far": curve.peakmag_so_far,
        "maxmag_so_far": curve.maxmag_so_far,
        "new_drb": new_drb,
        "nnotdet": _field(item.candidate, "ncovhist") - _field(item.candidate, "ndethist"),
    }
    values = [
        derived[name] if name in derived else _field(item.candidate, name)
        for name in BTSBOT_COLUMNS
    ]
    return np.asarray(values, dtype=np.float32)


def acai_features(item: ScoringInput) -> np.ndarray:
    """ACAI d1_dnn_20201130 features: (25,) float32; `drb` is the packet's own."""
    return np.asarray([_field(item.candidate, name) for name in ACAI_COLUMNS], dtype=np.float32)


def _field(candidate: Mapping[str, Any], name: str) -> float:
    value = candidate.get(name)
    if value is None:
        raise MissingFeature(name)
    return float(value)
