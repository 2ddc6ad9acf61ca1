"""Worker stage, step 2: validated stamps -> model input triplets, exactly as trained.

Input: `workers.cutouts.Stamps`. Output: (H, W, 3) float32 arrays, channels [science,
template, difference], each stamp NaN-cleaned, L2-normalised (whole stamp, or row by row
for braai d6_m7) and padded bottom/right with 1e-9 after normalising (MODELS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from workers.cutouts import Stamps, stamp_norm

Normalise = Literal["l2", "l2_rows"]


@dataclass(frozen=True, slots=True)
class Recipe:
    """How one model family wants its triplet; hashable so a batch computes it once."""

    normalise: Normalise = "l2"
    size: tuple[int, int] = (63, 63)
    pad_value: float = 1e-9


def clean(stamp: np.ndarray) -> np.ndarray:
    """NaN -> 0 and +-inf -> +-float32 max, as numpy's nan_to_num does (training code)."""
    return np.nan_to_num(stamp.astype(np.float32, copy=False), nan=0.0)


def normalise_l2(stamp: np.ndarray) -> np.ndarray:
    """Divide the whole stamp by its float32 Frobenius norm (cutouts rejects 0 and inf)."""
    return (stamp / stamp_norm(stamp)).astype(np.float32)


def normalise_rows(stamp: np.ndarray) -> np.ndarray:
    """Divide each row by its own L2 norm; a zero row stays zero (braai d6_m7 training)."""
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(stamp, axis=1, keepdims=True)
    safe = np.where(norms == 0.0, np.float32(1.0), norms)
    return (stamp / safe).astype(np.float32)


def pad(stamp: np.ndarray, size: tuple[int, int], value: float) -> np.ndarray:
    """Pad at the end of each axis (edge alerts are cut at the bottom/right) to `size`."""
    height, width = stamp.shape
    if height > size[0] or width > size[1]:
        raise ValueError(f"stamp {height}x{width} is larger than the model input {size}")
    if (height, width) == size:
        return stamp
    padded = np.full(size, value, dtype=np.float32)
    padded[:height, :width] = stamp
    return padded


def triplet(stamps: Stamps, recipe: Recipe) -> np.ndarray:
    """One alert's (H, W, 3) float32 model input."""
    normalise = normalise_rows if recipe.normalise == "l2_rows" else normalise_l2
    channels = [
        pad(normalise(clean(stamp)), recipe.size, recipe.pad_value) for stamp in stamps.as_tuple()
    ]
    return np.stack(channels, axis=-1)
