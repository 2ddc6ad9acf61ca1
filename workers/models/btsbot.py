"""BTSbot v1.0.1: triplet + 25 metadata columns -> bright-transient probability.

Input: the batch's L2 triplets, the candidate/history features (workers/features.py) and
`new_drb`: the braai d6_m9 score computed earlier in the batch (models.btsbot_drb="braai")
or the packet's drb ("packet"). Output: one Annotation or ModelSkip per alert.
"""

from __future__ import annotations

import numpy as np

from workers import features
from workers.models.base import BatchContext, OnnxModel, Outcome


class BTSbot(OnnxModel):
    def drb_model(self) -> str | None:
        """The model whose score feeds new_drb, or None when the packet's drb is used."""
        if self.settings.btsbot_drb == "packet":
            return None
        return str(self.spec.options.get("drb_model", "braai"))

    def requires(self) -> tuple[str, ...]:
        drb_model = self.drb_model()
        return () if drb_model is None else (drb_model,)

    def run(self, context: BatchContext) -> list[Outcome]:
        triplets, errors = context.triplets(self.recipe)
        metadata = np.zeros((len(context.items), len(features.BTSBOT_COLUMNS)), np.float32)
        reasons = list(errors)
        for row, item in enumerate(context.items):
            if reasons[row] is not None:
                continue
            try:
                new_drb = self._new_drb(context, row)
                metadata[row] = features.btsbot_features(item, new_drb)
            except features.MissingFeature as exc:
                reasons[row] = str(exc)
        if not len(triplets):
            return []
        triplet_input, metadata_input = (tensor.name for tensor in self.spec.inputs)
        outputs = self.infer({triplet_input: triplets, metadata_input: metadata})
        return self.annotations(outputs, reasons)

    def _new_drb(self, context: BatchContext, row: int) -> float:
        drb_model = self.drb_model()
        if drb_model is None:
            value = context.items[row].candidate.get("drb")
            if value is None:
                raise features.MissingFeature("drb (models.btsbot_drb=packet)")
            return float(value)
        score = context.scores.get(drb_model, [None] * len(context.items))[row]
        if score is None:
            raise features.MissingFeature(f"new_drb (no {drb_model} score)")
        return score


MODEL = BTSbot
