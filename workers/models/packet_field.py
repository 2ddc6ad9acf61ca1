"""Scores the survey already computed, carried as annotations (ZTF `drb`, LSST `reliability`).

Input: the candidate field named by the entry's options.field; the version from
options.version_field (ZTF `drbversion`), the alert's schema version (options.version_from:
schema_version) or the entry's version. Output: an Annotation, or ModelSkip when absent.
"""

from __future__ import annotations

import math
from typing import Any

from broker.records import Annotation, ModelSkip, ScoringInput
from broker.settings import ModelSettings
from workers.models.base import BatchContext, Model, Outcome
from workers.models.registry import ModelSpec


class PacketField(Model):
    needs_stamps = False

    def __init__(self, spec: ModelSpec, settings: ModelSettings) -> None:
        super().__init__(spec, settings)
        self.field = str(spec.options["field"])
        self.version_field = spec.options.get("version_field")
        self.version_from = spec.options.get("version_from")

    def run(self, context: BatchContext) -> list[Outcome]:
        return [self._carry(item) for item in context.items]

    def _carry(self, item: ScoringInput) -> Outcome:
        value: Any = item.candidate.get(self.field)
        if value is None or not math.isfinite(float(value)):
            return ModelSkip(self.name, f"packet has no {self.field}")
        return Annotation(self.name, self._version(item), float(value))

    def _version(self, item: ScoringInput) -> str:
        if self.version_field and item.candidate.get(self.version_field):
            return str(item.candidate[self.version_field])
        if self.version_from:
            # ScoringInput gains optional fields over time (e.g. schema_version); read softly.
            value = getattr(item, str(self.version_from), None)
            if value:
                return str(value)
        return self.spec.version


MODEL = PacketField
