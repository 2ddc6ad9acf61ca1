"""Installed-model manifests: where a converted model lives in the cache and what it is.

Input: `settings.models.dir` and a registry entry. Output: the paths of `model.onnx` and
`manifest.json` (source sha256, ONNX sha256, tool versions, max |ONNX - TF| on the probe).
Written by `nightjar models fetch`, read by the workers before loading a model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from broker.errors import ConfigError
from workers.models.registry import ModelSpec

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    version: str
    source_url: str | None
    source_sha256: str
    onnx_sha256: str
    source_format: str
    opset: int | None = None
    max_abs_diff: float | None = None
    max_abs_diff_limit: float | None = None
    probe: str = ""
    versions: dict[str, str] = {}
    converted_at: str = ""


def install_dir(models_dir: Path, spec: ModelSpec) -> Path:
    return models_dir / spec.name / spec.version


def onnx_path(models_dir: Path, spec: ModelSpec) -> Path:
    return install_dir(models_dir, spec) / ONNX_FILE


def read_manifest(models_dir: Path, spec: ModelSpec) -> Manifest | None:
    """The entry's manifest, or None when the model is not installed."""
    path = install_dir(models_dir, spec) / MANIFEST
    if not path.is_file() or not onnx_path(models_dir, spec).is_file():
        return None
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise ConfigError(
            f"manifest {path} is unreadable ({exc}); reinstall with "
            f"`nightjar models fetch {spec.name}`"
        ) from exc


def write_manifest(models_dir: Path, spec: ModelSpec, data: dict[str, Any]) -> Manifest:
    manifest = Manifest.model_validate(data)
    path = install_dir(models_dir, spec) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest.model_dump(), indent=2) + "\n")
    return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
