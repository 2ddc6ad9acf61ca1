"""Request bodies of the Fritz-like API, checked as SkyPortal documents them.

Input: decoded JSON bodies. Output: validated models, or ApiError(400) naming the field.
Photometry accepts SkyPortal's PhotFluxFlexible and PhotMagFlexible forms (scalars are
broadcast to the length of the lists) and is normalised to flux at zero point 23.9.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker.post.photometry import ZERO_POINT, limit_fluxerr, mag_to_flux
from broker.post.thumbnails import MAX_SIDE, MIN_SIDE, png_size

# SkyPortal's ALLOWED_BANDPASSES includes these (and many more we do not need).
BANDPASSES = frozenset(
    {"ztfg", "ztfr", "ztfi", "lsstu", "lsstg", "lsstr", "lssti", "lsstz", "lssty"}
)
MAGSYSTEMS = frozenset({"ab", "vega", "bd17", "csp", "ab-b12"})
TTYPES = frozenset({"new", "ref", "sub", "sdss", "dr8", "ls", "ps1", "new_gz", "ref_gz", "sub_gz"})
PHOT_DETECTION_THRESHOLD = 3.0  # SkyPortal's default limiting_mag_nsigma


class ApiError(Exception):
    """An error answered in SkyPortal's envelope: {"status": "error", "message": ...}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CandidatePost(Payload):
    """POST /api/candidates: ObjPost fields plus filter_ids, passing_alert_id, passed_at."""

    id: str = Field(min_length=1, max_length=128, pattern=r"^[\w.+-]+$")
    ra: float | None = Field(default=None, ge=0, lt=360)
    dec: float | None = Field(default=None, ge=-90, le=90)
    filter_ids: list[int] = Field(min_length=1)
    passing_alert_id: int | None = None
    passed_at: datetime
    origin: str | None = None
    score: float | None = None

    @field_validator("passed_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)


class ThumbnailPost(Payload):
    """POST /api/thumbnail: a base64 PNG of 16-500 px a side."""

    obj_id: str = Field(min_length=1)
    data: str = Field(min_length=1)
    ttype: str

    @field_validator("ttype")
    @classmethod
    def _known_ttype(cls, ttype: str) -> str:
        if ttype not in TTYPES:
            raise ValueError(f"must be one of {', '.join(sorted(TTYPES))}")
        return ttype

    def png(self) -> bytes:
        try:
            image = base64.b64decode(self.data, validate=True)
            width, height = png_size(image)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, f"data: not a base64-encoded PNG image ({exc})") from exc
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise ApiError(400, f"data: image is {width}x{height} px; 16-500 px a side allowed")
        return image


class AnnotationPost(Payload):
    """POST /api/sources/{obj_id}/annotations: one annotation per origin."""

    origin: str = Field(min_length=1, max_length=256)
    data: dict[str, Any] = Field(min_length=1)
    group_ids: list[int] | None = None

    @field_validator("origin")
    @classmethod
    def _word_origin(cls, origin: str) -> str:
        if not re.match(r"^\w+", origin):
            raise ValueError("must begin with a letter, digit or underscore")
        return origin


class AnnotationPut(Payload):
    """PUT /api/sources/{obj_id}/annotations/{annotation_id}."""

    origin: str | None = None
    data: dict[str, Any] | None = None
    group_ids: list[int] | None = None


class PhotometryRow(BaseModel):
    """One normalised photometry point (flux at zero point 23.9, AB)."""

    model_config = ConfigDict(frozen=True)

    obj_id: str
    instrument_id: int
    mjd: float
    filter: str
    flux: float | None
    fluxerr: float
    ra: float | None = None
    dec: float | None = None
    origin: str | None = None


_FLUX_REQUIRED = ("obj_id", "instrument_id", "mjd", "filter", "magsys", "zp", "fluxerr")
_MAG_REQUIRED = ("obj_id", "instrument_id", "mjd", "filter", "magsys", "limiting_mag")
_COLUMNS = (
    "obj_id", "instrument_id", "mjd", "filter", "magsys", "zp", "flux", "fluxerr", "mag",
    "magerr", "limiting_mag", "limiting_mag_nsigma", "ra", "dec", "origin",
)  # fmt: skip


def photometry_rows(body: dict[str, Any]) -> list[PhotometryRow]:
    """PUT /api/photometry body (flux or magnitude form) -> normalised rows."""
    mag_form = "limiting_mag" in body or "mag" in body
    required = _MAG_REQUIRED if mag_form else _FLUX_REQUIRED
    missing = [name for name in required if body.get(name) is None]
    if missing:
        raise ApiError(400, f"missing required field(s): {', '.join(missing)}")
    columns = _broadcast({name: body.get(name) for name in _COLUMNS})
    rows = []
    for index in range(len(columns["mjd"])):
        row = {name: values[index] for name, values in columns.items()}
        rows.append(_mag_row(row, index) if mag_form else _flux_row(row, index))
    return rows


def _broadcast(columns: dict[str, Any]) -> dict[str, list[Any]]:
    lengths = {name: len(v) for name, v in columns.items() if isinstance(v, list)}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={n}" for name, n in sorted(lengths.items()))
        raise ApiError(400, f"list fields must have the same length ({detail})")
    size = next(iter(lengths.values()), 1)
    if size == 0:
        raise ApiError(400, "mjd: at least one photometry point is required")
    return {name: v if isinstance(v, list) else [v] * size for name, v in columns.items()}


def _flux_row(row: dict[str, Any], index: int) -> PhotometryRow:
    zp = _number(row, "zp", index)
    fluxerr = _number(row, "fluxerr", index)
    if fluxerr <= 0:
        raise ApiError(400, f"fluxerr[{index}]: must be positive, got {fluxerr}")
    flux = None if row["flux"] is None else _number(row, "flux", index)
    scale = 10 ** (-0.4 * (zp - ZERO_POINT))  # to microjansky
    return _row(row, index, None if flux is None else flux * scale, fluxerr * scale)


def _mag_row(row: dict[str, Any], index: int) -> PhotometryRow:
    limit = _number(row, "limiting_mag", index)
    if (row["mag"] is None) != (row["magerr"] is None):
        raise ApiError(400, f"mag[{index}] and magerr[{index}] must both be given or both null")
    if row["mag"] is None:
        nsigma = row["limiting_mag_nsigma"] or PHOT_DETECTION_THRESHOLD
        return _row(row, index, None, limit_fluxerr(limit, float(nsigma)))
    flux = mag_to_flux(_number(row, "mag", index))
    fluxerr = abs(_number(row, "magerr", index) * flux * math.log(10) / 2.5)
    return _row(row, index, flux, fluxerr)


def _row(row: dict[str, Any], index: int, flux: float | None, fluxerr: float) -> PhotometryRow:
    if row["filter"] not in BANDPASSES:
        raise ApiError(400, f"filter[{index}]: {row['filter']!r} is not an allowed bandpass")
    if str(row["magsys"]).lower() not in MAGSYSTEMS:
        raise ApiError(400, f"magsys[{index}]: {row['magsys']!r} is not a magnitude system")
    if not isinstance(row["obj_id"], str) or not row["obj_id"]:
        raise ApiError(400, f"obj_id[{index}]: must be a non-empty string")
    return PhotometryRow(
        obj_id=row["obj_id"],
        instrument_id=int(_number(row, "instrument_id", index)),
        mjd=_number(row, "mjd", index),
        filter=row["filter"],
        flux=flux,
        fluxerr=fluxerr,
        ra=None if row["ra"] is None else _number(row, "ra", index),
        dec=None if row["dec"] is None else _number(row, "dec", index),
        origin=row["origin"],
    )


def _number(row: dict[str, Any], name: str, index: int) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{name}[{index}]: must be a finite number, got {value!r}")
    return float(value)


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse(model: type[ModelT], body: Any) -> ModelT:
    """Validate a JSON body; the 400 message names every bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ApiError(400, "invalid/missing parameters: " + "; ".join(problems)) from exc
