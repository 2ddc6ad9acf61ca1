"""Image-only classifiers (braai d6_m9 / d6_m7, an LSST reliability ONNX): triplet -> score.

Input: the batch's triplets built with the entry's preprocessing recipe (size, L2 or
row-wise normalisation). Output: one Annotation per alert, or a ModelSkip when the alert's
stamps do not fit the model's input size.
"""

from __future__ import annotations

from workers.models.base import BatchContext, OnnxModel, Outcome


class TripletModel(OnnxModel):
    def run(self, context: BatchContext) -> list[Outcome]:
        triplets, errors = context.triplets(self.recipe)
        if not len(triplets):
            return []
        outputs = self.infer({self.spec.inputs[0].name: triplets})
        return self.annotations(outputs, errors)


MODEL = TripletModel
