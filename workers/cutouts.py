"""Worker stage, step 1: alert cutout bytes -> validated 2-D stamps.

Input: `broker.records.Cutouts` (gzip FITS for ZTF, plain FITS for LSST). Output: `Stamps`,
three float32 arrays exactly as stored (no flip, no transpose), or `BadStamp` with a
`RejectReason` code. A small primary-HDU FITS reader keeps astropy off the hot path.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

import numpy as np

from broker.records import Cutouts, RejectReason

BLOCK = 2880
CARD = 80
GZIP_MAGIC = b"\x1f\x8b"
JPEG_MAGIC = b"\xff\xd8\xff"
# A ZTF stamp is 63x63; this bounds what a corrupt header can make us allocate.
MAX_PIXELS = 4096 * 4096
_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
# Far above a stamp (ZTF: ~20 KB gunzipped); bounds what a gzip bomb can inflate to.
_MAX_GUNZIP_BYTES = 16 * 1024 * 1024


class BadStamp(Exception):
    """A cutout that cannot be scored; `reason` is a `RejectReason` code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Stamps:
    """The three stamps of one alert as stored, float32, NaN where the survey put NaN."""

    science: np.ndarray
    template: np.ndarray
    difference: np.ndarray

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self.science, self.template, self.difference)


def read_stamps(cutouts: Cutouts) -> Stamps:
    """Decode and validate all three stamps; raise BadStamp naming the first bad one."""
    arrays = []
    for name, data in (
        ("science", cutouts.science),
        ("template", cutouts.template),
        ("difference", cutouts.difference),
    ):
        try:
            array = read_stamp(data)
        except BadStamp as exc:
            raise BadStamp(exc.reason, f"{name} stamp: {exc.detail}") from None
        _check_scoreable(name, array)
        arrays.append(array)
    return Stamps(*arrays)


def read_stamp(data: bytes) -> np.ndarray:
    """gzip-FITS or plain FITS bytes -> the primary HDU's 2-D image as float32, as stored."""
    if not data:
        raise BadStamp(RejectReason.MISSING_CUTOUTS, "empty stamp")
    if data.startswith(JPEG_MAGIC):
        raise BadStamp(RejectReason.JPEG_CUTOUTS, "JPEG stamp (ZTF schema 1.x), not scoreable")
    if data.startswith(GZIP_MAGIC):
        data = _gunzip(data)
        if data.startswith(JPEG_MAGIC):
            raise BadStamp(RejectReason.JPEG_CUTOUTS, "gzipped JPEG stamp, not scoreable")
    header, data_start = _read_header(data)
    return _read_image(data, header, data_start)


def _gunzip(data: bytes) -> bytes:
    try:
        # Bounded: a hostile packet cannot inflate into gigabytes.
        inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        out = inflater.decompress(data, _MAX_GUNZIP_BYTES)
    except (zlib.error, gzip.BadGzipFile, EOFError) as exc:
        raise BadStamp(RejectReason.BAD_CUTOUTS, f"corrupt gzip data: {exc}") from None
    if inflater.unconsumed_tail:
        limit = _MAX_GUNZIP_BYTES >> 20
        raise BadStamp(RejectReason.BAD_CUTOUTS, f"gunzipped stamp is larger than {limit} MiB")
    return out


def _read_header(data: bytes) -> tuple[dict[str, str], int]:
    """Parse 80-character cards up to END; return keywords and the data offset."""
    if not data.startswith(b"SIMPLE"):
        raise BadStamp(RejectReason.BAD_CUTOUTS, "not a FITS file (no SIMPLE card)")
    header: dict[str, str] = {}
    for offset in range(0, len(data) - CARD + 1, CARD):
        card = data[offset : offset + CARD].decode("ascii", errors="replace")
        keyword = card[:8].strip()
        if keyword == "END":
            blocks = (offset + CARD + BLOCK - 1) // BLOCK
            return header, blocks * BLOCK
        if card[8:10] == "= " and keyword not in header:
            header[keyword] = _card_value(card[10:])
    raise BadStamp(RejectReason.BAD_CUTOUTS, "FITS header has no END card (truncated)")


def _card_value(text: str) -> str:
    text = text.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        return text[1:end] if end > 0 else text[1:]
    return text.split("/", 1)[0].strip()


def _int_key(header: dict[str, str], key: str) -> int:
    try:
        return int(header[key])
    except KeyError:
        raise BadStamp(RejectReason.BAD_CUTOUTS, f"FITS header lacks {key}") from None
    except ValueError:
        raise BadStamp(
            RejectReason.BAD_CUTOUTS, f"FITS {key}={header[key]!r} is not an integer"
        ) from None


def _float_key(header: dict[str, str], key: str, default: float) -> float:
    if key not in header:
        return default
    try:
        return float(header[key].replace("D", "E"))
    except ValueError:
        raise BadStamp(
            RejectReason.BAD_CUTOUTS, f"FITS {key}={header[key]!r} is not a number"
        ) from None


def _read_image(data: bytes, header: dict[str, str], start: int) -> np.ndarray:
    bitpix = _int_key(header, "BITPIX")
    naxis = _int_key(header, "NAXIS")
    if bitpix not in _DTYPES:
        raise BadStamp(RejectReason.BAD_CUTOUTS, f"unsupported FITS BITPIX={bitpix}")
    if naxis != 2:
        raise BadStamp(RejectReason.BAD_CUTOUTS, f"primary HDU has NAXIS={naxis}, expected 2")
    width, height = _int_key(header, "NAXIS1"), _int_key(header, "NAXIS2")
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        raise BadStamp(RejectReason.BAD_CUTOUTS, f"implausible stamp size {height}x{width}")
    dtype = np.dtype(_DTYPES[bitpix])
    end = start + width * height * dtype.itemsize
    if len(data) < end:
        raise BadStamp(RejectReason.BAD_CUTOUTS, "FITS data is truncated")
    # FITS stores NAXIS1 as the fast axis: shape (NAXIS2, NAXIS1), as astropy reads it.
    raw = np.frombuffer(data, dtype=dtype, count=width * height, offset=start)
    raw = raw.reshape(height, width)
    return _scaled(raw, header, bitpix)


def _scaled(raw: np.ndarray, header: dict[str, str], bitpix: int) -> np.ndarray:
    bscale = _float_key(header, "BSCALE", 1.0)
    bzero = _float_key(header, "BZERO", 0.0)
    image = raw.astype(np.float32)
    if bitpix > 0 and "BLANK" in header:
        image[raw == _int_key(header, "BLANK")] = np.nan
    if bscale != 1.0 or bzero != 0.0:
        image = (image.astype(np.float64) * bscale + bzero).astype(np.float32)
    return image


def _check_scoreable(name: str, array: np.ndarray) -> None:
    if not np.isfinite(array).any():
        raise BadStamp(RejectReason.BAD_CUTOUTS, f"{name} stamp is all NaN/inf")
    norm = stamp_norm(np.nan_to_num(array, nan=0.0))
    if norm == 0.0 or not np.isfinite(norm):
        # Training divided by this float32 norm: 0 gives NaN, inf gives an all-zero channel.
        raise BadStamp(
            RejectReason.BAD_CUTOUTS,
            f"{name} stamp has L2 norm {norm} in float32 (all zero, or pixels near float32 max)",
        )


def stamp_norm(stamp: np.ndarray) -> float:
    """The stamp's L2 norm in float32, as the models' training code computed it."""
    with np.errstate(over="ignore"):
        return float(np.linalg.norm(stamp.astype(np.float32, copy=False)))
