"""What an image is about: a comet, or one of the things Tails must not call a comet.

Input: the batch's `Layers` and `Conditions`, and subjects (image index, position, SNR).
Output: the subjects painted into science and difference (and reference where static);
comets are a coma plus a fan-shaped tail, trailed by their motion, scaled to a target SNR.
"""

from __future__ import annotations

import numpy as np

from broker.tools.tails import profiles
from broker.tools.tails.canvas import Objects, Params, Profile, Scale, paint, patch_grid
from broker.tools.tails.field import Conditions, Layers, galaxy_profile, paint_static, star_profile

COMET = "comet"
# Negatives and their share among negative subjects: point-source transients, variable
# stars, cosmic rays, bad subtractions, satellite streaks, asteroids, and nothing at all.
NEGATIVES = {
    "point_source": 0.22,
    "variable_star": 0.13,
    "cosmic_ray": 0.15,
    "bad_subtraction": 0.15,
    "satellite": 0.08,
    "asteroid": 0.20,
    "empty": 0.07,
}
KINDS = (COMET, *NEGATIVES)
# The look-alikes that set the detector's 0.1% false-positive threshold (its evaluation's
# false_positive_rate_by_kind): compact transients, and trailed asteroids.
HARD_NEGATIVES = ("point_source", "asteroid")


def negative_mix(hard: float = 1.0) -> dict[str, float]:
    """NEGATIVES with the hard look-alikes' shares multiplied by `hard`, renormalised."""
    if hard <= 0:
        raise ValueError(f"the hard-negative factor must be > 0, not {hard}")
    weights = {k: w * (hard if k in HARD_NEGATIVES else 1.0) for k, w in NEGATIVES.items()}
    total = sum(weights.values())
    return {kind: weight / total for kind, weight in weights.items()}


# The comets a detector finds hardest (a small coma with little or no tail: nearly a point
# source): training can draw a share of its comets from these (`--hard-comets`), as it
# weights up the hard negatives. Held-out sets keep the natural population.
COMPACT_RADIUS = (2.0, 4.0)  # pixels, log-uniform
COMPACT_TAILED = 0.5  # share with a tail, and its length (pixels, log-uniform)
COMPACT_TAIL = (3.0, 8.0)

SNR_RANGE = (5.0, 150.0)  # matched-filter SNR: from bright down to ZTF's 5 sigma limit


def log_uniform(rng: np.random.Generator, low: float, high: float, size: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def comet_profile(dx: np.ndarray, dy: np.ndarray, p: Params) -> np.ndarray:
    """Coma (1/rho) + nucleus (PSF), averaged over the motion during the exposure, + tail.

    The tail is drawn at mid-exposure: a few pixels of motion do not show on a diffuse fan.
    """
    coma = nucleus = np.zeros(np.broadcast_shapes(np.shape(dx), np.shape(dy)))
    for step in np.linspace(-0.5, 0.5, profiles.TRAIL_STEPS):
        x = dx - step * p["motion"] * np.cos(p["motion_angle"])
        y = dy - step * p["motion"] * np.sin(p["motion_angle"])
        coma = coma + profiles.coma(x, y, p["radius"], p["fwhm"])
        nucleus = nucleus + profiles.moffat(x, y, p["fwhm"])
    tail = profiles.tail(dx, dy, p["length"], p["angle"], p["opening"], p["fwhm"])

    def unit(image: np.ndarray) -> np.ndarray:
        return image / np.maximum(image.sum(axis=(-2, -1), keepdims=True), 1e-300)

    return unit(coma) + p["nucleus"] * unit(nucleus) + p["tail"] * unit(tail)


def add_comets(
    rng: np.random.Generator,
    layers: Layers,
    cond: Conditions,
    subjects: Objects,
    snr: np.ndarray,
    max_tail: float,
    compact: float = 0.0,
) -> np.ndarray:
    """Comets at the subjects' positions (the nucleus at mid-exposure), scaled to `snr`;
    returns each one's PSF-fit SNR (see psf_fit_snr). A `compact` share of them is drawn
    from the compact population instead (see COMPACT_RADIUS)."""
    count = len(subjects)
    has_tail = rng.uniform(size=count) < 0.85
    length = log_uniform(rng, 3.0, max_tail, count)
    # Comae from just resolved (ZTF seeing is ~2 px FWHM) to large, faint ones.
    radius = log_uniform(rng, 2.0, 10.0, count)
    if compact > 0:
        # Drawn only when asked, so the default random stream (every held-out set) is kept.
        chosen = rng.uniform(size=count) < compact
        radius = np.where(chosen, log_uniform(rng, *COMPACT_RADIUS, count), radius)
        has_tail = np.where(chosen, rng.uniform(size=count) < COMPACT_TAILED, has_tail)
        length = np.where(chosen, log_uniform(rng, *COMPACT_TAIL, count), length)
    subjects.params.update(
        fwhm=cond.fwhm[subjects.image],
        radius=radius,
        nucleus=rng.uniform(0.0, 0.4, count),
        tail=np.where(has_tail, rng.uniform(0.3, 3.0, count), 0.0),
        length=length,
        angle=rng.uniform(0.0, 2 * np.pi, count),
        opening=np.radians(rng.uniform(5.0, 50.0, count)),
        motion=rng.uniform(0.0, 3.0, count),
        motion_angle=rng.uniform(0.0, 2 * np.pi, count),
    )
    reach = 3.0 * max(float(np.max(length, initial=0)), 2 * float(np.max(radius, initial=0)))
    # No patch larger than the image is needed: a comet at an edge still fills all of it.
    half = int(min(reach + 6, max(layers.science.shape[1:])))
    drawn = np.zeros_like(layers.science)
    paint(drawn, subjects, comet_profile, half, snr, "snr", cond.difference_noise)
    layers.science += drawn
    layers.difference += drawn
    return psf_fit_snr(drawn, subjects, cond)


PSF_HALF = 12  # pixels either side of the nucleus for the PSF fit (~6 FWHM at ZTF seeing)


def psf_fit_snr(drawn: np.ndarray, subjects: Objects, cond: Conditions) -> np.ndarray:
    """The SNR a PSF fit at the nucleus gives each comet: what a survey's point-source
    photometry reports (ZTF's alert: 1.0857 / sigmapsf). At most the matched-filter `snr`
    the comet was painted to (equal for a point source): the more extended the comet, the
    less of it the PSF catches."""
    if not len(subjects):
        return np.zeros(0)
    _, height, width = drawn.shape
    grid = patch_grid(subjects, PSF_HALF, height, width)
    fwhm = cond.fwhm[subjects.image][:, None, None]
    psf = np.where(grid.inside, profiles.moffat(grid.dx, grid.dy, fwhm), 0.0)
    rows, cols = np.clip(grid.rows, 0, height - 1), np.clip(grid.cols, 0, width - 1)
    values = drawn[subjects.image[:, None, None], rows, cols]
    # The fitted flux sum(psf * values) / sum(psf^2), over its error sigma / sqrt(sum(psf^2)).
    norm = np.sqrt(np.sum(psf * psf, axis=(1, 2)))
    return np.sum(psf * values, axis=(1, 2)) / (norm * cond.difference_noise[subjects.image])


def add_negatives(
    rng: np.random.Generator,
    layers: Layers,
    cond: Conditions,
    subjects: Objects,
    kinds: np.ndarray,
    snr: np.ndarray,
) -> np.ndarray:
    """Paint each negative subject by kind; return the SNR each one really got."""
    got = snr.astype(np.float64).copy()
    for kind, painter in _PAINTERS.items():
        chosen = np.flatnonzero(kinds == kind)
        if len(chosen):
            got[chosen] = painter(rng, layers, cond, subjects.take(chosen), snr[chosen])
    got[kinds == "empty"] = 0.0
    return got


def _transient(
    layers: Layers,
    objects: Objects,
    profile: Profile,
    half: int,
    amount: np.ndarray,
    cond: Conditions,
    scale: Scale,
) -> None:
    """Something new since the reference: drawn once, added to science and difference."""
    drawn = np.zeros_like(layers.science)
    paint(drawn, objects, profile, half, amount, scale, cond.difference_noise)
    layers.science += drawn
    layers.difference += drawn


def _point_source(
    rng: np.random.Generator, layers: Layers, cond: Conditions, objs: Objects, snr: np.ndarray
) -> np.ndarray:
    """A supernova-like PSF, half of them on a host galaxy a few pixels away."""
    objs.params.update(fwhm=cond.fwhm[objs.image], sx=np.zeros(len(objs)), sy=np.zeros(len(objs)))
    _transient(layers, objs, star_profile, 12, snr, cond, "snr")
    hosted = objs.take(np.flatnonzero(rng.uniform(size=len(objs)) < 0.5))
    offset = rng.normal(0.0, 2.5, (2, len(hosted)))
    host = Objects(hosted.image, hosted.x + offset[0], hosted.y + offset[1], {})
    host.params.update(
        scale=log_uniform(rng, 1.0, 5.0, len(host)),
        ratio=rng.uniform(0.3, 1.0, len(host)),
        angle=rng.uniform(0.0, np.pi, len(host)),
    )
    flux = 10 ** (-0.4 * (rng.uniform(16.5, 21.0, len(host)) - cond.zero_point[host.image]))
    paint_static(layers, host, cond, galaxy_profile, 20, flux)
    return snr


def _variable_star(
    rng: np.random.Generator, layers: Layers, cond: Conditions, objs: Objects, snr: np.ndarray
) -> np.ndarray:
    """A star in both images whose flux changed: a PSF of either sign in the difference."""
    zero = np.zeros(len(objs))
    flux = 10 ** (-0.4 * (rng.uniform(13.5, 19.5, len(objs)) - cond.zero_point[objs.image]))
    paint_static(layers, objs, cond, star_profile, 12, flux)
    sign = np.where(rng.uniform(size=len(objs)) < 0.7, 1.0, -1.0)
    objs.params.update(fwhm=cond.fwhm[objs.image], sx=zero, sy=zero)
    _transient(layers, objs, star_profile, 12, sign * snr, cond, "snr")
    return snr


def _cosmic_ray(
    rng: np.random.Generator, layers: Layers, cond: Conditions, objs: Objects, snr: np.ndarray
) -> np.ndarray:
    """Sharper than any PSF: single hot pixels to tracks a dozen pixels long."""
    objs.params.update(
        angle=rng.uniform(0.0, np.pi, len(objs)),
        fwhm=rng.uniform(0.5, 0.9, len(objs)),
        half_length=rng.choice([0.0, 1.0, 3.0, 6.0], len(objs)) * rng.uniform(size=len(objs)),
    )
    _transient(layers, objs, _segment, 10, snr, cond, "snr")
    return snr


def _bad_subtraction(
    rng: np.random.Generator, layers: Layers, cond: Conditions, objs: Objects, snr: np.ndarray
) -> np.ndarray:
    """A bright star or galaxy core subtracted badly: strong dipoles and rings.

    The residual's SNR follows from the source's brightness (`snr` is not used): returned.
    """
    count = len(objs)
    shift = rng.normal(0.0, 0.5, (count, 2))
    mismatch = rng.normal(0.0, 0.15, count)
    before = layers.difference[objs.image].copy()
    stars = rng.uniform(size=count) < 0.7
    flux = 10 ** (-0.4 * (rng.uniform(11.5, 16.5, count) - cond.zero_point[objs.image]))
    star_objs = objs.take(np.flatnonzero(stars))
    paint_static(
        layers, star_objs, cond, star_profile, 16, flux[stars], None, shift[stars], mismatch[stars]
    )
    galaxies = objs.take(np.flatnonzero(~stars))
    galaxies.params.update(
        scale=log_uniform(rng, 1.0, 4.0, len(galaxies)),
        ratio=rng.uniform(0.3, 1.0, len(galaxies)),
        angle=rng.uniform(0.0, np.pi, len(galaxies)),
    )
    paint_static(
        layers,
        galaxies,
        cond,
        galaxy_profile,
        20,
        flux[~stars] / 3,
        None,
        shift[~stars],
        mismatch[~stars],
    )
    added = layers.difference[objs.image] - before
    return np.sqrt(np.sum(added**2, axis=(1, 2))) / cond.difference_noise[objs.image]


def _satellite(
    rng: np.random.Generator, layers: Layers, cond: Conditions, objs: Objects, snr: np.ndarray
) -> np.ndarray:
    """A streak across the whole image, its peak pixel at `snr` / 2.5 sigma (1.6-60)."""
    peak = snr / 2.5
    objs.params.update(
        angle=rng.uniform(0.0, np.pi, len(objs)),
        fwhm=cond.fwhm[objs.image],
        half_length=np.full(len(objs), np.inf),
    )
    _, height, width = layers.science.shape
    half = int(np.hypot(height, width)) + 2
    _transient(layers, objs, _segment, half, peak, cond, "peak")
    return peak


def _asteroid(
    rng: np.random.Generator, layers: Layers, cond: Conditions, objs: Objects, snr: np.ndarray
) -> np.ndarray:
    """A moving point source: a short trail (up to ~12 pixels in a ZTF 30 s exposure)."""
    objs.params.update(
        fwhm=cond.fwhm[objs.image],
        length=rng.uniform(0.0, 12.0, len(objs)),
        angle=rng.uniform(0.0, np.pi, len(objs)),
    )
    _transient(layers, objs, _trail, 14, snr, cond, "snr")
    return snr


def _empty(
    rng: np.random.Generator, layers: Layers, cond: Conditions, objs: Objects, snr: np.ndarray
) -> np.ndarray:
    return np.zeros(len(objs))


def _segment(dx: np.ndarray, dy: np.ndarray, p: Params) -> np.ndarray:
    return profiles.streak(dx, dy, p["angle"], p["fwhm"], p["half_length"])


def _trail(dx: np.ndarray, dy: np.ndarray, p: Params) -> np.ndarray:
    return profiles.trailed_moffat(dx, dy, p["fwhm"], p["length"], p["angle"])


_PAINTERS = {
    "point_source": _point_source,
    "variable_star": _variable_star,
    "cosmic_ray": _cosmic_ray,
    "bad_subtraction": _bad_subtraction,
    "satellite": _satellite,
    "asteroid": _asteroid,
    "empty": _empty,
}
