"""Simulated Tails training and test sets: seeded, reproducible ZTF-like triplets.

Input: count, seed, image size ("stamp": 63 px alert cutouts centred on the detection, or
"box": 256 px frame-mode boxes with subjects anywhere). Output: `Dataset` (float32 images in
DN + labels is_comet, x, y, snr, kind, fwhm, and the comet's coma radius, tail length and
PSF-fit SNR),
written as .npz shards with a JSON summary.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from broker.tools.tails.backgrounds import Backgrounds
from broker.tools.tails.canvas import Objects
from broker.tools.tails.field import Conditions, Layers, add_field, finish
from broker.tools.tails.subjects import (
    COMET,
    NEGATIVES,
    SNR_RANGE,
    add_comets,
    add_negatives,
    log_uniform,
)
from workers.models.tails_contract import BOX, STAMP

Placement = Literal["stamp", "box"]
# Pixels between a subject and the centre of a real background, where its own alert is.
CLEAR_OF_ALERT = 10.0
PROGRESS_FROM = 2000  # triplets; smaller sets are simulated before a bar is worth drawing
CHUNK = 256  # images simulated together; fixed so a seed gives the same data at any n
SHARD = 2000  # images per .npz file
SUMMARY = "dataset.json"
LABELS = ("is_comet", "x", "y", "snr", "kind", "fwhm", "coma_radius", "tail_length", "psf_snr")
# Labels that shards written before they existed lack: read back as NaN (unknown).
OPTIONAL_LABELS = ("coma_radius", "tail_length", "psf_snr")


@dataclass
class Dataset:
    """Images (N, S, S, 3) float32 in DN and per-image labels (the comet's, else a negative's)."""

    images: np.ndarray
    is_comet: np.ndarray  # bool
    x: np.ndarray  # column of the comet nucleus (or of the main negative), pixels
    y: np.ndarray  # row
    snr: np.ndarray  # matched-filter SNR in the difference (satellites: peak SNR)
    kind: np.ndarray  # "comet" or a negative kind
    fwhm: np.ndarray  # seeing, pixels
    # The comet's morphology (NaN for negatives): what the detector's misses depend on.
    coma_radius: np.ndarray  # pixels
    tail_length: np.ndarray  # pixels; 0 for a tailless coma
    # SNR of a PSF fit at the nucleus (a survey's photometry), <= the matched-filter snr.
    psf_snr: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def labels(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in LABELS}

    @classmethod
    def concatenate(cls, parts: list[Dataset]) -> Dataset:
        if not parts:
            raise ValueError("no data to concatenate")
        fields = ("images", *LABELS)
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in fields))


def simulate(
    n: int,
    seed: int,
    placement: Placement = "stamp",
    comet_fraction: float = 0.5,
    backgrounds: Backgrounds | None = None,
) -> Dataset:
    """`n` triplets; the same (n, seed, placement, comet_fraction, backgrounds) gives the
    same arrays."""
    chunks = iter_chunks(n, seed, placement, comet_fraction, backgrounds=backgrounds)
    return Dataset.concatenate(list(chunks))


def iter_chunks(
    n: int,
    seed: int,
    placement: Placement = "stamp",
    comet_fraction: float = 0.5,
    negatives: Mapping[str, float] = NEGATIVES,
    compact: float = 0.0,
    backgrounds: Backgrounds | None = None,
) -> Iterator[Dataset]:
    """Chunks of `simulate`; `negatives` is the mix of look-alikes and `compact` the share of
    comets drawn from the compact population (training may weight the hard cases up;
    evaluation sets keep NEGATIVES and 0). With `backgrounds`, each stamp is a real alert's
    cutouts (drawn at random, seeded) with the subjects painted onto it."""
    if not 0.0 <= compact <= 1.0:
        raise ValueError(f"the compact-comet share must be within [0, 1], not {compact}")
    if backgrounds is not None and placement != "stamp":
        raise ValueError("real alert backgrounds are 63 px cutouts: --placement stamp only")
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be >= 0, not n={n}, seed={seed}")
    if not 0.0 <= comet_fraction <= 1.0:
        raise ValueError(f"comet_fraction must be within [0, 1], not {comet_fraction}")
    size = STAMP if placement == "stamp" else BOX
    for chunk, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([seed, chunk, size])
        count = min(CHUNK, n - start)
        if backgrounds is None:
            yield simulate_chunk(rng, count, size, placement, comet_fraction, negatives, compact)
        else:
            yield simulate_on(rng, backgrounds, count, comet_fraction, negatives, compact)


def with_progress(chunks: Iterable[Dataset], total: int | None) -> Iterator[Dataset]:
    """The chunks as they come, with a progress bar over `total` triplets (96,000 take a
    minute and a half); none for small or unknown totals."""
    quiet = total is None or total < PROGRESS_FROM
    with tqdm(
        total=total, unit="triplet", desc="simulating", disable=quiet, mininterval=1.0
    ) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk))


def simulate_chunk(
    rng: np.random.Generator,
    count: int,
    size: int,
    placement: Placement,
    comet_fraction: float,
    negatives: Mapping[str, float] = NEGATIVES,
    compact: float = 0.0,
) -> Dataset:
    cond = Conditions.draw(rng, count)
    layers = Layers.empty(count, (size, size))
    add_field(rng, layers, cond)
    labels = _add_subjects(rng, layers, cond, placement, comet_fraction, negatives, compact, 0.0)
    _cosmic_rays(rng, layers, cond, size)
    return _dataset(finish(rng, layers, cond), cond, *labels)


def simulate_on(
    rng: np.random.Generator,
    backgrounds: Backgrounds,
    count: int,
    comet_fraction: float,
    negatives: Mapping[str, float] = NEGATIVES,
    compact: float = 0.0,
) -> Dataset:
    """Like simulate_chunk, on real cutouts: their sky, stars, noise, cosmic rays and
    subtraction residuals replace the simulated field. The cutout's own alert source sits
    at its centre, so subjects are placed CLEAR_OF_ALERT pixels or more from it: painted
    onto a real transient, a comet would be a blend, not a comet to find. That source stays
    in every stamp, an unlabelled real look-alike beside each comet and negative."""
    chosen = rng.integers(0, len(backgrounds), count)
    cond = backgrounds.conditions(rng, chosen)
    layers = Layers.empty(count, (STAMP, STAMP))
    labels = _add_subjects(
        rng, layers, cond, "stamp", comet_fraction, negatives, compact, CLEAR_OF_ALERT
    )
    return _dataset(backgrounds.compose(chosen, layers), cond, *labels)


def _add_subjects(
    rng: np.random.Generator,
    layers: Layers,
    cond: Conditions,
    placement: Placement,
    comet_fraction: float,
    negatives: Mapping[str, float],
    compact: float,
    clear: float,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Paint one comet or negative per stamp (boxes: comets and a few negatives), none
    within `clear` pixels of the centre; return is_comet, the truth labels and the comets'
    morphology labels."""
    count, size = layers.science.shape[:2]
    is_comet = rng.permutation(np.arange(count) < round(comet_fraction * count))
    truth = _negative_subjects(rng, layers, cond, is_comet, placement, negatives, clear)
    comets = np.flatnonzero(is_comet)
    x, y = _positions(rng, len(comets), size, placement, centred=0.5, clear=clear)
    snr = log_uniform(rng, *SNR_RANGE, len(comets))
    subjects = Objects(comets, x, y, {})
    max_tail = min(0.4 * size, 60.0)
    psf_snr = add_comets(rng, layers, cond, subjects, snr, max_tail, compact)
    truth["x"][comets], truth["y"][comets], truth["snr"][comets] = x, y, snr
    truth["kind"][comets] = COMET
    comet_labels = {name: np.full(count, np.nan, dtype=np.float32) for name in OPTIONAL_LABELS}
    comet_labels["coma_radius"][comets] = subjects.params["radius"]
    comet_labels["tail_length"][comets] = np.where(
        subjects.params["tail"] > 0, subjects.params["length"], 0.0
    )
    comet_labels["psf_snr"][comets] = psf_snr
    return is_comet, truth, comet_labels


def _dataset(
    images: np.ndarray,
    cond: Conditions,
    is_comet: np.ndarray,
    truth: dict[str, np.ndarray],
    comet_labels: dict[str, np.ndarray],
) -> Dataset:
    return Dataset(
        images,
        is_comet,
        truth["x"].astype(np.float32),
        truth["y"].astype(np.float32),
        truth["snr"].astype(np.float32),
        truth["kind"],
        cond.fwhm.astype(np.float32),
        comet_labels["coma_radius"],
        comet_labels["tail_length"],
        comet_labels["psf_snr"],
    )


def _negative_subjects(
    rng: np.random.Generator,
    layers: Layers,
    cond: Conditions,
    is_comet: np.ndarray,
    placement: Placement,
    negatives: Mapping[str, float],
    clear: float = 0.0,
) -> dict[str, np.ndarray]:
    """One per comet-less stamp (what triggered the alert); about 0-4 in any box, as frames
    hold other transients and artefacts beside a comet. Labels: each image's first one."""
    count, size = len(cond.fwhm), layers.science.shape[1]
    stamp = placement == "stamp"
    numbers = (~is_comet).astype(int) if stamp else rng.poisson(1.5, count)
    image = np.repeat(np.arange(count), numbers)
    kinds = rng.choice(list(negatives), len(image), p=list(negatives.values()))
    x, y = _positions(rng, len(image), size, placement, centred=0.8, clear=clear)
    snr = log_uniform(rng, *SNR_RANGE, len(image))
    got = add_negatives(rng, layers, cond, Objects(image, x, y, {}), kinds, snr)
    truth = {
        "x": np.full(count, np.nan),
        "y": np.full(count, np.nan),
        "snr": np.zeros(count),
        "kind": np.full(count, "empty", dtype="<U16"),
    }
    first = np.unique(image, return_index=True)[1]  # each image's first subject
    for name, values in (("x", x), ("y", y), ("snr", got), ("kind", kinds)):
        truth[name][image[first]] = values[first]
    return truth


def _positions(
    rng: np.random.Generator,
    count: int,
    size: int,
    placement: Placement,
    centred: float,
    clear: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Stamps: mostly at the centre (ZTF centres the cutout on the detection), the rest
    anywhere so the detector learns positions; boxes: anywhere, 4 pixels from the edge.
    With `clear` (real backgrounds): anywhere at least `clear` pixels from the centre."""
    x = rng.uniform(4.0, size - 5.0, count)
    y = rng.uniform(4.0, size - 5.0, count)
    if clear > 0:
        centre = (size - 1) / 2.0
        near = np.hypot(x - centre, y - centre) < clear
        while near.any():
            x[near] = rng.uniform(4.0, size - 5.0, int(near.sum()))
            y[near] = rng.uniform(4.0, size - 5.0, int(near.sum()))
            near = np.hypot(x - centre, y - centre) < clear
        return x, y
    if placement == "stamp":
        near = rng.uniform(size=count) < centred
        centre = (size - 1) / 2.0
        jitter = rng.normal(0.0, 1.5, (2, count))
        x = np.where(near, centre + jitter[0], x)
        y = np.where(near, centre + jitter[1], y)
    return x, y


def _cosmic_rays(rng: np.random.Generator, layers: Layers, cond: Conditions, size: int) -> None:
    """Cosmic-ray hits anywhere in the science image (ZTF: a few per stamp-sized area)."""
    count = len(cond.fwhm)
    image = np.repeat(np.arange(count), rng.poisson(0.3 * size * size / STAMP**2, count))
    hits = Objects(image, rng.uniform(0, size, len(image)), rng.uniform(0, size, len(image)), {})
    kinds = np.full(len(image), "cosmic_ray")
    add_negatives(rng, layers, cond, hits, kinds, log_uniform(rng, 5.0, 200.0, len(image)))


def write(dataset: Dataset, out: Path, summary: dict[str, Any]) -> list[Path]:
    """Shards of SHARD images as out/part-NNNN.npz plus out/dataset.json."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, start in enumerate(range(0, len(dataset), SHARD)):
        part = slice(start, start + SHARD)
        path = out / f"part-{index:04d}.npz"
        labels = {name: value[part] for name, value in dataset.labels().items()}
        np.savez(path, images=dataset.images[part], **labels)  # type: ignore[arg-type]
        paths.append(path)
    counts = Counter(str(kind) for kind in dataset.kind)
    info = {
        **summary,
        "n": len(dataset),
        "shards": len(paths),
        "kinds": dict(sorted(counts.items())),
    }
    (out / SUMMARY).write_text(json.dumps(info, indent=2) + "\n")
    return paths


def read(folder: Path) -> Dataset:
    """Every shard of a folder written by `write` (or one .npz file), in order."""
    return Dataset.concatenate(list(iter_shards(folder)))


def iter_shards(folder: Path) -> Iterator[Dataset]:
    paths = [folder] if folder.is_file() else sorted(folder.glob("part-*.npz"))
    if not paths:
        raise FileNotFoundError(
            f"{folder} holds no part-*.npz shards; create them with `nightjar tails simulate`"
        )
    for path in paths:
        with np.load(path) as data:
            required = [n for n in ("images", *LABELS) if n not in OPTIONAL_LABELS]
            missing = [name for name in required if name not in data.files]
            if missing:
                raise ValueError(f"{path} is not a Tails dataset shard (missing {missing})")
            count = len(data["is_comet"])
            yield Dataset(
                data["images"],
                *(
                    data[name] if name in data.files else np.full(count, np.nan, np.float32)
                    for name in LABELS
                ),
            )
