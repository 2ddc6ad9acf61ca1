"""Light curve -> SkyPortal flux photometry (the body of `PUT /api/photometry`).

Input: the stored alert (its candidate) and the object's light curve (`objects.lightcurve`,
which holds the packet histories; alert documents no longer carry `prv_candidates`).
Output: SkyPortal's PhotFluxFlexible columns (obj_id, instrument_id, mjd, flux, fluxerr, zp,
magsys, filter, ra, dec), converted the way Kowalski does for Fritz: AB zero point 23.9, so
fluxes are in microjansky; non-detections have flux null and fluxerr = 5-sigma limit / 5.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from broker.records import PhotPoint
from broker.surveys import JD_MJD_OFFSET, ZERO_POINT, limit_fluxerr, mag_to_flux, tables

# Re-exported: the Fritz-like service converts back with the same constants and helpers.
__all__ = [
    "JD_MJD_OFFSET",
    "MAGSYS",
    "ZERO_POINT",
    "PhotPoint",
    "flux_to_mag",
    "light_curve",
    "limit_fluxerr",
    "mag_to_flux",
    "photometry_payload",
]
MAGSYS = "ab"


def photometry_payload(
    object_id: str,
    points: Sequence[PhotPoint],
    *,
    instrument_id: int,
    stream_ids: Sequence[int] = (),
    group_ids: Sequence[int] = (),
) -> dict[str, Any]:
    """The PUT /api/photometry body for these points (columns as parallel lists)."""
    payload: dict[str, Any] = {
        "obj_id": object_id,
        "instrument_id": instrument_id,
        "mjd": [p.mjd for p in points],
        "flux": [p.flux for p in points],
        "fluxerr": [p.fluxerr for p in points],
        "zp": [ZERO_POINT] * len(points),
        "magsys": [MAGSYS] * len(points),
        "filter": [p.filter for p in points],
        "ra": [p.ra for p in points],
        "dec": [p.dec for p in points],
    }
    if stream_ids:
        payload["stream_ids"] = list(stream_ids)
    if group_ids:
        payload["group_ids"] = list(group_ids)
    return payload


def light_curve(
    survey: str, alert: Mapping[str, Any], stored: Iterable[Mapping[str, Any]] = ()
) -> list[PhotPoint]:
    """Merge the alert's candidate and the stored light curve (plus `prv_candidates`, which
    only alert documents stored by older versions carry).

    Rows are deduplicated on (mjd, filter, flux) as Kowalski does and sorted by time;
    rows that cannot be converted (no limit, no error) are left out.
    """
    try:
        convert = tables(survey).photometry  # the survey's own bands and flux units
    except ValueError as exc:
        raise ValueError(f"no photometry conversion for survey {survey!r}: {exc}") from exc
    # `prv_candidates`: alert documents stored before histories moved to the object.
    rows: list[Mapping[str, Any]] = [*stored, *(alert.get("prv_candidates") or [])]
    if alert.get("candidate"):
        rows.append(alert["candidate"])
    unique: dict[tuple[float, str, float | None], PhotPoint] = {}
    for row in rows:
        point = convert(row)
        if point is not None:
            flux_key = None if point.flux is None else round(point.flux, 6)
            unique.setdefault((round(point.mjd, 7), point.filter, flux_key), point)
    return sorted(unique.values(), key=lambda p: (p.mjd, p.filter))


def flux_to_mag(flux: float, zero_point: float = ZERO_POINT) -> float:
    return -2.5 * math.log10(flux) + zero_point
