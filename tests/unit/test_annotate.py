"""workers.annotate and workers.plugin: from raw packets to scores, and failure isolation."""

from __future__ import annotations

import gzip
import io
import logging
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort
import pytest
from astropy.io import fits
from fastavro.schema import load_schema
from prometheus_client import REGISTRY as METRICS

from broker.errors import ConfigError
from broker.records import AlertResult, Cutouts, ModelSkip, RejectReason, ScoringInput
from broker.settings import ModelSettings
from workers import plugin
from workers.annotate import Annotator
from workers.models import load_model
from workers.models.base import BatchContext, Model, Outcome
from workers.models.registry import load_registry

REGISTRY = Path(__file__).resolve().parents[2] / "config" / "models.yaml"
ACAI = ("acai_h", "acai_v", "acai_o", "acai_n", "acai_b")
STAMPS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
# Written out from MODELS.md, apart from workers/features.py; upper case = derived here.
# fmt: off
BTSBOT_FIELDS = (
    "sgscore1", "distpsnr1", "sgscore2", "distpsnr2", "fwhm", "magpsf", "sigmapsf", "chipsf",
    "ra", "dec", "diffmaglim", "ndethist", "nmtchps", "AGE", "SINCE", "TO", "PEAK", "new_drb",
    "ncovhist", "NNOTDET", "chinr", "sharpnr", "scorr", "sky", "MAX",
)
ACAI_FIELDS = (
    "drb", "diffmaglim", "ra", "dec", "magpsf", "sigmapsf", "chipsf", "fwhm", "sky", "chinr",
    "sharpnr", "sgscore1", "distpsnr1", "sgscore2", "distpsnr2", "sgscore3", "distpsnr3",
    "ndethist", "ncovhist", "scorr", "nmtchps", "clrcoeff", "clrcounc", "neargaia",
    "neargaiabright",
)
# fmt: on


class Broken(Model):
    """A model that raises on every batch (as a corrupt session or a bug would)."""

    def run(self, context: BatchContext) -> list[Outcome]:
        raise RuntimeError("boom")


def lsst_input(reference: Path) -> ScoringInput:
    raw = (reference / "lsst" / "alerts" / "25409136044802067.avro").read_bytes()
    schema = load_schema(str(reference / "lsst/schema/7/1/lsst.v7_1.alert.avsc"))
    record: Any = fastavro.schemaless_reader(io.BytesIO(raw[5:]), schema)
    source = record["diaSource"]
    return ScoringInput(
        "lsst",
        source["diaSourceId"],
        str(source["diaObjectId"]),
        source["ra"],
        source["dec"],
        source["midpointMjdTai"] + 2400000.5,
        source,
        (),
        Cutouts(*(record[key] for key in STAMPS)),
    )


def independent_triplet(packet: dict[str, Any], rows: bool = False) -> np.ndarray:
    """MODELS.md "The image triplet", with astropy, written apart from workers/preprocess."""
    channels = []
    for key in STAMPS:
        with fits.open(io.BytesIO(gzip.decompress(packet[key]["stampData"]))) as hdus:
            data = np.nan_to_num(np.asarray(hdus[0].data, dtype=np.float32))
        if rows:  # braai d6_m7: each row by its own norm, zero rows stay zero
            norms = np.linalg.norm(data, axis=1, keepdims=True)
            data = np.divide(data, norms, out=np.zeros_like(data), where=norms > 0)
        else:
            data = data / np.linalg.norm(data)
        padded = np.full((63, 63), 1e-9, dtype=np.float32)
        padded[: data.shape[0], : data.shape[1]] = data
        channels.append(padded)
    return np.stack(channels, axis=-1)[None]


def independent_btsbot_metadata(packet: dict[str, Any], drb: float) -> np.ndarray:
    cand = packet["candidate"]
    points = {
        (c["jd"], c["magpsf"])
        for c in packet.get("prv_candidates") or []
        if c.get("magpsf") is not None and c["jd"] <= cand["jd"]
    }
    points.add((cand["jd"], cand["magpsf"]))
    ordered = sorted(points)
    peak = min(mag for _, mag in ordered)
    jd_peak = min(jd for jd, mag in ordered if mag == peak)
    jd_first = min(cand["jdstarthist"], ordered[0][0])
    derived = {
        "AGE": cand["jd"] - jd_first,
        "SINCE": cand["jd"] - jd_peak,
        "TO": jd_peak - jd_first,
        "PEAK": peak,
        "new_drb": drb,
        "NNOTDET": cand["ncovhist"] - cand["ndethist"],
        "MAX": max(mag for _, mag in ordered),
    }
    return np.asarray([[derived.get(f, cand.get(f)) for f in BTSBOT_FIELDS]], dtype=np.float32)


def session(models_dir: Path, name: str, version: str) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(models_dir / name / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def expected_scores(models_dir: Path, packet: dict[str, Any]) -> dict[str, float]:
    triplet = independent_triplet(packet)
    braai = float(session(models_dir, "braai", "d6_m9").run(None, {"triplet": triplet})[0][0, 0])
    metadata = independent_btsbot_metadata(packet, braai)
    btsbot = session(models_dir, "btsbot", "v1.0.1").run(
        None, {"triplet": triplet, "metadata": metadata}
    )[0][0, 0]
    rows = independent_triplet(packet, rows=True)
    d6_m7 = session(models_dir, "braai_d6_m7", "d6_m7").run(None, {"triplet": rows})[0][0, 0]
    scores = {"braai": braai, "btsbot": float(btsbot), "braai_d6_m7": float(d6_m7)}
    cand = packet["candidate"]
    if cand.get("drb") is not None:
        scores["drb"] = cand["drb"]
        features = np.asarray([[cand[f] for f in ACAI_FIELDS]], dtype=np.float32)
        for name in ACAI:
            out = session(models_dir, name, "d1_dnn_20201130").run(
                None, {"features": features, "triplets": triplet}
            )[0]
            scores[name] = float(out[0, 0])
    return scores


def by_model(result: AlertResult) -> dict[str, float]:
    return {annotation.model: annotation.score for annotation in result.annotations}


def test_raw_packets_score_as_the_recipe_says(
    model_settings: ModelSettings,
    ztf_samples: list[tuple[Path, dict[str, Any], ScoringInput]],
) -> None:
    annotator = Annotator.from_settings(model_settings)
    results = annotator.annotate([item for _, _, item in ztf_samples])
    assert [r.candid for r in results] == [item.candid for _, _, item in ztf_samples]
    scored = 0
    image_models = {m.name for m in annotator.models if m.needs_stamps}
    for (path, packet, _), result in zip(ztf_samples, results, strict=True):
        assert result.rejected is None, path.name  # never rejected for its images
        if packet.get("objectId") is None:
            assert_images_skipped(result, image_models, RejectReason.JPEG_CUTOUTS)
            continue
        if path.name == "472263571115090000.avro":
            # Its template holds float32-max pixels: the float32 norm overflows.
            assert_images_skipped(result, image_models, "template stamp has L2 norm inf")
            assert set(by_model(result)) <= {"drb"}  # packet models still score it
            continue
        expected = expected_scores(model_settings.dir, packet)
        actual = by_model(result)
        assert set(actual) == set(expected), path.name
        for name, score in expected.items():
            assert actual[name] == pytest.approx(score, abs=1e-5), (path.name, name)
        if "drb" not in expected:  # older schemas: ACAI needs the packet's drb
            assert {skip.model for skip in result.skipped} == set(ACAI) | {"drb"}
        scored += 1
    assert scored == 27  # 34 files: 6 schema-1.x JPEG alerts, 1 overflowing template


def assert_images_skipped(result: AlertResult, image_models: set[str], reason: str) -> None:
    """Every image model skipped naming why the stamps cannot be scored; none scored."""
    skips = {skip.model: skip.reason for skip in result.skipped}
    assert image_models and image_models <= set(skips)
    assert all(reason in skips[name] for name in image_models), skips
    assert not image_models & {annotation.model for annotation in result.annotations}


def test_no_models_installed_passes_alerts_through(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    ztf_samples: list[tuple[Path, dict[str, Any], ScoringInput]],
) -> None:
    settings = ModelSettings(dir=tmp_path, registry=REGISTRY)
    with caplog.at_level(logging.WARNING, logger="workers.annotate"):
        annotator = Annotator.from_settings(settings)
    (warning,) = caplog.records
    for name in ("braai", "btsbot", "acai_h", "nightjar models fetch"):
        assert name in warning.getMessage()
    results = annotator.annotate([item for _, _, item in ztf_samples])
    assert len(results) == len(ztf_samples)
    assert [r for r in results if r.rejected] == []  # images never reject an alert
    for result in results:
        assert {a.model for a in result.annotations} <= {"drb"}


def test_a_failing_model_loses_only_its_own_scores(
    model_settings: ModelSettings,
    caplog: pytest.LogCaptureFixture,
    ztf_samples: list[tuple[Path, dict[str, Any], ScoringInput]],
) -> None:
    registry = load_registry(REGISTRY)
    braai = load_model(registry.get("braai"), model_settings)
    acai = load_model(registry.get("acai_h"), model_settings)
    assert braai is not None and acai is not None
    broken = Broken(registry.get("acai_v"), model_settings)
    annotator = Annotator([braai, broken, acai], model_settings)
    batch = [item for _, packet, item in ztf_samples if packet["candidate"].get("drb")]
    labels = {"model": "acai_v", "reason": "RuntimeError"}
    before = METRICS.get_sample_value("nightjar_worker_model_failures_total", labels) or 0.0
    with caplog.at_level(logging.WARNING, logger="workers.annotate"):
        results = annotator.annotate(batch)
    (warning,) = caplog.records
    assert f"acai_v failed on a batch of {len(batch)} alerts" in warning.getMessage()
    assert METRICS.get_sample_value("nightjar_worker_model_failures_total", labels) == before + 1
    for result in results:
        assert set(by_model(result)) == {"braai", "acai_h"}
        assert result.skipped == (ModelSkip("acai_v", "model error: RuntimeError"),)


def test_btsbot_without_a_braai_score_is_skipped_not_guessed(
    model_settings: ModelSettings,
    ztf_samples: list[tuple[Path, dict[str, Any], ScoringInput]],
) -> None:
    registry = load_registry(REGISTRY)
    btsbot = load_model(registry.get("btsbot"), model_settings)
    assert btsbot is not None
    annotator = Annotator([Broken(registry.get("braai"), model_settings), btsbot])
    batch = [item for _, packet, item in ztf_samples if packet["candidate"].get("drb")]
    for result in annotator.annotate(batch):
        assert result.annotations == ()
        assert ModelSkip("btsbot", "missing feature new_drb (no braai score)") in result.skipped
    # With the packet's drb (Kowalski production semantics) BTSbot needs no braai.
    packet_drb = model_settings.model_copy(update={"btsbot_drb": "packet"})
    alone = load_model(registry.get("btsbot"), packet_drb)
    assert alone is not None
    results = Annotator([alone], packet_drb).annotate(batch)
    assert all(len(r.annotations) == 1 for r in results)


def test_models_apply_per_survey(
    reference: Path,
    model_settings: ModelSettings,
    ztf_samples: list[tuple[Path, dict[str, Any], ScoringInput]],
) -> None:
    ztf = next(item for _, packet, item in ztf_samples if packet["candidate"].get("drb"))
    lsst = lsst_input(reference)
    annotator = Annotator.from_settings(model_settings)
    ztf_result, lsst_result = annotator.annotate([ztf, lsst])
    assert lsst_result.skipped == () and lsst_result.rejected is None
    (reliability,) = lsst_result.annotations
    assert reliability.model == "reliability"
    assert reliability.score == pytest.approx(0.8079, abs=1e-4)
    expected = {"braai", "braai_d6_m7", "btsbot", "drb", *ACAI}
    assert {a.model for a in ztf_result.annotations} == expected


def test_plugin_builds_one_annotator_per_worker(
    model_settings: ModelSettings,
    ztf_samples: list[tuple[Path, dict[str, Any], ScoringInput]],
) -> None:
    distributed = pytest.importorskip("distributed")
    batch = [item for _, _, item in ztf_samples][:8]
    expected = Annotator.from_settings(model_settings).annotate(batch)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(plugin.AnnotatorPlugin(model_settings))
        first = client.submit(plugin.annotate_batch, batch, pure=False).result()
        second = client.submit(plugin.annotate_batch, batch, pure=False).result()
        annotators = client.run(
            lambda dask_worker: id(getattr(dask_worker, plugin.WORKER_ATTRIBUTE))
        )
    assert first == expected and second == expected
    assert len(annotators) == 1


def test_a_second_broker_registering_the_plugin_keeps_the_loaded_models(
    model_settings: ModelSettings,
    ztf_samples: list[tuple[Path, dict[str, Any], ScoringInput]],
) -> None:
    """Brokers sharing an external cluster each register the plugin: no reload, no gap."""
    distributed = pytest.importorskip("distributed")
    batch = [item for _, _, item in ztf_samples][:4]

    def annotator_id(dask_worker: Any) -> int:
        return id(getattr(dask_worker, plugin.WORKER_ATTRIBUTE))

    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as first,
        distributed.Client(cluster) as second,
    ):
        first.register_plugin(plugin.AnnotatorPlugin(model_settings))
        before = set(first.run(annotator_id).values())
        second.register_plugin(plugin.AnnotatorPlugin(model_settings))
        kept = set(first.run(annotator_id).values())
        other = model_settings.model_copy(update={"intra_op_threads": 2})
        second.register_plugin(plugin.AnnotatorPlugin(other))
        replaced = set(first.run(annotator_id).values())
        results = first.submit(plugin.annotate_batch, batch, pure=False).result()
    assert kept == before
    assert replaced.isdisjoint(before)  # other settings: built anew
    assert results == Annotator.from_settings(model_settings).annotate(batch)


def test_annotate_batch_outside_dask_loads_lazily_once(
    monkeypatch: pytest.MonkeyPatch,
    model_settings: ModelSettings,
    ztf_samples: list[tuple[Path, dict[str, Any], ScoringInput]],
) -> None:
    monkeypatch.setattr(plugin, "_fallback", None)
    monkeypatch.setenv("NIGHTJAR_MODELS__DIR", str(model_settings.dir))
    monkeypatch.setenv("NIGHTJAR_MODELS__PROVIDER", "cpu")
    batch = [item for _, _, item in ztf_samples][:4]
    results = plugin.annotate_batch(batch)
    assert plugin.current_annotator() is plugin.current_annotator()
    assert results == Annotator.from_settings(model_settings).annotate(batch)


def test_explicitly_enabled_models_must_be_loadable(
    tmp_path: Path, model_settings: ModelSettings
) -> None:
    missing = ModelSettings(dir=tmp_path, registry=REGISTRY, enabled=["braai", "acai_h"])
    with pytest.raises(ConfigError, match=r"nightjar models fetch \[--mirror DIR\] braai acai_h"):
        Annotator.from_settings(missing)
    alone = model_settings.model_copy(update={"enabled": ["btsbot"]})
    with pytest.raises(ConfigError, match="btsbot needs braai"):
        Annotator.from_settings(alone)
    packet = alone.model_copy(update={"btsbot_drb": "packet"})
    assert list(Annotator.from_settings(packet).describe()["models"]) == ["btsbot"]
