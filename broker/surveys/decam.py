"""DECam adapter: a decoded DESIRT alert packet (record `desirt.alert`, BOOM's DECam
stream) -> Alert.

objectId, candid and a `candidate` with MJD times; the history is `fp_hists`, forced
photometry at the object's position in every earlier (and the current) epoch, without ids.
Fluxes are measured: `psfFlux`/`psfFluxErr` in nanojansky (`forcediffimflux` is the same
in microjansky), signed, so every point is a flux with an error and none is an upper limit.
Bands are DES's (g, r, i, z, Y); the packet's real/bogus score is `reliability`.
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
)

RECORD_NAME = "desirt.alert"
# SkyPortal (sncosmo) bandpasses of the packet's band names.
FILTERS = {
    "u": "desu", "g": "desg", "r": "desr", "i": "desi", "z": "desz", "Y": "desy", "y": "desy"
}  # fmt: skip
NANOJANSKY_PER_MICROJANSKY = 1000.0
LAYOUT = PacketLayout(
    survey="decam",
    label="DECam",
    object_field="objectId",
    history_field="fp_hists",
    time_field="mjd",
    time_to_jd=JD_MJD_OFFSET,
    cutout_fields=("cutoutScience", "cutoutTemplate", "cutoutDifference"),
)


ADAPTER = LayoutAdapter(RECORD_NAME, LAYOUT)
# The module is the adapter (broker.surveys.ADAPTER_MODULES): its three functions.
matches, schema_version, to_alert = ADAPTER.matches, ADAPTER.schema_version, ADAPTER.to_alert


def photometry_point(row: Mapping[str, Any]) -> PhotPoint | None:
    """A DESIRT candidate / fp_hist row: signed psfFlux in nanojansky."""
    mjd, band = finite(row.get("mjd")), FILTERS.get(str(row.get("band")))
    flux, error = finite(row.get("psfFlux")), finite(row.get("psfFluxErr"))
    if mjd is None or band is None or flux is None or error is None or error <= 0:
        return None
    return PhotPoint(
        mjd=mjd,
        filter=band,
        flux=flux / NANOJANSKY_PER_MICROJANSKY,
        fluxerr=error / NANOJANSKY_PER_MICROJANSKY,
        ra=finite(row.get("ra")),
        dec=finite(row.get("dec")),
    )


# Fields kept per light-curve point, in this order (broker.history). fp_hists rows carry
# no id: points are told apart by (mjd, band), and the candidate's row is its fp_hist's.
POINT_FIELDS = (
        "mjd",
        "band",
        "psfFlux",
        "psfFluxErr",
        "forcediffimflux",
        "forcediffimfluxunc",
        "diffmaglim",
        "isdiffpos",
        "ra",
        "dec",
        "reliability",
    )  # fmt: skip

TABLES = SurveyTables(
    name="decam",
    point_fields=POINT_FIELDS,
    id_field="candid",  # absent from its rows (see above)
    time_field="mjd",
    band_field="band",
    history_fields=frozenset({"fp_hists"}),
    photometry=photometry_point,
)
