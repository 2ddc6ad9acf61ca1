"""`nightjar tails train|evaluate`: a tiny detector trained here separates held-out comets from
look-alikes well above chance, its ONNX agrees with TensorFlow, and the committed default
weights are the ones their card and the registry describe."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import broker.__main__
from broker.__main__ import main
from broker.errors import ConfigError
from broker.tools.models.convert import MAX_ABS_DIFF, import_tensorflow
from broker.tools.tails.detector import DEFAULT_MODEL
from broker.tools.tails.evaluate import Scored, recall_interval, threshold_at
from workers.models.registry import load_registry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tails_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """`nightjar tails` whether or not this checkout lists it in broker.__main__.COMMANDS yet."""
    if "tails" not in broker.__main__.COMMANDS:
        monkeypatch.setattr(broker.__main__, "COMMANDS", (*broker.__main__.COMMANDS, "tails"))


@pytest.fixture(scope="module")
def tensorflow() -> None:
    try:
        import_tensorflow()
    except ConfigError as exc:
        pytest.skip(f"training needs TensorFlow: {exc}")


@pytest.mark.usefixtures("tails_cli", "tensorflow")
def test_a_tiny_trained_detector_beats_chance_on_held_out_data(tmp_path: Path) -> None:
    out = tmp_path / "model"
    train = ["tails", "train", "--n", "1200", "--seed", "3", "--validation", "64", "--epochs", "10"]
    tiny = ["--widths", "8,8,16,16,16", "--learning-rate", "0.006", "--comet-fraction", "0.5"]
    tiny += ["--threads", "2", "--name", "tiny", "--out", str(out)]
    assert main([*train, *tiny]) == 0
    card = json.loads((out / "tiny.json").read_text())
    onnx = (out / "tiny.onnx").read_bytes()
    assert card["onnx"]["sha256"] == hashlib.sha256(onnx).hexdigest()
    assert card["onnx"]["max_abs_diff_stamps"] < MAX_ABS_DIFF
    assert card["onnx"]["max_abs_diff_boxes"] < MAX_ABS_DIFF
    assert card["seed"] == 3 and "--n 1200 --seed 3" in card["command"]
    assert "--hard-comets 0 " in card["command"] and card["config"]["hard_comets"] == 0.0

    held = tmp_path / "held-out"
    assert main(["tails", "simulate", "--n", "600", "--seed", "99", "--out", str(held)]) == 0
    evaluation = tmp_path / "evaluation"
    evaluate = ["tails", "evaluate", "--data", str(held), "--model", str(out / "tiny.onnx")]
    assert main([*evaluate, "--out", str(evaluation), "--card", str(out / "tiny.json")]) == 0
    summary = json.loads((evaluation / "evaluation.json").read_text())
    assert summary["comets"] == 300 and summary["negatives"] == 300
    assert summary["roc_auc"] > 0.7  # chance is 0.5; this one reaches ~0.8 in ~12 s
    figures = ("roc", "recall_vs_snr", "recall_by_morphology", "by_seeing", "gallery_hits")
    for figure in figures:
        assert (evaluation / f"{figure}.png").stat().st_size > 10_000
    morphology = summary["recall_snr_ge_10_by_morphology"]
    bright = sum(row["comets"] for row in morphology["tail_length"].values())
    assert bright == sum(row["comets"] for row in morphology["coma_radius"].values()) > 50
    assert morphology["tail_length"]["none"]["comets"] > 0
    point = summary["operating_points"]["fpr_0.001"]
    interval = point["recall_snr_ge_10_interval"]
    assert interval["low"] <= point["recall_snr_ge_10"] <= interval["high"]
    # Without the look-alikes' false positives the threshold can only be lower.
    assert summary["recall_snr_ge_10_without_look_alikes"] >= point["recall_snr_ge_10"]
    seeing = summary["by_seeing"]
    assert sum(row["comets"] for row in seeing) == bright
    assert all(row["look_alikes_detected"] <= row["look_alikes"] for row in seeing)
    recorded = json.loads((out / "tiny.json").read_text())["evaluation"]["63px"]
    assert recorded["roc_auc"] == summary["roc_auc"]
    assert "--seed 99" in recorded["data_command"]


@pytest.mark.usefixtures("tails_cli", "tensorflow")
def test_the_committed_default_reexports_to_the_same_scores(tmp_path: Path) -> None:
    assert main(["tails", "reexport", "--out", str(tmp_path), "--name", "again"]) == 0
    card = json.loads((tmp_path / "again.json").read_text())
    old = hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert card["reexport"]["from_sha256"] == old
    assert card["reexport"]["max_abs_diff_vs_previous"] < MAX_ABS_DIFF
    assert (
        card["onnx"]["sha256"] == hashlib.sha256((tmp_path / "again.onnx").read_bytes()).hexdigest()
    )
    assert (
        card["evaluation"]
        == json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["evaluation"]
    )


@pytest.mark.usefixtures("tails_cli", "tensorflow")
def test_a_detector_trained_after_another_reexports(tmp_path: Path) -> None:
    """Keras numbers layers per process: a body built after another has conv2d_6... in its
    ONNX names; reexport still puts every kernel back in its place."""
    from broker.tools.tails import network

    network.build_body(import_tensorflow(), network.Architecture())  # moves the counter on
    train = ["tails", "train", "--n", "256", "--seed", "2", "--validation", "32", "--epochs", "1"]
    small = ["--widths", "8,8,8,8,8", "--name", "later", "--out", str(tmp_path)]
    assert main([*train, *small]) == 0
    model, card_path = str(tmp_path / "later.onnx"), str(tmp_path / "later.json")
    again = ["--model", model, "--card", card_path, "--out", str(tmp_path / "again")]
    assert main(["tails", "reexport", *again, "--name", "later"]) == 0
    redone = json.loads((tmp_path / "again" / "later.json").read_text())
    assert redone["reexport"]["max_abs_diff_vs_previous"] < MAX_ABS_DIFF


@pytest.mark.usefixtures("tails_cli", "tensorflow")
def test_training_on_real_alert_backgrounds(tmp_path: Path) -> None:
    """`--backgrounds`: part of the training stamps painted onto alert cutouts, recorded in
    the card's command and config; not together with --data."""
    from broker.tools.simulate import simulate as simulate_alerts

    alerts = tmp_path / "alerts"
    alerts.mkdir()
    for alert in simulate_alerts("ztf", 6, 1):
        (alerts / f"{alert.name}.avro").write_bytes(alert.data)
    train = ["tails", "train", "--n", "256", "--seed", "2", "--validation", "32", "--epochs", "1"]
    small = ["--widths", "8,8,8,8,8", "--name", "real", "--out", str(tmp_path / "model")]
    on_real = ["--backgrounds", str(alerts), "--background-fraction", "0.25"]
    assert main([*train, *small, *on_real]) == 0
    card = json.loads((tmp_path / "model" / "real.json").read_text())
    assert f"--backgrounds {alerts} --background-fraction 0.25" in card["command"]
    assert card["config"]["backgrounds"] == [str(alerts)]
    assert card["training"]["examples"] == 256
    assert main([*train[:2], "--data", str(tmp_path), *small, *on_real]) == 2


def test_a_model_without_a_nightjar_body_is_not_reexported(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from broker.tools.models.convert import ConversionError
    from broker.tools.tails.reexport import conv_weights

    value = helper.make_tensor_value_info("triplet", TensorProto.FLOAT, [None, 63, 63, 3])
    output = helper.make_tensor_value_info("tails", TensorProto.FLOAT, None)
    node = helper.make_node("Identity", ["triplet"], ["tails"])
    graph = helper.make_graph([node], "g", [value], [output])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ConversionError, match="no Nightjar Tails body"):
        conv_weights(path)


def test_the_committed_default_is_what_its_card_and_the_registry_say() -> None:
    card = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    digest = hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert card["onnx"]["sha256"] == digest
    assert DEFAULT_MODEL.stat().st_size < 2_000_000
    spec = load_registry(REPO / "config" / "models.yaml").get("tails")
    assert spec.source is not None and spec.source.sha256 == digest
    assert card["command"].startswith("nightjar tails train")
    evaluation = card["evaluation"]["63px"]
    assert evaluation["command"].startswith("nightjar tails evaluate")
    assert evaluation["cpu_ms_per_example_1_thread"] < 1.5
    # The registry's comet threshold is the card's 0.1% false-positive point.
    main_point = evaluation["operating_points"]["fpr_0.001"]["threshold"]
    assert spec.thresholds["comet"] == pytest.approx(main_point, abs=5e-4)


def test_the_recall_interval_narrows_with_more_negatives() -> None:
    """The bootstrap interval of recall at 0.1% FPR: none for a perfect separation, and
    narrower when more negatives fix the threshold."""
    rng = np.random.default_rng(1)

    def scored(negatives: int, shift: float) -> Scored:
        # Scores as a classifier gives them: normal, the comets `shift` sigmas higher.
        comets = rng.normal(shift, 1.0, 4000)
        scores = np.concatenate([comets, rng.normal(0.0, 1.0, negatives)])
        labels = np.arange(len(scores)) < len(comets)
        empty = np.full(len(scores), np.nan)
        truth = np.zeros((len(scores), 2))
        kind = np.where(labels, "comet", "point_source")
        snr = np.full(len(scores), 20.0)
        fwhm = np.full(len(scores), 2.0)
        return Scored(scores, truth, labels, truth, snr, kind, empty, empty, empty, fwhm, 0, 63)

    perfect = recall_interval(scored(2000, 20.0), 1e-3)
    assert perfect is not None and perfect["low"] == perfect["high"] == 1.0
    widths = []
    for negatives in (2000, 40000):
        result = scored(negatives, 3.1)
        interval = recall_interval(result, 1e-3)
        threshold = threshold_at(result.scores[~result.is_comet], 1e-3)
        recall = np.mean(result.scores[result.is_comet] > threshold)  # ~0.5
        assert interval is not None and interval["low"] <= recall <= interval["high"]
        widths.append(interval["high"] - interval["low"])
    few, many = widths
    assert many < 0.6 * few
