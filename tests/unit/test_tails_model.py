"""workers/models/tails.py through workers.annotate.Annotator: the per-alert Tails stage.

Any ONNX model with the Tails I/O contract fits the slot (checked against a tiny random one
and an independent numpy reading of the contract); the committed default installs from the
repository and tells simulated comets from look-alikes, with positions in pixels and on sky.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from broker.__main__ import main
from broker.cli.score import scoring_input
from broker.decode import Decoder
from broker.errors import ConfigError
from broker.records import Annotation, Cutouts, ModelSkip, ScoringInput
from broker.settings import ModelSettings, SchemaSettings
from broker.tools.models.fetch import fetch
from broker.tools.simulate import simulate as simulate_alerts
from broker.tools.simulate.stamps import fits_image, gzip_fits
from broker.tools.tails import simulate as tails_sim
from workers.annotate import Annotator
from workers.models.registry import load_registry

REPO = Path(__file__).resolve().parents[2]
REGISTRY = REPO / "config" / "models.yaml"
SCALE = 1.01 / 3600.0


def contract_onnx(path: Path, size: int, seed: int = 0) -> np.ndarray:
    """A random model with the Tails contract: sigmoid(flatten(triplet) @ W), W (pixels, 3)."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    weights = np.random.default_rng(seed).normal(0.0, 2.0, (size * size * 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["triplet"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["tails"]),
        ],
        "tails_contract",
        [helper.make_tensor_value_info("triplet", onnx.TensorProto.FLOAT, [None, size, size, 3])],
        [helper.make_tensor_value_info("tails", onnx.TensorProto.FLOAT, [None, 3])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return weights


def install(tmp_path: Path, size: int, name: str = "tails") -> tuple[ModelSettings, np.ndarray]:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    weights = contract_onnx(mirror / "contract.onnx", size)
    entry = {
        "kind": "tails",
        "version": "contract-test",
        "survey": "ztf",
        "source": {
            "format": "onnx",
            "file": "contract.onnx",
            "sha256": hashlib.sha256((mirror / "contract.onnx").read_bytes()).hexdigest(),
        },
        "inputs": [{"name": "triplet", "shape": [size, size, 3]}],
        "outputs": ["score", "x_rel", "y_rel"],
    }
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": {name: entry}}))
    models_dir = tmp_path / "models"
    fetch(load_registry(registry).get(name), models_dir, mirror=mirror, progress=False)
    return ModelSettings(dir=models_dir, registry=registry, provider="cpu"), weights


def independent_input(item: ScoringInput, size: int) -> np.ndarray:
    """MODELS.md's Tails contract, with astropy, written apart from broker/tails/contract.py."""
    channels = []
    for index, data in enumerate(
        (item.cutouts.science, item.cutouts.template, item.cutouts.difference)
    ):
        with fits.open(io.BytesIO(gzip.decompress(data))) as hdus:
            stamp = np.asarray(hdus[0].data, dtype=np.float64)
        stamp[~np.isfinite(stamp)] = np.nanmedian(np.where(np.isfinite(stamp), stamp, np.nan))
        if index == 2:
            stamp[stamp < -100] = 0.0
        padded = np.zeros((size, size))
        padded[: stamp.shape[0], : stamp.shape[1]] = stamp / np.sqrt(np.sum(stamp**2))
        channels.append(padded)
    return np.stack(channels, axis=-1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def ztf_inputs(n: int, seed: int) -> list[ScoringInput]:
    decoder = Decoder(SchemaSettings(), 4 << 20)
    return [scoring_input(decoder.decode(a.data)) for a in simulate_alerts("ztf", n, seed)]


def with_stamps(item: ScoringInput, images: np.ndarray, candid: int) -> ScoringInput:
    """`item` carrying other [science, template, difference] stamps (gzip FITS)."""
    stamps = [gzip_fits(fits_image(images[..., c])) for c in range(3)]
    return ScoringInput(
        item.survey, candid, item.object_id, item.ra, item.dec, item.jd, item.candidate,
        item.history, Cutouts(*stamps),
    )  # fmt: skip


def tails_of(result_annotations: tuple[Annotation, ...]) -> Annotation:
    found = [a for a in result_annotations if a.model == "tails"]
    assert len(found) == 1, result_annotations
    return found[0]


def test_any_contract_model_annotates_simulated_alerts(tmp_path: Path) -> None:
    settings, weights = install(tmp_path, 63)
    annotator = Annotator.from_settings(settings)
    items = ztf_inputs(60, seed=8)
    results = annotator.annotate(items)
    assert all(r.rejected is None for r in results)
    cut = 0
    for item, result in zip(items, results, strict=True):
        annotation = tails_of(result.annotations)
        expected = sigmoid(independent_input(item, 63).reshape(-1) @ weights.astype(np.float64))
        assert annotation.version == "contract-test"
        assert annotation.score == pytest.approx(expected[0], abs=1e-5)
        assert annotation.extra["x"] == pytest.approx(expected[1] * 63, abs=1e-3)
        assert annotation.extra["y"] == pytest.approx(expected[2] * 63, abs=1e-3)
        with fits.open(io.BytesIO(gzip.decompress(item.cutouts.science))) as hdus:
            full = hdus[0].data.shape == (63, 63)
        cut += not full
        if not full:  # an edge alert: the stamp's centre is not the alert's position
            assert set(annotation.extra) == {"x", "y"}
            continue
        dx, dy = annotation.extra["x"] - 31.0, annotation.extra["y"] - 31.0
        assert annotation.extra["dec"] == pytest.approx(item.dec + dy * SCALE, abs=1e-9)
        ra = item.ra - dx * SCALE / math.cos(math.radians(item.dec))
        assert annotation.extra["ra"] == pytest.approx(ra % 360.0, abs=1e-9)
    assert cut < 10


def test_unscoreable_and_edge_stamps(tmp_path: Path) -> None:
    settings, weights = install(tmp_path, 63)
    annotator = Annotator.from_settings(settings)
    base = ztf_inputs(1, seed=3)[0]
    rng = np.random.default_rng(1)
    clipped = rng.normal(100.0, 5.0, (63, 63, 3)).astype(np.float32)
    clipped[..., 2] = -150.0  # every difference pixel below -100: zero after the contract
    edge = rng.normal(100.0, 5.0, (45, 63, 3)).astype(np.float32)
    edge[3:6, 10:12, 0] = np.nan
    items = [with_stamps(base, clipped, 1), with_stamps(base, edge, 2)]
    skipped, cut = annotator.annotate(items)
    assert skipped.skipped == (
        ModelSkip("tails", "Tails preprocessing: difference channel has L2 norm 0"),
    )
    annotation = tails_of(cut.annotations)
    expected = sigmoid(independent_input(items[1], 63).reshape(-1) @ weights.astype(np.float64))
    assert annotation.score == pytest.approx(expected[0], abs=1e-5)
    # Which rows a cut stamp lost is unknown: pixels, but no sky position.
    assert set(annotation.extra) == {"x", "y"}


def test_a_published_size_model_fits_the_slot(tmp_path: Path) -> None:
    """The published Tails takes 256 px boxes: stamps are padded, positions scale by 256."""
    settings, weights = install(tmp_path, 256)
    item = ztf_inputs(1, seed=5)[0]
    (result,) = Annotator.from_settings(settings).annotate([item])
    annotation = tails_of(result.annotations)
    expected = sigmoid(independent_input(item, 256).reshape(-1) @ weights.astype(np.float64))
    assert annotation.score == pytest.approx(expected[0], abs=1e-5)
    assert annotation.extra["x"] == pytest.approx(expected[1] * 256, abs=1e-3)


@pytest.fixture(scope="module")
def default_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped registry's `tails`, installed by `nightjar models fetch` from the repo."""
    models_dir = tmp_path_factory.mktemp("models")
    assert main(["models", "fetch", "tails", "--models-dir", str(models_dir), "--quiet"]) == 0
    return models_dir


def test_the_default_detector_finds_simulated_comets(default_models: Path) -> None:
    spec = load_registry(REGISTRY).get("tails")
    assert spec.kind == "tails" and spec.source is not None and spec.source.url is None
    settings = ModelSettings(dir=default_models, registry=REGISTRY, enabled=["tails"])
    annotator = Annotator.from_settings(settings)
    data = tails_sim.simulate(400, seed=424242)
    base = ztf_inputs(1, seed=2)[0]
    items = [with_stamps(base, image, i) for i, image in enumerate(data.images)]
    results = annotator.annotate(items)
    scores = np.array([tails_of(r.annotations).score for r in results])
    comets = data.is_comet
    # Well above chance: comets outscore look-alikes (AUC), and at the entry's own threshold
    # (its 0.1% false-positive point) most bright comets are found (the card: ~85%).
    auc = np.mean(scores[comets][:, None] > scores[~comets][None, :])
    assert auc > 0.95
    bright = comets & (data.snr >= 20)
    threshold = spec.thresholds["comet"]
    assert np.mean(scores[bright] >= threshold) > 0.75
    assert np.mean(scores[~comets] >= threshold) < 0.02
    x = np.array([tails_of(r.annotations).extra["x"] for r in results])
    y = np.array([tails_of(r.annotations).extra["y"] for r in results])
    error = np.hypot(x - data.x, y - data.y)[bright]
    assert np.sqrt(np.mean(error**2)) < 3.0


def test_a_registry_entry_without_the_contract_shape_is_refused(tmp_path: Path) -> None:
    settings, _ = install(tmp_path, 63)
    registry = yaml.safe_load(settings.registry.read_text())
    registry["models"]["tails"]["inputs"][0]["shape"] = [63, 63]
    settings.registry.write_text(yaml.safe_dump(registry))
    with pytest.raises(ConfigError, match=r"kind tails takes one input of shape \[H, W, 3\]"):
        Annotator.from_settings(settings)
