"""Simulated alerts of any survey whose packet is described by its Avro schema alone.

Input: a `PacketSpec` (the survey's shipped writer schema, sky profile, band values and
how a visit is measured) with count and seed. Output: `SimulatedAlert`s, one-record Avro
container files like the survey's own (gzip-FITS stamps), the same bytes for the same
seed. Fields the spec does not measure get the schema's nothing: null where nullable, else
its default, else zero / empty, so every schema field is present and the packet valid.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, cast

import fastavro
import numpy as np

from broker.surveys import PacketLayout
from broker.surveys.schema_repair import repair_defaults
from broker.tools.simulate import SimulatedAlert
from broker.tools.simulate.sky import Alert, SkyObject, SurveyProfile, Visit, history, schedule
from broker.tools.simulate.stamps import StampSpec, fits_image, gzip_fits, triplet

STAMP_SHAPE = (63, 63)
ZERO_POINT = 26.0  # DN of the simulated stamps
_EMPTY = {"int": 0, "long": 0, "float": 0.0, "double": 0.0, "string": "", "boolean": False}


@dataclass(frozen=True, slots=True)
class PacketSpec:
    """What a survey's simulated packets hold beyond what its schema says."""

    layout: PacketLayout  # the adapter's: field names of ids, time, history, stamps
    schema_file: Path
    profile: SurveyProfile
    object_prefix: str  # object ids: prefix + two-digit year + seven letters
    band_field: str  # 'fid' or 'band'; '' for a one-band survey
    band_values: Mapping[str, Any]  # profile band -> the packet's value of band_field
    score_field: str  # the packet's own real/bogus score
    # (visit, object, rng) -> the photometric fields of one detection or forced point
    measure: Callable[[Visit, SkyObject, np.random.Generator], dict[str, Any]]
    # First detection id: each survey its own range, so that simulated candids do not
    # repeat across surveys (the outbox keys jobs by candid and filter).
    candid_base: int
    detections_only: bool = True  # history holds detections only (no limit rows)


def generate(spec: PacketSpec, n: int, seed: int) -> Iterator[SimulatedAlert]:
    """`n` alerts of the survey in time order."""
    schema, fields = _schema(spec.schema_file)
    sync = sha256(f"nightjar-simulate-{spec.layout.survey}-{seed}".encode()).digest()[:16]
    for index, alert in enumerate(schedule(np.random.default_rng(seed), spec.profile, n)):
        rng = np.random.default_rng([seed, index])
        packet = _packet(spec, fields, alert, rng)
        buffer = io.BytesIO()
        fastavro.writer(buffer, schema, [packet], sync_marker=sync)
        candid = int(packet["candid"])
        object_id = str(packet[spec.layout.object_field])
        yield SimulatedAlert(str(candid), buffer.getvalue(), alert.obj.kind, candid, object_id)


def _schema(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parsed schema, top-level field types by name) of a shipped writer schema, repaired
    as decode repairs it (one survey's published schema has defaults of the wrong type)."""
    plain, _ = repair_defaults(json.loads(path.read_text()))
    parsed = cast(dict[str, Any], fastavro.parse_schema(plain, named_schemas={}))
    return parsed, {field["name"]: field["type"] for field in plain["fields"]}


def _packet(
    spec: PacketSpec, fields: Mapping[str, Any], alert: Alert, rng: np.random.Generator
) -> dict[str, Any]:
    layout = spec.layout
    candid = _candid(spec, alert.obj, alert.visit)
    candidate = _row(spec, _record(fields["candidate"]), alert.obj, alert.visit, rng)
    candidate[spec.score_field] = _score(alert.obj, rng)
    earlier = [v for v in history(alert) if v.mag is not None or not spec.detections_only]
    if layout.history_field == "fp_hists":  # forced photometry includes this epoch
        earlier.append(alert.visit)
    item = _record(_array_items(fields[layout.history_field]))
    rows = [_row(spec, item, alert.obj, visit, rng) for visit in earlier]
    values = {
        layout.object_field: _object_id(spec.object_prefix, alert.obj),
        "candid": candid,
        "candidate": candidate,
        layout.history_field: rows,
        **dict(zip(layout.cutout_fields, _cutouts(alert, rng), strict=True)),
    }
    return _fill(fields, values)


def _row(
    spec: PacketSpec,
    record: Mapping[str, Any],
    obj: SkyObject,
    visit: Visit,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One candidate or history row: time, position, band, id and measurement."""
    time = visit.jd - spec.layout.time_to_jd
    jitter = rng.normal(0.0, 0.1 / 3600.0, size=2)
    values: dict[str, Any] = {
        spec.layout.time_field: time,
        "ra": obj.ra + float(jitter[0]) / max(math.cos(math.radians(obj.dec)), 1e-3),
        "dec": obj.dec + float(jitter[1]),
        "candid": _candid(spec, obj, visit),
        "fwhm": visit.fwhm,
        **spec.measure(visit, obj, rng),
    }
    if spec.band_field:
        values[spec.band_field] = spec.band_values[visit.band]
    types = {field["name"]: field["type"] for field in record["fields"]}
    if "isdiffpos" in types:
        values["isdiffpos"] = _positive(types["isdiffpos"], visit.positive)
    return _fill(types, values)


def _fill(types: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of a record: the given value, else null / the type's empty value."""
    return {name: values[name] if name in values else _empty(kind) for name, kind in types.items()}


def _empty(kind: Any) -> Any:
    if isinstance(kind, list):
        return None if "null" in kind else _empty(kind[0])
    if isinstance(kind, Mapping):
        if kind.get("type") == "record":
            return _fill({f["name"]: f["type"] for f in kind["fields"]}, {})
        return [] if kind.get("type") == "array" else _empty(kind.get("type"))
    return b"" if kind == "bytes" else _EMPTY.get(str(kind))


def _record(kind: Any) -> Mapping[str, Any]:
    """The record schema of a field type (a record, or a union holding one)."""
    branches = kind if isinstance(kind, list) else [kind]
    return next(b for b in branches if isinstance(b, Mapping) and b.get("type") == "record")


def _array_items(kind: Any) -> Any:
    branches = kind if isinstance(kind, list) else [kind]
    return next(b["items"] for b in branches if isinstance(b, Mapping) and "items" in b)


def _positive(kind: Any, positive: bool) -> Any:
    """isdiffpos in the field's own type: boolean, 't'/'f', or 1/0."""
    branches = [b for b in (kind if isinstance(kind, list) else [kind]) if b != "null"]
    if branches[0] == "boolean":
        return positive
    if branches[0] == "string":
        return "t" if positive else "f"
    return (1.0 if positive else 0.0) if branches[0] in ("float", "double") else int(positive)


def _candid(spec: PacketSpec, obj: SkyObject, visit: Visit) -> int:
    """A detection id unique per (object, visit), the same in every alert that lists it."""
    return spec.candid_base + obj.serial * 1_000 + visit.position


def _object_id(prefix: str, obj: SkyObject) -> str:
    first = obj.visits[0].jd
    year = 2000 + int((first - 2451544.5) // 365.25)
    serial, letters = obj.serial, []
    for _ in range(7):
        serial, digit = divmod(serial, 26)
        letters.append(chr(ord("a") + digit))
    return f"{prefix}{year % 100:02d}{''.join(reversed(letters))}"


def _score(obj: SkyObject, rng: np.random.Generator) -> float:
    """The survey's own real/bogus score: high for real objects, low for artefacts."""
    real = obj.stamp_kind == "real"
    return float(rng.uniform(0.7, 1.0) if real else rng.uniform(0.0, 0.3))


def _cutouts(alert: Alert, rng: np.random.Generator) -> tuple[bytes, bytes, bytes]:
    """gzip-FITS science, template and difference stamps of the detection."""
    visit = alert.visit
    mag = visit.mag if visit.mag is not None else visit.limit
    limit_flux = 10 ** (-0.4 * (visit.limit - ZERO_POINT))
    noise = limit_flux / 5.0 / math.sqrt(4 * math.pi * (visit.fwhm / 2.3548) ** 2)
    flux = 10 ** (-0.4 * (mag - ZERO_POINT))
    spec = StampSpec(
        shape=STAMP_SHAPE,
        fwhm=visit.fwhm,
        sky=float(rng.uniform(40.0, 400.0)),
        noise=noise,
        template_noise=noise / 4.0,
        flux=flux if visit.positive else -flux,
        kind=alert.obj.stamp_kind,
        star_flux=10 ** (-0.4 * (min(alert.obj.visits[0].limit, 18.0) - ZERO_POINT)),
    )
    cards = (("BUNIT", "DN"), ("MAGZP", ZERO_POINT))
    science, template, difference = (gzip_fits(fits_image(i, cards)) for i in triplet(rng, spec))
    return science, template, difference


def magnitudes(visit: Visit, obj: SkyObject, rng: np.random.Generator) -> dict[str, Any]:
    """ZTF-style photometry: PSF-fit magnitude and its error, 5-sigma limit."""
    return {
        "magpsf": visit.mag,
        "sigmapsf": visit.mag_err if visit.mag is not None else None,
        "diffmaglim": visit.limit,
        "magzpsci": ZERO_POINT,
    }


AB_NJY_ZERO_POINT = 31.4  # m_AB = -2.5 log10(flux / nJy) + 31.4


def forced_fluxes(visit: Visit, obj: SkyObject, rng: np.random.Generator) -> dict[str, Any]:
    """Forced PSF photometry in nanojansky (and microjansky): measured even when faint."""
    error = 10 ** (-0.4 * (visit.limit - AB_NJY_ZERO_POINT)) / 5.0
    true = 0.0 if visit.mag is None else 10 ** (-0.4 * (visit.mag - AB_NJY_ZERO_POINT))
    flux = (true if visit.positive else -true) + float(rng.normal(0.0, error))
    mag = -2.5 * math.log10(abs(flux)) + AB_NJY_ZERO_POINT if flux else visit.limit
    return {
        "psfFlux": flux,
        "psfFluxErr": error,
        "forcediffimflux": flux / 1000.0,
        "forcediffimfluxunc": error / 1000.0,
        "forcediffimmag": mag,
        "forcediffimmagunc": 1.0857 * error / max(abs(flux), 1e-9),
        "diffmaglim": visit.limit,
    }
