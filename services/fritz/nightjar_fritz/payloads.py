"""Request bodies of the Fritz-like API, checked as SkyPortal documents them.

Input: decoded JSON bodies. Output: validated models, or ApiError(400) naming the field.
Photometry accepts SkyPortal's PhotFluxFlexible and PhotMagFlexible forms (scalars are
broadcast to the length of the lists) and is normalised to flux at zero point 23.9.
Written from SkyPortal's documented contract (skyportal/schema.py, PhotFluxFlexible,
PhotMagFlexible, PhotometryMag.parse_mag, PhotometryThumbnailData), never from the poster's
code: a stand-in that reused the client's formulas would agree with the client's mistakes.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
import zlib
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# SkyPortal's ALLOWED_BANDPASSES includes these (and many more we do not need).
BANDPASSES = frozenset(
    {
        "ztfg", "ztfr", "ztfi", "lsstu", "lsstg", "lsstr", "lssti", "lsstz", "lssty",
        "ps1::y", "2massj", "2massh", "2massks", "desu", "desg", "desr", "desi", "desz", "desy",
    }
)  # fmt: skip
MAGSYSTEMS = frozenset({"ab", "vega", "bd17", "csp", "ab-b12"})
TTYPES = frozenset({"new", "ref", "sub", "sdss", "dr8", "ls", "ps1", "new_gz", "ref_gz", "sub_gz"})
# SkyPortal stores flux in microjansky, AB: magnitude 23.9 is 1 uJy (models/photometry.py
# PHOT_ZP, PHOT_SYS), so flux = 10**(-0.4 * (mag - 23.9)).
PHOT_ZP = 23.9
PHOT_SYS = "ab"
# PhotMagFlexible.limiting_mag_nsigma defaults to PHOT_DETECTION_THRESHOLD, the config key
# misc.photometry_detection_threshold_nsigma, 3.0 unless a site changes it (schema.py
# today; releases before 2022 documented "Default = 5"). A limit's 1-sigma flux error is the
# limiting flux over nsigma (handlers/api/photometry.py: limmag_flux / limiting_mag_nsigma).
PHOT_DETECTION_THRESHOLD = 3.0
# PhotometryThumbnailData: "Only thumbnails between (16, 16) and (500, 500) pixels are
# allowed" (older handlers/api/thumbnail.py checked 100-500; 16 is today's documented floor).
THUMBNAIL_MIN_SIDE, THUMBNAIL_MAX_SIDE = 16, 500
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR (PNG spec, section 11.2.2): bit depths allowed for each colour type.
_PNG_BIT_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}


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
            width, height = png_header(image)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, f"data: not a base64-encoded PNG image ({exc})") from exc
        low, high = THUMBNAIL_MIN_SIDE, THUMBNAIL_MAX_SIDE
        if not (low <= width <= high and low <= height <= high):
            raise ApiError(
                400, f"data: image is {width}x{height} px; {low}-{high} px a side allowed"
            )
        return image


def png_header(image: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk, checked as the PNG spec says.

    The first chunk must be a 13-byte IHDR whose CRC matches, with a colour type and bit
    depth the spec allows; ValueError names what is wrong.
    """
    if image[:8] != PNG_SIGNATURE:
        raise ValueError("no PNG signature")
    if len(image) < 33:
        raise ValueError(f"{len(image)} bytes is too short for a PNG header")
    length, kind = struct.unpack(">I4s", image[8:16])
    if kind != b"IHDR" or length != 13:
        raise ValueError(f"first chunk is {kind!r} of {length} bytes, not a 13-byte IHDR")
    fields = image[16:29]
    (crc,) = struct.unpack(">I", image[29:33])
    if zlib.crc32(kind + fields) & 0xFFFFFFFF != crc:
        raise ValueError("IHDR chunk CRC does not match its content")
    width, height, depth, colour = struct.unpack(">IIBB", fields[:10])
    if depth not in _PNG_BIT_DEPTHS.get(colour, set()):
        raise ValueError(f"bit depth {depth} with colour type {colour} is not a valid PNG")
    return int(width), int(height)


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
    scale = 10 ** (-0.4 * (zp - PHOT_ZP))  # to microjansky
    return _row(row, index, None if flux is None else flux * scale, fluxerr * scale)


def _mag_row(row: dict[str, Any], index: int) -> PhotometryRow:
    limit = _number(row, "limiting_mag", index)
    if (row["mag"] is None) != (row["magerr"] is None):
        raise ApiError(400, f"mag[{index}] and magerr[{index}] must both be given or both null")
    if row["mag"] is None:
        nsigma = PHOT_DETECTION_THRESHOLD
        if row["limiting_mag_nsigma"] is not None:
            nsigma = _number(row, "limiting_mag_nsigma", index)
        if nsigma <= 0:
            raise ApiError(400, f"limiting_mag_nsigma[{index}]: must be positive, got {nsigma}")
        return _row(row, index, None, _mag_flux(limit) / nsigma)
    flux = _mag_flux(_number(row, "mag", index))
    fluxerr = abs(_number(row, "magerr", index) * flux * math.log(10) / 2.5)
    return _row(row, index, flux, fluxerr)


def _mag_flux(mag: float) -> float:
    """Microjansky of an AB magnitude (SkyPortal's PhotometryMag.parse_mag)."""
    return float(10 ** (-0.4 * (mag - PHOT_ZP)))


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
