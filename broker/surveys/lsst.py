"""Rubin/LSST adapter: a decoded alert packet (namespace `lsst.vX_Y`, 7.0-11.0+) -> Alert.

The triggering `diaSource` is the candidate (candid = diaSourceId, time = midpointMjdTai);
the object is its diaObject, or for solar-system sources without one the ssObject. History
is `prvDiaSources` and `prvDiaForcedSources` merged, oldest first (forced photometry is
Rubin's counterpart of ZTF's upper limits; tell them apart by diaSourceId/diaForcedSourceId).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from broker.errors import BadAlert
from broker.records import Alert, Origin, PhotPoint, RejectReason
from broker.surveys import (
    SurveyTables,
    cutouts,
    finite,
    required_id,
    required_number,
    sorted_by,
)

RECORD_NAME = re.compile(r"^lsst\.v(\d+)_(\d+)\.alert$")
MJD_TO_JD = 2400000.5


def matches(record_name: str) -> bool:
    return RECORD_NAME.match(record_name) is not None


def schema_version(schema: Mapping[str, Any]) -> str:
    found = RECORD_NAME.match(str(schema.get("name", "")))
    return f"{found.group(1)}.{found.group(2)}" if found else "unknown"


def schema_id(record_name: str) -> int | None:
    """The Confluent schema id Rubin registers a record name under (lsst.v7_1.alert -> 701)."""
    found = RECORD_NAME.match(record_name)
    return int(found.group(1)) * 100 + int(found.group(2)) if found else None


def to_alert(
    packet: dict[str, Any],
    *,
    schema_version: str,
    schema_key: str,
    raw: bytes,
    origin: Origin | None,
) -> Alert:
    source = packet.get("diaSource")
    if not isinstance(source, dict):
        raise BadAlert(RejectReason.MISSING_FIELD, f"no diaSource in LSST {schema_version} packet")
    candid = required_id(source.get("diaSourceId"), "diaSource.diaSourceId")
    object_id = _object_id(packet, source)
    if object_id is None:
        raise BadAlert(
            RejectReason.MISSING_FIELD,
            f"diaSource {candid} has neither a diaObjectId nor an ssObjectId",
        )
    where = f"diaSource {candid}"
    ra = required_number(source, "ra", where)
    dec = required_number(source, "dec", where)
    mjd = required_number(source, "midpointMjdTai", where)
    stamps = cutouts(
        packet.get("cutoutScience"), packet.get("cutoutTemplate"), packet.get("cutoutDifference")
    )
    history = [*(packet.get("prvDiaSources") or ()), *(packet.get("prvDiaForcedSources") or ())]
    return Alert(
        survey="lsst",
        candid=candid,
        object_id=object_id,
        ra=ra,
        dec=dec,
        jd=mjd + MJD_TO_JD,
        candidate=source,
        history=sorted_by(history, "midpointMjdTai"),
        cutouts=stamps,
        schema_version=schema_version,
        schema_key=schema_key,
        packet=packet,
        raw=raw,
        origin=origin,
    )


def _object_id(packet: Mapping[str, Any], source: Mapping[str, Any]) -> str | None:
    """diaObjectId, else ssObjectId (0 and null both mean 'none' in Rubin packets).

    Field names are the same in schemas 7.0-11.0: diaSource.diaObjectId/ssObjectId,
    diaObject.diaObjectId, ssObject.ssObjectId (7.x) and ssSource.ssObjectId (8.0+).
    """
    candidates = (
        source.get("diaObjectId"),
        _nested(packet, "diaObject", "diaObjectId"),
        source.get("ssObjectId"),
        _nested(packet, "ssSource", "ssObjectId"),
        _nested(packet, "ssObject", "ssObjectId"),
    )
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value != 0:
            return str(value)
    return None


def _nested(packet: Mapping[str, Any], record: str, key: str) -> Any:
    inner = packet.get(record)
    return inner.get(key) if isinstance(inner, dict) else None


BANDS = frozenset("ugrizy")
NANOJANSKY_PER_MICROJANSKY = 1000.0


def photometry_point(row: Mapping[str, Any]) -> PhotPoint | None:
    """A Rubin DiaSource / DiaForcedSource row: psfFlux in nanojansky."""
    mjd, band = finite(row.get("midpointMjdTai")), row.get("band")
    flux, error = finite(row.get("psfFlux")), finite(row.get("psfFluxErr"))
    if mjd is None or band not in BANDS or error is None or error <= 0:
        return None
    return PhotPoint(
        mjd=mjd,
        filter=f"lsst{band}",
        flux=None if flux is None else flux / NANOJANSKY_PER_MICROJANSKY,
        fluxerr=error / NANOJANSKY_PER_MICROJANSKY,
        ra=finite(row.get("ra")),
        dec=finite(row.get("dec")),
    )


# Fields kept per light-curve point, in this order (broker.history).
POINT_FIELDS = (
        "diaSourceId",
        "midpointMjdTai",
        "band",
        "filterName",
        "psfFlux",
        "psfFluxErr",
        "ra",
        "dec",
        "snr",
        "reliability",
        "isDipole",
        "visit",
        "detector",
    )  # fmt: skip

TABLES = SurveyTables(
    name="lsst",
    point_fields=POINT_FIELDS,
    id_field="diaSourceId",
    time_field="midpointMjdTai",
    band_field="band",
    history_fields=frozenset({"prvDiaSources", "prvDiaForcedSources", "prvDiaNondetectionLimits"}),
    photometry=photometry_point,
)
