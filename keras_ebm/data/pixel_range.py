"""Conversions between uint8 images and the float pixel range a model works in.

Pure TensorFlow ops, so the export can put them inside a SavedModel signature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tensorflow.types.experimental import TensorLike


def check_pixel_range(pixel_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in pixel_range)
    except (TypeError, ValueError):
        raise ValueError(
            "`pixel_range` must be a pair (low, high) of numbers, e.g. (-1.0, 1.0). "
            f"Received: pixel_range={pixel_range!r}"
        ) from None
    if not hi > lo:
        raise ValueError(
            "`pixel_range` must satisfy low < high, e.g. (-1.0, 1.0) or (0.0, 1.0). "
            f"Received: pixel_range={pixel_range!r}"
        )
    return lo, hi


def _check_rank(x, fn_name):
    rank = x.shape.rank
    if rank is not None and rank < 3:
        raise ValueError(
            f"`{fn_name}` expects images of rank >= 3 ([height, width, channels] or "
            f"[batch, height, width, channels]). Received: images.shape={x.shape}"
        )


def to_pixel_range(images_uint8: TensorLike, pixel_range: tuple[float, float] = (-1.0, 1.0)) -> tf.Tensor:
    """Map uint8 images in [0, 255] to float32 in `pixel_range`.

    `x / 255 * (high - low) + low`, so (-1, 1) is JEM's `Normalize(.5, .5)` and (0, 1) is
    `ToTensor()`.

    Args:
        images_uint8: uint8 (or any integer/float) tensor of rank >= 3, values in [0, 255],
            e.g. `[batch, height, width, channels]`.
        pixel_range: `(low, high)` of the output.

    Returns:
        float32 tensor of the same shape with values in `[low, high]`.
    """
    lo, hi = check_pixel_range(pixel_range)
    x = tf.convert_to_tensor(images_uint8)
    _check_rank(x, "to_pixel_range")
    x = tf.cast(x, tf.float32)
    return x * ((hi - lo) / 255.0) + lo


def from_pixel_range(x: TensorLike, pixel_range: tuple[float, float] = (-1.0, 1.0)) -> tf.Tensor:
    """Inverse of `to_pixel_range`: float images in `pixel_range` to uint8 (clipped, rounded).

    Args:
        x: float tensor of rank >= 3 in `pixel_range` (values outside are clipped).
        pixel_range: `(low, high)` of the input.

    Returns:
        uint8 tensor of the same shape.
    """
    lo, hi = check_pixel_range(pixel_range)
    x = tf.convert_to_tensor(x)
    _check_rank(x, "from_pixel_range")
    x = (tf.cast(x, tf.float32) - lo) * (255.0 / (hi - lo))
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)
