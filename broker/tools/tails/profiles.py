"""Surface-brightness profiles for the Tails simulator, vectorised over objects and pixels.

Input: pixel offsets (dx, dy) from each object's centre, broadcastable arrays, and per-object
parameters shaped to broadcast with them. Output: images of unit total flux (before any
cropping), so the caller scales each object by its flux.
"""

from __future__ import annotations

import numpy as np

MOFFAT_BETA = 2.5
FWHM_PER_SIGMA = 2.3548
TRAIL_STEPS = 7  # sub-exposures that approximate motion during the exposure


def moffat(dx: np.ndarray, dy: np.ndarray, fwhm: np.ndarray | float) -> np.ndarray:
    """A Moffat PSF (beta 2.5) of unit total flux: ZTF's seeing-limited stars."""
    alpha = np.asarray(fwhm) / (2.0 * np.sqrt(2.0 ** (1.0 / MOFFAT_BETA) - 1.0))
    r2 = (dx * dx + dy * dy) / (alpha * alpha)
    return (MOFFAT_BETA - 1.0) / (np.pi * alpha * alpha) * (1.0 + r2) ** -MOFFAT_BETA


def trailed_moffat(
    dx: np.ndarray,
    dy: np.ndarray,
    fwhm: np.ndarray | float,
    length: np.ndarray | float,
    angle: np.ndarray | float,
    steps: int = TRAIL_STEPS,
) -> np.ndarray:
    """A point source moving `length` pixels along `angle` (radians) during the exposure."""
    image = np.zeros(np.broadcast_shapes(np.shape(dx), np.shape(dy), np.shape(fwhm)))
    for t in np.linspace(-0.5, 0.5, steps):
        shift_x = t * np.asarray(length) * np.cos(angle)
        shift_y = t * np.asarray(length) * np.sin(angle)
        image += moffat(dx - shift_x, dy - shift_y, fwhm)
    return image / steps


def exponential_disc(
    dx: np.ndarray,
    dy: np.ndarray,
    scale: np.ndarray | float,
    ratio: np.ndarray | float,
    angle: np.ndarray | float,
    fwhm: np.ndarray | float,
) -> np.ndarray:
    """An inclined exponential galaxy, softened by the seeing, of unit total flux."""
    cos, sin = np.cos(angle), np.sin(angle)
    major = dx * cos + dy * sin
    minor = (-dx * sin + dy * cos) / ratio
    sigma = np.asarray(fwhm) / FWHM_PER_SIGMA
    radius = np.sqrt(major * major + minor * minor + sigma * sigma)
    # The seeing softening changes the total a little: renormalise the analytic 2 pi h^2 q.
    profile = np.exp(-(radius - sigma) / scale)
    return profile / (2.0 * np.pi * np.asarray(scale) ** 2 * np.asarray(ratio))


def coma(
    dx: np.ndarray, dy: np.ndarray, radius: np.ndarray | float, fwhm: np.ndarray | float
) -> np.ndarray:
    """A coma: surface brightness ~ 1/rho (steady outflow), seeing-softened, cut at `radius`.

    Not normalised: the simulator scales comets to a target SNR, not to a total flux.
    """
    soft = np.asarray(fwhm) / FWHM_PER_SIGMA
    rho = np.sqrt(dx * dx + dy * dy + soft * soft)
    return np.exp(-rho / radius) / rho


def tail(
    dx: np.ndarray,
    dy: np.ndarray,
    length: np.ndarray | float,
    angle: np.ndarray | float,
    opening: np.ndarray | float,
    fwhm: np.ndarray | float,
) -> np.ndarray:
    """A fan-shaped tail from the nucleus along `angle` (anti-solar), widening with distance.

    Brightness falls as exp(-u / length) along the axis; across it a Gaussian whose width
    grows as the fan opens (`opening`: full angle, radians). Unit flux per unit length at
    the base; the seeing softens the start so the tail joins the coma smoothly.
    """
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    sigma = np.asarray(fwhm) / FWHM_PER_SIGMA
    width = sigma + np.maximum(along, 0.0) * np.tan(np.asarray(opening) / 2.0)
    start = 0.5 * (1.0 + np.tanh(along / sigma))
    profile = np.exp(-np.maximum(along, 0.0) / length - 0.5 * (across / width) ** 2)
    return start * profile / (np.sqrt(2.0 * np.pi) * width)


def streak(
    dx: np.ndarray,
    dy: np.ndarray,
    angle: np.ndarray | float,
    fwhm: np.ndarray | float,
    half_length: np.ndarray | float = np.inf,
) -> np.ndarray:
    """A line through the centre (satellite, or an asteroid trail when finite), per unit length.

    Gaussian across (the seeing); a finite segment fades over the seeing at its two ends.
    """
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    sigma = np.asarray(fwhm) / FWHM_PER_SIGMA
    profile = np.exp(-0.5 * (across / sigma) ** 2) / (np.sqrt(2.0 * np.pi) * sigma)
    if np.all(np.isinf(half_length)):
        return profile
    outside = np.maximum(np.abs(along) - half_length, 0.0)
    return profile * np.exp(-0.5 * (outside / sigma) ** 2)
