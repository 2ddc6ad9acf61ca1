"""Re-export a trained detector's weights through the current serving graph.

Input: a Tails ONNX model written by `nightjar tails train` and its model card. Output: the
same weights exported again (the input scaling and head as `network` writes them now) as
<out>/<name>.onnx plus its card, refused unless the new file agrees with TensorFlow and with
the old file to MAX_ABS_DIFF. For changes that make the graph faster without changing what
it computes: retraining would give other weights (and other evaluation numbers).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from broker.tools.models.convert import MAX_ABS_DIFF, ConversionError, import_tensorflow
from broker.tools.tails import network, train
from broker.tools.tails.simulate import iter_chunks
from workers.models.tails_contract import preprocess

# tf2onnx names a Keras Conv2D's kernel and bias after the layer: conv2d, conv2d_1, ...
_WEIGHT = re.compile(r"^tails_body/conv2d(?:_(\d+))?/(Conv2D|BiasAdd)/ReadVariableOp:0$")
PROBE_SEED = 7_000_000


def conv_weights(model: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel HWIO, bias) of every convolution of the model's body, in layer order."""
    import onnx
    from onnx import numpy_helper

    found: dict[int, dict[str, np.ndarray]] = {}
    for tensor in onnx.load(str(model)).graph.initializer:
        match = _WEIGHT.match(tensor.name)
        if match:
            layer = int(match.group(1) or 0)
            found.setdefault(layer, {})[match.group(2)] = numpy_helper.to_array(tensor)
    if not found or any(len(parts) != 2 for parts in found.values()):
        raise ConversionError(f"{model} holds no Nightjar Tails body (conv2d weights)")
    # Numbered in creation order, from wherever Keras's counter stood when the body was
    # built (conv2d_6... when the process had built another first): the order is what
    # counts. ONNX keeps kernels as (out, in, height, width); Keras as (height, width, in, out).
    return [(found[i]["Conv2D"].transpose(2, 3, 1, 0), found[i]["BiasAdd"]) for i in sorted(found)]


def reexport(model: Path, card_path: Path, out: Path, name: str, command: str) -> dict[str, Any]:
    """Write <out>/<name>.onnx and .json; return the new card."""
    card = json.loads(card_path.read_text())
    tf = import_tensorflow()
    body = network.build_body(tf, network.Architecture(tuple(card["architecture"]["widths"])))
    # In the order they were created, as tf2onnx numbers them.
    convolutions = sorted(
        (layer for layer in body.layers if "conv2d" in layer.name), key=_creation_order
    )
    weights = conv_weights(model)
    if len(weights) != len(convolutions):
        raise ConversionError(
            f"{model} has {len(weights)} convolutions; the card's architecture has "
            f"{len(convolutions)}"
        )
    for layer, (kernel, bias) in zip(convolutions, weights, strict=True):
        layer.set_weights([kernel, bias])
    onnx_bytes = train.export(tf, body)
    stamps, _ = preprocess(next(iter_chunks(256, PROBE_SEED, "stamp")).images)
    boxes, _ = preprocess(next(iter_chunks(8, PROBE_SEED, "box")).images)
    check = train.verify(tf, body, onnx_bytes, stamps, PROBE_SEED)
    old_bytes = model.read_bytes()
    previous = max(_max_difference(old_bytes, onnx_bytes, inputs) for inputs in (stamps, boxes))
    if not previous < MAX_ABS_DIFF:
        raise ConversionError(
            f"the re-exported model differs from {model} by {previous:.3g} "
            f"(limit {MAX_ABS_DIFF:g}): not the same detector; not writing it"
        )
    card["onnx"].update(
        sha256=hashlib.sha256(onnx_bytes).hexdigest(), bytes=len(onnx_bytes), **check
    )
    card["reexport"] = {
        "command": command,
        "from_sha256": hashlib.sha256(old_bytes).hexdigest(),
        "max_abs_diff_vs_previous": previous,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.onnx").write_bytes(onnx_bytes)
    (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _creation_order(layer: Any) -> int:
    """conv2d -> 0, conv2d_7 -> 7: Keras numbers layers of a kind as it creates them."""
    suffix = layer.name.rpartition("_")[2]
    return int(suffix) if suffix.isdigit() else 0


def _max_difference(old: bytes, new: bytes, inputs: np.ndarray) -> float:
    import onnxruntime as ort

    outputs = [
        ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(
            None, {network.INPUT_NAME: inputs}
        )[0]
        for blob in (old, new)
    ]
    return float(np.max(np.abs(np.asarray(outputs[0], np.float64) - outputs[1])))
