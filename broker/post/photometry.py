"""Light curve -> SkyPortal flux photometry (the body of `PUT /api/photometry`).

Input: the stored alert (its candidate) and the object's light curve (`objects.lightcurve`,
which holds the packet histories; alert documents no longer carry `prv_candidates`).
Output: SkyPortal's PhotFluxFlexible columns (obj_id, instrument_id, mjd, flux, fluxerr, zp,
magsys, filter, ra, dec), converted the way Kowalski does for Fritz: AB zero point 23.9, so
fluxes are in microjansky; non-detections have flux null and fluxerr = 5-sigma limit / 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ZERO_POINT = 23.9  # AB magnitude of 1 microjansky
MAGSYS = "ab"
JD_MJD_OFFSET = 2400000.5
ZTF_FILTERS = {1: "ztfg", 2: "ztfr", 3: "ztfi"}
LSST_BANDS = frozenset("ugrizy")
_POSITIVE = frozenset({"t", "T", "1", "y", "Y", "true", "True"})
NANOJANSKY_PER_MICROJANSKY = 1000.0


@dataclass(frozen=True, slots=True)
class PhotPoint:
    """One photometry row in SkyPortal's flux convention."""

    mjd: float
    filter: str
    flux: float | None  # None: a non-detection (upper limit)
    fluxerr: float
    ra: float | None = None
    dec: float | None = None


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
    convert = CONVERTERS.get(survey)
    if convert is None:
        raise ValueError(f"no photometry conversion for survey {survey!r}")
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


def ztf_point(row: Mapping[str, Any]) -> PhotPoint | None:
    """A ZTF candidate / prv_candidate / light-curve row in SkyPortal's flux convention."""
    jd, fid, limit = _number(row.get("jd")), row.get("fid"), _number(row.get("diffmaglim"))
    if jd is None or fid not in ZTF_FILTERS or limit is None or limit <= 0:
        return None  # Kowalski drops rows without a positive diffmaglim too
    mag, sigma = _number(row.get("magpsf")), _number(row.get("sigmapsf"))
    mjd, band = jd - JD_MJD_OFFSET, ZTF_FILTERS[fid]
    if mag is None:
        return PhotPoint(mjd=mjd, filter=band, flux=None, fluxerr=limit_fluxerr(limit))
    if sigma is None:
        return None
    flux = mag_to_flux(mag) * (1.0 if is_positive(row.get("isdiffpos")) else -1.0)
    return PhotPoint(
        mjd=mjd,
        filter=band,
        flux=flux,
        fluxerr=abs(sigma * flux * math.log(10) / 2.5),
        ra=_number(row.get("ra")),
        dec=_number(row.get("dec")),
    )


def lsst_point(row: Mapping[str, Any]) -> PhotPoint | None:
    """A Rubin DiaSource / DiaForcedSource row: psfFlux in nanojansky."""
    mjd, band = _number(row.get("midpointMjdTai")), row.get("band")
    flux, error = _number(row.get("psfFlux")), _number(row.get("psfFluxErr"))
    if mjd is None or band not in LSST_BANDS or error is None or error <= 0:
        return None
    return PhotPoint(
        mjd=mjd,
        filter=f"lsst{band}",
        flux=None if flux is None else flux / NANOJANSKY_PER_MICROJANSKY,
        fluxerr=error / NANOJANSKY_PER_MICROJANSKY,
        ra=_number(row.get("ra")),
        dec=_number(row.get("dec")),
    )


CONVERTERS: dict[str, Callable[[Mapping[str, Any]], PhotPoint | None]] = {
    "ztf": ztf_point,
    "lsst": lsst_point,
}


def mag_to_flux(mag: float, zero_point: float = ZERO_POINT) -> float:
    return float(10 ** (-0.4 * (mag - zero_point)))


def limit_fluxerr(limiting_mag: float, nsigma: float = 5.0) -> float:
    """The 1-sigma flux error of an n-sigma limiting magnitude (diffmaglim is 5 sigma)."""
    return mag_to_flux(limiting_mag) / nsigma


def flux_to_mag(flux: float, zero_point: float = ZERO_POINT) -> float:
    return -2.5 * math.log10(flux) + zero_point


def is_positive(isdiffpos: Any) -> bool:
    """ZTF's isdiffpos: 't'/'1' (older packets) or true means science minus reference > 0."""
    if isinstance(isdiffpos, bool):
        return isdiffpos
    if isinstance(isdiffpos, int | float):
        return isdiffpos == 1
    return str(isdiffpos) in _POSITIVE


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
