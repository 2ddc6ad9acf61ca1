"""A Tails-contract ONNX model on ONNX Runtime, for evaluation, frame mode and timing.

Input: an .onnx file with one input (N, H, W, 3) and one (N, 3) output [p, x_rel, y_rel]
(Nightjar's detector or the published Tails exported to ONNX). Output: (N, 3) float32 rows
for preprocessed triplets, batched; the input size a fixed-shape model insists on.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np

from broker.errors import ConfigError
from broker.settings import ModelSettings
from workers.models.tails_contract import PRODUCTION_THRESHOLD
from workers.runtime import open_session

Provider = Literal["auto", "cpu", "cuda"]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[3] / "workers" / "models" / "weights"
DEFAULT_MODEL = DEFAULT_WEIGHTS / "tails_default.onnx"


class Detector:
    """One ONNX Runtime session of a Tails-contract model."""

    def __init__(self, path: Path, threads: int = 1, provider: Provider = "cpu") -> None:
        if not path.is_file():
            raise ConfigError(
                f"Tails model {path} does not exist (train one: nightjar tails train)"
            )
        settings = ModelSettings(provider=provider, intra_op_threads=threads)
        self.path = path
        self.session = open_session("tails", path, settings)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ConfigError(
                f"Tails model {path} takes {len(inputs)} inputs; the Tails contract is one "
                "(N, H, W, 3) triplet input"
            )
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4 or shape[3] not in (3, "3"):
            raise ConfigError(f"Tails model {path} takes shape {shape}, not (N, H, W, 3)")
        self.fixed_size = tuple(s if isinstance(s, int) else None for s in shape[1:3])
        self.output_width = outputs[0].shape[-1] if outputs else None

    def accepts(self, height: int, width: int) -> bool:
        """Whether the model takes (height, width) inputs (dynamic axes take anything)."""
        want_h, want_w = self.fixed_size
        return want_h in (None, height) and want_w in (None, width)

    def predict(self, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N, 3) float32 [p_comet, x_rel, y_rel] for preprocessed (N, H, W, 3) inputs."""
        if not self.accepts(inputs.shape[1], inputs.shape[2]):
            raise ConfigError(
                f"Tails model {self.path} takes {self.fixed_size} inputs, not {inputs.shape[1:3]}"
            )
        rows = []
        for start in range(0, len(inputs), batch):
            part = np.ascontiguousarray(inputs[start : start + batch], dtype=np.float32)
            output = np.asarray(self.session.run(None, {self.input_name: part})[0], np.float32)
            rows.append(output.reshape(len(part), -1))
        if not rows:
            return np.zeros((0, 3), dtype=np.float32)
        result = np.concatenate(rows)
        if result.shape[1] < 3:
            raise ConfigError(
                f"Tails model {self.path} returns {result.shape[1]} columns; the contract is 3 "
                "(p_comet, x_rel, y_rel)"
            )
        return result[:, :3]


def frame_threshold(model: Path) -> tuple[float, str]:
    """The threshold for 256 px boxes: the model card's FPR 0.1% point on boxes when it has
    one (<model>.json, from `tails evaluate --card`), else the published Tails 0.7."""
    card = model.with_suffix(".json")
    try:
        evaluation = json.loads(card.read_text())["evaluation"]["256px"]
        threshold = float(evaluation["operating_points"]["fpr_0.001"]["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        return PRODUCTION_THRESHOLD, "the published Tails production threshold"
    return threshold, f"the false-positive rate 0.1% point on boxes in {card.name}"


def milliseconds_per_example(
    detector: Detector, inputs: np.ndarray, batch: int = 256, repeats: int = 3
) -> float:
    """Best-of-`repeats` wall time per example of `predict` (after one warm-up batch)."""
    detector.predict(inputs[:batch], batch)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        detector.predict(inputs, batch)
        best = min(best, time.perf_counter() - started)
    return 1000.0 * best / max(len(inputs), 1)
