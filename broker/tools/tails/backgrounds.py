"""Real alert cutouts as the backgrounds of simulated Tails stamps.

Input: alert files (.avro, folders of them, ZTF nightly .tar.gz archives), decoded by the
broker's own decoder. Output: `Backgrounds`: the [science, reference, difference] cutouts
of every alert with 63x63 stamps, in DN as the survey stored them, and the conditions the
simulator paints with, taken from the packet (seeing, zero point) or measured from the
cutouts (the difference image's noise). Simulated comets and look-alikes are then added to
real sky, real noise and real subtraction residuals instead of a simulated field.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from broker.decode import Decoder
from broker.errors import BadAlert
from broker.tools.replay import iter_alert_files
from broker.tools.tails.field import SATURATION, Conditions, Layers
from workers.cutouts import BadStamp, read_stamps
from workers.models.tails_contract import STAMP

log = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.4826
# The simulator's own seeing range (field.Conditions.draw): a candidate FWHM outside it is
# a bad measurement (a cosmic ray, a blend), not the seeing.
FWHM_RANGE = (1.3, 3.6)
DEFAULT_ZERO_POINT = 26.2  # ZTF r band, for packets without magzpsci


class NoBackgrounds(ValueError):
    """None of the files gave a usable 63x63 triplet."""


@dataclass
class Backgrounds:
    """Cutouts (N, 63, 63, 3) float32 and what the simulator needs to paint onto them."""

    images: np.ndarray
    fwhm: np.ndarray  # pixels: the candidate's FWHM where it is a plausible seeing, else NaN
    zero_point: np.ndarray  # mag of 1 DN (magzpsci)
    noise: np.ndarray  # the difference image's sigma, DN (robust: from the MAD)
    sources: list[str]  # the file (and candid) each came from
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> alerts not used

    def __len__(self) -> int:
        return len(self.images)

    def summary(self) -> dict[str, Any]:
        return {"stamps": len(self), "skipped": dict(sorted(self.skipped.items()))}

    def conditions(self, rng: np.random.Generator, chosen: np.ndarray) -> Conditions:
        """Conditions for painting onto backgrounds `chosen`; the rest drawn as usual."""
        drawn = Conditions.draw(rng, len(chosen))
        fwhm = self.fwhm[chosen]
        zeros = np.zeros(len(chosen))
        return Conditions(
            fwhm=np.where(np.isfinite(fwhm), fwhm, drawn.fwhm),
            zero_point=self.zero_point[chosen],
            sky=zeros,
            # All of the measured noise as the science term: only their sum (the
            # difference's noise, which sets every injected SNR) is used with backgrounds.
            noise=self.noise[chosen],
            reference_sky=zeros,
            reference_noise=zeros,
            shift=drawn.shift,
            mismatch=drawn.mismatch,
        )

    def compose(self, chosen: np.ndarray, layers: Layers) -> np.ndarray:
        """(B, 63, 63, 3) float32: the painted subjects added to backgrounds `chosen`,
        saturating as `field.finish` does."""
        base = self.images[chosen].astype(np.float64)
        science = base[..., 0] + layers.science
        reference = base[..., 1] + layers.reference
        difference = base[..., 2] + layers.difference
        saturated = (science > SATURATION) | (reference > SATURATION)
        science = np.minimum(science, SATURATION)
        reference = np.minimum(reference, SATURATION)
        difference[saturated] = np.nan
        return np.stack([science, reference, difference], axis=-1).astype(np.float32)


def load(paths: Sequence[Path], decoder: Decoder) -> Backgrounds:
    """Every usable triplet in `paths`; what is not used is counted by reason and logged."""
    images, fwhm, zero_point, noise, sources = [], [], [], [], []
    skipped: Counter[str] = Counter()
    for name, raw in iter_alert_files(paths):
        try:
            alert = decoder.decode(raw)
            stamps = read_stamps(alert.cutouts)
        except (BadAlert, BadStamp) as exc:
            skipped[exc.reason] += 1
            log.warning("background %s not used: %s", name, exc)
            continue
        triplet = np.stack(stamps.as_tuple(), axis=-1)
        if triplet.shape != (STAMP, STAMP, 3):
            skipped["not_63x63"] += 1
            log.warning("background %s not used: stamps of %s pixels", name, triplet.shape[:2])
            continue
        sigma = _robust_sigma(triplet[..., 2])
        if not sigma > 0:
            skipped["flat_difference"] += 1
            log.warning("background %s not used: the difference image has no noise", name)
            continue
        images.append(triplet)
        fwhm.append(_seeing(alert.candidate.get("fwhm")))
        zero_point.append(_number(alert.candidate.get("magzpsci"), DEFAULT_ZERO_POINT))
        noise.append(sigma)
        sources.append(f"{name} candid {alert.candid}")
    if not images:
        raise NoBackgrounds(
            f"no usable 63x63 alert triplets in {', '.join(map(str, paths))} "
            f"(skipped: {dict(skipped) or 'no alert files found'}); give ZTF .avro alerts"
        )
    return Backgrounds(
        np.stack(images).astype(np.float32),
        np.array(fwhm),
        np.array(zero_point),
        np.array(noise),
        sources,
        skipped,
    )


def _robust_sigma(image: np.ndarray) -> float:
    values = image[np.isfinite(image)]
    if not len(values):
        return 0.0
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def _seeing(value: Any) -> float:
    low, high = FWHM_RANGE
    number = _number(value, np.nan)
    return number if low <= number <= high else np.nan


def _number(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default
