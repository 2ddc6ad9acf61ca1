"""The demo's picture: top candidates' science/template/difference stamps and light curves.

Input: the top candidates (with their cutout bytes) and each object's stored light curve.
Output: one PNG, a row per candidate: three stamps stretched as on the Fritz-like page
(broker.post.thumbnails) and magnitude against MJD per band, upper limits as open triangles.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from broker.post.photometry import JD_MJD_OFFSET
from broker.post.thumbnails import CutoutKind, orient, read_stamp, stretch
from broker.tools.demo.report import Candidate

log = logging.getLogger(__name__)

STAMPS: tuple[CutoutKind, ...] = ("science", "template", "difference")
# ZTF filter id -> (label, colour) as Fritz draws them.
BANDS = {1: ("g", "#2ca02c"), 2: ("r", "#d62728"), 3: ("i", "#ff7f0e")}


def write_gallery(
    candidates: Sequence[Candidate],
    light_curves: Mapping[str, Sequence[Mapping[str, Any]]],
    path: Path,
    ranked_by: str,
) -> Path:
    """Draw the gallery to `path` (parents created); raises ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, len(candidates))
    figure = Figure(figsize=(13, 2.8 * rows), dpi=100)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(rows, 5, width_ratios=[1, 1, 1, 0.15, 2.4])
    if not candidates:
        axis = figure.add_subplot(grid[0, :])
        axis.axis("off")
        axis.text(0.5, 0.5, f"no ZTF alert has a {ranked_by} score", ha="center", va="center")
    for row, candidate in enumerate(candidates):
        for column, kind in enumerate(STAMPS):
            _draw_stamp(figure.add_subplot(grid[row, column]), candidate, kind, row == 0)
        _draw_light_curve(
            figure.add_subplot(grid[row, 4]),
            candidate,
            light_curves.get(candidate.object_id, ()),
            ranked_by,
        )
    figure.suptitle(f"Nightjar demo: top ZTF candidates by {ranked_by} score", fontsize=13)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    log.info("gallery of %d candidates written to %s", len(candidates), path)
    return path


def _draw_stamp(axis: Any, candidate: Candidate, kind: CutoutKind, title: bool) -> None:
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(kind, fontsize=10)
    if kind == "science":
        axis.set_ylabel(f"{candidate.object_id}\n{candidate.candid}", fontsize=8)
    data = candidate.cutouts.get(kind)
    try:
        if not data:
            raise ValueError("no cutout")
        image = stretch(orient(read_stamp(data)), kind)
    except ValueError as exc:
        axis.text(0.5, 0.5, f"unreadable:\n{exc}"[:60], ha="center", va="center", fontsize=7)
        return
    # Row 0 on top, as the thumbnails on the Fritz-like page.
    axis.imshow(image, cmap="gray", origin="upper", interpolation="nearest", vmin=0, vmax=255)


def _draw_light_curve(
    axis: Any, candidate: Candidate, points: Sequence[Mapping[str, Any]], ranked_by: str
) -> None:
    for fid, (band, colour) in BANDS.items():
        detections = [p for p in points if p.get("fid") == fid and _finite(p.get("magpsf"))]
        limits = [
            p
            for p in points
            if p.get("fid") == fid and not _finite(p.get("magpsf")) and _finite(p.get("diffmaglim"))
        ]
        if detections:
            axis.errorbar(
                [p["jd"] - JD_MJD_OFFSET for p in detections],
                [p["magpsf"] for p in detections],
                yerr=[p.get("sigmapsf") or 0.0 for p in detections],
                fmt="o", color=colour, markersize=4, label=f"ztf{band}",
            )  # fmt: skip
        if limits:
            axis.scatter(
                [p["jd"] - JD_MJD_OFFSET for p in limits],
                [p["diffmaglim"] for p in limits],
                marker="v", facecolors="none", edgecolors=colour, s=18, alpha=0.6,
            )  # fmt: skip
    axis.axvline(candidate.jd - JD_MJD_OFFSET, color="#888", linestyle=":", linewidth=1)
    axis.invert_yaxis()
    axis.set_xlabel("MJD", fontsize=8)
    axis.set_ylabel("mag", fontsize=8)
    axis.tick_params(labelsize=7)
    score = candidate.scores.get(ranked_by)
    mag = "-" if candidate.magpsf is None else f"{candidate.magpsf:.2f}"
    shown = "-" if score is None else f"{score:.3f}"
    axis.set_title(f"{ranked_by} {shown}   magpsf {mag}", fontsize=9)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="best")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and not np.isnan(value)
