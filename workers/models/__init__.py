"""Worker models: one module per registry `kind`, each exposing `MODEL` (a `base.Model`).

A new model with an existing input contract is a config/models.yaml entry only; a new
contract adds one module here named after its kind.
"""

from __future__ import annotations

import importlib

from broker.errors import ConfigError
from broker.settings import ModelSettings
from workers.models.base import Model
from workers.models.registry import ModelSpec


def load_model(spec: ModelSpec, settings: ModelSettings) -> Model | None:
    """The entry's model ready to run, or None when its files are not installed."""
    try:
        module = importlib.import_module(f"workers.models.{spec.kind}")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"model {spec.name}: no worker module workers/models/{spec.kind}.py for kind "
            f"{spec.kind!r}"
        ) from exc
    model: Model | None = module.MODEL.load(spec, settings)
    return model
