"""Simulated ZTF alerts: schema 4.02 packets as one-record Avro container files.

Input: count and seed. Output: `SimulatedAlert`s whose bytes are what ZTF's Kafka sends:
candidate fields in ZTF's units, 30 days of prv_candidates (detections and upper limits)
and 63x63 gzip-compressed FITS cutouts.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Mapping
from functools import cache
from hashlib import sha256
from typing import Any

import numpy as np
from fastavro.schema import load_schema_ordered

from broker.avro.container import MAGIC, zigzag_long
from broker.schema_registry import SCHEMA_ROOT
from broker.tools.simulate import SimulatedAlert
from broker.tools.simulate.avro import PacketEncoder
from broker.tools.simulate.sky import Alert, SkyObject, SurveyProfile, Visit, history, schedule
from broker.tools.simulate.stamps import StampSpec, fits_image, gzip_fits, triplet

SCHEMA_VERSION = "4.02"
SCHEMA_FILES = ("cutout", "candidate", "prv_candidate", "fp_hist", "alert")
FILTER_IDS = {"g": 1, "r": 2, "i": 3}
STAMP_SHAPE = (63, 63)
EDGE_ROWS = 45
PRV = "prv_candidates"
CACHED_VISITS = 200_000
JD_2018 = 2458119.5  # ZTF night ids count from here (approximately)
PROFILE = SurveyProfile(
    bands=("g", "r", "i"),
    band_weights=(0.45, 0.45, 0.10),
    depth={"g": 20.8, "r": 20.6, "i": 20.0},
    start_jd=2460676.5,  # 2025-01-01
    window_days=30.0,
    cadence_days=(0.2, 2.0),  # public + partnership surveys: about one visit a night
    seeing_pixels=(2.1, 0.35),
    dec_range=(-30.0, 89.0),
    night_fraction=(0.62, 0.95),  # Palomar nights in UT, as JD fractions
    kind_weights=SurveyProfile.weights(supernova=0.06, variable=0.03),
)


@cache
def _schema() -> tuple[dict[str, Any], PacketEncoder, list[dict[str, Any]], tuple[str, ...]]:
    """(plain schema, its encoder, candidate fields, prv_candidate field names) of 4.02."""
    folder = SCHEMA_ROOT / "ztf" / SCHEMA_VERSION
    plain = load_schema_ordered(
        [str(folder / f"{name}.avsc") for name in SCHEMA_FILES], _write_hint=False
    )
    assert isinstance(plain, dict)
    fields = {field["name"]: field["type"] for field in plain["fields"]}
    candidate = fields["candidate"]["fields"]
    prv_names = tuple(field["name"] for field in fields["prv_candidates"][1]["items"]["fields"])
    return plain, PacketEncoder(plain, spliced=[PRV]), candidate, prv_names


def generate(n: int, seed: int) -> Iterator[SimulatedAlert]:
    plain, encoder, candidate_fields, prv_names = _schema()
    sync = sha256(f"nightjar-simulate-ztf-{seed}".encode()).digest()[:16]
    header = _container_header(plain, sync)
    visits = _Visits(seed, encoder, prv_names)
    for index, alert in enumerate(schedule(np.random.default_rng(seed), PROFILE, n)):
        rng = np.random.default_rng([seed, index])
        packet = _packet(alert, seed, rng, candidate_fields, visits)
        prv = [visits.prv_candidate(alert.obj, earlier) for earlier in history(alert)]
        body = encoder.encode(packet, {PRV: prv})
        data = b"".join((header, zigzag_long(1), zigzag_long(len(body)), body, sync))
        candid = packet["candid"]
        yield SimulatedAlert(str(candid), data, alert.obj.kind, candid, packet["objectId"])


def object_id(serial: int, jd: float) -> str:
    """'ZTF' + two-digit year + seven letters, unique per serial (like ZTF25aabcdef)."""
    year = 2000 + int((jd - 2451544.5) // 365.25)
    letters = []
    for _ in range(7):
        serial, digit = divmod(serial, 26)
        letters.append(chr(ord("a") + digit))
    return f"ZTF{year % 100:02d}{''.join(reversed(letters))}"


def visit_ids(obj: SkyObject, visit: Visit) -> tuple[int, int, int]:
    """(nid, pid, candid): a night, an exposure of it and a detection on it."""
    nid = int(visit.jd - JD_2018)
    exposure = int((visit.jd % 1.0) * 86400 / 40)  # 30 s exposures + overheads
    pid = (nid * 10_000 + exposure) * 100 + _rcid(obj)
    return nid, pid, pid * 1_000_000 + obj.serial % 1_000_000


def _rcid(obj: SkyObject) -> int:
    return obj.serial % 64


def _container_header(plain: Mapping[str, Any], sync: bytes) -> bytes:
    metadata = {b"avro.schema": json.dumps(plain).encode(), b"avro.codec": b"null"}
    entries = b"".join(
        zigzag_long(len(key)) + key + zigzag_long(len(value)) + value
        for key, value in metadata.items()
    )
    return MAGIC + zigzag_long(len(metadata)) + entries + zigzag_long(0) + sync


class _Visits:
    """Per-visit fields and encoded prv_candidates, made once: a visit recurs in the
    history of every later alert of its object."""

    def __init__(self, seed: int, encoder: PacketEncoder, prv_names: tuple[str, ...]) -> None:
        self.seed = seed
        self._encoder = encoder
        self._prv_names = prv_names
        self._measured: dict[tuple[int, int], dict[str, Any]] = {}
        self._encoded: dict[tuple[int, int], bytes] = {}

    def measured(self, obj: SkyObject, visit: Visit) -> dict[str, Any]:
        key = (obj.serial, visit.position)
        found = self._measured.get(key)
        if found is None:
            if len(self._measured) >= CACHED_VISITS:  # bounds memory for long streams
                self._measured.clear()
            found = self._measured[key] = _measurement(obj, visit, self.seed)
        return found

    def prv_candidate(self, obj: SkyObject, visit: Visit) -> bytes:
        key = (obj.serial, visit.position)
        found = self._encoded.get(key)
        if found is None:
            if len(self._encoded) >= CACHED_VISITS:
                self._encoded.clear()
            measured = self.measured(obj, visit)
            record = {name: measured.get(name) for name in self._prv_names}
            found = self._encoded[key] = self._encoder.encode_item(PRV, record)
        return found


def _packet(
    alert: Alert,
    seed: int,
    rng: np.random.Generator,
    candidate_fields: list[dict[str, Any]],
    visits: _Visits,
) -> dict[str, Any]:
    """The packet without prv_candidates (spliced in encoded)."""
    obj = alert.obj
    candidate = _candidate(alert, seed, candidate_fields, visits)
    stamps = _cutouts(alert, rng, candidate)
    name = f"candid{candidate['candid']}_pid{candidate['pid']}"
    return {
        "schemavsn": SCHEMA_VERSION,
        "publisher": "Nightjar simulator",
        "objectId": object_id(obj.serial, PROFILE.start_jd),
        "candid": candidate["candid"],
        "candidate": candidate,
        "fp_hists": None,
        **{
            f"cutout{kind.title()}": {"fileName": f"{name}_{kind}.fits.gz", "stampData": data}
            for kind, data in stamps.items()
        },
    }


def _visit_random(seed: int, obj: SkyObject, visit: Visit) -> random.Random:
    # The same visit gets the same measured values in every alert that lists it.
    return random.Random((seed << 48) ^ (obj.serial << 12) ^ visit.position)


def _measurement(obj: SkyObject, visit: Visit, seed: int) -> dict[str, Any]:
    """Fields a visit shares between candidate and prv_candidate."""
    rand = _visit_random(seed, obj, visit)
    nid, pid, candid = visit_ids(obj, visit)
    common: dict[str, Any] = {
        "jd": visit.jd,
        "fid": FILTER_IDS[visit.band],
        "pid": pid,
        "diffmaglim": round(visit.limit, 4),
        "programid": 1,
        "nid": nid,
        "rcid": _rcid(obj),
        "field": 200 + obj.serial % 700,
        "rbversion": "t17_f5_c3",
        "magzpsci": 26.3 + rand.gauss(0.0, 0.08),
        "sky": rand.gauss(0.0, 1.5),
        "fwhm": visit.fwhm,
        "pdiffimfilename": f"ztf_{nid}_{pid}_scimrefdiffimg.fits",
    }
    if visit.mag is None:
        return common
    good = obj.stamp_kind == "real"
    common |= {
        "candid": candid,
        "isdiffpos": "t" if visit.positive else "f",
        "ra": obj.ra + rand.gauss(0.0, 0.1) / 3600.0,
        "dec": obj.dec + rand.gauss(0.0, 0.1) / 3600.0,
        "xpos": rand.uniform(5.0, 3067.0),
        "ypos": rand.uniform(5.0, 3075.0),
        "magpsf": visit.mag,
        "sigmapsf": visit.mag_err,
        "chipsf": rand.lognormvariate(0.0, 0.4) if good else rand.uniform(2.0, 30.0),
        "magap": visit.mag + rand.gauss(0.0, visit.mag_err),
        "sigmagap": visit.mag_err * 1.2,
        "scorr": 5.0 + 10 ** (-0.4 * (visit.mag - visit.limit)) * rand.uniform(4.0, 6.0),
        "chinr": rand.lognormvariate(0.0, 0.5),
        "sharpnr": rand.gauss(0.0, 0.1),
        "classtar": rand.uniform(0.6, 1.0) if good else rand.uniform(0.0, 0.6),
        "elong": rand.uniform(1.0, 1.3) if good else rand.uniform(1.0, 3.0),
        "nneg": rand.randint(0, 5) if good else rand.randint(3, 40),
        "nbad": 0,
        "rb": rand.betavariate(12.0, 1.5) if good else rand.betavariate(1.2, 10.0),
        "ssnamenr": None,
        "magdiff": rand.gauss(0.0, 0.05),
        "magfromlim": visit.limit - visit.mag,
        "mindtoedge": rand.uniform(10.0, 1500.0),
        "seeratio": rand.uniform(0.8, 1.2),
        "aimage": visit.fwhm * 0.5,
        "bimage": visit.fwhm * 0.45,
        "sumrat": rand.uniform(0.9, 1.0) if good else rand.uniform(0.3, 0.9),
    }
    return common


def _candidate(
    alert: Alert, seed: int, fields: list[dict[str, Any]], visits: _Visits
) -> dict[str, Any]:
    obj, visit = alert.obj, alert.visit
    record = dict.fromkeys(field["name"] for field in fields)
    record.update(visits.measured(obj, visit))
    record.update(_catalog_matches(obj, seed))
    record.update(_history_counts(obj, visit, seed))
    good = obj.stamp_kind == "real"
    rand = random.Random((seed << 48) ^ (obj.serial << 12) ^ 0xFFF ^ (visit.position << 30))
    record.update(
        tooflag=0,
        rfid=600_000_000 + obj.serial % 100_000,
        jdstartref=PROFILE.start_jd - 2200.0,
        jdendref=PROFILE.start_jd - 2000.0,
        nframesref=rand.randint(15, 40),
        dsnrms=rand.uniform(5.0, 15.0),
        ssnrms=rand.uniform(10.0, 30.0),
        dsdiff=rand.uniform(-10.0, 5.0),
        magzpsciunc=rand.uniform(1e-6, 1e-5),
        magzpscirms=rand.uniform(0.02, 0.05),
        nmatches=rand.randint(200, 2000),
        clrcoeff=rand.gauss(-0.05, 0.03) if visit.band != "i" else rand.gauss(0.1, 0.03),
        clrcounc=rand.uniform(1e-6, 5e-5),
        zpclrcov=rand.uniform(-1e-5, 0.0),
        zpmed=26.3 + rand.gauss(0.0, 0.05),
        clrmed=rand.uniform(0.4, 0.8),
        clrrms=rand.uniform(0.2, 0.4),
        exptime=30.0,
        drb=rand.betavariate(14.0, 1.2) if good else rand.betavariate(1.0, 12.0),
        drbversion="d6_m7",
    )
    return record


def _catalog_matches(obj: SkyObject, seed: int) -> dict[str, Any]:
    """PS1, Gaia and reference-image neighbours: fixed per object."""
    rand = random.Random((seed << 48) ^ (obj.serial << 12) ^ 0xFFE)
    # Supernovae sit near galaxies, variables on stars; bogus anywhere.
    distance = rand.uniform(0.05, 0.4) if obj.star_like > 0.5 else rand.uniform(0.3, 6.0)
    out: dict[str, Any] = {
        "ranr": obj.ra + distance / 3600.0,
        "decnr": obj.dec,
        "distnr": distance,
        "magnr": obj.star_mag if obj.star_mag is not None else rand.uniform(15.0, 21.0),
        "sigmagnr": rand.uniform(0.01, 0.1),
        "nmtchps": rand.randint(3, 30),
        "neargaia": rand.uniform(0.1, 30.0) if obj.star_like > 0.5 else rand.uniform(5.0, 60.0),
        "neargaiabright": rand.uniform(20.0, 200.0),
        "maggaia": rand.uniform(14.0, 20.0),
        "maggaiabright": rand.uniform(10.0, 13.0),
    }
    for rank in (1, 2, 3):
        near = rank == 1
        out |= {
            f"objectidps{rank}": 100_000_000_000_000_000 + obj.serial * 10 + rank,
            f"sgscore{rank}": min(1.0, max(0.0, obj.star_like + rand.gauss(0.0, 0.05)))
            if near
            else rand.uniform(0.0, 1.0),
            f"distpsnr{rank}": distance if near else rand.uniform(distance, 30.0),
            **{
                f"s{band}mag{rank}": rand.uniform(16.0, 22.0) if rand.random() > 0.05 else -999.0
                for band in "griz"
            },
        }
    return out


def _history_counts(obj: SkyObject, visit: Visit, seed: int) -> dict[str, Any]:
    detections = [
        earlier.jd for earlier in obj.visits[: visit.position + 1] if earlier.mag is not None
    ]
    coverage = random.Random((seed << 48) ^ (obj.serial << 12) ^ 0xFFD).randint(20, 300)
    return {
        "ndethist": len(detections),
        "ncovhist": visit.position + 1 + coverage,
        "jdstarthist": detections[0],
        "jdendhist": visit.jd,
    }


def _cutouts(
    alert: Alert, rng: np.random.Generator, candidate: Mapping[str, Any]
) -> dict[str, bytes]:
    """gzip-FITS science, template and difference stamps of the detection."""
    visit = alert.visit
    star = alert.obj.star_mag is not None
    zero_point = float(candidate["magzpsci"])
    flux = 10 ** (-0.4 * (float(candidate["magpsf"]) - zero_point))
    sky = float(rng.uniform(40.0, 400.0))
    # Pixel noise that makes the packet's diffmaglim the 5-sigma PSF-fit limit.
    limit_flux = 10 ** (-0.4 * (visit.limit - zero_point))
    noise = limit_flux / 5.0 / math.sqrt(4 * math.pi * (visit.fwhm / 2.3548) ** 2)
    spec = StampSpec(
        shape=STAMP_SHAPE,
        fwhm=visit.fwhm,
        sky=sky,
        noise=noise,
        template_noise=noise / 4.0,
        flux=flux if visit.positive else -flux,
        kind=alert.obj.stamp_kind,
        host_flux=10 ** (-0.4 * (rng.uniform(17.0, 21.0) - zero_point)) if alert.obj.host else 0.0,
        static_flux=10 ** (-0.4 * (float(candidate["magnr"]) - zero_point)) if star else 0.0,
        star_flux=10 ** (-0.4 * (19.0 - zero_point)),
        crop_rows=EDGE_ROWS if rng.random() < 0.02 else None,
        nan_rows=int(rng.integers(4, 16)) if rng.random() < 0.02 else 0,
    )
    images = triplet(rng, spec)
    cards = (("BUNIT", "DN"), ("MAGZP", round(zero_point, 4)))
    kinds = ("science", "template", "difference")
    return {
        kind: gzip_fits(fits_image(image, cards)) for kind, image in zip(kinds, images, strict=True)
    }
