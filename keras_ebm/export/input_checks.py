"""The input checks of the exported functions, in the graph: image shape, then pixel values.

Input. `images` are pixel values 0..255 of the training image shape `[N, H, W, C]`: uint8, or a
float/int array holding whole numbers in [0, 255]. Every signature declares float32
`[None, H, W, C]` (format version 3), so `saved_model_cli show`, TensorFlow Serving and converters
read it, and checks the values inside the graph: NaN/Inf, values outside [0, 255], values that are
not whole numbers (0.5) and float batches that look like [0, 1] images (largest value 1) fail with
an `InvalidArgumentError` that says what to send. Why float32 and not uint8: TensorFlow converts a
NumPy array to a signature's declared dtype in the caller's process, before any graph runs, and a
float array converted to uint8 is truncated and wrapped (0.5 -> 0, NaN -> 0, 300 -> 44), so a uint8
signature would score a float image as a black one with no error. Converting to float32 loses
nothing: uint8 arrays and float arrays alike arrive intact and are checked. (Format version 2
declared uint8 signatures; `keras_ebm.evaluation.adapters.signature_images` feeds either.)
Called from Python, a signature given a wrong shape fails in TensorFlow's argument binding ("Can not
cast TensorSpec(shape=(32, 32, 3), ...) to TensorSpec(shape=(None, 32, 32, 3), ...)"). The
attribute functions (`loaded.logits(x)`) also accept uint8 tensors directly, and float16/32/64 and
int32/64 input with the same value checks; their traces have unknown rank and assert the shape
inside the graph with one readable message: "expected images of shape [N, H, W, C] (pixel values
0..255); received shape [...]". An empty batch returns empty outputs.
"""

from __future__ import annotations

import tensorflow as tf

from keras_ebm.data.pixel_range import to_pixel_range  # pure tf ops, the one uint8 -> float map


def expected_images(image_shape: tuple[int, int, int]) -> str:
    """What the functions take, for their error messages."""
    h, w, c = image_shape
    return f"expected images of shape [N, {h}, {w}, {c}] (pixel values 0..255)"


def checked_pixels(x: tf.Tensor, from_uint8: bool, image_shape: tuple[int, int, int]) -> tf.Tensor:
    """float32 `x` as uint8, after in-graph checks that they are pixel values: finite
    whole numbers in [0, 255], and, unless `from_uint8` (the caller passed uint8), not a
    [0, 1] image (whole numbers whose largest is 1)."""
    expected = f"{expected_images(image_shape)}: uint8, or floats or ints holding whole numbers in [0, 255]"
    unit_fix = "Float images in [0, 1] become pixels by np.round(x * 255)"
    lo, hi = tf.reduce_min(x), tf.reduce_max(x)
    whole = tf.reduce_all(tf.equal(x, tf.round(x)))
    # tf.function runs these stateful asserts in program order: the first failing one speaks.
    checks = [
        tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(x)), [f"images hold NaN or Inf; {expected}"]),
        # Values outside [0, 255] that all lie in [-1, 1]: images on a model's [-1, 1] scale.
        tf.debugging.Assert(
            tf.logical_or(
                tf.reduce_all(tf.logical_and(x >= 0, x <= 255)), tf.logical_not(tf.logical_and(lo >= -1.0, hi <= 1.0))
            ),
            [
                f"images hold values outside [0, 255], all in [-1, 1]: images scaled to [-1, 1]? They "
                f"become pixels by np.round((x + 1) * 127.5). ({expected}.) Received min, max:",
                lo,
                hi,
            ],
        ),
        tf.debugging.Assert(
            tf.reduce_all(tf.logical_and(x >= 0, x <= 255)),
            [f"images hold values outside [0, 255]; {expected}. Received min, max:", lo, hi],
        ),
        # Not whole numbers: the fix depends on the scale the caller used.
        tf.debugging.Assert(
            tf.logical_or(whole, hi > 1.0),
            [
                f"images hold values that are not whole numbers, all in [0, 1]: floats in [0, 1]? "
                f"{unit_fix}. ({expected}.) Received min, max:",
                lo,
                hi,
            ],
        ),
        tf.debugging.Assert(
            tf.logical_or(whole, hi <= 1.0),
            [
                f"images hold values that are not whole numbers, in [0, 255]: pixel values that "
                f"were resized or averaged? Round them: np.round(x) (or pass x.astype(np.uint8) "
                f"after rounding). ({expected}.) Received min, max:",
                lo,
                hi,
            ],
        ),
        # Whole numbers whose largest is 1: a [0, 1] image of zeros and ones, not pixel values
        # (an image of pixel values 0 and 1 only is black: `m.logits(x)` scores it as uint8).
        tf.debugging.Assert(
            tf.logical_or(from_uint8, tf.logical_not(tf.logical_and(tf.size(x) > 0, tf.equal(hi, 1.0)))),
            [f"images look like floats in [0, 1] (largest value 1); {expected}. {unit_fix}"],
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


def model_input(
    images: tf.Tensor, from_uint8: bool, image_shape: tuple[int, int, int], pixel_range: tuple[float, float]
) -> tf.Tensor:
    """float32 `images` of any rank as the model's input: the shape asserted, the pixel
    values checked (`checked_pixels`), then mapped into `pixel_range`."""
    shape = tf.shape(images)
    # Padding lets the spatial comparison run for any rank; the rank test decides.
    spatial = tf.concat([shape, tf.zeros([4], tf.int32)], axis=0)[1:4]
    ok = tf.logical_and(
        tf.equal(tf.rank(images), 4),
        tf.reduce_all(tf.equal(spatial, tf.constant(image_shape, tf.int32))),
    )
    check = tf.debugging.Assert(ok, [f"{expected_images(image_shape)}; received shape", shape], summarize=8)
    with tf.control_dependencies([check]):
        # The cond hides the caller's static shape: loaded functions called with a wrongly
        # shaped array would otherwise fail shape inference (an unreadable ValueError) before
        # the assertion above could run.
        images = tf.cond(
            ok,
            lambda: tf.identity(images),
            lambda: tf.zeros((0,) + tuple(image_shape), images.dtype),
        )
    images = tf.ensure_shape(images, (None,) + tuple(image_shape))
    return to_pixel_range(checked_pixels(images, from_uint8, image_shape), pixel_range)
