"""TURBO adapter: a decoded TURBO alert packet (record `turbo.alert`) -> Alert.

ZTF's layout (objectId, candid, candidate, prv_candidates, gzip-FITS cutoutScience/
Template/Difference). Its writer schema gives several fields defaults that do not match
their types; surveys/schema_repair.py drops those before parsing. The stream publishes no
filter names for its `fid` (Kowalski posts the bare number, which SkyPortal refuses), so its points
are kept on the object but none is posted as SkyPortal photometry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.records import Alert, Origin, PhotPoint
from broker.surveys import PacketLayout, SurveyTables, declared_version, packet_alert

RECORD_NAME = "turbo.alert"
LAYOUT = PacketLayout(
    survey="turbo",
    label="TURBO",
    object_field="objectId",
    history_field="prv_candidates",
    time_field="jd",
    time_to_jd=0.0,
    cutout_fields=("cutoutScience", "cutoutTemplate", "cutoutDifference"),
)


def matches(record_name: str) -> bool:
    return record_name == RECORD_NAME


def schema_version(schema: Mapping[str, Any]) -> str:
    return declared_version(schema)


def to_alert(
    packet: dict[str, Any],
    *,
    schema_version: str,
    schema_key: str,
    raw: bytes,
    origin: Origin | None,
) -> Alert:
    return packet_alert(
        LAYOUT, packet, schema_version=schema_version, schema_key=schema_key, raw=raw, origin=origin
    )


def photometry_point(row: Mapping[str, Any]) -> PhotPoint | None:
    """None: TURBO names no bandpass for its fid, and SkyPortal needs one per point."""
    return None


# Fields kept per light-curve point, in this order (broker.history).
POINT_FIELDS = (
        "candid",
        "jd",
        "fid",
        "programid",
        "isdiffpos",
        "magpsf",
        "sigmapsf",
        "diffmaglim",
        "ra",
        "dec",
        "rb",
        "field",
    )  # fmt: skip

TABLES = SurveyTables(
    name="turbo",
    point_fields=POINT_FIELDS,
    id_field="candid",
    time_field="jd",
    band_field="fid",
    history_fields=frozenset({"prv_candidates"}),
    photometry=photometry_point,
)
