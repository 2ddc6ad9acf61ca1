"""The Tails I/O contract: raw [science, reference, difference] -> model input -> positions.

Input: (N, H, W, 3) float arrays in image units (DN). Output: L2-normalised model inputs and,
per example, None or the reason it cannot be scored; model rows [p_comet, x_rel, y_rel] ->
pixels (rel * input size). Shared by training, evaluation, frame mode and the worker stage.
"""

from __future__ import annotations

import math

import numpy as np

BOX = 256  # frame-mode box side, pixels
OVERLAP = 20  # pixels shared by neighbouring boxes
STAMP = 63  # ZTF alert cutout side
CHANNELS = ("science", "reference", "difference")
DIFF_FLOOR = -100.0  # difference pixels below this are set to 0 (masked/saturated residuals)
PRODUCTION_THRESHOLD = 0.7  # published Tails operating point
ZTF_PIXEL_SCALE = 1.01  # arcsec per pixel (ZTF, approximately uniform over the focal plane)


def preprocess(images: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
    """Tails preprocessing of a batch; a row that cannot be normalised is zeros + a reason.

    Per channel: NaN -> median of the finite pixels (+-inf count as not finite), difference
    pixels below -100 -> 0, then divide by the channel's L2 norm. An all-NaN channel or a
    zero norm gives no input: the reason names the channel.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) triplets, got shape {images.shape}")
    data = np.array(images, dtype=np.float32, copy=True)
    finite = np.isfinite(data)
    reasons: list[str | None] = [None] * len(data)
    if not finite.all():
        _fill_medians(data, finite, reasons)
    difference = data[..., 2]
    difference[difference < DIFF_FLOOR] = 0.0
    with np.errstate(over="ignore"):
        norms = np.sqrt(np.sum(np.square(data, dtype=np.float64), axis=(1, 2)))
    bad = ~(np.isfinite(norms) & (norms > 0.0))
    for row, channel in zip(*np.nonzero(bad), strict=True):
        if reasons[row] is None:
            reasons[row] = f"{CHANNELS[channel]} channel has L2 norm {norms[row, channel]:g}"
    safe = np.where(bad, 1.0, norms).astype(np.float32)
    data /= safe[:, None, None, :]
    data[[reason is not None for reason in reasons]] = 0.0
    return data, reasons


def _fill_medians(data: np.ndarray, finite: np.ndarray, reasons: list[str | None]) -> None:
    """NaN/inf -> the channel's median of finite pixels, only where a channel needs it."""
    rows, channels = np.nonzero(~finite.all(axis=(1, 2)))
    for row, channel in zip(rows, channels, strict=True):
        plane = data[row, :, :, channel]
        good = finite[row, :, :, channel]
        if not good.any():
            reasons[row] = reasons[row] or f"{CHANNELS[channel]} channel is all NaN"
            plane[:] = 0.0
        else:
            plane[~good] = np.median(plane[good])


def to_pixels(outputs: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) pixel positions (0-based column, row) from model rows [p, x_rel, y_rel]."""
    return outputs[:, 1] * width, outputs[:, 2] * height


def offset_to_sky(
    ra: float, dec: float, dx: float, dy: float, scale: float = ZTF_PIXEL_SCALE
) -> tuple[float, float]:
    """Sky position `dx`, `dy` pixels from (ra, dec), north up and east left (+x = west).

    Approximate: assumes the stamp is aligned with the sky at `scale` arcsec/pixel, as ZTF
    science products are to within about a degree of rotation (no distortion, no flips).
    """
    new_dec = dec + dy * scale / 3600.0
    cos_dec = max(math.cos(math.radians(dec)), 1e-6)
    new_ra = (ra - dx * scale / 3600.0 / cos_dec) % 360.0
    return new_ra, max(-90.0, min(90.0, new_dec))
