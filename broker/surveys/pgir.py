"""PGIR adapter: a decoded Palomar Gattini-IR alert packet (record `pgir.alert`) -> Alert.

ZTF's layout (objectId, candid, candidate, prv_candidates with detections and upper limits,
gzip-FITS cutoutScience/Template/Difference). One band, J; magnitudes are calibrated against
2MASS and so are Vega magnitudes: photometry adds the J-band Vega-to-AB offset before
converting to SkyPortal's AB microjansky. The packet's real/bogus score is `drb`.
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

RECORD_NAME = "pgir.alert"
FILTER = "2massj"  # SkyPortal (sncosmo) bandpass of Gattini-IR's J
# J_AB - J_Vega for 2MASS J (Blanton & Roweis 2007, AJ 133, 734).
J_VEGA_TO_AB = 0.91
LAYOUT = PacketLayout(
    survey="pgir",
    label="PGIR",
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
    """A PGIR candidate / prv_candidate row: Vega J magnitudes, or a 5-sigma limit."""
    jd = finite(row.get("jd"))
    if jd is None:
        return None
    return magnitude_point(row, jd - JD_MJD_OFFSET, FILTER, ab_offset=J_VEGA_TO_AB)


# Fields kept per light-curve point, in this order (broker.history).
POINT_FIELDS = (
        "candid",
        "jd",
        "program",
        "isdiffpos",
        "magpsf",
        "sigmapsf",
        "diffmaglim",
        "ra",
        "dec",
        "drb",
        "field",
        "nid",
    )  # fmt: skip

TABLES = SurveyTables(
    name="pgir",
    point_fields=POINT_FIELDS,
    id_field="candid",
    time_field="jd",
    # One band: upper limits (no candid) are told apart by their time alone.
    band_field="fid",
    history_fields=frozenset({"prv_candidates"}),
    photometry=photometry_point,
)
