"""WINTER adapter: a decoded WINTER alert packet (record `winter.alert`, mirar) -> Alert.

WINTER (Palomar, near-infrared) packets follow ZTF's layout with their own spellings:
`objectid`, `cutout_science/template/difference` (gzip FITS), `prv_candidates` holding
earlier detections only (no limits). Magnitudes are AB (mirar calibrates against 2MASS
with the Vega-to-AB offsets applied); `fid` is mirar's filter id (1 Y, 2 J, 3 Hs, 4 dark),
which is the mapping Kowalski posts with, whatever the schema's older doc line says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.records import PhotPoint
from broker.surveys import (
    JD_MJD_OFFSET,
    LayoutAdapter,
    PacketLayout,
    SurveyTables,
    finite,
    magnitude_point,
)

RECORD_NAME = "winter.alert"
# SkyPortal (sncosmo) bandpasses of mirar's filter ids; 4 (dark frames) has none.
FILTERS = {1: "ps1::y", 2: "2massj", 3: "2massh"}
LAYOUT = PacketLayout(
    survey="winter",
    label="WINTER",
    object_field="objectid",
    history_field="prv_candidates",
    time_field="jd",
    time_to_jd=0.0,
    cutout_fields=("cutout_science", "cutout_template", "cutout_difference"),
)


ADAPTER = LayoutAdapter(RECORD_NAME, LAYOUT)
# The module is the adapter (broker.surveys.ADAPTER_MODULES): its three functions.
matches, schema_version, to_alert = ADAPTER.matches, ADAPTER.schema_version, ADAPTER.to_alert


def photometry_point(row: Mapping[str, Any]) -> PhotPoint | None:
    """A WINTER candidate / prv_candidate row: AB magnitudes, as ZTF's in flux."""
    jd, fid = finite(row.get("jd")), row.get("fid")
    if jd is None or fid not in FILTERS:
        return None
    return magnitude_point(row, jd - JD_MJD_OFFSET, FILTERS[fid])


# Fields kept per light-curve point, in this order (broker.history).
POINT_FIELDS = (
        "candid",
        "jd",
        "fid",
        "progname",
        "isdiffpos",
        "magpsf",
        "sigmapsf",
        "diffmaglim",
        "ra",
        "dec",
        "magzpsci",
        "rb",
        "field",
        "fieldid",
    )  # fmt: skip

TABLES = SurveyTables(
    name="winter",
    point_fields=POINT_FIELDS,
    id_field="candid",
    time_field="jd",
    band_field="fid",
    history_fields=frozenset({"prv_candidates"}),
    photometry=photometry_point,
)
