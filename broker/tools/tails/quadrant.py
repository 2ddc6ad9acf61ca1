"""Synthetic whole ZTF CCD quadrants for frame mode: a field, comets, look-alikes and a WCS.

Input: a seed, the quadrant shape (ZTF: 3080 rows x 3072 columns) and how many comets.
Output: a `Quadrant` (science, reference, difference in DN, a TAN WCS header at 1.01"/px,
the comets' true pixel and sky positions), and FITS files named like ZTF's products.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from broker.tools.tails.canvas import Objects
from broker.tools.tails.field import Conditions, Layers, add_field, finish
from broker.tools.tails.subjects import (
    NEGATIVES,
    SNR_RANGE,
    add_comets,
    add_negatives,
    log_uniform,
)
from workers.models.tails_contract import ZTF_PIXEL_SCALE

SHAPE = (3080, 3072)  # rows (NAXIS2), columns (NAXIS1) of a ZTF quadrant
SUFFIXES = ("sciimg", "refimg", "scimrefdiffimg")
LOOKALIKES_PER_BOX = 0.6  # negatives per 256x256 area


@dataclass
class Quadrant:
    images: np.ndarray  # (H, W, 3) float32
    header: fits.Header  # TAN WCS of all three images
    comets: list[dict[str, float]] = field(default_factory=list)  # x, y, snr, ra, dec

    @property
    def wcs(self) -> WCS:
        return WCS(self.header)


def tan_header(shape: tuple[int, int], ra: float, dec: float, scale: float) -> fits.Header:
    """A north-up, east-left gnomonic WCS centred on (ra, dec), `scale` arcsec/pixel."""
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRPIX1"], header["CRPIX2"] = (shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0
    header["CRVAL1"], header["CRVAL2"] = ra, dec
    header["CD1_1"], header["CD1_2"] = -scale / 3600.0, 0.0
    header["CD2_1"], header["CD2_2"] = 0.0, scale / 3600.0
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    return header


def simulate_quadrant(
    seed: int,
    comets: int = 5,
    shape: tuple[int, int] = SHAPE,
    snr: tuple[float, float] = (15.0, 80.0),
    satellites: int = 1,
) -> Quadrant:
    """One quadrant with `comets` comets at random places and realistic look-alikes."""
    rng = np.random.default_rng([seed, 3072])
    cond = Conditions.draw(rng, 1)
    layers = Layers.empty(1, shape)
    add_field(rng, layers, cond)
    _lookalikes(rng, layers, cond, satellites)
    x = rng.uniform(20.0, shape[1] - 21.0, comets)
    y = rng.uniform(20.0, shape[0] - 21.0, comets)
    comet_snr = log_uniform(rng, *snr, comets)
    add_comets(rng, layers, cond, Objects(np.zeros(comets, int), x, y, {}), comet_snr, 60.0)
    images = finish(rng, layers, cond)[0]
    header = tan_header(shape, float(rng.uniform(0.0, 360.0)), float(rng.uniform(-25, 80)), 1.01)
    sky = WCS(header).all_pix2world(np.stack([x, y], axis=1), 0) if comets else np.zeros((0, 2))
    truth = [
        {"x": float(a), "y": float(b), "snr": float(s), "ra": float(r), "dec": float(d)}
        for a, b, s, (r, d) in zip(x, y, comet_snr, sky, strict=True)
    ]
    return Quadrant(images, header, truth)


def _lookalikes(
    rng: np.random.Generator, layers: Layers, cond: Conditions, satellites: int
) -> None:
    """Transients and artefacts over the quadrant; satellites counted apart (a few at most)."""
    _, height, width = layers.science.shape
    count = int(rng.poisson(LOOKALIKES_PER_BOX * height * width / 256**2)) + satellites
    weights = {kind: w for kind, w in NEGATIVES.items() if kind not in ("satellite", "empty")}
    kinds = rng.choice(
        list(weights), count, p=np.array(list(weights.values())) / sum(weights.values())
    )
    kinds[:satellites] = "satellite"
    subjects = Objects(
        np.zeros(count, int), rng.uniform(0, width, count), rng.uniform(0, height, count), {}
    )
    add_negatives(rng, layers, cond, subjects, kinds, log_uniform(rng, *SNR_RANGE, count))


def write_fits(quadrant: Quadrant, folder: Path, stem: str) -> list[Path]:
    """<stem>_sciimg.fits, <stem>_refimg.fits, <stem>_scimrefdiffimg.fits (float32, with WCS)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for channel, suffix in enumerate(SUFFIXES):
        path = folder / f"{stem}_{suffix}.fits"
        header = quadrant.header.copy()
        header["BUNIT"] = "DN"
        header["PIXSCALE"] = ZTF_PIXEL_SCALE
        fits.PrimaryHDU(quadrant.images[:, :, channel], header).writeto(path, overwrite=True)
        paths.append(path)
    return paths
