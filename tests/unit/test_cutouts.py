"""workers.cutouts: the fast FITS reader against astropy, and every rejection path."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from broker.records import Cutouts, RejectReason
from workers.cutouts import BadStamp, read_stamp, read_stamps
from workers.preprocess import Recipe, normalise_rows, triplet

STAMP_KEYS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def fits_bytes(data: np.ndarray, **header: object) -> bytes:
    hdu = fits.PrimaryHDU(data)
    for key, value in header.items():
        hdu.header[key] = value
    buffer = io.BytesIO()
    hdu.writeto(buffer)
    return buffer.getvalue()


def test_every_sample_stamp_reads_as_astropy_reads_it(
    ztf_packets: list[tuple[Path, dict[str, Any]]],
) -> None:
    checked = 0
    for path, packet in ztf_packets:
        for key in STAMP_KEYS:
            data = packet[key]["stampData"]
            if data.startswith(b"\xff\xd8"):
                continue
            with fits.open(io.BytesIO(gzip.decompress(data))) as hdus:
                expected = np.asarray(hdus[0].data, dtype=np.float32)
            stamp = read_stamp(data)
            assert stamp.dtype == np.float32
            assert stamp.shape == expected.shape, path.name
            np.testing.assert_array_equal(stamp, expected, err_msg=f"{path.name} {key}")
            checked += 1
    assert checked >= 3 * 28


def test_lsst_plain_fits_stamp_is_30x30(reference: Path) -> None:
    raw = (reference / "lsst" / "alerts" / "25409136044802067.avro").read_bytes()
    # The science stamp is the first FITS file in the message.
    start = raw.index(b"SIMPLE  =")
    stamp = read_stamp(raw[start:])
    with fits.open(io.BytesIO(raw[start:])) as hdus:
        np.testing.assert_array_equal(stamp, hdus[0].data)
    assert stamp.shape == (30, 30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32])
def test_bitpix_and_scaling(dtype: type) -> None:
    data: np.ndarray = (np.arange(12, dtype=np.float64).reshape(3, 4) * 3).astype(dtype)
    expected = data.astype(np.float64)
    extra: dict[str, object] = {}
    if np.issubdtype(dtype, np.integer):
        extra = {"BSCALE": 0.5, "BZERO": 10.0}
        expected = expected * 0.5 + 10.0
    stamp = read_stamp(gzip.compress(fits_bytes(data, **extra)))
    np.testing.assert_allclose(stamp, expected.astype(np.float32), rtol=1e-6)
    assert stamp.shape == (3, 4)


def test_integer_blank_pixels_become_nan() -> None:
    data = np.array([[1, -32768], [3, 4]], dtype=np.int16)
    stamp = read_stamp(fits_bytes(data, BLANK=-32768))
    assert np.isnan(stamp[0, 1]) and stamp[1, 1] == 4


def test_stamps_are_not_flipped_or_transposed() -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(read_stamp(fits_bytes(data)), data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", RejectReason.MISSING_CUTOUTS),
        (b"\xff\xd8\xff\xe0JFIF", RejectReason.JPEG_CUTOUTS),
        (b"\x1f\x8b\x08\x00garbage", RejectReason.BAD_CUTOUTS),
        (b"not a fits file at all" * 200, RejectReason.BAD_CUTOUTS),
        (fits_bytes(np.zeros((4, 4), np.float32))[:2880], RejectReason.BAD_CUTOUTS),
        (fits_bytes(np.zeros((4, 4), np.float32))[:1000], RejectReason.BAD_CUTOUTS),
        (fits_bytes(np.zeros((2, 4, 4), np.float32)), RejectReason.BAD_CUTOUTS),
        (
            fits_bytes(np.zeros((4, 4), np.uint8)).replace(
                b"BITPIX  =                    8", b"BITPIX  =                   12"
            ),
            RejectReason.BAD_CUTOUTS,
        ),
    ],
    ids=[
        "empty",
        "jpeg",
        "bad-gzip",
        "not-fits",
        "truncated-data",
        "truncated-header",
        "3d",
        "bad-bitpix",
    ],
)
def test_unreadable_stamps_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadStamp) as error:
        read_stamp(data)
    assert error.value.reason == reason


def good() -> bytes:
    return gzip.compress(fits_bytes(np.ones((63, 63), np.float32)))


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        (np.full((63, 63), np.nan, np.float32), "all NaN"),
        (np.zeros((63, 63), np.float32), "L2 norm 0.0"),
        (np.full((63, 63), 3e38, np.float32), "L2 norm inf"),
    ],
)
def test_unscoreable_stamps_name_the_stamp(bad: np.ndarray, detail: str) -> None:
    cutouts = Cutouts(good(), gzip.compress(fits_bytes(bad)), good())
    with pytest.raises(BadStamp) as error:
        read_stamps(cutouts)
    assert error.value.reason == RejectReason.BAD_CUTOUTS
    assert "template" in error.value.detail and detail in error.value.detail


def test_nan_blocks_and_small_stamps_are_scoreable() -> None:
    science = np.ones((41, 63), np.float32)
    science[:5] = np.nan
    stamps = read_stamps(Cutouts(*(gzip.compress(fits_bytes(science)),) * 3))
    cube = triplet(stamps, Recipe())
    assert cube.shape == (63, 63, 3) and cube.dtype == np.float32
    # Padding comes after normalisation: the padded rows hold exactly 1e-9.
    assert np.all(cube[41:] == np.float32(1e-9))
    assert np.all(cube[:5, :, 0] == 0.0)
    np.testing.assert_allclose(np.linalg.norm(cube[:41, :, 0]), 1.0, rtol=1e-6)


def test_row_normalisation_keeps_zero_rows_zero() -> None:
    stamp = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    result = normalise_rows(stamp)
    np.testing.assert_allclose(result[0], [0.6, 0.8], rtol=1e-6)
    assert np.all(result[1] == 0.0)
