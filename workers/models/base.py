"""What every worker model shares: the batch context it reads and the ONNX plumbing.

Input: the alerts of one survey in a batch with their decoded stamps (`BatchContext`).
Output: one `Annotation` or `ModelSkip` per alert. Triplets are computed once per recipe
per batch and shared; earlier models' scores are visible to later ones (BTSbot's new_drb).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from broker.errors import ConfigError
from broker.records import Annotation, ModelSkip, ScoringInput
from broker.settings import ModelSettings
from workers import preprocess
from workers.cutouts import Stamps
from workers.models.manifest import Manifest, onnx_path, read_manifest, sha256_file
from workers.models.registry import ModelSpec
from workers.runtime import open_session

log = logging.getLogger(__name__)

Outcome = Annotation | ModelSkip


@dataclass
class BatchContext:
    """The usable alerts of one survey in one batch, and what models computed so far."""

    items: Sequence[ScoringInput]
    stamps: Sequence[Stamps]
    # name -> per-alert score (None where that model produced none), in items order.
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    _triplets: dict[preprocess.Recipe, tuple[np.ndarray, list[str | None]]] = field(
        default_factory=dict
    )

    def triplets(self, recipe: preprocess.Recipe) -> tuple[np.ndarray, list[str | None]]:
        """(N, H, W, 3) inputs, and per alert None or why it has no triplet (e.g. too big)."""
        if recipe not in self._triplets:
            rows: list[np.ndarray] = []
            errors: list[str | None] = []
            blank = np.zeros((*recipe.size, 3), dtype=np.float32)
            for stamps in self.stamps:
                try:
                    rows.append(preprocess.triplet(stamps, recipe))
                    errors.append(None)
                except ValueError as exc:
                    rows.append(blank)
                    errors.append(str(exc))
            shape = (0, *recipe.size, 3)
            array = np.stack(rows) if rows else np.zeros(shape, dtype=np.float32)
            self._triplets[recipe] = (array, errors)
        return self._triplets[recipe]


class Model(ABC):
    """One registry entry ready to score batches."""

    # False for models that read only the packet: they also score alerts whose stamps
    # cannot be scored (their BatchContext then has no stamps).
    needs_stamps = True

    def __init__(self, spec: ModelSpec, settings: ModelSettings) -> None:
        self.spec = spec
        self.settings = settings

    @classmethod
    def load(cls, spec: ModelSpec, settings: ModelSettings) -> Model | None:
        """The entry's model ready to run, or None when its files are not installed."""
        return cls(spec, settings)

    @property
    def name(self) -> str:
        return self.spec.name

    def requires(self) -> tuple[str, ...]:
        """Models whose scores this one reads from the context (run before it)."""
        return ()

    @abstractmethod
    def run(self, context: BatchContext) -> list[Outcome]:
        """One outcome per `context.items`, in order."""

    def describe(self) -> dict[str, Any]:
        return {"version": self.spec.version, "survey": self.spec.survey, "kind": self.spec.kind}


class OnnxModel(Model):
    """A model installed by `nightjar models fetch`: verified .onnx on ONNX Runtime."""

    def __init__(self, spec: ModelSpec, settings: ModelSettings, manifest: Manifest) -> None:
        super().__init__(spec, settings)
        path = onnx_path(settings.dir, spec)
        actual = sha256_file(path)
        if actual != manifest.onnx_sha256:
            raise ConfigError(
                f"model {spec.name}: {path} has sha256 {actual}, its manifest says "
                f"{manifest.onnx_sha256}; reinstall with `nightjar models fetch {spec.name}`"
            )
        self.manifest = manifest
        self.session = open_session(spec.name, path, settings)
        self.recipe = preprocess.Recipe(
            normalise=spec.preprocessing.normalise,
            size=spec.preprocessing.size,
            pad_value=spec.preprocessing.pad_value,
        )
        self._check_inputs()

    @classmethod
    def load(cls, spec: ModelSpec, settings: ModelSettings) -> Model | None:
        """The installed model, or None when it is not installed in settings.dir."""
        manifest = read_manifest(settings.dir, spec)
        return None if manifest is None else cls(spec, settings, manifest)

    def _check_inputs(self) -> None:
        have = [node.name for node in self.session.get_inputs()]
        want = [tensor.name for tensor in self.spec.inputs]
        if sorted(have) != sorted(want):
            raise ConfigError(
                f"model {self.name}: the ONNX file has inputs {have}, the registry says {want}"
            )

    def slices(self, feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The feeds cut into runs of `models.inference_batch` alerts (see ModelSettings)."""
        count = len(next(iter(feeds.values())))
        step = self.settings.inference_batch
        return [
            {k: v[start : start + step] for k, v in feeds.items()}
            for start in range(0, count, step)
        ]

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """(N, len(outputs)) float32 from the first output tensor, run slice by slice."""
        parts = [
            np.asarray(self.session.run(None, part)[0], dtype=np.float32)
            for part in self.slices(feeds)
        ]
        return np.concatenate(parts).reshape(len(next(iter(feeds.values()))), -1)

    def annotations(self, outputs: np.ndarray, errors: Sequence[str | None]) -> list[Outcome]:
        """Rows -> Annotation (column 0 = score, the rest named by spec.outputs), or skips."""
        names = self.spec.outputs
        result: list[Outcome] = []
        for row, error in zip(outputs, errors, strict=True):
            if error is not None:
                result.append(ModelSkip(self.name, error))
            elif not np.isfinite(row[0]):
                result.append(ModelSkip(self.name, "non-finite score"))
            else:
                extra = {names[i]: float(row[i]) for i in range(1, min(len(names), len(row)))}
                result.append(Annotation(self.name, self.spec.version, float(row[0]), extra))
        return result

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "provider": self.session.get_providers()[0],
            "onnx_sha256": self.manifest.onnx_sha256,
            "max_abs_diff": self.manifest.max_abs_diff,
        }
