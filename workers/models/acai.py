"""ACAI d1_dnn_20201130 (h, v, o, n, b): 25 candidate features + triplet -> class probability.

Input: the packet's candidate fields in ACAI's published order (its `drb` is the packet's)
and the batch's L2 triplets. Output: one Annotation or ModelSkip (missing field) per alert.
"""

from __future__ import annotations

import numpy as np

from workers import features
from workers.models.base import BatchContext, OnnxModel, Outcome


class ACAI(OnnxModel):
    def run(self, context: BatchContext) -> list[Outcome]:
        triplets, errors = context.triplets(self.recipe)
        table = np.zeros((len(context.items), len(features.ACAI_COLUMNS)), np.float32)
        reasons = list(errors)
        for row, item in enumerate(context.items):
            try:
                table[row] = features.acai_features(item)
            except features.MissingFeature as exc:
                reasons[row] = reasons[row] or str(exc)
        if not len(triplets):
            return []
        features_input, triplet_input = (tensor.name for tensor in self.spec.inputs)
        outputs = self.infer({features_input: table, triplet_input: triplets})
        return self.annotations(outputs, reasons)


MODEL = ACAI
