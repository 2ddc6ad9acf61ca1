"""Model tooling: registry validation, fetch/verify/convert, `nightjar models`, providers."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
import yaml
from astropy.io import fits
from fastavro.schema import load_schema

from broker.__main__ import main
from broker.errors import ConfigError
from broker.records import Cutouts, ScoringInput
from broker.settings import ModelSettings
from broker.tools.models import convert as convert_module
from broker.tools.models.convert import ConversionError, import_tensorflow
from broker.tools.models.fetch import FetchError, fetch
from workers.annotate import Annotator
from workers.models.manifest import read_manifest
from workers.models.registry import load_registry
from workers.runtime import CPU, CUDA, choose_providers, open_session

REPO = Path(__file__).resolve().parents[2]
REGISTRY = REPO / "config" / "models.yaml"
STAMPS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def write_registry(tmp_path: Path, entries: dict[str, object]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


def tiny_onnx(path: Path, size: int = 30) -> Path:
    """A real ONNX classifier: sigmoid(mean of the (size, size, 3) input)."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    pixels = size * size * 3
    weights = np.full((pixels, 1), 1.0 / pixels, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["triplet"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["mean"]),
            helper.make_node("Sigmoid", ["mean"], ["score"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("triplet", onnx.TensorProto.FLOAT, [None, size, size, 3])],
        [helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, [None, 1])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_the_shipped_registry_pins_the_reference_files(reference: Path) -> None:
    registry = load_registry(REGISTRY)
    for spec in registry.models.values():
        if spec.source is None or spec.source.url is None:
            continue
        found = list((reference / "models").glob(f"*/{spec.source.file}"))
        assert len(found) == 1, spec.name
        assert hashlib.sha256(found[0].read_bytes()).hexdigest() == spec.source.sha256


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "triplet", "version": "1", "survey": "ztf"}, "needs a source"),
        ({"kind": "nonsense", "version": "1", "survey": "ztf"}, "workers/models/nonsense.py"),
        ({"kind": "packet_field", "version": "1", "survey": "ztf"}, "options.field"),
        (
            {"kind": "packet_field", "version": "1", "survey": "hst", "options": {"field": "x"}},
            "broken.survey",
        ),
        (
            {
                "kind": "triplet",
                "version": "1",
                "survey": "ztf",
                "inputs": [{"name": "t", "shape": [2]}],
                "source": {"format": "onnx", "file": "f", "sha256": "abc"},
            },
            "broken.source.sha256",
        ),
    ],
)
def test_a_bad_registry_entry_is_named(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    path = write_registry(tmp_path, {"broken": entry})
    with pytest.raises(ConfigError) as error:
        load_registry(path)
    assert "'broken'" in str(error.value) and message in str(error.value)


def test_fetch_refuses_a_file_with_the_wrong_sha256(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror" / "braai"
    mirror.mkdir(parents=True)
    (mirror / "braai_d6_m9.h5").write_bytes(b"not the published weights")
    spec = load_registry(REGISTRY).get("braai")
    with pytest.raises(FetchError, match="sha256"):
        fetch(spec, tmp_path / "models", mirror=tmp_path / "mirror", progress=False)
    assert read_manifest(tmp_path / "models", spec) is None
    assert not list((tmp_path / "models").rglob("*.h5"))


def test_fetch_names_a_file_missing_from_the_mirror(tmp_path: Path) -> None:
    spec = load_registry(REGISTRY).get("braai")
    with pytest.raises(FetchError, match=r"braai_d6_m9\.h5 is neither in"):
        fetch(spec, tmp_path / "models", mirror=tmp_path, progress=False)


def test_a_conversion_worse_than_the_limit_is_refused(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converted_models: Path
) -> None:
    # The real ACAI conversion differs from TensorFlow by ~1e-7: a 1e-12 limit must refuse it.
    monkeypatch.setattr(convert_module, "MAX_ABS_DIFF", 1e-12)
    spec = load_registry(REGISTRY).get("acai_o")
    with pytest.raises(ConversionError, match="refusing to install"):
        fetch(spec, tmp_path, mirror=reference / "models", progress=False)
    assert read_manifest(tmp_path, spec) is None


def test_missing_tensorflow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[convert\]'"):
        import_tensorflow()


def test_published_onnx_slot_installs_from_a_mirror_with_a_pinned_sha(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    model = tiny_onnx(mirror / "lsst_reliability.onnx")
    registry = yaml.safe_load(REGISTRY.read_text())
    entry = registry["models"]["lsst_reliability"]
    spec_path = write_registry(tmp_path, {"lsst_reliability": entry})
    with pytest.raises(ConfigError, match="pins no sha256"):
        fetch(load_registry(spec_path).get("lsst_reliability"), tmp_path / "m", mirror=mirror)
    entry["source"]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    spec = load_registry(write_registry(tmp_path, {"lsst_reliability": entry}))
    manifest = fetch(spec.get("lsst_reliability"), tmp_path / "m", mirror=mirror, progress=False)
    assert manifest.max_abs_diff is None and manifest.onnx_sha256 == manifest.source_sha256


def test_models_cli_fetch_and_list(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], converted_models: Path
) -> None:
    models_dir = tmp_path / "models"
    shutil.copytree(converted_models / "braai", models_dir / "braai")
    code = main(
        [
            "models",
            "fetch",
            "--quiet",
            "--models-dir",
            str(models_dir),
            "--mirror",
            str(reference / "models"),
            "acai_n",
            "drb",
        ]
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "acai_n d1_dnn_20201130: installed (max |ONNX - TF| = " in output
    assert "drb: computed from the packet" in output
    assert main(["models", "list", "--models-dir", str(models_dir)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["braai"][3] == "yes" and rows["braai"][4] == "24f97a6a37cf"
    assert rows["acai_n"][3] == "yes" and float(rows["acai_n"][6]) < 1e-5
    assert rows["btsbot"][3] == "no" and rows["drb"][3] == "packet"


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        ("cpu", [CUDA, CPU], [CPU]),
        ("auto", [CPU], [CPU]),
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
    ],
)
def test_provider_choice(requested: str, available: list[str], expected: list[str]) -> None:
    assert choose_providers(requested, available) == expected


def test_cuda_without_cuda_is_an_error() -> None:
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        choose_providers("cuda", [CPU])


def test_a_silent_cpu_fallback_is_refused(tmp_path: Path) -> None:
    """ONNX Runtime without CUDA builds a CPU session when asked for CUDA: we refuse it."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    settings = ModelSettings(provider="cuda")
    with pytest.raises(ConfigError, match="runs on"):
        open_session("tiny", model, settings, available=[CUDA, CPU])
    session = open_session("tiny", model, ModelSettings(provider="auto"), available=[CPU])
    assert session.get_providers() == [CPU]
    assert session.get_session_options().intra_op_num_threads == 1


def test_a_corrupt_onnx_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match="nightjar models fetch broken"):
        open_session("broken", path, ModelSettings(provider="cpu"))


def test_a_published_onnx_with_other_inputs_is_refused(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    model = tiny_onnx(mirror / "lsst_reliability.onnx")
    entry = yaml.safe_load(REGISTRY.read_text())["models"]["lsst_reliability"]
    entry["source"]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    entry["inputs"] = [{"name": "image", "shape": [30, 30, 3]}]
    spec = load_registry(write_registry(tmp_path, {"lsst_reliability": entry}))
    with pytest.raises(FetchError, match=r"takes \['triplet'\]"):
        fetch(spec.get("lsst_reliability"), tmp_path / "m", mirror=mirror, progress=False)


def test_the_lsst_reliability_slot_scores_rubin_cutouts(reference: Path, tmp_path: Path) -> None:
    """The generic triplet adapter on 30x30 Rubin stamps, with a real (tiny) ONNX model."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    model = tiny_onnx(mirror / "lsst_reliability.onnx")
    entries = yaml.safe_load(REGISTRY.read_text())["models"]
    entries["lsst_reliability"]["source"]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    registry_path = write_registry(tmp_path, entries)
    spec = load_registry(registry_path).get("lsst_reliability")
    fetch(spec, tmp_path / "m", mirror=mirror, progress=False)
    settings = ModelSettings(dir=tmp_path / "m", registry=registry_path, provider="cpu")
    raw = (reference / "lsst" / "alerts" / "25409136044802067.avro").read_bytes()
    schema = load_schema(str(reference / "lsst/schema/7/1/lsst.v7_1.alert.avsc"))
    record: Any = fastavro.schemaless_reader(io.BytesIO(raw[5:]), schema)
    source = record["diaSource"]
    item = ScoringInput(
        "lsst", source["diaSourceId"], str(source["diaObjectId"]), source["ra"], source["dec"],
        0.0, source, (), Cutouts(*(record[k] for k in STAMPS)),
    )  # fmt: skip
    (result,) = Annotator.from_settings(settings).annotate([item])
    scores = {a.model: a.score for a in result.annotations}
    # Independently: each stamp over its own L2 norm (astropy), then sigmoid(mean).
    channels = []
    for key in STAMPS:
        with fits.open(io.BytesIO(record[key])) as hdus:
            data = np.nan_to_num(np.asarray(hdus[0].data, dtype=np.float64))
        channels.append(data / np.linalg.norm(data))
    expected = 1.0 / (1.0 + np.exp(-np.mean(np.stack(channels, axis=-1))))
    assert scores["lsst_reliability"] == pytest.approx(expected, abs=1e-6)
    assert scores["reliability"] == pytest.approx(0.8079, abs=1e-4)


def test_fetch_downloads_and_verifies_over_http(tmp_path: Path) -> None:
    """A real local HTTP server: streamed download, sha256 check, then a 404 named."""
    served = tmp_path / "served"
    served.mkdir()
    model = tiny_onnx(served / "lsst_reliability.onnx")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            entry = yaml.safe_load(REGISTRY.read_text())["models"]["lsst_reliability"]
            base = f"http://127.0.0.1:{server.server_address[1]}"
            entry["source"]["url"] = f"{base}/lsst_reliability.onnx"
            entry["source"]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
            spec = load_registry(write_registry(tmp_path, {"lsst_reliability": entry}))
            manifest = fetch(spec.get("lsst_reliability"), tmp_path / "m", progress=False)
            assert manifest.source_url == entry["source"]["url"]
            entry["source"]["url"] = f"{base}/absent.onnx"
            (tmp_path / "m" / "downloads" / "lsst_reliability.onnx").unlink()
            spec = load_registry(write_registry(tmp_path, {"lsst_reliability": entry}))
            with pytest.raises(FetchError, match="HTTP 404"):
                fetch(spec.get("lsst_reliability"), tmp_path / "m", progress=False)
        finally:
            server.shutdown()
            thread.join(timeout=10)


def _archive(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """A .tar.gz of (name, file bytes) members, or (name, None, link target) symlinks."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                archive.addfile(info)
            else:
                info.size = len(data or b"")
                archive.addfile(info, io.BytesIO(data or b""))
    return path


@pytest.mark.parametrize("with_filter", [True, False], ids=["data-filter", "python-3.11.2"])
def test_saved_model_archives_unpack_only_inside_their_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_filter: bool
) -> None:
    if not with_filter:  # Debian bookworm's Python 3.11.2 (the offline images) has no filters
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    good = _archive(tmp_path / "good.tar.gz", [("model/saved_model.pb", b"pb", None)])
    with tarfile.open(good) as archive:
        convert_module._extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "model" / "saved_model.pb").read_bytes() == b"pb"
    for name, members in {
        "escape": [("../outside.pb", b"x", None)],
        "link": [("model/link", None, "/etc/passwd")],
    }.items():
        bad = _archive(tmp_path / f"{name}.tar.gz", members)
        with tarfile.open(bad) as archive, pytest.raises(tarfile.TarError):
            convert_module._extract(archive, tmp_path / name)
    assert not (tmp_path / "outside.pb").exists()
