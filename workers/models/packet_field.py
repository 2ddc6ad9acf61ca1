"""Scores the survey already computed, carried as annotations (ZTF `drb`, LSST `reliability`).

Input: the candidate field named by the entry's options.field; the version from the
candidate field named by options.version_field (ZTF `drbversion`, Rubin 11.1+
`reliabilityVersion`), else the entry's version, unless options.version_fallback is false:
then None, for a score whose model the packet does not name (never the schema version,
which the stored alert records beside it). Output: an Annotation, or ModelSkip when absent.
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
        self.fallback = spec.version if spec.options.get("version_fallback", True) else None

    def run(self, context: BatchContext) -> list[Outcome]:
        return [self._carry(item) for item in context.items]

    def _carry(self, item: ScoringInput) -> Outcome:
        value: Any = item.candidate.get(self.field)
        if value is None or not math.isfinite(float(value)):
            return ModelSkip(self.name, f"packet has no {self.field}")
        return Annotation(self.name, self._version(item), float(value))

    def _version(self, item: ScoringInput) -> str | None:
        if self.version_field and item.candidate.get(self.version_field):
            return str(item.candidate[self.version_field])
        return self.fallback


MODEL = PacketField
