"""Cutout -> PNG: SkyPortal's size limits, Kowalski's orientation, a robust stretch."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from astropy.io import fits

from broker.post.thumbnails import (
    CutoutKind,
    RenderedThumbnails,
    cutout_png,
    encode_png,
    orient,
    png_size,
    read_stamp,
    stretch,
)


def decode_png(data: bytes) -> np.ndarray:
    """The pixels of an 8-bit grayscale PNG written with filter type 0 (as encode_png does)."""
    width, height = png_size(data)
    assert data[24:26] == b"\x08\x00", "8-bit grayscale"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, f"{kind!r} chunk CRC"
        if kind == b"IDAT":
            idat += payload
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width + 1)
    assert not raw[:, 0].any(), "filter byte 0 on every row"
    return raw[:, 1:]


def fits_stamp(image: np.ndarray, *, gzipped: bool = True) -> bytes:
    buffer = io.BytesIO()
    fits.PrimaryHDU(image.astype(np.float32)).writeto(buffer)
    return gzip.compress(buffer.getvalue()) if gzipped else buffer.getvalue()


def marked_stamp() -> np.ndarray:
    rng = np.random.default_rng(7)
    image = rng.normal(100.0, 5.0, size=(63, 63))
    image[2, 5] = 5000.0  # a bright pixel in the FITS image's first rows
    return image


def test_png_is_valid_and_within_skyportal_limits() -> None:
    png = cutout_png(fits_stamp(marked_stamp()), "science")
    assert png_size(png) == (189, 189)  # 63 px x 3: SkyPortal takes 16-500 px a side
    pixels = decode_png(png)
    assert pixels.shape == (189, 189) and pixels.dtype == np.uint8


def test_orientation_matches_kowalski() -> None:
    # Kowalski: np.flipud + imshow(origin="lower") -> the first FITS row is drawn on top.
    pixels = decode_png(cutout_png(fits_stamp(marked_stamp()), "science", scale=1))
    row, column = np.unravel_index(np.argmax(pixels), pixels.shape)
    assert (row, column) == (2, 5)
    kowalski_drawn = np.flipud(np.flipud(marked_stamp()))  # flipud, then origin="lower"
    assert np.array_equal(orient(marked_stamp()), kowalski_drawn)


def test_stretch_is_robust_to_outliers_nans_and_masked_pixels() -> None:
    image = marked_stamp()
    image[10:20, 10:20] = np.nan
    image[30, 30] = 1e30  # ZTF's masked-pixel value
    image[40, 40] = -1e6  # a cosmic-ray hole in the difference
    gray = stretch(image, "science")
    assert gray.dtype == np.uint8
    assert gray.min() == 0 and gray.max() == 255
    # The sky stays in mid-grey instead of being crushed to black by one bright pixel.
    sky = np.median(gray)
    assert 40 < sky < 220, sky
    assert gray[15, 15] == pytest.approx(sky, abs=40)  # NaNs filled with the median


def test_science_uses_asinh_difference_is_linear() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 63), (63, 1))
    science, difference = stretch(ramp, "science"), stretch(ramp, "difference")
    middle = 31
    assert int(difference[0, middle]) == pytest.approx(127, abs=3)
    assert int(science[0, middle]) > int(difference[0, middle]) + 40  # asinh lifts faint structure


def test_flat_or_empty_stamps_do_not_crash() -> None:
    assert not stretch(np.full((63, 63), 7.0), "difference").any()
    assert not stretch(np.full((63, 63), np.nan), "science").any()


def test_plain_fits_and_small_stamps() -> None:
    png = cutout_png(fits_stamp(np.ones((30, 30)), gzipped=False), "template")
    assert png_size(png) == (90, 90)  # LSST's 30x30 stamps


@pytest.mark.parametrize(
    ("stamp", "reason"),
    [
        (b"\x1f\x8bnot gzip at all", "corrupt gzip data"),
        (b"SIMPLE  = garbage", "no END card"),
        (b"\xff\xd8\xff\xe0 JFIF", "JPEG stamp"),
        (b"", "empty stamp"),
        (fits_stamp(np.ones(5)), "NAXIS=1, expected 2"),
    ],
)
def test_unreadable_stamps_raise_value_error(stamp: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        read_stamp(stamp)


def test_too_large_thumbnail_is_refused() -> None:
    with pytest.raises(ValueError, match="16-500 a side"):
        cutout_png(fits_stamp(np.ones((200, 200))), "science")


def test_pillow_reads_every_pixel_of_the_hand_written_png() -> None:
    # Pillow is a test-only reference here (the service does not depend on it).
    image_module = pytest.importorskip("PIL.Image", reason="Pillow comes with matplotlib")
    rng = np.random.default_rng(5)
    for shape in [(16, 16), (63 * 3, 63 * 3), (17, 250)]:
        gray = rng.integers(0, 256, size=shape, dtype=np.uint8)
        with image_module.open(io.BytesIO(encode_png(gray))) as image:
            assert image.mode == "L" and image.size == (shape[1], shape[0])
            np.testing.assert_array_equal(np.asarray(image), gray)


def test_encode_png_refuses_non_uint8() -> None:
    with pytest.raises(ValueError, match="2-D uint8"):
        encode_png(np.zeros((4, 4)))


def test_real_ztf_triplet(shared_dir: Path) -> None:
    path = shared_dir / "ztf" / "alerts" / "night-20200202" / "1105522281015015000.avro"
    with path.open("rb") as handle:
        record: Any = next(iter(fastavro.reader(handle)))
    kinds: tuple[CutoutKind, ...] = ("science", "template", "difference")
    for kind in kinds:
        stamp = record[f"cutout{kind.capitalize()}"]["stampData"]
        image = read_stamp(stamp)
        pixels = decode_png(cutout_png(stamp, kind, scale=1))
        assert pixels.shape == image.shape == (63, 63)
        # Same row order as the FITS data: rows correlate with the stretched image's rows.
        expected = stretch(image, kind).astype(float)
        assert np.corrcoef(pixels.ravel(), expected.ravel())[0, 1] > 0.999
        assert pixels.std() > 5, f"{kind}: the stretch leaves structure visible"


def test_thumbnails_are_rendered_once_per_alert_and_cutout() -> None:
    """A job retried after a failed call posts the PNG rendered the first time."""
    rendered = RenderedThumbnails(capacity=2)
    stamp = fits_stamp(marked_stamp())
    first = rendered.png("ztf:1", "science", stamp)
    assert rendered.png("ztf:1", "science", stamp) is first
    assert first == cutout_png(stamp, "science") and rendered.rendered == 1
    with pytest.raises(ValueError):
        rendered.png("ztf:2", "science", b"not a stamp")
    with pytest.raises(ValueError):  # an unreadable stamp is not read again either
        rendered.png("ztf:2", "science", b"not a stamp")
    assert rendered.rendered == 2
    rendered.png("ztf:3", "template", stamp)  # capacity 2: the oldest (ztf:1) goes
    rendered.png("ztf:1", "science", stamp)
    assert rendered.rendered == 4
