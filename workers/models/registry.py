"""The model registry: config/models.yaml -> validated `ModelSpec` entries.

Input: the YAML file named by `settings.models.registry`. Output: `Registry`, one entry
per annotation name with its version, survey, source (URL, sha256, format), input/output
contract, preprocessing recipe and thresholds. Errors name the entry and field.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from broker.errors import ConfigError
from broker.records import Survey

SourceFormat = Literal["keras2_h5", "tf_savedmodel_tar", "onnx"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Example(_Strict):
    """A published worked example used to probe a conversion (file names as in `Source`).

    `table` columns are read by the names in `TensorSpec.columns`; `triplets` holds
    already-preprocessed (N, 63, 63, 3) inputs.
    """

    triplets: str
    table: str | None = None


class Source(_Strict):
    """Where the published weights live and how to turn them into ONNX."""

    format: SourceFormat
    # File name in the download cache and in a --mirror folder (or one sub-folder of it).
    file: str
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    license: str | None = None
    example: Example | None = None


class TensorSpec(_Strict):
    """One model input: its ONNX name and per-alert shape (batch axis excluded).

    `columns` names a tabular input's columns in order (the published feature order);
    the worker adapter checks its own order against it at load.
    """

    name: str
    shape: tuple[int, ...]
    columns: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _columns_fit(self) -> TensorSpec:
        if self.columns and (len(self.shape) != 1 or self.shape[0] != len(self.columns)):
            raise ValueError(f"{len(self.columns)} columns do not fit shape {list(self.shape)}")
        return self


class PreprocessSpec(_Strict):
    """How stamps become the image input (see workers/preprocess.py)."""

    normalise: Literal["l2", "l2_rows"] = "l2"
    size: tuple[int, int] = (63, 63)
    pad_value: float = 1e-9


class ModelSpec(_Strict):
    """One registry entry; the mapping key is the annotation name."""

    name: str
    # The worker adapter that runs the entry: workers/models/<kind>.py.
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: str
    # The model runs only on this survey's alerts (workers.annotate): a model trained on
    # one survey's stamps says nothing about another's.
    survey: Survey
    description: str = ""
    source: Source | None = None
    inputs: tuple[TensorSpec, ...] = ()
    # Names of the output columns: column 0 is the score, the rest go to Annotation.extra.
    outputs: tuple[str, ...] = ("score",)
    preprocessing: PreprocessSpec = PreprocessSpec()
    thresholds: dict[str, float] = Field(default_factory=dict)
    # Fetched by `nightjar models fetch` when no names are given.
    fetch_default: bool = True
    # Kind-specific settings (e.g. packet_field: field, version_field).
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        # find_spec locates the module without importing it (no ONNX Runtime needed here).
        if importlib.util.find_spec(f"workers.models.{kind}") is None:
            raise ValueError(f"no worker adapter workers/models/{kind}.py for kind {kind!r}")
        return kind

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.kind == "packet_field":
            if "field" not in self.options:
                raise ValueError("packet_field entries need options.field")
            return self
        if self.source is None:
            raise ValueError(f"kind {self.kind!r} needs a source (format, file, url, sha256)")
        if not self.inputs:
            raise ValueError("inputs must list the model's ONNX inputs")
        if not self.outputs:
            raise ValueError("outputs must name at least the score column")
        return self

    @property
    def needs_files(self) -> bool:
        return self.source is not None


class Registry(_Strict):
    models: dict[str, ModelSpec]

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise ConfigError(f"unknown model {name!r}; the registry has: {known}") from None

    def names(self) -> list[str]:
        return list(self.models)


def load_registry(path: Path) -> Registry:
    """Read and validate the registry; raise ConfigError naming the bad entry and field."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read model registry {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"model registry {path} is not valid YAML: {exc}") from exc
    entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"model registry {path} must hold a non-empty 'models:' mapping")
    models: dict[str, ModelSpec] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"model registry {path}: entry {name!r} must be a mapping")
        try:
            models[str(name)] = ModelSpec(name=str(name), **entry)
        except ValidationError as exc:
            raise ConfigError(_describe(path, str(name), exc)) from exc
        except TypeError as exc:
            raise ConfigError(f"model registry {path}: entry {name!r}: {exc}") from exc
    return Registry(models=models)


def _describe(path: Path, name: str, exc: ValidationError) -> str:
    lines = [f"model registry {path}: entry {name!r} is invalid:"]
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(entry)"
        lines.append(f"  {name}.{where}: {err['msg']}")
    return "\n".join(lines)
