"""Worker stage: a batch of `ScoringInput` -> one `AlertResult` per alert, same order.

Stamps are decoded and validated once per alert and shared by every model; an alert whose
stamps cannot be scored is never rejected: its image models are skipped with the reason
(BTSbot's make_triplet drops such stamps too) and the models that read only the packet
still run. Models run batched per survey, in dependency order; a model that raises loses
its scores for that batch only. Pure: no Kafka/Mongo/HTTP.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from broker.errors import ConfigError
from broker.records import AlertResult, Annotation, ModelSkip, ScoringInput
from broker.settings import ModelSettings
from workers.cutouts import BadStamp, Stamps, read_stamps
from workers.models import load_model
from workers.models.base import BatchContext, Model, Outcome
from workers.models.registry import Registry, load_registry
from workers.runtime import MODEL_FAILURES, MODEL_LOADS

log = logging.getLogger(__name__)

# --mirror DIR: take the files from a local folder (air-gapped sites).
FETCH_HINT = "nightjar models fetch [--mirror DIR]"


class Annotator:
    """Every loaded model of this worker process, ready to annotate batches."""

    def __init__(self, models: Sequence[Model], settings: ModelSettings | None = None) -> None:
        self.settings = settings or ModelSettings()
        self.models = _dependency_order(models)

    @classmethod
    def from_settings(cls, models: ModelSettings) -> Annotator:
        """Load every installed (or every enabled) model once; warn once about missing ones."""
        registry = load_registry(models.registry)
        loaded, missing = _load_all(registry, models)
        if models.enabled and missing:
            raise ConfigError(
                f"models.enabled lists {', '.join(missing)} but they are not installed in "
                f"{models.dir}; run: {FETCH_HINT} {' '.join(missing)}"
            )
        loaded, unmet = _drop_unmet(loaded)
        if models.enabled and unmet:
            raise ConfigError(f"models.enabled: {'; '.join(unmet)} (enable it too)")
        expected = [name for name in missing if registry.models[name].fetch_default]
        if expected or unmet:
            log.warning(
                "models not installed in %s: %s%s; alerts get no scores from them. Install: %s",
                models.dir,
                ", ".join(expected) or "none",
                "".join(f"; {text}" for text in unmet),
                FETCH_HINT,
            )
        return cls(loaded, models)

    def annotate(self, batch: Sequence[ScoringInput]) -> list[AlertResult]:
        started = time.perf_counter()
        stamps: list[Stamps | None] = []
        unusable: list[str] = []  # why each alert's stamps cannot be scored ("" if they can)
        for item in batch:
            try:
                stamps.append(read_stamps(item.cutouts))
                unusable.append("")
            except BadStamp as exc:
                stamps.append(None)
                unusable.append(f"{exc.reason}: {exc.detail}")
                log.debug("candid %s: image models skipped, %s", item.candid, exc)
        outcomes = self._score(batch, stamps, unusable)
        results = [_result(item, outcomes.get(index, [])) for index, item in enumerate(batch)]
        log.debug(
            "annotated %d alerts in %.3f s (%d with stamps that cannot be scored)",
            len(batch),
            time.perf_counter() - started,
            sum(bool(reason) for reason in unusable),
        )
        return results

    def _score(
        self, batch: Sequence[ScoringInput], stamps: Sequence[Stamps | None], unusable: list[str]
    ) -> dict[int, list[Outcome]]:
        """Outcomes per batch index, survey by survey; alerts whose stamps cannot be scored
        get a skip from each image model and the scores of the models that need no stamps."""
        groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
        for index, item in enumerate(batch):
            groups[(item.survey, stamps[index] is not None)].append(index)
        outcomes: dict[int, list[Outcome]] = defaultdict(list)
        for (survey, scoreable), indices in groups.items():
            context = BatchContext(
                items=[batch[i] for i in indices],
                stamps=[s for s in (stamps[i] for i in indices) if s is not None],
            )
            for model in self.models:
                # A model of another survey simply does not apply: no skip recorded.
                if model.spec.survey != survey:
                    continue
                if scoreable or not model.needs_stamps:
                    results = self._run(model, context)
                else:
                    results = [ModelSkip(model.name, unusable[i]) for i in indices]
                for index, outcome in zip(indices, results, strict=True):
                    outcomes[index].append(outcome)
        return outcomes

    def _run(self, model: Model, context: BatchContext) -> list[Outcome]:
        """The model's outcomes; on failure a skip per alert, one warning, one metric."""
        count = len(context.items)
        try:
            result = model.run(context)
            if len(result) != count:
                raise RuntimeError(f"returned {len(result)} outcomes for {count} alerts")
        except Exception as exc:  # one model must never stop the others or the batch
            reason = type(exc).__name__
            log.warning(
                "model %s failed on a batch of %d alerts (%s: %s); those alerts have no %s "
                "score, other models are unaffected",
                model.name,
                count,
                reason,
                exc,
                model.name,
            )
            MODEL_FAILURES.labels(model=model.name, reason=reason).inc()
            result = [ModelSkip(model.name, f"model error: {reason}") for _ in range(count)]
        context.scores[model.name] = [
            outcome.score if isinstance(outcome, Annotation) else None for outcome in result
        ]
        return result

    def describe(self) -> dict[str, Any]:
        return {
            "provider_setting": self.settings.provider,
            "intra_op_threads": self.settings.intra_op_threads,
            "btsbot_drb": self.settings.btsbot_drb,
            "models": {model.name: model.describe() for model in self.models},
        }


def _load_all(registry: Registry, settings: ModelSettings) -> tuple[list[Model], list[str]]:
    loaded: list[Model] = []
    missing: list[str] = []
    for name in settings.enabled or registry.names():
        spec = registry.get(name)
        try:
            model = load_model(spec, settings)
        except ConfigError:
            MODEL_LOADS.labels(model=name, status="failed").inc()
            raise
        if model is None:
            MODEL_LOADS.labels(model=name, status="missing").inc()
            missing.append(name)
        else:
            MODEL_LOADS.labels(model=name, status="ok").inc()
            loaded.append(model)
    return loaded, missing


def _drop_unmet(models: list[Model]) -> tuple[list[Model], list[str]]:
    """Drop models whose required models are not loaded; say why for the warning."""
    kept = list(models)
    unmet: list[str] = []
    changed = True
    while changed:
        names = {model.name for model in kept}
        blocked = [m for m in kept if any(dep not in names for dep in m.requires())]
        changed = bool(blocked)
        for model in blocked:
            kept.remove(model)
            needs = ", ".join(model.requires())
            unmet.append(
                f"{model.name} needs {needs}, which is not loaded (for BTSbot: or set "
                "models.btsbot_drb: packet)"
            )
    return kept, unmet


def _dependency_order(models: Sequence[Model]) -> list[Model]:
    """Models sorted so each runs after the models it reads scores from."""
    by_name = {model.name: model for model in models}
    ordered: list[Model] = []
    visiting: set[str] = set()

    def visit(model: Model) -> None:
        if model in ordered:
            return
        if model.name in visiting:
            raise ConfigError(f"model {model.name} depends on itself through {visiting}")
        visiting.add(model.name)
        for dep in model.requires():
            if dep not in by_name:
                raise ConfigError(f"model {model.name} needs model {dep}, which is not loaded")
            visit(by_name[dep])
        visiting.discard(model.name)
        ordered.append(model)

    for model in models:
        visit(model)
    return ordered


def _result(item: ScoringInput, outcomes: Sequence[Outcome]) -> AlertResult:
    return AlertResult(
        candid=item.candid,
        annotations=tuple(o for o in outcomes if isinstance(o, Annotation)),
        skipped=tuple(o for o in outcomes if isinstance(o, ModelSkip)),
    )
