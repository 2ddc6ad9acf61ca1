"""The static sky of each simulated image: seeing, sky, noise, stars, galaxies, residuals.

Input: a seeded Generator, the batch size and image shape. Output: `Layers` holding the
science, reference and difference images (DN) of a ZTF-like field, with the subtraction
residuals a slightly misregistered, PSF-mismatched reference leaves around static sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from broker.tools.tails import profiles
from broker.tools.tails.canvas import Objects, Params, Profile, paint

SATURATION = 55_000.0  # DN; ZTF masks saturated pixels, leaving NaN in the difference
STAMP_AREA = 63 * 63  # densities below are per alert stamp
STAR_PATCH = 12  # half-size of a star's patch: its Moffat wings beyond hold < 1% of the flux
GALAXY_PATCH = 16


@dataclass
class Conditions:
    """Per-image observing conditions, arrays of shape (B,)."""

    fwhm: np.ndarray  # science seeing, pixels (ZTF: ~2" at 1.01"/pixel)
    zero_point: np.ndarray  # mag of 1 DN
    sky: np.ndarray  # science background, DN
    noise: np.ndarray  # science per-pixel sigma, DN
    reference_sky: np.ndarray
    reference_noise: np.ndarray  # a co-add of ~20-40 epochs: several times less noisy
    shift: np.ndarray  # (B, 2) residual misregistration of the reference, pixels
    mismatch: np.ndarray  # fractional PSF width error left by the PSF matching

    @property
    def difference_noise(self) -> np.ndarray:
        return np.hypot(self.noise, self.reference_noise)

    @classmethod
    def draw(cls, rng: np.random.Generator, count: int) -> Conditions:
        noise = np.exp(rng.uniform(np.log(5.0), np.log(25.0), count))
        return cls(
            fwhm=np.clip(rng.normal(2.1, 0.4, count), 1.3, 3.6),
            zero_point=rng.uniform(25.8, 26.6, count),
            sky=rng.uniform(60.0, 600.0, count),
            noise=noise,
            reference_sky=rng.uniform(0.0, 300.0, count),
            reference_noise=noise / rng.uniform(2.5, 5.0, count),
            shift=rng.normal(0.0, 0.06, (count, 2)),
            mismatch=rng.normal(0.0, 0.02, count),
        )


@dataclass
class Layers:
    """What the three images hold so far, (B, H, W) float64 each, sky and noise excluded."""

    science: np.ndarray
    reference: np.ndarray
    difference: np.ndarray

    @classmethod
    def empty(cls, count: int, shape: tuple[int, int]) -> Layers:
        return cls(*(np.zeros((count, *shape)) for _ in range(3)))


def star_profile(dx: np.ndarray, dy: np.ndarray, p: Params) -> np.ndarray:
    return profiles.moffat(dx - p["sx"], dy - p["sy"], p["fwhm"])


def galaxy_profile(dx: np.ndarray, dy: np.ndarray, p: Params) -> np.ndarray:
    return profiles.exponential_disc(
        dx - p["sx"], dy - p["sy"], p["scale"], p["ratio"], p["angle"], p["fwhm"]
    )


def paint_static(
    layers: Layers,
    objects: Objects,
    cond: Conditions,
    profile: Profile,
    half: int,
    flux: np.ndarray,
    fwhm_ref: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    mismatch: np.ndarray | None = None,
) -> None:
    """A static source: in science and reference, and its subtraction residual.

    The difference holds science - matched reference: the same source drawn with the
    reference's misregistration `shift` and PSF `mismatch` (per image unless given per
    object), so bright stars leave dipoles and rings as in real ZTF difference images.
    """
    index = objects.image
    fwhm = cond.fwhm[index]
    shift = cond.shift[index] if shift is None else shift
    mismatch = cond.mismatch[index] if mismatch is None else mismatch
    zero = np.zeros(len(objects))
    science = _with(objects, fwhm=fwhm, sx=zero, sy=zero)
    matched = _with(objects, fwhm=fwhm * (1.0 + mismatch), sx=shift[:, 0], sy=shift[:, 1])
    reference = _with(objects, fwhm=fwhm if fwhm_ref is None else fwhm_ref, sx=zero, sy=zero)
    paint(layers.science, science, profile, half, flux)
    paint(layers.reference, reference, profile, half, flux)
    paint(layers.difference, science, profile, half, flux)
    paint(layers.difference, matched, profile, half, -flux)


def _with(objects: Objects, **params: np.ndarray) -> Objects:
    return Objects(objects.image, objects.x, objects.y, {**objects.params, **params})


def add_field(rng: np.random.Generator, layers: Layers, cond: Conditions) -> None:
    """Stars (power-law counts, 13-22 mag) and exponential galaxies (16-22 mag)."""
    count, height, width = layers.science.shape
    area = height * width / STAMP_AREA
    stars = _scatter(rng, count, (height, width), np.exp(rng.uniform(-0.7, 2.5, count)) * area)
    star_mags = _power_law_mags(rng, len(stars), 13.0, 22.0, slope=0.3)
    star_flux = 10 ** (-0.4 * (star_mags - cond.zero_point[stars.image]))
    fwhm_ref = cond.fwhm[stars.image] * rng.uniform(0.75, 1.0, len(stars))
    paint_static(layers, stars, cond, star_profile, STAR_PATCH, star_flux, fwhm_ref)
    galaxies = _scatter(rng, count, (height, width), rng.uniform(0.2, 2.5, count) * area)
    galaxies.params.update(
        scale=np.exp(rng.uniform(np.log(0.7), np.log(4.0), len(galaxies))),
        ratio=rng.uniform(0.3, 1.0, len(galaxies)),
        angle=rng.uniform(0.0, np.pi, len(galaxies)),
    )
    galaxy_mags = _power_law_mags(rng, len(galaxies), 16.0, 22.0, slope=0.45)
    galaxy_flux = 10 ** (-0.4 * (galaxy_mags - cond.zero_point[galaxies.image]))
    paint_static(layers, galaxies, cond, galaxy_profile, GALAXY_PATCH, galaxy_flux)


def _scatter(
    rng: np.random.Generator, count: int, shape: tuple[int, int], mean: np.ndarray
) -> Objects:
    """Poisson numbers of objects per image at uniform positions (a margin beyond the edge)."""
    numbers = rng.poisson(mean)
    image = np.repeat(np.arange(count), numbers)
    x = rng.uniform(-4.0, shape[1] + 3.0, len(image))
    y = rng.uniform(-4.0, shape[0] + 3.0, len(image))
    return Objects(image, x, y, {})


def _power_law_mags(
    rng: np.random.Generator, size: int, bright: float, faint: float, slope: float
) -> np.ndarray:
    """Magnitudes with counts rising as 10^(slope m), by inverting the cumulative counts."""
    low, high = 10 ** (slope * bright), 10 ** (slope * faint)
    return np.log10(rng.uniform(low, high, size)) / slope


def finish(rng: np.random.Generator, layers: Layers, cond: Conditions) -> np.ndarray:
    """(B, H, W, 3) float32 [science, reference, difference] with sky, noise and saturation.

    The difference shares the science image's noise realisation (it is science minus a
    matched reference), as in real difference images.
    """
    count, height, width = layers.science.shape
    noise = rng.standard_normal((2, count, height, width), dtype=np.float32)
    sigma = cond.noise[:, None, None]
    ref_sigma = cond.reference_noise[:, None, None]
    science = layers.science + cond.sky[:, None, None] + sigma * noise[0]
    reference = layers.reference + cond.reference_sky[:, None, None] + ref_sigma * noise[1]
    difference = layers.difference + sigma * noise[0] - ref_sigma * noise[1]
    saturated = (science > SATURATION) | (reference > SATURATION)
    science = np.minimum(science, SATURATION)
    reference = np.minimum(reference, SATURATION)
    difference[saturated] = np.nan
    return np.stack([science, reference, difference], axis=-1).astype(np.float32)
