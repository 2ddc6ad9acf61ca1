"""The published models after conversion, against their published numbers (MODELS.md)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker.records import ScoringInput
from broker.settings import ModelSettings
from workers.annotate import Annotator
from workers.models import load_model
from workers.models.base import OnnxModel
from workers.models.manifest import read_manifest
from workers.models.registry import load_registry

REGISTRY = Path(__file__).resolve().parents[2] / "config" / "models.yaml"
ACAI = ("acai_h", "acai_v", "acai_o", "acai_n", "acai_b")
# Sample alerts whose packet drb d6_m7 does not reproduce. 472263571115115000 is ZTF's
# schema-3.3 sample built from an alert of 2018-04-12 (jd 2458226.76), before d6_m7 ran in
# production: its drb (0.98764) matches no preprocessing of its stamps (row-wise or whole
# L2, flips, transpose give 0.9536-0.99996), so it was not computed from these stamps.
DRB_OUTLIERS = frozenset({472263571115115000})


@pytest.fixture(scope="module")
def example(reference: Path) -> tuple[np.ndarray, list[dict[str, str]]]:
    folder = reference / "models" / "btsbot"
    triplets = np.load(folder / "usage_triplets.npy").astype(np.float32)
    with (folder / "usage_candidates.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return triplets, rows


def loaded(name: str, settings: ModelSettings) -> OnnxModel:
    model = load_model(load_registry(REGISTRY).get(name), settings)
    assert isinstance(model, OnnxModel), f"{name} is not installed"
    return model


def column(rows: list[dict[str, str]], name: str) -> np.ndarray:
    return np.asarray([float(row[name]) for row in rows], dtype=np.float64)


def table(rows: list[dict[str, str]], names: tuple[str, ...]) -> np.ndarray:
    return np.stack([column(rows, name) for name in names], axis=1).astype(np.float32)


def test_every_conversion_is_recorded_and_close(
    converted_models: Path, model_settings: ModelSettings
) -> None:
    registry = load_registry(REGISTRY)
    for name in ("braai", "braai_d6_m7", "btsbot", *ACAI):
        manifest = read_manifest(converted_models, registry.get(name))
        assert manifest is not None
        assert manifest.source_sha256 == registry.get(name).source.sha256  # type: ignore[union-attr]
        assert manifest.max_abs_diff is not None and manifest.max_abs_diff < 1e-5
        assert "worked-example" in manifest.probe and manifest.opset == 17


def test_btsbot_reproduces_the_worked_example(
    model_settings: ModelSettings, example: tuple[np.ndarray, list[dict[str, str]]]
) -> None:
    triplets, rows = example
    model = loaded("btsbot", model_settings)
    metadata = table(rows, model.spec.inputs[1].columns)
    scores = model.infer({"triplet": triplets, "metadata": metadata})[:, 0]
    differences = np.abs(scores - column(rows, "expected_scores"))
    assert np.median(differences) < 1e-6
    assert differences.max() < 1e-5


def test_braai_d6_m9_reproduces_new_drb(
    model_settings: ModelSettings, example: tuple[np.ndarray, list[dict[str, str]]]
) -> None:
    triplets, rows = example
    scores = loaded("braai", model_settings).infer({"triplet": triplets})[:, 0]
    assert np.max(np.abs(scores - column(rows, "new_drb"))) < 1e-5


@pytest.mark.parametrize("name", ACAI)
def test_acai_reproduces_its_column(
    name: str, model_settings: ModelSettings, example: tuple[np.ndarray, list[dict[str, str]]]
) -> None:
    triplets, rows = example
    model = loaded(name, model_settings)
    features = table(rows, model.spec.inputs[0].columns)
    scores = model.infer({"features": features, "triplets": triplets})[:, 0]
    assert np.max(np.abs(scores - column(rows, name))) < 1e-5


def test_braai_d6_m7_with_row_normalisation_reproduces_packet_drb(
    model_settings: ModelSettings,
    ztf_samples: list[tuple[Path, dict[str, Any], ScoringInput]],
) -> None:
    settings = model_settings.model_copy(update={"enabled": ["braai_d6_m7"]})
    with_drb = [(p, i) for p, _, i in ztf_samples if i.candidate.get("drb") is not None]
    assert len(with_drb) >= 15
    results = Annotator.from_settings(settings).annotate([item for _, item in with_drb])
    checked = 0
    for (path, item), result in zip(with_drb, results, strict=True):
        if item.candid in DRB_OUTLIERS:
            continue
        assert result.rejected is None, path.name
        (annotation,) = result.annotations
        assert annotation.score == pytest.approx(item.candidate["drb"], abs=1e-5), path.name
        checked += 1
    assert checked == len(with_drb) - len(DRB_OUTLIERS)
