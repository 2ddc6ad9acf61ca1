"""Painting objects onto batches of images: many small patches at once, or a few large ones.

Input: a (B, H, W) float64 canvas, per-object image index, centre (x = column, y = row) and
a profile function of pixel offsets. Output: the canvas with each object added, scaled by a
flux, by a matched-filter SNR (amplitude = snr * sigma / ||profile||) or by a peak SNR.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

Params = Mapping[str, np.ndarray]
Profile = Callable[[np.ndarray, np.ndarray, Params], np.ndarray]
Scale = Literal["flux", "snr", "peak"]


@dataclass(frozen=True, slots=True)
class Objects:
    """P objects: which image each is in, where, and their profile parameters."""

    image: np.ndarray  # (P,) int
    x: np.ndarray  # (P,) column of the centre
    y: np.ndarray  # (P,) row of the centre
    params: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.image)

    def take(self, index: np.ndarray) -> Objects:
        return Objects(
            self.image[index],
            self.x[index],
            self.y[index],
            {name: value[index] for name, value in self.params.items()},
        )


def paint(
    canvas: np.ndarray,
    objects: Objects,
    profile: Profile,
    half: int,
    amount: np.ndarray,
    scale: Scale = "flux",
    sigma: np.ndarray | None = None,
) -> np.ndarray:
    """Add each object on a (2 half + 1)^2 patch; return the amplitudes applied (P,).

    `amount` is a flux ("flux"), a matched-filter SNR ("snr") or a peak SNR ("peak"); the
    two SNR modes need `sigma`, the per-image noise of the difference (B,). Small patches
    are painted all at once; patches larger than the canvas go one object at a time.
    """
    if not len(objects):
        return np.zeros(0)
    _, height, width = canvas.shape
    if (2 * half + 1) ** 2 * len(objects) > 4_000_000 or 2 * half + 1 > max(height, width):
        return _paint_each(canvas, objects, profile, half, amount, scale, sigma)
    grid = patch_grid(objects, half, height, width)
    shaped = {name: value[:, None, None] for name, value in objects.params.items()}
    patches = np.where(grid.inside, profile(grid.dx, grid.dy, shaped), 0.0)
    amplitude = _amplitude(patches.reshape(len(objects), -1), objects, amount, scale, sigma)
    flat = (objects.image[:, None, None] * height + grid.rows) * width + grid.cols
    canvas.reshape(-1)[:] += np.bincount(
        flat[grid.inside], (patches * amplitude[:, None, None])[grid.inside], minlength=canvas.size
    )
    return amplitude


class Grid(NamedTuple):
    """Each object's (2 half + 1)^2 patch around its rounded position: (P, S, S) arrays."""

    rows: np.ndarray
    cols: np.ndarray
    dx: np.ndarray  # column offset from the object's exact position
    dy: np.ndarray
    inside: np.ndarray  # which patch pixels fall within the image


def patch_grid(objects: Objects, half: int, height: int, width: int) -> Grid:
    offsets = np.arange(-half, half + 1)
    col0, row0 = np.rint(objects.x).astype(int), np.rint(objects.y).astype(int)
    cols = col0[:, None, None] + offsets[None, None, :]
    rows = row0[:, None, None] + offsets[None, :, None]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    return Grid(
        rows, cols, cols - objects.x[:, None, None], rows - objects.y[:, None, None], inside
    )


def _paint_each(
    canvas: np.ndarray,
    objects: Objects,
    profile: Profile,
    half: int,
    amount: np.ndarray,
    scale: Scale,
    sigma: np.ndarray | None,
) -> np.ndarray:
    _, height, width = canvas.shape
    amplitudes = np.zeros(len(objects))
    for i in range(len(objects)):
        col0, row0 = round(float(objects.x[i])), round(float(objects.y[i]))
        top, bottom = max(row0 - half, 0), min(row0 + half + 1, height)
        left, right = max(col0 - half, 0), min(col0 + half + 1, width)
        if top >= bottom or left >= right:
            continue
        rows, cols = np.ogrid[top:bottom, left:right]
        params = {name: value[i] for name, value in objects.params.items()}
        patch = profile(cols - objects.x[i], rows - objects.y[i], params)
        one = objects.take(np.array([i]))
        amplitude = _amplitude(patch.reshape(1, -1), one, amount[i : i + 1], scale, sigma)
        canvas[objects.image[i], top:bottom, left:right] += patch * amplitude[0]
        amplitudes[i] = amplitude[0]
    return amplitudes


def _amplitude(
    patches: np.ndarray,
    objects: Objects,
    amount: np.ndarray,
    scale: Scale,
    sigma: np.ndarray | None,
) -> np.ndarray:
    if scale == "flux":
        return np.asarray(amount, dtype=np.float64)
    if sigma is None:
        raise ValueError(f"scale={scale!r} needs the per-image noise sigma")
    noise = sigma[objects.image]
    matched = scale == "snr"
    size = np.sqrt(np.sum(patches * patches, axis=1)) if matched else np.max(patches, axis=1)
    return np.asarray(amount * noise / np.maximum(size, 1e-300), dtype=np.float64)
