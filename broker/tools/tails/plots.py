"""PNG figures for Tails: ROC curve, recall vs SNR, vs morphology and vs seeing, galleries
of triplets, one detection.

Input: scores, labels and images (DN, as simulated or read). Output: PNG files written with
matplotlib's Agg backend (no display). Images are shown with a robust asinh stretch so
faint comae and bright stars are both visible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from workers.models.tails_contract import CHANNELS

DPI = 100


def stretch(image: np.ndarray) -> np.ndarray:
    """asinh of the image in units of its robust noise, around its median; NaN -> 0."""
    finite = image[np.isfinite(image)]
    if not finite.size:
        return np.zeros_like(image)
    median = float(np.median(finite))
    noise = 1.4826 * float(np.median(np.abs(finite - median))) or 1.0
    return np.arcsinh(np.nan_to_num((image - median) / (3.0 * noise)))


def roc(fpr: np.ndarray, tpr: np.ndarray, marks: dict[str, tuple[float, float]], out: Path) -> None:
    """ROC curve with log-scaled false-positive rate; `marks` label operating points."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    floor = 1.0 / max(len(fpr), 1)
    ax.plot(np.maximum(fpr, floor * 0.5), tpr, color="tab:blue")
    for label, (x, y) in marks.items():
        ax.plot([max(x, floor * 0.5)], [y], "o", label=f"{label}: recall {y:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("false-positive rate (negatives scored >= threshold)")
    ax.set_ylabel("recall (comets scored >= threshold)")
    ax.set_title("Tails on the held-out simulated set")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, out)


def recall_vs_snr(
    bins: Sequence[float], curves: Mapping[str, Sequence[float]], counts: Sequence[int], out: Path
) -> None:
    """Recall per SNR bin for each operating point, with the number of comets per bin."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    centres = np.sqrt(np.asarray(bins[:-1]) * np.asarray(bins[1:]))
    for label, recall in curves.items():
        ax.plot(centres, recall, "o-", label=label)
    for centre, count in zip(centres, counts, strict=True):
        ax.annotate(str(count), (centre, 0.02), ha="center", fontsize=7, color="gray")
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("comet SNR (matched filter, difference image)")
    ax.set_ylabel("recall")
    ax.set_title("Recall vs SNR (gray: comets per bin)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, out)


def recall_by_morphology(tables: Mapping[str, Mapping[str, Mapping[str, Any]]], out: Path) -> None:
    """One bar chart per morphology label (tail length, coma radius): recall per bin, with
    the number of comets on each bar."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.8), squeeze=False)
    for ax, (name, rows) in zip(axes[0], tables.items(), strict=True):
        labels = list(rows)
        recall = [rows[label]["recall"] or 0.0 for label in labels]
        bars = ax.bar(labels, recall, color="tab:blue")
        for bar, label in zip(bars, labels, strict=True):
            ax.annotate(str(rows[label]["comets"]), (bar.get_x() + bar.get_width() / 2, 0.02),
                        ha="center", fontsize=7, color="white")  # fmt: skip
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel(name.replace("_", " "))
        ax.set_ylabel("recall")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Recall of SNR >= 10 comets at 0.1% FPR, by morphology (white: comets)")
    _save(fig, out)


def by_seeing(rows: Sequence[Mapping[str, Any]], out: Path) -> None:
    """Per seeing bin: recall of SNR >= 10 comets and the share of look-alikes (point
    sources, asteroids) called comets, at the 0.1% FPR threshold: two panels, one scale each."""
    labels = [f"{low:g}-{high:g}" for low, high in (row["fwhm_px"] for row in rows)]
    recall = [row["recall"] or 0.0 for row in rows]
    taken = [row["look_alikes_detected"] / max(row["look_alikes"], 1) for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.8))
    left.bar(labels, recall, color="tab:blue")
    left.set_ylim(0.0, 1.05)
    left.set_ylabel("recall, SNR >= 10 comets")
    right.bar(labels, [100 * share for share in taken], color="tab:red")
    right.set_ylabel("look-alikes called comets (%)")
    for ax in (left, right):
        ax.set_xlabel("seeing FWHM (px)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    for bar, row in zip(right.patches, rows, strict=True):
        right.annotate(f"{row['look_alikes_detected']}/{row['look_alikes']}",
                       (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                       ha="center", va="bottom", fontsize=7)  # fmt: skip
    fig.suptitle("At the 0.1% FPR threshold, by seeing")
    _save(fig, out)


def gallery(
    images: np.ndarray,
    captions: Sequence[str],
    truth: np.ndarray | None,
    predicted: np.ndarray | None,
    title: str,
    out: Path,
) -> None:
    """One row per triplet; + marks the true position (truth), x the predicted one."""
    rows = len(images)
    if rows == 0:
        return
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows + 0.4), squeeze=False)
    for row in range(rows):
        for channel in range(3):
            ax: Any = axes[row][channel]
            ax.imshow(stretch(images[row, :, :, channel]), origin="lower", cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if truth is not None and np.all(np.isfinite(truth[row])):
                ax.plot(*truth[row], "o", mfc="none", color="lime", ms=14, mew=1.0)
            if predicted is not None:
                ax.plot(*predicted[row], "x", color="red", ms=9, mew=1.5)
            if row == 0:
                ax.set_title(CHANNELS[channel], fontsize=9)
        axes[row][0].set_ylabel(captions[row], fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, out)


def detection(triplet: np.ndarray, position: tuple[float, float], caption: str, out: Path) -> None:
    """One frame-mode detection: its box triplet with the detected position marked."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    for channel, ax in enumerate(axes):
        ax.imshow(stretch(triplet[:, :, channel]), origin="lower", cmap="gray")
        ax.plot(*position, "o", mfc="none", color="red", ms=18, mew=1.2)
        ax.set_title(CHANNELS[channel], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(caption, fontsize=9)
    _save(fig, out)


def _save(fig: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
