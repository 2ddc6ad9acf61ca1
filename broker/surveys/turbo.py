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

from broker.records import PhotPoint
from broker.surveys import LayoutAdapter, PacketLayout, SurveyTables

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


ADAPTER = LayoutAdapter(RECORD_NAME, LAYOUT)
# The module is the adapter (broker.surveys.ADAPTER_MODULES): its three functions.
matches, schema_version, to_alert = ADAPTER.matches, ADAPTER.schema_version, ADAPTER.to_alert


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
