"""ZTF adapter: a decoded ZTF alert packet (schema 1.x-4.02, namespace `ztf`) -> Alert.

Schema 2.0+ packets carry objectId, gzip-FITS stamps and `schemavsn`; 1.x packets have no
objectId and JPEG stamps, and are rejected (missing_field). History is `prv_candidates`
(detections and upper limits), oldest first; `fp_hists` stays in the packet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.errors import BadAlert
from broker.records import Alert, Origin, PhotPoint, RejectReason
from broker.surveys import (
    JD_MJD_OFFSET,
    SurveyTables,
    cutouts,
    finite,
    magnitude_point,
    required_id,
    required_number,
    sorted_by,
)

RECORD_NAME = "ztf.alert"
# SkyPortal filter names of ZTF's filter ids (fid).
FILTERS = {1: "ztfg", 2: "ztfr", 3: "ztfi"}
# The newest schema ZTF publishes, shipped in schemas/: every embedded writer schema must
# resolve against it (broker.avro.guard). (folder, .avsc files with named types first)
READER_SCHEMA = ("ztf/4.02", ("cutout", "candidate", "prv_candidate", "fp_hist", "alert"))


def matches(record_name: str) -> bool:
    return record_name == RECORD_NAME


def schema_version(schema: Mapping[str, Any]) -> str:
    # Every ZTF schema since 1.1 has a top-level "version"; the first samples had none.
    return str(schema.get("version") or "1.0")


def to_alert(
    packet: dict[str, Any],
    *,
    schema_version: str,
    schema_key: str,
    raw: bytes,
    origin: Origin | None,
) -> Alert:
    version = str(packet.get("schemavsn") or schema_version)
    object_id = packet.get("objectId")
    if not isinstance(object_id, str) or not object_id:
        hint = " (ZTF schema 1.x alerts have none)" if version.startswith("1.") else ""
        raise BadAlert(
            RejectReason.MISSING_FIELD, f"no objectId in ZTF schema {version} packet{hint}"
        )
    candidate = packet.get("candidate")
    if not isinstance(candidate, dict):
        raise BadAlert(RejectReason.MISSING_FIELD, f"{object_id}: no candidate record")
    candid = required_id(packet.get("candid", candidate.get("candid")), f"{object_id}: candid")
    where = f"{object_id} candid {candid}: candidate"
    ra = required_number(candidate, "ra", where)
    dec = required_number(candidate, "dec", where)
    jd = required_number(candidate, "jd", where)
    stamps = cutouts(
        _stamp(packet.get("cutoutScience")),
        _stamp(packet.get("cutoutTemplate")),
        _stamp(packet.get("cutoutDifference")),
    )
    return Alert(
        survey="ztf",
        candid=candid,
        object_id=object_id,
        ra=ra,
        dec=dec,
        jd=jd,
        candidate=candidate,
        history=sorted_by(packet.get("prv_candidates") or [], "jd"),
        cutouts=stamps,
        schema_version=version,
        schema_key=schema_key,
        packet=packet,
        raw=raw,
        origin=origin,
    )


def _stamp(cutout: Any) -> Any:
    """stampData of a ZTF cutout record (None when the cutout is absent)."""
    return cutout.get("stampData") if isinstance(cutout, dict) else None


def photometry_point(row: Mapping[str, Any]) -> PhotPoint | None:
    """A ZTF candidate / prv_candidate / light-curve row in SkyPortal's flux convention."""
    jd, fid, limit = finite(row.get("jd")), row.get("fid"), finite(row.get("diffmaglim"))
    if jd is None or fid not in FILTERS or limit is None or limit <= 0:
        return None  # Kowalski drops rows without a positive diffmaglim too
    return magnitude_point(row, jd - JD_MJD_OFFSET, FILTERS[fid])


# Fields kept per light-curve point, in this order (broker.history).
POINT_FIELDS = (
        "candid",
        "jd",
        "fid",
        "pid",
        "programid",
        "isdiffpos",
        "magpsf",
        "sigmapsf",
        "diffmaglim",
        "ra",
        "dec",
        "magzpsci",
        "magzpsciunc",
        "rb",
        "drb",
        "field",
        "rcid",
    )  # fmt: skip

TABLES = SurveyTables(
    name="ztf",
    point_fields=POINT_FIELDS,
    id_field="candid",
    time_field="jd",
    band_field="fid",
    history_fields=frozenset({"prv_candidates", "fp_hists"}),
    photometry=photometry_point,
)
