"""Training: simulated triplets -> a Tails-contract detector as verified ONNX plus its card.

Input: a `TrainConfig` (simulated on the fly from n/seed, or shards from `tails simulate`).
Output: <out>/<name>.onnx (tf2onnx, opset 17, checked against TensorFlow to < 1e-5 on stamps
and on 256 px boxes) and <out>/<name>.json (command, seed, data, timing, validation).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from broker.tools.models.convert import MAX_ABS_DIFF, OPSET, ConversionError, import_tensorflow
from broker.tools.tails import network
from broker.tools.tails.backgrounds import Backgrounds
from broker.tools.tails.simulate import (
    PROGRESS_FROM,
    Dataset,
    iter_chunks,
    iter_shards,
    with_progress,
)
from broker.tools.tails.subjects import negative_mix
from workers.models.tails_contract import preprocess

log = logging.getLogger(__name__)

POSITION_WEIGHT = 0.05  # pixels^2-ish Huber loss vs. the classification's nats
HEAT_WEIGHT = 0.05
# Negatives count this much more in the image-level loss: the operating points that matter
# allow 1 false positive in 1,000, so a look-alike must not be called a comet unless the
# evidence is clear (faint, compact comets are as often look-alikes: they pay for it).
NEGATIVE_WEIGHT = 4.0
HEAT_SIGMA = 4.0  # pixels: width of the heat-map target around the comet


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    name: str = "tails_default"
    n: int = 32_000
    seed: int = 1
    data: Path | None = None  # shards from `nightjar tails simulate` instead of n/seed
    validation: int = 2_000
    comet_fraction: float = 0.4
    # Shares of point-source transients and asteroids among the training negatives, times
    # this (the look-alikes above the 0.1% FPR threshold); held-out sets keep the default mix.
    hard_negatives: float = 1.0
    # Share of training comets drawn from the compact population (subjects.COMPACT_RADIUS):
    # nearly point-like, the comets the detector misses most.
    hard_comets: float = 0.0
    # Real alert files whose cutouts serve as the backgrounds of this share of the training
    # stamps (the rest on simulated fields): see broker.tools.tails.backgrounds.
    backgrounds: tuple[Path, ...] = ()
    background_fraction: float = 0.5
    epochs: int = 12
    batch: int = 64
    learning_rate: float = 3e-3
    threads: int = 2
    architecture: network.Architecture = field(default_factory=network.Architecture)
    command: str = ""


@dataclass
class Arrays:
    """Preprocessed inputs and targets; rows the contract cannot normalise are dropped."""

    inputs: np.ndarray
    labels: np.ndarray  # 1.0 comet, 0.0 not
    positions: np.ndarray  # (N, 2) pixels, 0 for non-comets
    snr: np.ndarray
    dropped: int = 0

    @classmethod
    def from_chunks(cls, chunks: Iterable[Dataset], total: int | None = None) -> Arrays:
        """`total`: the number of examples, for the progress bar."""
        parts = [cls.from_dataset(chunk) for chunk in with_progress(chunks, total)]
        return cls(
            np.concatenate([p.inputs for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.positions for p in parts]),
            np.concatenate([p.snr for p in parts]),
            sum(p.dropped for p in parts),
        )

    @classmethod
    def from_dataset(cls, data: Dataset) -> Arrays:
        inputs, reasons = preprocess(data.images)
        keep = np.array([reason is None for reason in reasons])
        labels = data.is_comet.astype(np.float32)
        positions = np.nan_to_num(np.stack([data.x, data.y], axis=1)) * labels[:, None]
        return cls(
            inputs[keep],
            labels[keep],
            positions[keep].astype(np.float32),
            data.snr[keep],
            int((~keep).sum()),
        )


def train(config: TrainConfig, backgrounds: Backgrounds | None = None) -> dict[str, Any]:
    """Train, export and verify; write the .onnx and the card; return the card.
    `backgrounds`: the cutouts loaded from config.backgrounds."""
    tf = import_tensorflow()
    _configure(tf, config)
    started = time.perf_counter()
    train_data, validation = _load(config, backgrounds)
    simulated = time.perf_counter() - started
    body = network.build_body(tf, config.architecture)
    history = _fit(tf, body, train_data, config)
    seconds = time.perf_counter() - started - simulated
    onnx_bytes = export(tf, body)
    check = verify(tf, body, onnx_bytes, validation.inputs[:256], config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    onnx_path = config.out / f"{config.name}.onnx"
    onnx_path.write_bytes(onnx_bytes)
    card = _card(config, train_data, validation, history, check, onnx_bytes, simulated, seconds)
    (config.out / f"{config.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    log.info("wrote %s (%d bytes) after %.0f s of training", onnx_path, len(onnx_bytes), seconds)
    return card


def _configure(tf: Any, config: TrainConfig) -> None:
    # Other work shares this machine: a fixed, small number of threads, set before first use.
    try:
        tf.config.threading.set_intra_op_parallelism_threads(config.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # TensorFlow was already initialised in this process (its thread pools are fixed
        # once created): training goes on with them rather than failing.
        log.warning("TensorFlow already initialised: --threads %d not applied", config.threads)
    tf.keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()


def _load(config: TrainConfig, backgrounds: Backgrounds | None) -> tuple[Arrays, Arrays]:
    if config.data is not None:
        data = Arrays.from_chunks(iter_shards(config.data))
        split = max(len(data.labels) - config.validation, 1)
        return _slice(data, slice(0, split)), _slice(data, slice(split, None))
    mix = negative_mix(config.hard_negatives)
    real = round(config.n * config.background_fraction) if backgrounds is not None else 0
    chunks: Iterable[Dataset] = iter_chunks(
        config.n - real, config.seed, "stamp", config.comet_fraction, mix, config.hard_comets
    )
    if backgrounds is not None:
        # Its own seed stream: the simulated-field part is the same as without backgrounds.
        on_real = iter_chunks(
            real,
            config.seed + 3_000_000,
            "stamp",
            config.comet_fraction,
            mix,
            config.hard_comets,
            backgrounds,
        )
        chunks = itertools.chain(chunks, on_real)
    # A different seed stream: validation never shares a chunk with training.
    held = iter_chunks(config.validation, config.seed + 1_000_000, "stamp", 0.5)
    return Arrays.from_chunks(chunks, config.n), Arrays.from_chunks(held)


def _slice(data: Arrays, part: slice) -> Arrays:
    return Arrays(data.inputs[part], data.labels[part], data.positions[part], data.snr[part])


def _fit(tf: Any, body: Any, data: Arrays, config: TrainConfig) -> list[dict[str, float]]:
    keras = network._keras()
    steps = config.epochs * max(len(data.labels) // config.batch, 1)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, alpha=0.02)
    optimizer = keras.optimizers.Adam(schedule)
    step = _train_step(tf, body, optimizer)
    rng = np.random.default_rng(config.seed)
    history = []
    batches = len(data.labels) // config.batch
    quiet = config.epochs * batches < PROGRESS_FROM
    with tqdm(
        total=config.epochs * batches, unit="batch", desc="training", disable=quiet, mininterval=1.0
    ) as bar:
        for epoch in range(config.epochs):
            started = time.perf_counter()
            totals = np.zeros(3)
            order = rng.permutation(len(data.labels))
            for index in range(batches):
                rows = np.sort(order[index * config.batch : (index + 1) * config.batch])
                inputs, positions = augment(rng, data.inputs[rows], data.positions[rows])
                parts = step(inputs, data.labels[rows], positions)
                totals += np.array([float(value) for value in parts])
                bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{totals[0] / max(batches, 1):.4f}")
            mean = totals / max(batches, 1)
            history.append(
                {
                    "epoch": epoch + 1,
                    "loss": mean[0],
                    "position_loss": mean[1],
                    "heat_loss": mean[2],
                }
            )
            log.info(
                "epoch %d/%d: loss %.4f (position %.3f, heat %.3f) in %.0f s",
                epoch + 1,
                config.epochs,
                *mean,
                time.perf_counter() - started,
            )
    return history


def augment(
    rng: np.random.Generator, inputs: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/transposes of the square images, with the positions to match:
    comets and artefacts have no preferred orientation, so this is free extra data."""
    size = inputs.shape[1]
    x, y = positions[:, 0].copy(), positions[:, 1].copy()
    flips = rng.integers(0, 2, 3)
    if flips[0]:
        inputs, x = inputs[:, :, ::-1], size - 1 - x
    if flips[1]:
        inputs, y = inputs[:, ::-1], size - 1 - y
    if flips[2]:
        inputs, x, y = inputs.transpose(0, 2, 1, 3), y, x
    return np.ascontiguousarray(inputs), np.stack([x, y], axis=1).astype(np.float32)


def _train_step(tf: Any, body: Any, optimizer: Any) -> Any:
    signature = [
        tf.TensorSpec((None, None, None, 3), tf.float32),
        tf.TensorSpec((None,), tf.float32),
        tf.TensorSpec((None, 2), tf.float32),
    ]

    @tf.function(input_signature=signature)
    def step(inputs: Any, labels: Any, positions: Any) -> Any:
        with tf.GradientTape() as tape:
            maps = body(network.scale_input(tf, inputs), training=True)
            _, heat, where, predicted = network.head(tf, maps, inputs)
            classify, position, heat_loss = losses(
                tf, maps, (heat, where), predicted, labels, positions
            )
            total = classify + POSITION_WEIGHT * position + HEAT_WEIGHT * heat_loss
        variables = body.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
        return total, position, heat_loss

    return step


def losses(
    tf: Any, maps: Any, logits: tuple[Any, Any], predicted: Any, labels: Any, positions: Any
) -> tuple[Any, Any, Any]:
    """(image-level BCE on the max class logit, Huber position error of comets in pixels,
    dense map losses: per-cell BCE of the class map against a Gaussian bump peaking at 1 at
    the comet, and cross-entropy of softmax(location map) against the same bump, normalised).
    """
    heat, where = logits
    weights = labels + NEGATIVE_WEIGHT * (1.0 - labels)
    image = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=tf.reduce_max(heat, 1))
    classify = tf.reduce_sum(weights * image) / tf.reduce_sum(weights)
    error = tf.abs(predicted - positions)
    huber = tf.where(error < 1.0, 0.5 * error**2, error - 0.5)
    comets = tf.maximum(tf.reduce_sum(labels), 1.0)
    position = tf.reduce_sum(labels[:, None] * huber) / comets
    grid_x, grid_y = network.cell_grid(tf, maps)
    dx = grid_x[None, :] - positions[:, :1]
    dy = grid_y[None, :] - positions[:, 1:]
    distance2 = dx * dx + dy * dy
    bump = tf.exp(-distance2 / (2.0 * HEAT_SIGMA**2))
    peak = tf.maximum(tf.reduce_max(bump, axis=1, keepdims=True), 1e-6)
    cells = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=labels[:, None] * bump / peak, logits=heat
    )
    share = bump / tf.maximum(tf.reduce_sum(bump, axis=1, keepdims=True), 1e-6)
    locate = tf.nn.softmax_cross_entropy_with_logits(labels=share, logits=where)
    dense = tf.reduce_mean(tf.reduce_sum(cells, axis=1)) + tf.reduce_sum(labels * locate) / comets
    return classify, position, dense


def export(tf: Any, body: Any) -> bytes:
    """tf2onnx at opset 17, with dynamic batch, height and width."""
    import tf2onnx

    serve, signature = network.serving_function(tf, body)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    return bytes(proto.SerializeToString())


def verify(
    tf: Any, body: Any, onnx_bytes: bytes, stamps: np.ndarray, seed: int
) -> dict[str, float]:
    """max |ONNX Runtime - TensorFlow| on stamps and on 256 px boxes; refuse above 1e-5."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    serve, _ = network.serving_function(tf, body)
    boxes, _ = preprocess(next(iter_chunks(8, seed + 2_000_000, "box")).images)
    result = {}
    for label, inputs in (("stamps", stamps), ("boxes", boxes)):
        expected = serve(tf.constant(inputs))[network.OUTPUT_NAME].numpy()
        got = session.run(None, {network.INPUT_NAME: inputs})[0]
        diff = float(np.max(np.abs(np.asarray(got, np.float64) - expected)))
        if not diff < MAX_ABS_DIFF:
            raise ConversionError(
                f"ONNX and TensorFlow differ by {diff:.3g} on {len(inputs)} {label} "
                f"(limit {MAX_ABS_DIFF:g}); not writing the model"
            )
        result[f"max_abs_diff_{label}"] = diff
    return result


def _card(
    config: TrainConfig,
    data: Arrays,
    validation: Arrays,
    history: list[dict[str, float]],
    check: dict[str, float],
    onnx_bytes: bytes,
    simulated: float,
    seconds: float,
) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(config).items() if k not in ("out", "command")}
    settings["data"] = None if config.data is None else str(config.data)
    settings["backgrounds"] = [str(path) for path in config.backgrounds]
    return {
        "name": config.name,
        "contract": "Tails (Duev et al. 2021): (N, H, W, 3) -> (N, 3) [p_comet, x_rel, y_rel]",
        "command": config.command,
        "seed": config.seed,
        "config": settings,
        "onnx": {
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "bytes": len(onnx_bytes),
            "opset": OPSET,
            "input": network.INPUT_NAME,
            "output": network.OUTPUT_NAME,
            **check,
        },
        "architecture": {
            **config.architecture.describe(),
            "mmac_per_stamp": network.multiply_accumulates(config.architecture, 63) / 1e6,
            "mmac_per_box": network.multiply_accumulates(config.architecture, 256) / 1e6,
        },
        "training": {
            "examples": len(data.labels),
            "comets": int(data.labels.sum()),
            "dropped_by_preprocessing": data.dropped,
            "validation_examples": len(validation.labels),
            "simulation_seconds": round(simulated, 1),
            "training_seconds": round(seconds, 1),
            "history": history,
        },
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import importlib

    versions = {}
    for name in ("tensorflow", "tf_keras", "tf2onnx", "onnx", "onnxruntime", "numpy"):
        versions[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
    return versions
