"""Evaluation on a held-out simulated set: recall at fixed false-positive rates, position
error, recall vs SNR and vs comet morphology, per-kind false positives, per-example CPU
cost, and figures.

Input: a Tails-contract ONNX model and a folder of shards from `nightjar tails simulate`.
Output: evaluation.json plus roc.png, recall_vs_snr.png and galleries of hits, misses and
false positives, written to an output folder.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from broker.tools.tails import plots
from broker.tools.tails.detector import Detector, milliseconds_per_example
from broker.tools.tails.simulate import SHARD, iter_shards
from broker.tools.tails.subjects import HARD_NEGATIVES
from workers.models.tails_contract import PRODUCTION_THRESHOLD, preprocess, to_pixels

log = logging.getLogger(__name__)

FPR_TARGETS = (1e-2, 1e-3, 1e-4)
MAIN_FPR = 1e-3
SNR_BINS = (5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, 80.0, 150.0)
BRIGHT_SNR = 10.0
# Morphology bins (pixels) for recall at SNR >= BRIGHT_SNR: a tailless, compact coma is the
# comet hardest to tell from a point source in one epoch.
TAIL_BINS = (
    ("none", 0.0, 1e-6),
    ("0-5 px", 1e-6, 5.0),
    ("5-10 px", 5.0, 10.0),
    ("10-20 px", 10.0, 20.0),
    (">= 20 px", 20.0, np.inf),
)
RADIUS_BINS = (
    ("2-3 px", 2.0, 3.0),
    ("3-4 px", 3.0, 4.0),
    ("4-6 px", 4.0, 6.0),
    (">= 6 px", 6.0, np.inf),
)
SEEING_BINS = (1.3, 1.8, 2.1, 2.4, 2.8, 3.7)  # FWHM, pixels (simulated: 2.1 +- 0.4)
GALLERY = 8
BOOTSTRAP = 400  # resamples for the interval of the main recall
BOOTSTRAP_SEED = 0
TIMING_EXAMPLES = 2048


@dataclass
class Scored:
    """What the model said about every example of the set, in set order."""

    scores: np.ndarray
    positions: np.ndarray  # (N, 2) predicted x, y in pixels; NaN where not scoreable
    is_comet: np.ndarray
    truth: np.ndarray  # (N, 2) true x, y
    snr: np.ndarray
    kind: np.ndarray
    coma_radius: np.ndarray  # NaN for negatives and for sets simulated without the label
    tail_length: np.ndarray
    psf_snr: np.ndarray
    fwhm: np.ndarray  # the image's seeing, pixels
    skipped: int
    size: int


def score_set(detector: Detector, data: Path, progress: bool = False) -> tuple[Scored, np.ndarray]:
    """Run the model over every shard; also return up to TIMING_EXAMPLES inputs for timing."""
    parts: list[dict[str, np.ndarray]] = []
    sample = np.zeros(0)
    skipped, size = 0, 0
    bar = tqdm(unit="triplet", desc="scoring", disable=not progress, mininterval=1.0)
    for shard in iter_shards(data):
        inputs, reasons = preprocess(shard.images)
        outputs = detector.predict(inputs)
        bar.update(len(shard))
        bad = np.array([reason is not None for reason in reasons])
        skipped += int(bad.sum())
        outputs[bad] = np.nan
        size = shard.images.shape[1]
        x, y = to_pixels(outputs, shard.images.shape[1], shard.images.shape[2])
        parts.append(
            {
                "scores": np.where(bad, 0.0, outputs[:, 0]),
                "positions": np.stack([x, y], axis=1),
                "is_comet": shard.is_comet.astype(bool),
                "truth": np.stack([shard.x, shard.y], axis=1),
                "snr": shard.snr,
                "kind": shard.kind,
                "coma_radius": shard.coma_radius,
                "tail_length": shard.tail_length,
                "psf_snr": shard.psf_snr,
                "fwhm": shard.fwhm,
            }
        )
        if not len(sample):
            sample = inputs[:TIMING_EXAMPLES]
    bar.close()
    merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return Scored(**merged, skipped=skipped, size=size), sample


def threshold_at(negatives: np.ndarray, fpr: float) -> float:
    """The lowest threshold t with at most floor(fpr * N) negatives scoring above it."""
    ordered = np.sort(negatives)[::-1]
    allowed = int(np.floor(fpr * len(ordered)))
    if allowed >= len(ordered):
        return 0.0
    return float(ordered[allowed])


def summarise(result: Scored) -> dict[str, Any]:
    """The JSON numbers (scores above a threshold count as detections)."""
    comets, negatives = result.scores[result.is_comet], result.scores[~result.is_comet]
    points: dict[str, Any] = {}
    for fpr in FPR_TARGETS:
        threshold = threshold_at(negatives, fpr)
        points[f"fpr_{fpr:g}"] = _operating_point(result, threshold, fpr)
    points["production_0.7"] = _operating_point(result, PRODUCTION_THRESHOLD, None)
    points[f"fpr_{MAIN_FPR:g}"][f"recall_snr_ge_{BRIGHT_SNR:g}_interval"] = recall_interval(
        result, MAIN_FPR
    )
    main = points[f"fpr_{MAIN_FPR:g}"]["threshold"]
    return {
        "examples": len(result.scores),
        "comets": int(result.is_comet.sum()),
        "negatives": int((~result.is_comet).sum()),
        "skipped_by_preprocessing": result.skipped,
        "image_size": result.size,
        "roc_auc": _auc(comets, negatives),
        "operating_points": points,
        "position_rms_px": _position(result, main),
        "recall_vs_snr": _recall_by_snr(result, {"fpr_0.001": main, "p>=0.7": 0.7}),
        f"recall_snr_ge_{BRIGHT_SNR:g}_by_morphology": _recall_by_morphology(result, main),
        "false_positive_rate_by_kind": _by_kind(result, main),
        f"recall_snr_ge_{BRIGHT_SNR:g}_without_look_alikes": _without_look_alikes(result),
        "by_seeing": _by_seeing(result, main),
    }


def _operating_point(result: Scored, threshold: float, target: float | None) -> dict[str, Any]:
    detected = result.scores > threshold if target is not None else result.scores >= threshold
    bright = result.is_comet & (result.snr >= BRIGHT_SNR)
    # The same cut on the SNR a survey's PSF photometry reports (sets that carry it).
    bright_psf = result.is_comet & (result.psf_snr >= BRIGHT_SNR)
    return {
        "threshold": threshold,
        "target_fpr": target,
        "fpr": float(detected[~result.is_comet].mean()),
        "recall": float(detected[result.is_comet].mean()),
        f"recall_snr_ge_{BRIGHT_SNR:g}": float(detected[bright].mean()) if bright.any() else None,
        f"recall_psf_snr_ge_{BRIGHT_SNR:g}": (
            float(detected[bright_psf].mean()) if bright_psf.any() else None
        ),
    }


def recall_interval(result: Scored, fpr: float) -> dict[str, Any] | None:
    """A 90% bootstrap interval of the recall of SNR >= BRIGHT_SNR comets at `fpr`.

    The threshold rests on a few negatives (the 20th highest of 20,000 at 0.1%), so two
    detectors whose recalls differ by less than this width cannot be told apart on the set.
    Negatives and comets are resampled together, the threshold set again each time; seeded,
    so the same scores give the same interval.
    """
    negatives = result.scores[~result.is_comet]
    bright = result.scores[result.is_comet & (result.snr >= BRIGHT_SNR)]
    if not len(negatives) or not len(bright):
        return None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    recalls = np.empty(BOOTSTRAP)
    for index in range(BOOTSTRAP):
        threshold = threshold_at(rng.choice(negatives, len(negatives)), fpr)
        recalls[index] = np.mean(rng.choice(bright, len(bright)) > threshold)
    low, high = np.percentile(recalls, [5.0, 95.0])
    return {"level": 0.9, "low": float(low), "high": float(high), "resamples": BOOTSTRAP}


def _auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Probability a random comet outscores a random negative (ties count half)."""
    if not len(positives) or not len(negatives):
        return float("nan")
    values = np.concatenate([negatives, positives])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    average = (starts + (counts - 1) / 2.0)[inverse] + 1.0
    positive_ranks = average[len(negatives) :].sum()
    n_pos, n_neg = len(positives), len(negatives)
    return float((positive_ranks - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _position(result: Scored, threshold: float) -> dict[str, Any]:
    error = np.hypot(*(result.positions - result.truth).T)
    bright = result.is_comet & (result.snr >= BRIGHT_SNR) & np.isfinite(error)
    found = bright & (result.scores > threshold)

    def rms(mask: np.ndarray) -> float | None:
        return float(np.sqrt(np.mean(error[mask] ** 2))) if mask.any() else None

    return {
        f"snr_ge_{BRIGHT_SNR:g}_all": rms(bright),
        f"snr_ge_{BRIGHT_SNR:g}_detected_at_fpr_0.001": rms(found),
        "all_comets": rms(result.is_comet & np.isfinite(error)),
        f"median_snr_ge_{BRIGHT_SNR:g}": float(np.median(error[bright])) if bright.any() else None,
    }


def _recall_by_snr(result: Scored, thresholds: dict[str, float]) -> dict[str, Any]:
    snr = result.snr[result.is_comet]
    scores = result.scores[result.is_comet]
    index = np.digitize(snr, SNR_BINS) - 1
    table: dict[str, Any] = {"bins": list(SNR_BINS), "counts": []}
    for label, threshold in thresholds.items():
        table[label] = []
        for b in range(len(SNR_BINS) - 1):
            chosen = scores[index == b]
            table[label].append(float((chosen > threshold).mean()) if len(chosen) else None)
    table["counts"] = [int((index == b).sum()) for b in range(len(SNR_BINS) - 1)]
    return table


def _recall_by_morphology(result: Scored, threshold: float) -> dict[str, Any] | None:
    """Recall at `threshold` of SNR >= BRIGHT_SNR comets per tail-length and coma-radius
    bin (None for a set simulated before these labels existed)."""
    bright = result.is_comet & (result.snr >= BRIGHT_SNR)
    if not np.isfinite(result.tail_length[bright]).any():
        return None
    detected = result.scores > threshold

    def table(values: np.ndarray, bins: tuple[tuple[str, float, float], ...]) -> dict[str, Any]:
        rows = {}
        for label, low, high in bins:
            chosen = bright & (values >= low) & (values < high)
            recall = float(detected[chosen].mean()) if chosen.any() else None
            rows[label] = {"comets": int(chosen.sum()), "recall": recall}
        return rows

    return {
        "threshold": threshold,
        "tail_length": table(result.tail_length, TAIL_BINS),
        "coma_radius": table(result.coma_radius, RADIUS_BINS),
    }


def _by_kind(result: Scored, threshold: float) -> dict[str, float]:
    negatives = ~result.is_comet
    return {
        str(kind): float((result.scores[negatives & (result.kind == kind)] > threshold).mean())
        for kind in sorted(set(result.kind[negatives].tolist()))
    }


def _without_look_alikes(result: Scored) -> float | None:
    """Recall of SNR >= BRIGHT_SNR comets with the main operating point's number of false
    positives spent on the other negatives only: the recall a detector that never took a
    point-source transient or an asteroid for a comet would reach. What stands between it
    and the main recall is the look-alikes; what stands between it and 100% is the noise
    and the other artefacts."""
    others = ~result.is_comet & ~np.isin(result.kind, HARD_NEGATIVES)
    bright = result.is_comet & (result.snr >= BRIGHT_SNR)
    if not others.any() or not bright.any():
        return None
    allowed = np.floor(MAIN_FPR * int((~result.is_comet).sum())) / int(others.sum())
    threshold = threshold_at(result.scores[others], allowed)
    return float(np.mean(result.scores[bright] > threshold))


def _by_seeing(result: Scored, threshold: float) -> list[dict[str, Any]]:
    """Per seeing bin at `threshold`: look-alikes called comets, and recall of SNR >=
    BRIGHT_SNR comets. A compact coma and a point source differ by less than the seeing
    varies, and an alert stamp seldom holds a star bright enough to measure it: a detector
    that cannot tell the seeing shows look-alike false positives piling up in poor seeing
    and misses in good seeing."""
    look_alikes = ~result.is_comet & np.isin(result.kind, HARD_NEGATIVES)
    bright = result.is_comet & (result.snr >= BRIGHT_SNR)
    detected = result.scores > threshold
    rows = []
    for low, high in itertools.pairwise(SEEING_BINS):
        inside = (result.fwhm >= low) & (result.fwhm < high)
        rows.append(
            {
                "fwhm_px": [low, high],
                "look_alikes": int((look_alikes & inside).sum()),
                "look_alikes_detected": int((look_alikes & inside & detected).sum()),
                "comets": int((bright & inside).sum()),
                "recall": float(detected[bright & inside].mean())
                if (bright & inside).any()
                else None,
            }
        )
    return rows


def figures(result: Scored, summary: dict[str, Any], data: Path, out: Path) -> list[Path]:
    """ROC, recall vs SNR, by morphology and by seeing, and galleries of hits, misses and
    false positives."""
    negatives = np.sort(result.scores[~result.is_comet])[::-1]
    thresholds = np.unique(np.concatenate([[1.1], result.scores]))[::-1]
    fpr = np.searchsorted(-negatives, -thresholds, side="left") / max(len(negatives), 1)
    comets = np.sort(result.scores[result.is_comet])[::-1]
    tpr = np.searchsorted(-comets, -thresholds, side="left") / max(len(comets), 1)
    points = summary["operating_points"]
    marks = {
        name: (points[name]["fpr"], points[name]["recall"])
        for name in ("fpr_0.01", "fpr_0.001", "production_0.7")
    }
    paths = [out / "roc.png", out / "recall_vs_snr.png"]
    plots.roc(fpr, tpr, marks, paths[0])
    table = summary["recall_vs_snr"]
    curves = {
        k: [v if v is not None else np.nan for v in table[k]] for k in ("fpr_0.001", "p>=0.7")
    }
    plots.recall_vs_snr(table["bins"], curves, table["counts"], paths[1])
    morphology = summary[f"recall_snr_ge_{BRIGHT_SNR:g}_by_morphology"]
    if morphology is not None:
        paths.append(out / "recall_by_morphology.png")
        tables = {name: morphology[name] for name in ("tail_length", "coma_radius")}
        plots.recall_by_morphology(tables, paths[-1])
    paths.append(out / "by_seeing.png")
    plots.by_seeing(summary["by_seeing"], paths[-1])
    threshold = points[f"fpr_{MAIN_FPR:g}"]["threshold"]
    for name, chosen in _gallery_picks(result, threshold).items():
        path = out / f"gallery_{name}.png"
        _gallery(
            result, chosen, data, f"{name.replace('_', ' ')} (threshold {threshold:.3f})", path
        )
        paths.append(path)
    return paths


def _gallery_picks(result: Scored, threshold: float) -> dict[str, np.ndarray]:
    """Hits: random detected comets; misses: the brightest missed; false positives: top."""
    rng = np.random.default_rng(0)
    hits = np.flatnonzero(result.is_comet & (result.scores > threshold))
    misses = np.flatnonzero(result.is_comet & (result.scores <= threshold))
    false = np.flatnonzero(~result.is_comet & (result.scores > threshold))
    return {
        "hits": np.sort(rng.choice(hits, min(GALLERY, len(hits)), replace=False)),
        "misses": misses[np.argsort(-result.snr[misses])][:GALLERY],
        "false_positives": false[np.argsort(-result.scores[false])][:GALLERY],
    }


def _gallery(result: Scored, chosen: np.ndarray, data: Path, title: str, out: Path) -> None:
    images = _images(data, chosen)
    captions = [_caption(result, int(i)) for i in chosen]
    plots.gallery(images, captions, result.truth[chosen], result.positions[chosen], title, out)


def _caption(result: Scored, index: int) -> str:
    """Kind, SNR, the comet's tail length and coma radius where known, and the score."""
    text = f"{result.kind[index]} snr {result.snr[index]:.0f}"
    tail, radius = result.tail_length[index], result.coma_radius[index]
    if np.isfinite(tail) and np.isfinite(radius):
        text += f"\ntail {tail:.0f} px, coma {radius:.1f} px"
    return f"{text}\np={result.scores[index]:.3f}"


def _images(data: Path, chosen: np.ndarray) -> np.ndarray:
    """The raw triplets of the chosen examples, re-read from their shards."""
    rows: dict[int, np.ndarray] = {}
    wanted = {int(i) for i in chosen}
    for number, shard in enumerate(iter_shards(data)):
        for index in wanted:
            if number * SHARD <= index < (number + 1) * SHARD:
                rows[index] = shard.images[index - number * SHARD]
        if len(rows) == len(wanted):
            break
    return np.stack([rows[int(i)] for i in chosen]) if len(chosen) else np.zeros((0, 1, 1, 3))


def evaluate(model: Path, data: Path, out: Path, threads: int = 1) -> dict[str, Any]:
    """Score the set, time the model on one thread, write evaluation.json and figures."""
    detector = Detector(model, threads=threads)
    result, sample = score_set(detector, data, progress=True)
    summary = summarise(result)
    timing = Detector(model, threads=1)
    summary["cpu_ms_per_example_1_thread"] = milliseconds_per_example(timing, sample)
    summary["model"] = str(model)
    summary["data"] = str(data)
    out.mkdir(parents=True, exist_ok=True)
    summary["figures"] = [str(path) for path in figures(result, summary, data, out)]
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
