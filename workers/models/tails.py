"""Tails per-alert stage: each alert's triplet -> comet score and where the comet is.

Input: the batch's decoded stamps [science, template, difference], preprocessed per the Tails
contract (broker/tails/contract.py: NaN -> median, difference < -100 -> 0, L2 per channel),
padded bottom/right with 0 to the model's input size. Output: Annotation `tails` with extra
{x, y} (pixels in the stamp) and {ra, dec} (approximate), or a ModelSkip with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from broker.errors import ConfigError
from broker.records import Annotation, ModelSkip, ScoringInput
from broker.settings import ModelSettings
from workers.cutouts import Stamps
from workers.models.base import BatchContext, OnnxModel, Outcome
from workers.models.manifest import Manifest
from workers.models.registry import ModelSpec
from workers.models.tails_contract import STAMP, ZTF_PIXEL_SCALE, offset_to_sky, preprocess
from workers.models.tails_contract import to_pixels as rel_to_pixels


class Tails(OnnxModel):
    def __init__(self, spec: ModelSpec, settings: ModelSettings, manifest: Manifest) -> None:
        super().__init__(spec, settings, manifest)
        shape = spec.inputs[0].shape
        if len(spec.inputs) != 1 or len(shape) != 3 or shape[2] != 3:
            raise ConfigError(
                f"model {spec.name}: kind tails takes one input of shape [H, W, 3] (the Tails "
                f"contract), the registry lists {[list(t.shape) for t in spec.inputs]}"
            )
        self.size = (int(shape[0]), int(shape[1]))
        # Arcsec per stamp pixel for the sky position; ZTF's by default.
        self.pixel_scale = float(spec.options.get("pixel_scale_arcsec", ZTF_PIXEL_SCALE))

    def run(self, context: BatchContext) -> list[Outcome]:
        if not context.items:
            return []
        inputs, reasons = self.inputs(context.stamps)
        outputs = self.infer({self.spec.inputs[0].name: inputs})
        if outputs.shape[1] < 3:
            raise ValueError(f"{outputs.shape[1]} output columns, not [p_comet, x_rel, y_rel]")
        x, y = rel_to_pixels(outputs, *self.size)
        return [
            self._outcome(item, stamps, outputs[row, 0], x[row], y[row], reasons[row])
            for row, (item, stamps) in enumerate(zip(context.items, context.stamps, strict=True))
        ]

    def inputs(self, batch: Sequence[Stamps]) -> tuple[np.ndarray, list[str | None]]:
        """(N, H, W, 3) model inputs and per alert None or why it gets no score."""
        height, width = self.size
        inputs = np.zeros((len(batch), height, width, 3), dtype=np.float32)
        reasons: list[str | None] = [None] * len(batch)
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for row, stamps in enumerate(batch):
            shapes = {stamp.shape for stamp in stamps.as_tuple()}
            shape = next(iter(shapes))
            if len(shapes) != 1:
                reasons[row] = f"stamps differ in shape: {sorted(shapes)}"
            elif shape[0] > height or shape[1] > width:
                reasons[row] = f"stamp {shape[0]}x{shape[1]} is larger than the model input"
            else:
                by_shape[shape].append(row)
        for (rows_in, cols_in), rows in by_shape.items():
            raw = np.stack([np.stack(batch[row].as_tuple(), axis=-1) for row in rows])
            normalised, problems = preprocess(raw)
            inputs[rows, :rows_in, :cols_in] = normalised
            for row, problem in zip(rows, problems, strict=True):
                reasons[row] = None if problem is None else f"Tails preprocessing: {problem}"
        return inputs, reasons

    def _outcome(
        self,
        item: ScoringInput,
        stamps: Stamps,
        score: float,
        x: float,
        y: float,
        reason: str | None,
    ) -> Outcome:
        if reason is not None:
            return ModelSkip(self.name, reason)
        if not np.isfinite(score):
            return ModelSkip(self.name, "non-finite score")
        # Python floats: float32 would cost ~15 mas in dec through offset_to_sky.
        x, y = float(x), float(y)
        extra = {"x": x, "y": y}
        # Only a full stamp is centred on the alert; which edge a cut stamp lost is unknown.
        if stamps.science.shape == (STAMP, STAMP):
            centre = (STAMP - 1) / 2.0
            ra, dec = offset_to_sky(item.ra, item.dec, x - centre, y - centre, self.pixel_scale)
            extra.update(ra=ra, dec=dec)
        return Annotation(self.name, self.spec.version, float(score), extra)


MODEL = Tails
