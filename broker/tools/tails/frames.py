"""Frame mode: a whole CCD quadrant -> 256 px boxes (20 px overlap) -> merged comet detections.

Input: a `Frame` (science, reference on the science grid, difference, science WCS) and a
Tails-contract detector. Output: `Detection`s (score, quadrant pixel x/y, ra/dec through the
WCS), written as a CSV plus one PNG of each detection's triplet.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from broker.tools.tails import plots
from broker.tools.tails.detector import Detector
from broker.tools.tails.images import Frame
from workers.models.tails_contract import BOX, OVERLAP, PRODUCTION_THRESHOLD, preprocess

log = logging.getLogger(__name__)

BATCH = 32  # boxes per inference call (~100 MB of inputs)
MERGE_RADIUS = 24.0  # pixels: one comet seen in overlapping boxes
CROP = 128  # side of the PNG cutout around a detection
COLUMNS = ("frame", "score", "x", "y", "ra", "dec", "box_x0", "box_y0", "png")


@dataclass
class Detection:
    frame: str
    score: float
    x: float  # quadrant column, 0-based pixel centres
    y: float  # quadrant row
    ra: float
    dec: float
    box_x0: int
    box_y0: int
    png: str = ""


def box_starts(length: int, box: int = BOX, overlap: int = OVERLAP) -> list[int]:
    """Box origins along one axis: a step of box - overlap, the last box flush with the edge."""
    if length <= box:
        return [0]
    starts = list(range(0, length - box + 1, box - overlap))
    if starts[-1] + box < length:
        starts.append(length - box)
    return starts


def boxes(frame: Frame) -> Iterator[tuple[np.ndarray, list[tuple[int, int]]]]:
    """Batches of raw (B, 256, 256, 3) boxes and their (x0, y0) origins.

    A quadrant smaller than a box is padded with NaN (the contract turns NaN into the
    channel median).
    """
    height, width = frame.shape
    stack = np.stack([frame.science, frame.reference, frame.difference], axis=-1)
    origins = [(x0, y0) for y0 in box_starts(height) for x0 in box_starts(width)]
    for start in range(0, len(origins), BATCH):
        part = origins[start : start + BATCH]
        batch = np.full((len(part), BOX, BOX, 3), np.nan, dtype=np.float32)
        for row, (x0, y0) in enumerate(part):
            window = stack[y0 : y0 + BOX, x0 : x0 + BOX]
            batch[row, : window.shape[0], : window.shape[1]] = window
        yield batch, part


def detect(
    detector: Detector,
    frame: Frame,
    threshold: float = PRODUCTION_THRESHOLD,
    merge_radius: float = MERGE_RADIUS,
) -> list[Detection]:
    """Every box through the detector; detections above `threshold`, merged, with ra/dec."""
    if not detector.accepts(BOX, BOX):
        raise ValueError(
            f"frame mode needs a model taking {BOX}x{BOX} boxes; {detector.path} "
            f"takes {detector.fixed_size}"
        )
    found: list[Detection] = []
    discarded = total = 0
    for batch, origins in boxes(frame):
        inputs, reasons = preprocess(batch)
        outputs = detector.predict(inputs)
        total += len(origins)
        for (x0, y0), row, reason in zip(origins, outputs, reasons, strict=True):
            if reason is not None:
                discarded += 1
                log.debug("frame %s box (%d, %d) discarded: %s", frame.name, x0, y0, reason)
            elif row[0] >= threshold:
                x, y = x0 + row[1] * BOX, y0 + row[2] * BOX
                found.append(Detection(frame.name, float(row[0]), x, y, math.nan, math.nan, x0, y0))
    merged = merge(found, merge_radius)
    _add_sky(merged, frame)
    log.info(
        "frame %s: %d boxes (%d discarded by the contract), %d raw detections, %d after merging",
        frame.name,
        total,
        discarded,
        len(found),
        len(merged),
    )
    return merged


def merge(detections: Sequence[Detection], radius: float = MERGE_RADIUS) -> list[Detection]:
    """Greedy: keep the best-scoring detection, drop others within `radius` pixels of it."""
    kept: list[Detection] = []
    for candidate in sorted(detections, key=lambda d: -d.score):
        if all(math.hypot(candidate.x - k.x, candidate.y - k.y) > radius for k in kept):
            kept.append(candidate)
    return kept


def _add_sky(detections: list[Detection], frame: Frame) -> None:
    if not detections:
        return
    if frame.wcs is None:
        log.warning("frame %s has no celestial WCS: detections get no ra/dec", frame.name)
        return
    pixels = np.array([[d.x, d.y] for d in detections])
    sky = frame.wcs.all_pix2world(pixels, 0)
    for detection, (ra, dec) in zip(detections, sky, strict=True):
        detection.ra, detection.dec = float(ra), float(dec)


def write(detections: Sequence[Detection], frame: Frame, out: Path) -> Path:
    """out/<frame>_detNN.png for each detection and out/<frame>_detections.csv."""
    out.mkdir(parents=True, exist_ok=True)
    for number, detection in enumerate(detections):
        png = out / f"{frame.name}_det{number:02d}.png"
        crop, position = _crop(frame, detection.x, detection.y)
        caption = (
            f"{frame.name} #{number}: p={detection.score:.3f} at x={detection.x:.1f}, "
            f"y={detection.y:.1f} (ra {detection.ra:.5f}, dec {detection.dec:.5f})"
        )
        plots.detection(crop, position, caption, png)
        detection.png = png.name
    path = out / f"{frame.name}_detections.csv"
    write_csv(detections, path)
    return path


def write_csv(detections: Sequence[Detection], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for detection in detections:
            writer.writerow(asdict(detection))


def _crop(frame: Frame, x: float, y: float) -> tuple[np.ndarray, tuple[float, float]]:
    """A CROP x CROP triplet around (x, y), clipped at the quadrant edges."""
    height, width = frame.shape
    x0 = int(min(max(round(x) - CROP // 2, 0), max(width - CROP, 0)))
    y0 = int(min(max(round(y) - CROP // 2, 0), max(height - CROP, 0)))
    window = (slice(y0, y0 + CROP), slice(x0, x0 + CROP))
    stack = np.stack([frame.science[window], frame.reference[window], frame.difference[window]], -1)
    return stack, (x - x0, y - y0)
