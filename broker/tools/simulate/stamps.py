"""Simulated image stamps: science/template/difference triplets as FITS bytes.

Input: a `StampSpec` (shape, seeing, sky, noise, transient flux, artifact kind) and a
seeded numpy Generator. Output: three float32 images and a minimal primary-HDU FITS
writer (2880-byte blocks, BITPIX -32, big-endian), gzip-compressed for ZTF.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

BLOCK = 2880
CARD = 80
MOFFAT_BETA = 2.5
# Kinds of alert a stamp triplet can show; everything but "real" is a bogus detection.
REAL = "real"
COSMIC_RAY = "cosmic_ray"
DIPOLE = "dipole"
HOT_PIXEL = "hot_pixel"
BOGUS_KINDS = (COSMIC_RAY, DIPOLE, HOT_PIXEL)

CardValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class StampSpec:
    """What one triplet shows. Fluxes are totals in image units (DN for ZTF, nJy for LSST)."""

    shape: tuple[int, int]  # (rows, columns) of the full stamp before edge cropping
    fwhm: float  # seeing, pixels
    sky: float  # background level of science and template
    noise: float  # per-pixel sigma of the science image
    template_noise: float  # per-pixel sigma of the (co-added) template
    flux: float  # the transient's flux in the difference (negative: fainter than template)
    kind: str = REAL
    host_flux: float = 0.0  # an extended host galaxy under the transient
    static_flux: float = 0.0  # a point source under the transient (a variable star)
    star_flux: float = 0.0  # typical field-star flux
    crop_rows: int | None = None  # edge of the detector: keep only this many rows
    nan_rows: int = 0  # masked rows at the top of science and difference


def fits_image(image: np.ndarray, cards: Sequence[tuple[str, CardValue]] = ()) -> bytes:
    """A one-HDU FITS file of a 2-D float32 image; `cards` are extra header keywords."""
    rows, columns = image.shape
    header = [
        _card("SIMPLE", True),
        _card("BITPIX", -32),
        _card("NAXIS", 2),
        _card("NAXIS1", columns),
        _card("NAXIS2", rows),
        *(_card(key, value) for key, value in cards),
        "END".ljust(CARD),
    ]
    text = "".join(header).encode("ascii")
    data = np.ascontiguousarray(image, dtype=">f4").tobytes()
    return _pad(text, b" ") + _pad(data, b"\0")


def gzip_fits(fits: bytes) -> bytes:
    """gzip (zlib's header: mtime 0, reproducible). Run-length deflate: noise hardly
    compresses, and Z_RLE is 3x faster than level 1 and no larger here."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31, 8, zlib.Z_RLE)
    return packer.compress(fits) + packer.flush()


def triplet(rng: np.random.Generator, spec: StampSpec) -> tuple[np.ndarray, ...]:
    """(science, template, difference) float32 images for `spec`."""
    rows, columns = spec.shape
    center = ((rows - 1) / 2 + rng.uniform(-0.5, 0.5), (columns - 1) / 2 + rng.uniform(-0.5, 0.5))
    scene = spec.sky + _field_stars(rng, spec) + _host(rng, spec, center)
    if spec.static_flux:
        scene = scene + spec.static_flux * moffat(spec.shape, center, spec.fwhm)
    noise = rng.standard_normal((3, rows, columns))
    science = scene + spec.noise * noise[0]
    template = scene + spec.template_noise * noise[1]
    diff_sigma = float(np.hypot(spec.noise, spec.template_noise))
    difference = diff_sigma * noise[2]
    signal = _signal(rng, spec, center)
    science += signal.science
    template += signal.template
    difference += signal.science - signal.template
    images = [science, template, difference]
    if spec.nan_rows:
        for image in (science, difference):
            image[: spec.nan_rows, :] = np.nan
    if spec.crop_rows:
        keep = spec.crop_rows
        # Which side is cut depends on which detector edge the source is near.
        cut = slice(0, keep) if rng.random() < 0.5 else slice(rows - keep, rows)
        images = [image[cut, :] for image in images]
    return tuple(image.astype(np.float32) for image in images)


@dataclass(frozen=True, slots=True)
class _Signal:
    science: np.ndarray
    template: np.ndarray


def _signal(rng: np.random.Generator, spec: StampSpec, center: tuple[float, float]) -> _Signal:
    """What differs between science and template: the transient or an artifact."""
    zero = np.zeros(spec.shape)
    if spec.kind == COSMIC_RAY:
        return _Signal(_cosmic_ray(rng, spec, center), zero)
    if spec.kind == HOT_PIXEL:
        hot = zero.copy()
        hot[round(center[0]), round(center[1])] = abs(spec.flux) * rng.uniform(0.5, 2.0)
        return _Signal(hot, zero)
    if spec.kind == DIPOLE:
        # A star subtracted with a misregistered template: a +/- pair one pixel apart.
        shift = rng.uniform(0.7, 1.6), rng.uniform(-0.8, 0.8)
        star = abs(spec.flux) * rng.uniform(3.0, 10.0)
        moved = (center[0] + shift[0], center[1] + shift[1])
        return _Signal(
            star * moffat(spec.shape, center, spec.fwhm),
            star * moffat(spec.shape, moved, spec.fwhm * rng.uniform(0.9, 1.1)),
        )
    source = spec.flux * moffat(spec.shape, center, spec.fwhm)
    # A negative difference (variable fainter than in the template) lives in the template.
    return _Signal(source, zero) if spec.flux >= 0 else _Signal(zero, -source)


def moffat(shape: tuple[int, int], center: tuple[float, float], fwhm: float) -> np.ndarray:
    """A Moffat PSF (beta 2.5) of unit total flux centred at (row, column)."""
    rows, columns = _grid(shape)
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / MOFFAT_BETA) - 1.0))
    r2 = ((rows - center[0]) ** 2 + (columns - center[1]) ** 2) / alpha**2
    return (MOFFAT_BETA - 1.0) / (np.pi * alpha**2) * (1.0 + r2) ** -MOFFAT_BETA


def _cosmic_ray(
    rng: np.random.Generator, spec: StampSpec, center: tuple[float, float]
) -> np.ndarray:
    """A sharp track a few pixels long: narrower than any PSF."""
    image = np.zeros(spec.shape)
    length = int(rng.integers(1, 6))
    angle = rng.uniform(0, np.pi)
    step = np.array([np.sin(angle), np.cos(angle)])
    peak = abs(spec.flux) * rng.uniform(0.3, 1.0)
    for i in range(length):
        row, column = np.rint(np.array(center) + (i - length / 2) * step).astype(int)
        if 0 <= row < spec.shape[0] and 0 <= column < spec.shape[1]:
            image[row, column] += peak * rng.uniform(0.5, 1.0)
    return image


def _field_stars(rng: np.random.Generator, spec: StampSpec) -> np.ndarray | float:
    count = int(rng.poisson(2.0)) if spec.star_flux > 0 else 0
    if count == 0:
        return 0.0
    stars = np.zeros(spec.shape)
    for _ in range(count):
        position = (rng.uniform(0, spec.shape[0]), rng.uniform(0, spec.shape[1]))
        stars += spec.star_flux * rng.lognormal(0.0, 1.0) * moffat(spec.shape, position, spec.fwhm)
    return stars


def _host(
    rng: np.random.Generator, spec: StampSpec, center: tuple[float, float]
) -> np.ndarray | float:
    """An elliptical exponential-ish galaxy a few pixels from the transient."""
    if spec.host_flux <= 0:
        return 0.0
    rows, columns = _grid(spec.shape)
    offset = rng.normal(0.0, 2.5, size=2)
    size = rng.uniform(2.0, 5.0)
    ratio, angle = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
    dy, dx = rows - center[0] - offset[0], columns - center[1] - offset[1]
    major = dx * np.cos(angle) + dy * np.sin(angle)
    minor = (-dx * np.sin(angle) + dy * np.cos(angle)) / ratio
    profile = np.exp(-np.sqrt(major**2 + minor**2) / size)
    return spec.host_flux * profile / profile.sum()


@cache
def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, columns = np.indices(shape, dtype=np.float64)
    return rows, columns


def _card(key: str, value: CardValue) -> str:
    if isinstance(value, bool):
        text = "T" if value else "F"
    elif isinstance(value, str):
        text = "'" + value.replace("'", "''").ljust(8) + "'"
        return f"{key:<8}= {text:<70}"[:CARD]
    elif isinstance(value, float):
        text = repr(value).upper()
    else:
        text = str(value)
    return f"{key:<8}= {text:>20}".ljust(CARD)[:CARD]


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % BLOCK)
