"""Shared unit-test fixtures: the ../shared reference data and a converted-model cache.

Tests that need ../shared/reference skip with the reason when it is absent; the model cache
is converted once per session (TensorFlow -> ONNX, about 10 s on 2 cores) into a tmp folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest

from broker.errors import ConfigError
from broker.records import Cutouts, ScoringInput
from broker.settings import ModelSettings
from broker.tools.models.convert import import_tensorflow
from broker.tools.models.fetch import fetch
from workers.models.registry import load_registry

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared" / "reference"
REGISTRY = REPO / "config" / "models.yaml"
# Entries with published weights: everything the reference mirror holds.
CONVERTED = ("braai", "braai_d6_m7", "btsbot", "acai_h", "acai_v", "acai_o", "acai_n", "acai_b")


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "MODELS.md").is_file():
        pytest.skip(f"reference data not found at {REFERENCE} (../shared/reference)")
    return REFERENCE


@pytest.fixture(scope="session")
def converted_models(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding every published model, fetched from the reference mirror."""
    try:
        # First: it sets TF_USE_LEGACY_KERAS=1 before TensorFlow is imported.
        import_tensorflow()
    except ConfigError as exc:
        pytest.skip(f"cannot convert the published models: {exc}")
    models_dir = tmp_path_factory.mktemp("models")
    registry = load_registry(REGISTRY)
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    for name in CONVERTED:
        fetch(registry.get(name), models_dir, mirror=reference / "models", progress=False)
    return models_dir


@pytest.fixture(scope="session")
def model_settings(converted_models: Path) -> ModelSettings:
    return ModelSettings(dir=converted_models, provider="cpu", registry=REGISTRY)


def read_ztf_packet(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        record = next(iter(fastavro.reader(handle)))
    assert isinstance(record, dict), f"{path} holds no Avro record"
    return record


def ztf_scoring_input(packet: dict[str, Any]) -> ScoringInput:
    """Built straight from the packet (independent of broker.decode), history = packet's."""
    candidate = packet["candidate"]

    def stamp(key: str) -> bytes:
        cutout = packet.get(key) or {}
        return bytes(cutout.get("stampData") or b"")

    history = sorted(packet.get("prv_candidates") or [], key=lambda entry: entry["jd"])
    return ScoringInput(
        survey="ztf",
        candid=candidate["candid"],
        object_id=packet.get("objectId") or "",
        ra=candidate["ra"],
        dec=candidate["dec"],
        jd=candidate["jd"],
        candidate=candidate,
        history=tuple(history),
        cutouts=Cutouts(stamp("cutoutScience"), stamp("cutoutTemplate"), stamp("cutoutDifference")),
    )


@pytest.fixture(scope="session")
def ztf_packets(reference: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ZTF sample alert (both folders) as decoded by fastavro, in file-name order."""
    paths = sorted((reference / "ztf" / "alerts").rglob("*.avro"))
    return [(path, read_ztf_packet(path)) for path in paths]


@pytest.fixture
def ztf_samples(
    ztf_packets: list[tuple[Path, dict[str, Any]]],
) -> Iterator[list[tuple[Path, dict[str, Any], ScoringInput]]]:
    yield [(path, packet, ztf_scoring_input(packet)) for path, packet in ztf_packets]
