"""Simulated sky: objects, their light curves and the survey's visits of them.

Input: a `SurveyProfile` (bands, depth, cadence, seeing) and a seeded numpy Generator.
Output: the alert stream's schedule: every detection of every object in time order, each
with the object's earlier visits (detections and non-detections) for the packet history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from broker.tools.simulate.stamps import BOGUS_KINDS, REAL

HISTORY_DAYS = 30.0  # ZTF and Rubin packets carry the last 30 days
SUPERNOVA = "supernova"
VARIABLE = "variable_star"

ERROR_FLOOR_MAG = 0.02  # calibration error added to the photon noise
# An exposure and its overheads: two visits of one position closer than this would share an
# exposure id, hence a candid / diaSourceId (ids count 40 s slots of the night).
MIN_VISIT_GAP_DAYS = 40.0 / 86400.0


@dataclass(frozen=True, slots=True)
class SurveyProfile:
    bands: tuple[str, ...]
    band_weights: tuple[float, ...]  # how often each band is used
    depth: dict[str, float]  # median 5-sigma limiting magnitude per band
    start_jd: float
    window_days: float  # span of the simulated stream
    cadence_days: tuple[float, float]  # gap between visits of an object
    seeing_pixels: tuple[float, float]  # (median, spread) of the PSF FWHM
    dec_range: tuple[float, float]
    night_fraction: tuple[float, float]  # observing hours as fractions of a JD
    # Share of objects of each kind. Bogus objects give one alert each and real ones one
    # per detection, so the weights set the share of bogus alerts.
    kind_weights: dict[str, float]

    @staticmethod
    def weights(supernova: float, variable: float) -> dict[str, float]:
        bogus = (1.0 - supernova - variable) / len(BOGUS_KINDS)
        return {SUPERNOVA: supernova, VARIABLE: variable} | dict.fromkeys(BOGUS_KINDS, bogus)


class Visit(NamedTuple):
    """One visit of an object's position; `mag` is None when it was not detected."""

    position: int  # in the object's visits
    jd: float
    band: str
    mag: float | None
    mag_err: float
    limit: float
    fwhm: float
    positive: bool  # brighter than in the template


@dataclass(frozen=True, slots=True)
class SkyObject:
    serial: int
    kind: str  # SUPERNOVA, VARIABLE, or one of the bogus stamp kinds
    ra: float
    dec: float
    visits: tuple[Visit, ...]
    host: bool
    star_like: float  # 0 (galaxy) .. 1 (star): drives sgscore and distpsnr
    star_mag: float | None = None  # a variable star's mean magnitude (in the template)

    @property
    def stamp_kind(self) -> str:
        return self.kind if self.kind in BOGUS_KINDS else REAL

    def first_detection(self) -> Visit | None:
        return next((visit for visit in self.visits if visit.mag is not None), None)


class Alert(NamedTuple):
    """An entry of the schedule: the `visit`-th visit of `obj` is a detection."""

    obj: SkyObject
    visit: Visit


def schedule(rng: np.random.Generator, profile: SurveyProfile, n: int) -> list[Alert]:
    """The first `n` detections, in time order, of enough simulated objects."""
    alerts: list[Alert] = []
    serial = 0
    while len(alerts) < n:
        obj = _make_object(rng, profile, serial)
        serial += 1
        # Detections before the stream starts are only history (the broker never saw them).
        alerts.extend(
            Alert(obj, visit)
            for visit in obj.visits
            if visit.mag is not None and visit.jd >= profile.start_jd
        )
    alerts.sort(key=lambda alert: (alert.visit.jd, alert.obj.serial))
    return alerts[:n]


def history(alert: Alert, days: float = HISTORY_DAYS) -> list[Visit]:
    """The object's visits in the `days` before this alert (as ZTF and Rubin send them)."""
    return [
        visit
        for visit in alert.obj.visits[: alert.visit.position]
        if alert.visit.jd - visit.jd <= days
    ]


def _make_object(rng: np.random.Generator, profile: SurveyProfile, serial: int) -> SkyObject:
    kinds = list(profile.kind_weights)
    kind = kinds[int(rng.choice(len(kinds), p=list(profile.kind_weights.values())))]
    ra = float(rng.uniform(0.0, 360.0))
    sin_dec = rng.uniform(*np.sin(np.radians(profile.dec_range)))
    dec = float(np.degrees(np.arcsin(sin_dec)))
    times = _visit_times(rng, profile, kind)
    star_mag = None
    if kind == SUPERNOVA:
        visits = _supernova(rng, profile, times)
        star_like = float(rng.beta(1.0, 6.0))
    elif kind == VARIABLE:
        depth = min(profile.depth.values())
        # Stars from 14.5 mag down to 1 mag above the limit (shallow surveys: 4 mag range).
        star_mag = float(rng.uniform(min(14.5, depth - 5.0), depth - 1.0))
        visits = _variable(rng, profile, times, star_mag)
        star_like = float(rng.beta(8.0, 1.0))
    else:
        visits = _artifact(rng, profile, times)
        star_like = float(rng.uniform())
    return SkyObject(serial, kind, ra, dec, visits, kind == SUPERNOVA, star_like, star_mag)


def _visit_times(rng: np.random.Generator, profile: SurveyProfile, kind: str) -> np.ndarray:
    """Visits of one sky position: the field's cadence from 30 days before the object's
    first chance of detection (so even a new object's alert has 30 days of upper limits)."""
    first = profile.start_jd + rng.uniform(-20.0, profile.window_days)
    span = rng.uniform(10.0, 60.0) if kind in (SUPERNOVA, VARIABLE) else 0.0
    gaps = rng.uniform(*profile.cadence_days, size=256)
    nights = first - HISTORY_DAYS + np.concatenate(([0.0], np.cumsum(gaps)))
    nights = np.floor(nights[nights <= first + span]) + 0.5
    hours = rng.uniform(*profile.night_fraction, size=nights.size)
    times = np.sort(nights + hours)  # two visits in one night: order by hour
    times = times[np.concatenate(([True], np.diff(times) >= MIN_VISIT_GAP_DAYS))]
    # Only visits inside the stream's window produce alerts; earlier ones are history.
    return times[times <= profile.start_jd + profile.window_days]


def _observe(
    rng: np.random.Generator,
    profile: SurveyProfile,
    times: np.ndarray,
    mags: np.ndarray,
    bands: list[str],
    positive: np.ndarray,
) -> tuple[Visit, ...]:
    visits = []
    for i, (jd, mag, band, sign) in enumerate(zip(times, mags, bands, positive, strict=True)):
        limit = profile.depth[band] + float(rng.normal(0.0, 0.3))
        fwhm = max(1.2, float(rng.normal(*profile.seeing_pixels)))
        snr = 5.0 * 10 ** (-0.4 * (mag - limit))
        detected = math.isfinite(mag) and snr >= 5.0
        err = math.hypot(1.0857 / snr, ERROR_FLOOR_MAG) if detected else 0.0
        observed = float(mag + rng.normal(0.0, err)) if detected else None
        visits.append(Visit(i, float(jd), band, observed, err, limit, fwhm, bool(sign)))
    return tuple(visits)


def _supernova(
    rng: np.random.Generator, profile: SurveyProfile, times: np.ndarray
) -> tuple[Visit, ...]:
    """A Bazin-like rise over days and decline over weeks, bluer early."""
    peak_time = rng.uniform(times.min() - 5, times.max()) if times.size else 0.0
    peak_mag = rng.uniform(min(profile.depth.values()) - 3.5, min(profile.depth.values()) - 0.3)
    rise, fall = rng.uniform(3.0, 8.0), rng.uniform(15.0, 40.0)
    bands = _bands(rng, profile, times.size)
    t = times - peak_time
    flux = np.exp(-t / fall) / (1.0 + np.exp(-t / rise))
    # Redder bands are fainter before peak and brighter after: supernovae redden.
    colour = np.array([0.2 * (profile.bands.index(band) - 0.5) for band in bands])
    mags = peak_mag - 2.5 * np.log10(np.maximum(flux / 0.6, 1e-12)) - colour * np.tanh(t / 20)
    return _observe(rng, profile, times, mags, bands, np.ones(times.size, dtype=bool))


def _variable(
    rng: np.random.Generator, profile: SurveyProfile, times: np.ndarray, mean_mag: float
) -> tuple[Visit, ...]:
    """A periodic star: the difference flux changes sign around the template brightness."""
    period, amplitude = rng.uniform(0.3, 30.0), rng.uniform(0.3, 1.2)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * times / period + phase)
    # The difference is |star now - star in template|, as a magnitude.
    delta = np.abs(10 ** (-0.4 * (mean_mag - amplitude * wave)) - 10 ** (-0.4 * mean_mag))
    mags = -2.5 * np.log10(np.maximum(delta, 1e-12))
    return _observe(rng, profile, times, mags, _bands(rng, profile, times.size), wave > 0)


def _artifact(
    rng: np.random.Generator, profile: SurveyProfile, times: np.ndarray
) -> tuple[Visit, ...]:
    """Nothing at earlier visits; one bright-ish bogus detection at the last."""
    mags = np.full(times.size, np.inf)
    if times.size:
        mags[-1] = rng.uniform(min(profile.depth.values()) - 3.0, min(profile.depth.values()))
    positive = rng.uniform(size=times.size) < 0.7
    return _observe(rng, profile, times, mags, _bands(rng, profile, times.size), positive)


def _bands(rng: np.random.Generator, profile: SurveyProfile, size: int) -> list[str]:
    picks = rng.choice(len(profile.bands), size=size, p=profile.band_weights)
    return [profile.bands[int(i)] for i in picks]
