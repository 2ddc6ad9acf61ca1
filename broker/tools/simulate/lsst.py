"""Simulated Rubin/LSST alerts: schema 11.0 packets in Confluent framing (schema id 1100).

Input: count and seed. Output: `SimulatedAlert`s whose bytes are what Rubin's Kafka sends:
a diaSource with fluxes in nJy, 30 days of prvDiaSources and prvDiaForcedSources, the
diaObject summary, and 30x30 FITS cutouts (uncompressed, nJy).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import numpy as np
from fastavro.schema import load_schema

from broker.schema_registry import SCHEMA_ROOT, lsst_schema_file
from broker.tools.simulate import SimulatedAlert
from broker.tools.simulate.avro import PacketEncoder
from broker.tools.simulate.sky import Alert, SkyObject, SurveyProfile, Visit, history, schedule
from broker.tools.simulate.stamps import StampSpec, fits_image, triplet

SCHEMA_ID = 1100
FRAME = b"\x00" + SCHEMA_ID.to_bytes(4, "big")
AB_NJY_ZERO_POINT = 31.4  # m_AB = -2.5 log10(flux / nJy) + 31.4
MJD_OFFSET = 2400000.5
STAMP_SHAPE = (30, 30)
DIA_OBJECT_BASE = 170_000_000_000_000_000
SOURCES = "prvDiaSources"
FORCED = "prvDiaForcedSources"
CACHED_VISITS = 200_000
PROFILE = SurveyProfile(
    bands=("u", "g", "r", "i", "z", "y"),
    band_weights=(0.05, 0.15, 0.25, 0.25, 0.2, 0.1),
    depth={"u": 23.8, "g": 24.5, "r": 24.0, "i": 23.5, "z": 22.9, "y": 22.0},
    start_jd=2460676.5,  # 2025-01-01
    window_days=30.0,
    cadence_days=(2.0, 5.0),
    seeing_pixels=(3.6, 0.6),  # 0.2"/pixel
    dec_range=(-90.0, 10.0),
    night_fraction=(0.46, 0.88),  # Cerro Pachon nights in UT, as JD fractions
    kind_weights=SurveyProfile.weights(supernova=0.15, variable=0.05),
)


@cache
def _schema() -> tuple[PacketEncoder, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(encoder, diaSource, diaForcedSource and diaObject field names) of schema 11.0."""
    plain = load_schema(str(lsst_schema_file(SCHEMA_ROOT / "lsst", SCHEMA_ID)), _write_hint=False)
    assert isinstance(plain, dict)
    fields = {field["name"]: field["type"] for field in plain["fields"]}
    source = fields["diaSource"]
    forced = fields[FORCED][1]["items"]
    dia_object = fields["diaObject"][1]

    def names(record: dict[str, Any]) -> tuple[str, ...]:
        return tuple(field["name"] for field in record["fields"])

    encoder = PacketEncoder(plain, spliced=[SOURCES, FORCED])
    return encoder, names(source), names(forced), names(dia_object)


def generate(n: int, seed: int) -> Iterator[SimulatedAlert]:
    encoder, source_names, forced_names, object_names = _schema()
    cache: dict[tuple[str, int, int], bytes] = {}

    def encoded(field: str, obj: SkyObject, visit: Visit) -> bytes:
        """A history entry, encoded once: it recurs in every later alert of the object."""
        key = (field, obj.serial, visit.position)
        found = cache.get(key)
        if found is None:
            if len(cache) >= CACHED_VISITS:  # bounds memory for long streams
                cache.clear()
            record = (
                _dia_source(obj, visit, seed, source_names)
                if field == SOURCES
                else _forced_source(obj, visit, seed, forced_names)
            )
            found = cache[key] = encoder.encode_item(field, record)
        return found

    for index, alert in enumerate(schedule(np.random.default_rng(seed), PROFILE, n)):
        rng = np.random.default_rng([seed, index])
        earlier = history(alert)
        source = _dia_source(alert.obj, alert.visit, seed, source_names)
        packet = {
            "diaSourceId": source["diaSourceId"],
            "observation_reason": "wfd",
            "target_name": None,
            "diaSource": source,
            "diaObject": _dia_object(alert, object_names),
            "ssSource": None,
            "mpc_orbits": None,
            **_cutouts(alert, rng),
        }
        spliced = {
            SOURCES: [encoded(SOURCES, alert.obj, v) for v in earlier if v.mag is not None],
            FORCED: [encoded(FORCED, alert.obj, v) for v in earlier],
        }
        data = FRAME + encoder.encode(packet, spliced)
        candid = source["diaSourceId"]
        object_id = str(source["diaObjectId"])
        yield SimulatedAlert(str(candid), data, alert.obj.kind, candid, object_id)


def flux_njy(mag: float) -> float:
    return 10 ** (-0.4 * (mag - AB_NJY_ZERO_POINT))


def visit_id(jd: float) -> int:
    """Rubin's visit ids read YYYYMMDD followed by a 5-digit sequence number."""
    when = datetime(2000, 1, 1, 12) + timedelta(days=jd - 2451545.0)
    return int(when.strftime("%Y%m%d")) * 100_000 + int((jd % 1.0) * 86400 / 40)


def _source_id(obj: SkyObject, visit: Visit) -> int:
    return visit_id(visit.jd) * 1_000_000 + obj.serial % 1_000_000


def _visit_random(seed: int, obj: SkyObject, visit: Visit) -> random.Random:
    # The same visit gets the same measured values in every alert that lists it.
    return random.Random((seed << 48) ^ (obj.serial << 12) ^ visit.position)


def _dia_source(obj: SkyObject, visit: Visit, seed: int, names: tuple[str, ...]) -> dict[str, Any]:
    rand = _visit_random(seed, obj, visit)
    mag = visit.mag if visit.mag is not None else visit.limit
    flux = flux_njy(mag) * (1.0 if visit.positive else -1.0)
    error = flux_njy(visit.limit) / 5.0
    good = obj.stamp_kind == "real"
    template_flux = flux_njy(obj.star_mag) if obj.star_mag is not None else 0.0
    record: dict[str, Any] = dict.fromkeys(names)
    record.update(dict.fromkeys((name for name in names if "flag" in name.lower()), False))
    record.update(
        diaSourceId=_source_id(obj, visit),
        visit=visit_id(visit.jd),
        detector=obj.serial % 189,
        diaObjectId=DIA_OBJECT_BASE + obj.serial,
        midpointMjdTai=visit.jd - MJD_OFFSET,
        ra=obj.ra + rand.gauss(0.0, 0.03) / 3600.0,
        raErr=rand.uniform(1e-6, 2e-5),
        dec=obj.dec + rand.gauss(0.0, 0.03) / 3600.0,
        decErr=rand.uniform(1e-6, 2e-5),
        x=rand.uniform(10.0, 4062.0),
        y=rand.uniform(10.0, 4062.0),
        psfFlux=flux,
        psfFluxErr=error,
        psfNdata=rand.randint(200, 2000),
        apFlux=flux * rand.uniform(0.8, 1.1),
        apFluxErr=error * 1.2,
        snr=abs(flux) / error,
        scienceFlux=flux + template_flux,
        scienceFluxErr=error,
        templateFlux=template_flux,
        templateFluxErr=error,
        trailNdata=0,
        dipoleNdata=0,
        isNegative=not visit.positive,
        isDipole=obj.kind == "dipole",
        extendedness=rand.uniform(0.0, 0.3) if obj.star_like > 0.5 else rand.uniform(0.5, 1.0),
        reliability=rand.betavariate(14.0, 1.2) if good else rand.betavariate(1.0, 12.0),
        band=visit.band,
        timeProcessedMjdTai=visit.jd - MJD_OFFSET + 60.0 / 86400.0,
        bboxSize=rand.randint(15, 40),
        pixelFlags_cr=obj.kind == "cosmic_ray",
    )
    return record


def _forced_source(
    obj: SkyObject, visit: Visit, seed: int, names: tuple[str, ...]
) -> dict[str, Any]:
    rand = _visit_random(seed, obj, visit)
    error = flux_njy(visit.limit) / 5.0
    flux = flux_njy(visit.mag) * (1 if visit.positive else -1) if visit.mag is not None else 0.0
    record: dict[str, Any] = dict.fromkeys(names)
    record.update(
        diaForcedSourceId=_source_id(obj, visit),
        diaObjectId=DIA_OBJECT_BASE + obj.serial,
        ra=obj.ra,
        dec=obj.dec,
        visit=visit_id(visit.jd),
        detector=obj.serial % 189,
        psfFlux=flux + rand.gauss(0.0, error),
        psfFluxErr=error,
        midpointMjdTai=visit.jd - MJD_OFFSET,
        scienceFlux=flux + rand.gauss(0.0, error),
        scienceFluxErr=error,
        band=visit.band,
        timeProcessedMjdTai=visit.jd - MJD_OFFSET + 60.0 / 86400.0,
    )
    return record


def _dia_object(alert: Alert, names: tuple[str, ...]) -> dict[str, Any]:
    """Per-band summaries of the detections so far (the subset brokers use most)."""
    obj, visit = alert.obj, alert.visit
    detections = [v for v in obj.visits[: visit.position + 1] if v.mag is not None]
    record: dict[str, Any] = dict.fromkeys(names)
    record.update(
        diaObjectId=DIA_OBJECT_BASE + obj.serial,
        validityStartMjdTai=visit.jd - MJD_OFFSET,
        ra=obj.ra,
        dec=obj.dec,
        nDiaSources=len(detections),
        firstDiaSourceMjdTai=detections[0].jd - MJD_OFFSET,
        lastDiaSourceMjdTai=visit.jd - MJD_OFFSET,
    )
    for band in PROFILE.bands:
        fluxes = [flux_njy(v.mag) for v in detections if v.band == band and v.mag is not None]
        record[f"{band}_psfFluxNdata"] = len(fluxes)
        if fluxes:
            record[f"{band}_psfFluxMean"] = sum(fluxes) / len(fluxes)
            record[f"{band}_psfFluxMin"] = min(fluxes)
            record[f"{band}_psfFluxMax"] = max(fluxes)
    return record


def _cutouts(alert: Alert, rng: np.random.Generator) -> dict[str, bytes]:
    """Science, template and difference stamps as plain FITS in nJy."""
    visit = alert.visit
    assert visit.mag is not None
    flux = flux_njy(visit.mag)
    sigma_pixels = visit.fwhm / 2.3548
    noise = flux_njy(visit.limit) / 5.0 / math.sqrt(4 * math.pi * sigma_pixels**2)
    spec = StampSpec(
        shape=STAMP_SHAPE,
        fwhm=visit.fwhm,
        sky=0.0,  # Rubin science images are background-subtracted
        noise=noise,
        template_noise=noise / 3.0,
        flux=flux if visit.positive else -flux,
        kind=alert.obj.stamp_kind,
        host_flux=flux_njy(float(rng.uniform(20.0, 23.0))) if alert.obj.host else 0.0,
        static_flux=flux_njy(alert.obj.star_mag) if alert.obj.star_mag is not None else 0.0,
        star_flux=flux_njy(21.0),
        nan_rows=int(rng.integers(2, 8)) if rng.random() < 0.02 else 0,
    )
    images = triplet(rng, spec)
    cards = (("BUNIT", "nJy"),)
    kinds = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
    return {kind: fits_image(image, cards) for kind, image in zip(kinds, images, strict=True)}
