"""The detector Nightjar trains: a small fully convolutional heat-map net with the Tails head.

Input: (N, H, W, 3) Tails-normalised triplets of any size (63 px alert stamps, 256 px boxes).
Output: (N, 3) [p_comet, x_rel, y_rel]: p = sigmoid(max of the class map), position = mean of
cell centres plus regressed offsets, weighted by softmax(location map) within WINDOW cells of
the class peak (the object that gave the score), divided by the input size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STRIDE = 4  # input pixels per heat-map cell
WINDOW = 2  # cells around the class peak that the position is averaged over
INPUT_NAME = "triplet"
OUTPUT_NAME = "tails"


@dataclass(frozen=True, slots=True)
class Architecture:
    """Widths of the convolution stages; the default costs ~15 MMAC on a 63 px stamp."""

    widths: tuple[int, ...] = (16, 24, 32, 48, 48)

    def describe(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "stride": STRIDE, "kind": "heatmap-fcn"}


def build_body(tf: Any, arch: Architecture) -> Any:
    """Conv stages: 5x5/2, 3x3, 3x3/2, then dilated 3x3 (2 and 4): ~60 px receptive field.

    Explicit symmetric padding + 'valid' convolutions keep cell j centred on input pixel
    STRIDE * j for odd and even input sizes alike (TF's 'same' padding is not symmetric).
    """
    keras = _keras()
    first, second, third, fourth, fifth = arch.widths
    layers = keras.layers
    relu = "relu"
    return keras.Sequential(
        [
            layers.InputLayer(input_shape=(None, None, 3)),
            layers.ZeroPadding2D(2),
            layers.Conv2D(first, 5, strides=2, activation=relu),
            layers.ZeroPadding2D(1),
            layers.Conv2D(second, 3, activation=relu),
            layers.ZeroPadding2D(1),
            layers.Conv2D(third, 3, strides=2, activation=relu),
            layers.ZeroPadding2D(2),
            layers.Conv2D(fourth, 3, dilation_rate=2, activation=relu),
            layers.ZeroPadding2D(4),
            layers.Conv2D(fifth, 3, dilation_rate=4, activation=relu),
            # Channels: class logit, location logit, x and y offsets (in cells).
            layers.Conv2D(4, 1, bias_initializer=keras.initializers.Constant([-4.0, 0, 0, 0])),
        ],
        name="tails_body",
    )


def _keras() -> Any:
    import tf_keras

    return tf_keras


CLIP_ROUNDS = 3  # sigma-clipping iterations of the per-channel background and noise


def scale_input(tf: Any, triplet: Any) -> Any:
    """Each channel in units of its own noise around its background, then asinh.

    Sigma-clipped (about 3 sigma) mean and RMS per image and channel: a bright comet no
    longer dwarfs the noise as it does after the L2 normalisation alone, so faint and bright
    sources reach the convolutions on one scale. Invariant to the channel's scale, so any
    positive normalisation of the input (the contract's L2) gives the same result. The clip
    is a smooth weight, 1 / (1 + (d / 3 sigma)^8): a hard cut would flip pixels in or out on
    rounding differences, and ONNX Runtime would no longer agree with TensorFlow. The sums
    run in float64 for the same reason: float32 sums over a 256 px box differ between the
    two by ~1e-5 (summation order); pixel-wise work stays float32 (fast).
    """
    # Channels first while scaling: a per-(image, channel) statistic then broadcasts over
    # contiguous pixels. Channels last, ONNX Runtime broadcasts (N, 1, 1, 3) against
    # (N, H, W, 3) three floats at a time, and this elementwise work cost twice the
    # convolutions (0.49 ms per stamp against 0.2, measured).
    planes = tf.transpose(triplet, [0, 3, 1, 2])
    # Every other pixel in each direction: a quarter of the pixels is plenty for the noise.
    # Flattened to (N, C, pixels) for the sums (see _mean).
    shape = tf.shape(planes)
    sample = tf.reshape(planes[:, :, ::2, ::2], [shape[0], shape[1], -1])
    centre = _mean(tf, sample)
    centred = sample - centre
    spread = tf.sqrt(_mean(tf, centred * centred))
    for _ in range(CLIP_ROUNDS):
        ratio = centred / (3.0 * tf.maximum(spread, 1e-12))
        square = ratio * ratio  # products, not Pow: cheaper in ONNX Runtime
        keep = 1.0 / (1.0 + (square * square) * (square * square))
        count = tf.maximum(_mean(tf, keep), 1e-6)
        # Re-centre every round so each sum runs over numbers near zero.
        shift = _mean(tf, keep * centred) / count
        centred, centre = centred - shift, centre + shift
        spread = tf.sqrt(_mean(tf, keep * centred * centred) / count)
    scaled = (planes - centre[..., None]) / tf.maximum(spread, 1e-12)[..., None]
    # asinh spelled out on |z|: ONNX Runtime's Asinh loses digits for large negative z.
    magnitude = tf.abs(scaled)
    stretched = tf.sign(scaled) * tf.math.log(magnitude + tf.sqrt(magnitude * magnitude + 1.0))
    return tf.transpose(stretched, [0, 2, 3, 1])


def _mean(tf: Any, values: Any) -> Any:
    """Per image and channel mean over the pixels of (N, C, pixels), summed in float64 (see
    scale_input), as float32. A sum over a count: tf2onnx turns a channels-first mean into
    GlobalAveragePool, which ONNX Runtime does not run in float64."""
    wide = tf.cast(values, tf.float64)
    total = tf.reduce_sum(wide, axis=2, keepdims=True) / tf.cast(tf.shape(wide)[2], tf.float64)
    return tf.cast(total, tf.float32)


def cell_grid(tf: Any, maps: Any) -> tuple[Any, Any]:
    """Pixel coordinates (x, y) of every cell centre, flattened like the heat map."""
    shape = tf.shape(maps)
    rows, cols = shape[1], shape[2]
    xs = tf.cast(tf.range(cols), tf.float32) * STRIDE
    ys = tf.cast(tf.range(rows), tf.float32) * STRIDE
    grid_x = tf.reshape(tf.tile(xs[None, :], [rows, 1]), [-1])
    grid_y = tf.reshape(tf.tile(ys[:, None], [1, cols]), [-1])
    return grid_x, grid_y


def head(tf: Any, maps: Any, triplet: Any) -> tuple[Any, Any, Any, Any]:
    """(outputs (N, 3), class logits (N, cells), location logits (N, cells), positions in
    pixels (N, 2)). Separate maps: a class target peaks at 1 wherever the comet falls, while
    the location map is a distribution over cells."""
    batch = tf.shape(maps)[0]
    heat = tf.reshape(maps[..., 0], [batch, -1])
    where = tf.reshape(maps[..., 1], [batch, -1])
    offset_x = tf.reshape(maps[..., 2], [batch, -1]) * STRIDE
    offset_y = tf.reshape(maps[..., 3], [batch, -1]) * STRIDE
    grid_x, grid_y = cell_grid(tf, maps)
    weights = local_softmax(tf, heat, where, grid_x, grid_y)
    x = tf.reduce_sum(weights * (grid_x[None, :] + offset_x), axis=1)
    y = tf.reduce_sum(weights * (grid_y[None, :] + offset_y), axis=1)
    size = tf.cast(tf.shape(triplet), tf.float32)
    score = tf.sigmoid(tf.reduce_max(heat, axis=1))
    x_rel = tf.clip_by_value(x / size[2], 0.0, 1.0)
    y_rel = tf.clip_by_value(y / size[1], 0.0, 1.0)
    outputs = tf.stack([score, x_rel, y_rel], axis=1)
    return outputs, heat, where, tf.stack([x, y], axis=1)


def local_softmax(tf: Any, heat: Any, where: Any, grid_x: Any, grid_y: Any) -> Any:
    """softmax(where) over the cells within WINDOW cells of the class map's peak, else 0.

    Local: summed over a whole 256 px box (4096 cells), the background's small weights
    would pull the position towards the box centre.
    """
    peak = tf.one_hot(tf.argmax(heat, axis=1), tf.shape(heat)[1])
    peak_x = tf.reduce_sum(peak * grid_x[None, :], axis=1, keepdims=True)
    peak_y = tf.reduce_sum(peak * grid_y[None, :], axis=1, keepdims=True)
    distance2 = (grid_x[None, :] - peak_x) ** 2 + (grid_y[None, :] - peak_y) ** 2
    near = distance2 <= float((WINDOW * STRIDE) ** 2)
    masked = tf.where(near, where, tf.fill(tf.shape(where), -1e9))
    weights = tf.exp(masked - tf.reduce_max(masked, axis=1, keepdims=True))
    return weights / tf.reduce_sum(weights, axis=1, keepdims=True)


def serving_function(tf: Any, body: Any) -> Any:
    """The exported graph: any (N, H, W, 3) float32 input named `triplet` -> (N, 3)."""
    signature = [tf.TensorSpec((None, None, None, 3), tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=signature)
    def serve(triplet: Any) -> Any:
        outputs, _, _, _ = head(tf, body(scale_input(tf, triplet), training=False), triplet)
        return {OUTPUT_NAME: outputs}

    return serve, signature


def multiply_accumulates(arch: Architecture, size: int) -> int:
    """Multiply-accumulates of one forward pass on a size x size input (for the card)."""
    first, second, third, fourth, fifth = arch.widths
    half = (size - 1) // 2 + 1
    quarter = (half - 1) // 2 + 1
    return (
        half * half * 25 * 3 * first
        + half * half * 9 * first * second
        + quarter * quarter * 9 * (second * third + third * fourth + fourth * fifth)
        + quarter * quarter * fifth * 4
    )
