"""Fetch-time conversion: published TensorFlow/Keras weights -> verified ONNX.

Input: a registry entry and its verified source file (Keras 2 .h5 or a SavedModel tar).
Output: ONNX bytes (tf2onnx, opset 17) and the max |ONNX Runtime - TensorFlow| over a probe
batch (random inputs + the published worked example); refused above 1e-5. TensorFlow is
imported only here, so inference never needs it.
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from broker.errors import ConfigError, NightjarError
from workers.models.registry import ModelSpec

log = logging.getLogger(__name__)

OPSET = 17
MAX_ABS_DIFF = 1e-5
RANDOM_PROBE = 16
CONVERT_EXTRA = "pip install -e '.[convert]'"

Predict = Callable[[list[np.ndarray]], np.ndarray]


class ConversionError(NightjarError):
    """The converted model disagrees with TensorFlow, or the source cannot be read."""


@dataclass(frozen=True, slots=True)
class Converted:
    onnx: bytes
    max_abs_diff: float
    probe: str
    versions: dict[str, str]


def import_tensorflow() -> Any:
    """TensorFlow with Keras 2 semantics (tf_keras), or a ConfigError naming the extra."""
    # Must be set before TensorFlow is first imported: .h5 files are Keras 2 files.
    if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise ConfigError(
            "TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set; convert models in "
            "a fresh process (nightjar models fetch) or set TF_USE_LEGACY_KERAS=1 first"
        )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tf2onnx logs every optimiser pass at INFO; our own INFO line reports the result.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    try:
        tf = importlib.import_module("tensorflow")
        importlib.import_module("tf_keras")
        importlib.import_module("tf2onnx")
    except ImportError as exc:
        raise ConfigError(
            f"converting models to ONNX needs TensorFlow, tf_keras and tf2onnx ({exc.name} "
            f"is missing); install them with: {CONVERT_EXTRA}"
        ) from exc
    return tf


def convert(spec: ModelSpec, source: Path, example_dir: Path | None) -> Converted:
    """Convert `source` to ONNX and check it against TensorFlow on a probe batch."""
    if spec.source is None:
        raise ConfigError(f"model {spec.name} has no source to convert")
    tf = import_tensorflow()
    with tempfile.TemporaryDirectory(prefix="nightjar-convert-") as tmp:
        if spec.source.format == "keras2_h5":
            function, predict = _keras(spec, source)
        elif spec.source.format == "tf_savedmodel_tar":
            function, predict = _saved_model(tf, spec, source, Path(tmp))
        else:
            raise ConfigError(f"model {spec.name}: format {spec.source.format} is not converted")
        probe, description = probe_inputs(spec, example_dir)
        expected = predict(probe)
        onnx_bytes = _to_onnx(tf, spec, function)
        diff = compare(onnx_bytes, spec, probe, expected)
    if not diff <= MAX_ABS_DIFF:
        raise ConversionError(
            f"model {spec.name}: ONNX and TensorFlow differ by {diff:.3g} on {description} "
            f"(limit {MAX_ABS_DIFF:g}); refusing to install it"
        )
    log.info("model %s: ONNX agrees with TensorFlow to %.3g on %s", spec.name, diff, description)
    return Converted(onnx_bytes, diff, description, _versions(tf))


def _keras(spec: ModelSpec, source: Path) -> tuple[Any, Predict]:
    tf_keras = importlib.import_module("tf_keras")
    try:
        model = tf_keras.models.load_model(str(source), compile=False)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{source} is not a readable Keras 2 .h5 model: {exc}") from exc
    # Keras takes its inputs by position: the registry must list them in the same order.
    shapes = [tuple(tensor.shape[1:]) for tensor in model.inputs]
    if shapes != [tensor.shape for tensor in spec.inputs]:
        raise ConversionError(
            f"model {spec.name}: the Keras model takes inputs of shapes {shapes} in this order, "
            f"the registry lists {[tensor.shape for tensor in spec.inputs]}"
        )

    def predict(inputs: list[np.ndarray]) -> np.ndarray:
        return np.asarray(model(inputs if len(inputs) > 1 else inputs[0], training=False))

    return model, predict


def _extract(archive: tarfile.TarFile, folder: Path) -> None:
    """Unpack refusing absolute paths, links out of `folder` and devices (the "data" filter).

    Python 3.11 has the filter from 3.11.4 only; Debian bookworm's 3.11.2, the base of the
    offline images (deploy/images/build.sh), gets the stricter check by hand: plain files and
    folders inside `folder`, nothing else.
    """
    if hasattr(tarfile, "data_filter"):
        archive.extractall(folder, filter="data")
        return
    root = folder.resolve()
    for member in archive.getmembers():
        inside = (root / member.name).resolve().is_relative_to(root)
        if not inside or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"{member.name!r} is not a plain file or folder inside it")
    archive.extractall(folder)


def _saved_model(tf: Any, spec: ModelSpec, source: Path, tmp: Path) -> tuple[Any, Predict]:
    try:
        with tarfile.open(source) as archive:
            _extract(archive, tmp)
    except (tarfile.TarError, OSError) as exc:
        raise ConversionError(f"{source} is not a readable tar archive: {exc}") from exc
    found = sorted(tmp.rglob("saved_model.pb"))
    if not found:
        raise ConversionError(f"{source} holds no TensorFlow SavedModel (saved_model.pb)")
    loaded = tf.saved_model.load(str(found[0].parent))
    signature = loaded.signatures["serving_default"]
    names = sorted(signature.structured_input_signature[1])
    if names != sorted(tensor.name for tensor in spec.inputs):
        raise ConversionError(
            f"model {spec.name}: the SavedModel takes {names}, the registry says "
            f"{[tensor.name for tensor in spec.inputs]}"
        )
    output = next(iter(signature.structured_outputs))

    def predict(inputs: list[np.ndarray]) -> np.ndarray:
        # By name: the signature's own input order is not the registry's.
        feeds = {t.name: tf.constant(value) for t, value in zip(spec.inputs, inputs, strict=True)}
        return np.asarray(signature(**feeds)[output])

    return (loaded, signature, output), predict


def _to_onnx(tf: Any, spec: ModelSpec, function: Any) -> bytes:
    tf2onnx = importlib.import_module("tf2onnx")
    signature = [
        tf.TensorSpec((None, *tensor.shape), tf.float32, name=tensor.name) for tensor in spec.inputs
    ]
    if isinstance(function, tuple):
        _, concrete, output = function

        @tf.function(input_signature=signature)
        def wrapped(*args: Any) -> Any:
            feeds = {t.name: arg for t, arg in zip(spec.inputs, args, strict=True)}
            return {output: concrete(**feeds)[output]}

        proto, _ = tf2onnx.convert.from_function(wrapped, input_signature=signature, opset=OPSET)
    else:
        proto, _ = tf2onnx.convert.from_keras(function, input_signature=signature, opset=OPSET)
    return bytes(proto.SerializeToString())


def probe_inputs(spec: ModelSpec, example_dir: Path | None) -> tuple[list[np.ndarray], str]:
    """Random inputs of the declared shapes, plus the worked example when available."""
    rng = np.random.default_rng(20201130)
    random = [_random_input(rng, tensor.shape, bool(tensor.columns)) for tensor in spec.inputs]
    example = _example_inputs(spec, example_dir)
    if example is None:
        return random, f"{RANDOM_PROBE} random inputs"
    merged = [np.concatenate([a, b]) for a, b in zip(random, example, strict=True)]
    return merged, f"{RANDOM_PROBE} random inputs + {len(example[0])} worked-example alerts"


def _random_input(rng: np.random.Generator, shape: Sequence[int], table: bool) -> np.ndarray:
    if table:
        return rng.uniform(-5.0, 25.0, size=(RANDOM_PROBE, *shape)).astype(np.float32)
    # About the scale of an L2-normalised 63x63 stamp.
    return rng.normal(0.0, 1.0 / 63.0, size=(RANDOM_PROBE, *shape)).astype(np.float32)


def _example_inputs(spec: ModelSpec, example_dir: Path | None) -> list[np.ndarray] | None:
    example = spec.source.example if spec.source else None
    if example is None or example_dir is None:
        return None
    triplet_path = _find(example_dir, example.triplets)
    table_path = _find(example_dir, example.table) if example.table else None
    if triplet_path is None:
        return None
    triplets = np.load(triplet_path).astype(np.float32)
    inputs: list[np.ndarray] = []
    for tensor in spec.inputs:
        if not tensor.columns:
            if tuple(triplets.shape[1:]) != tensor.shape:
                return None
            inputs.append(triplets)
        elif table_path is None:
            return None
        else:
            inputs.append(read_columns(table_path, tensor.columns))
    return inputs


def read_columns(path: Path, columns: Sequence[str]) -> np.ndarray:
    """The named columns of a CSV as (N, len(columns)) float32."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        return np.asarray([[float(row[c]) for c in columns] for row in rows], dtype=np.float32)
    except KeyError as exc:
        raise ConversionError(f"{path} has no column {exc}") from exc


def _find(folder: Path, name: str | None) -> Path | None:
    if name is None:
        return None
    for candidate in (folder / name, *sorted(folder.glob(f"*/{name}"))):
        if candidate.is_file():
            return candidate
    return None


def compare(
    onnx_bytes: bytes, spec: ModelSpec, inputs: list[np.ndarray], expected: np.ndarray
) -> float:
    """max |ONNX Runtime - TensorFlow| over the probe (CPU, deterministic)."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feeds = {tensor.name: value for tensor, value in zip(spec.inputs, inputs, strict=True)}
    onnx_out = np.asarray(session.run(None, feeds)[0], dtype=np.float64)
    tf_out = np.asarray(expected, dtype=np.float64).reshape(onnx_out.shape)
    return float(np.max(np.abs(onnx_out - tf_out)))


def _versions(tf: Any) -> dict[str, str]:
    versions = {"tensorflow": str(tf.__version__), "onnxruntime": ort.__version__}
    for name in ("tf_keras", "tf2onnx", "onnx", "numpy"):
        module = importlib.import_module(name)
        versions[name] = str(getattr(module, "__version__", "unknown"))
    versions["opset"] = str(OPSET)
    return versions
