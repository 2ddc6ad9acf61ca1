"""Frame-mode input: science/reference/difference FITS of one CCD quadrant, local or remote.

Input: paths, http(s) URLs, or a ZTF exposure name expanded with URL templates in the IRSA
archive layout; downloads retry timeouts and 5xx with capped backoff into a cache folder.
Output: a `Frame` (three float32 images on the science pixel grid + the science WCS); a
reference on another grid is resampled onto the science frame through the two WCSs.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import requests
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from broker.errors import NightjarError, TransientError

log = logging.getLogger(__name__)

IRSA = "https://irsa.ipac.caltech.edu/ibe/data/ztf/products"
_SCI = "{base}/sci/{year}/{monthday}/{fracday}/ztf_{filefracday}_{field:06d}_{filtercode}"
TEMPLATES = {
    "science": _SCI + "_c{ccdid:02d}_{imgtypecode}_q{qid}_sciimg.fits",
    "reference": "{base}/ref/{fieldprefix}/field{field:06d}/{filtercode}/ccd{ccdid:02d}/q{qid}/"
    "ztf_{field:06d}_{filtercode}_c{ccdid:02d}_q{qid}_refimg.fits",
    "difference": _SCI + "_c{ccdid:02d}_{imgtypecode}_q{qid}_scimrefdiffimg.fits.fz",
}
EXPOSURE = re.compile(
    r"^ztf_(?P<filefracday>\d{14})_(?P<field>\d{6})_(?P<filtercode>z[gri])_"
    r"c(?P<ccdid>\d{2})_(?P<imgtypecode>[a-z])_q(?P<qid>[1-4])$"
)
ATTEMPTS = 4
TIMEOUT_S = 60
MAX_BACKOFF_S = 20.0


class ImageError(NightjarError):
    """A frame image cannot be obtained or read."""


@dataclass
class Frame:
    """One quadrant's triplet on the science pixel grid."""

    name: str
    science: np.ndarray
    reference: np.ndarray
    difference: np.ndarray
    wcs: WCS | None  # the science image's celestial WCS; None when it has none

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.science.shape[0]), int(self.science.shape[1]))


def exposure_urls(
    name: str, base: str = IRSA, templates: dict[str, str] | None = None
) -> dict[str, str]:
    """The three image URLs of a ZTF exposure+quadrant name, e.g.
    ztf_20191014495961_000570_zr_c05_o_q3 (file fraction day, field, filter, CCD, image type,
    quadrant)."""
    match = EXPOSURE.match(name)
    if match is None:
        raise ImageError(
            f"{name!r} is not a ZTF exposure name like ztf_20191014495961_000570_zr_c05_o_q3"
        )
    parts = match.groupdict()
    day = parts["filefracday"]
    fields: dict[str, Any] = {
        **parts,
        "base": base.rstrip("/"),
        "year": day[:4],
        "monthday": day[4:8],
        "fracday": day[8:],
        "field": int(parts["field"]),
        "fieldprefix": f"{int(parts['field']) // 1000:03d}",
        "ccdid": int(parts["ccdid"]),
        "qid": int(parts["qid"]),
    }
    chosen = {**TEMPLATES, **(templates or {})}
    try:
        return {kind: chosen[kind].format(**fields) for kind in TEMPLATES}
    except (KeyError, IndexError, ValueError) as exc:
        raise ImageError(f"bad URL template ({exc}); fields: {sorted(fields)}") from exc


def fetch(source: str, cache: Path, backoff_s: float = 1.0) -> Path:
    """A local path as is; an http(s) URL downloaded once into `cache` (retried)."""
    if urlparse(source).scheme not in ("http", "https"):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path} does not exist")
        return path
    target = cache / Path(urlparse(source).path).name
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    attempt = 1
    while True:
        try:
            _download(source, target)
            return target
        except TransientError as exc:
            if attempt >= ATTEMPTS:
                raise ImageError(f"cannot download {source} after {ATTEMPTS} tries: {exc}") from exc
            delay = min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
            log.warning("download of %s failed (%s); retrying in %.1f s", source, exc, delay)
            time.sleep(delay)
            attempt += 1


def _download(url: str, target: Path) -> None:
    partial = target.with_name(target.name + ".part")
    try:
        with requests.get(url, stream=True, timeout=TIMEOUT_S) as response:
            if response.status_code >= 500:
                raise TransientError(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise ImageError(f"cannot download {url}: HTTP {response.status_code}")
            with partial.open("wb") as handle:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    handle.write(chunk)
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise TransientError(str(exc)) from exc
    partial.replace(target)


def read_image(path: Path) -> tuple[np.ndarray, fits.Header]:
    """The first 2-D image HDU (tile-compressed .fz included) as float32, and its header."""
    try:
        with fits.open(path, memmap=False) as hdus:
            for hdu in hdus:
                if hdu.data is not None and np.ndim(hdu.data) == 2:
                    return np.asarray(hdu.data, dtype=np.float32), hdu.header.copy()
    except (OSError, ValueError, TypeError) as exc:
        raise ImageError(f"{path} is not a readable FITS image: {exc}") from exc
    raise ImageError(f"{path} holds no 2-D image HDU")


def celestial_wcs(header: fits.Header) -> WCS | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)  # ZTF headers carry non-standard cards
        wcs = WCS(header).celestial
    return wcs if wcs.has_celestial else None


def load_frame(sources: tuple[str, str, str], cache: Path, backoff_s: float = 1.0) -> Frame:
    """Read (and fetch) a triplet; put the reference on the science grid when it is not."""
    paths = [fetch(source, cache, backoff_s) for source in sources]
    (science, header), (reference, ref_header), (difference, _) = map(read_image, paths)
    if difference.shape != science.shape:
        raise ImageError(
            f"the difference image is {difference.shape}, the science image {science.shape}; "
            "frame mode needs the difference on the science pixel grid"
        )
    wcs, ref_wcs = celestial_wcs(header), celestial_wcs(ref_header)
    if reference.shape != science.shape or not _same_grid(wcs, ref_wcs):
        if wcs is None or ref_wcs is None:
            raise ImageError(
                "the reference is not on the science pixel grid and one of them lacks a WCS: "
                "cannot reproject it"
            )
        log.info("resampling the reference onto the science grid (bilinear, via the WCSs)")
        reference = reproject(reference, ref_wcs, wcs, science.shape)
    name = re.sub(r"_sciimg$", "", paths[0].name.split(".fits")[0])
    return Frame(name, science, reference, difference, wcs)


def _same_grid(wcs: WCS | None, other: WCS | None) -> bool:
    if wcs is None or other is None:
        return True  # nothing to compare: trust the caller (same shape)
    probe = np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0], [1000.0, 1000.0]])
    sky = wcs.all_pix2world(probe, 0)
    back = other.all_world2pix(sky, 0)
    return bool(np.max(np.abs(back - probe)) < 0.05)


def reproject(image: np.ndarray, source: WCS, target: WCS, shape: tuple[int, ...]) -> np.ndarray:
    """Bilinear resampling of `image` onto `target`'s grid; NaN outside the source image.

    The pixel mapping is exact on a 16-pixel mesh and interpolated between (WCS distortions
    vary over hundreds of pixels), which keeps a full quadrant to about a second.
    """
    rows, cols = shape[0], shape[1]
    mesh_y = np.unique(np.append(np.arange(0, rows, 16), rows - 1)).astype(float)
    mesh_x = np.unique(np.append(np.arange(0, cols, 16), cols - 1)).astype(float)
    grid_x, grid_y = np.meshgrid(mesh_x, mesh_y)
    sky = target.all_pix2world(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1), 0)
    mapped = source.all_world2pix(sky, 0).reshape(len(mesh_y), len(mesh_x), 2)
    x = _interpolate_mesh(mapped[..., 0], mesh_y, mesh_x, rows, cols)
    y = _interpolate_mesh(mapped[..., 1], mesh_y, mesh_x, rows, cols)
    return bilinear(image, x, y)


def _interpolate_mesh(
    values: np.ndarray, mesh_y: np.ndarray, mesh_x: np.ndarray, rows: int, cols: int
) -> np.ndarray:
    along = np.stack([np.interp(np.arange(cols), mesh_x, line) for line in values])
    return np.stack([np.interp(np.arange(rows), mesh_y, column) for column in along.T], axis=1)


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`image` sampled at fractional (x = column, y = row); NaN outside it."""
    height, width = image.shape
    tolerance = 1e-6  # WCS round trips land a hair outside the first and last pixels
    inside = (x > -tolerance) & (y > -tolerance)
    inside &= (x < width - 1 + tolerance) & (y < height - 1 + tolerance)
    x0c = np.clip(np.floor(x).astype(int), 0, width - 2)
    y0c = np.clip(np.floor(y).astype(int), 0, height - 2)
    fx, fy = np.clip(x - x0c, 0.0, 1.0), np.clip(y - y0c, 0.0, 1.0)
    value = (
        image[y0c, x0c] * (1 - fx) * (1 - fy)
        + image[y0c, x0c + 1] * fx * (1 - fy)
        + image[y0c + 1, x0c] * (1 - fx) * fy
        + image[y0c + 1, x0c + 1] * fx * fy
    )
    return np.where(inside, value, np.nan).astype(np.float32)
