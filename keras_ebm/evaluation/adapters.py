"""Model adapters: what evaluation needs of a keras_ebm model or export, decided here once.

* `model_pixel_range(model)`: the float pixel range `(lo, hi)` the model takes. Every evaluation
  (attacks, AIS, classifier features, sample quality) asks this function; nothing else works it
  out. `float_images` maps uint8 test images into that range.
* `logits_fn(x_float)`: logits of float images in the model's `pixel_range`. White-box attacks
  (`keras_ebm.evaluation.robustness`) differentiate it with respect to `x`.
* a uint8 classifier `fn(images_uint8) -> logits`, for scoring samples or test images
  (`keras_ebm.evaluation.sample_quality`, `generative.ClassifierFeatures`).

In-memory models: any `keras.Model` (a trainer or its `network`) mapping float images in
`pixel_range` to logits. Its gradients are exact.

Exports (`keras_ebm.export`): every signature takes pixel values 0..255 (declared float32 since
export format 3, uint8 before), checks and quantises them to uint8 and maps them into the pixel
range inside the graph, and the restored module holds no float entry point in the model's pixel
range (the float model is not saved, only the variables the traces captured). No gradient flows
through that quantisation, so an export cannot be attacked white-box.
`ExportLogits` wraps an export as a float `logits_fn` that
quantises its input to uint8 first; it is marked `differentiable = False` and the attacks refuse
it with a message saying what to do instead: attack the in-memory model (the trainer restored from
its checkpoint, `trainer.network`) and, if wanted, classify the adversarial images with the export
(`predict_logits`), which measures how the attack transfers to what is deployed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from keras_ebm.data.pixel_range import from_pixel_range, to_pixel_range

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from tensorflow.types.experimental import TensorLike


def is_export(obj: Any) -> bool:
    """True for a restored keras_ebm export (`tf.saved_model.load`) with a `logits` signature."""
    signatures = getattr(obj, "signatures", None)
    try:
        return signatures is not None and "logits" in signatures
    except TypeError:
        return False


def signature_images(signature: Any, images: np.ndarray) -> tf.Tensor:
    """uint8 `images` as the declared input of a loaded export's signature: float32 (whole
    numbers 0..255) for exports of format version 3, uint8 for version 2. Both are exact."""
    images = tf.convert_to_tensor(images, tf.uint8)
    structured = getattr(signature, "structured_input_signature", None)  # absent: a plain callable
    return images if structured is None else tf.cast(images, structured[1]["images"].dtype)


def export_pixel_range(loaded: Any) -> tuple[float, float]:
    """The `(lo, hi)` pixel range stored in an export."""
    lo, hi = (float(v) for v in np.asarray(loaded.pixel_range.numpy()).reshape(-1))
    return lo, hi


def model_pixel_range(model: Any, pixel_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """The float pixel range `(lo, hi)` of `model`: `pixel_range` if given, else the model's own.

    The model's own is an export's stored range, or the `pixel_range` attribute (tuple or variable)
    of a trainer / keras model, or else that of the model an attack target or a bound method wraps
    (`target.logits_fn`, `method.__self__`, e.g. `WhiteBox(trainer)`).
    """
    if pixel_range is not None:
        lo, hi = (float(v) for v in pixel_range)
    else:
        lo, hi = _own_pixel_range(model)
    if not lo < hi:
        raise ValueError(f"`pixel_range` must be (lo, hi) with lo < hi. Received: pixel_range={(lo, hi)}")
    return lo, hi


def _own_pixel_range(model):
    inner = getattr(model, "logits_fn", model)
    for candidate in (model, inner, getattr(inner, "__self__", None)):
        if is_export(candidate):
            return export_pixel_range(candidate)
        value = getattr(candidate, "pixel_range", None)
        if isinstance(value, (tuple, list)):
            return tuple(float(v) for v in value)
        if isinstance(value, tf.Variable):
            return tuple(float(v) for v in value.numpy())
    raise ValueError(
        "The model's pixel range is unknown: pass `pixel_range=(lo, hi)` (the float range the "
        "network was trained on, (-1, 1) for the JEM family, (0, 1) for CLEL). "
        f"Received: {type(model).__name__} without a `pixel_range` attribute"
    )


def float_images(
    images: np.ndarray, labels: np.ndarray, pixel_range: tuple[float, float], max_examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 `images` (the first `max_examples`) as float32 in `pixel_range`, with their int labels."""
    images = uint8_images(images, "images", max_examples)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)[: len(images)]
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"`labels` must hold one label per image. Received: {images.shape[0]} images, {labels.shape[0]} labels"
        )
    return np.asarray(to_pixel_range(images, pixel_range), np.float32), labels


class ExportLogits:
    """A loaded export as a float `logits_fn`; NOT differentiable (its signatures quantise to uint8).

    `fn(x)` maps float images in the export's pixel range to uint8 (`from_pixel_range`: clip,
    round) and calls the `logits` signature, so the export sees exactly what a deployed model
    would see: perturbations smaller than one grey level are rounded away.

    Args:
        loaded: the module returned by `keras_ebm.export.load_export` / `tf.saved_model.load`.
    """

    differentiable = False

    def __init__(self, loaded: Any) -> None:
        if not is_export(loaded):
            raise ValueError(
                "`loaded` must be a keras_ebm export restored with tf.saved_model.load (it has a "
                f"'logits' signature). Received: {type(loaded).__name__}"
            )
        self.loaded = loaded
        self.pixel_range = export_pixel_range(loaded)
        self._signature = loaded.signatures["logits"]

    def __call__(self, x: TensorLike) -> tf.Tensor:
        images = from_pixel_range(tf.convert_to_tensor(x, tf.float32), self.pixel_range)
        return self._signature(images=signature_images(self._signature, images))["logits"]


def logits_fn(model: Any, training: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """A float-input `logits_fn(x)` of an in-memory model, a callable, or an export.

    Args:
        model: a `keras.Model` / trainer (`model(x, training=...)` returns logits), any callable
            `fn(x) -> logits`, or a loaded export (wrapped in the non-differentiable `ExportLogits`).
        training: the `training` flag of keras models (False: inference BatchNorm).

    Returns:
        `fn(x) -> logits [batch, classes]`; `fn.differentiable` is False for exports.
    """
    if is_export(model):
        return ExportLogits(model)
    if isinstance(model, ExportLogits):
        return model
    if not callable(model):
        raise ValueError(f"`model` must be a keras model, a callable or an export. Received: {type(model).__name__}")
    try:
        import keras

        is_keras = isinstance(model, keras.Model) or isinstance(model, keras.layers.Layer)
    except ImportError:  # pragma: no cover
        is_keras = False
    if not is_keras:
        return model

    def fn(x):
        return model(x, training=training)

    fn.differentiable = True
    return fn


def uint8_logits_fn(
    classifier: Any, pixel_range: tuple[float, float] | None = None
) -> Callable[[np.ndarray], tf.Tensor]:
    """`fn(images_uint8) -> logits` for an export, a keras model or a float `logits_fn`.

    Args:
        classifier: a loaded export (its `logits` signature is used as is), a keras model or any
            float `logits_fn`; the latter two see `to_pixel_range(images, pixel_range)`.
        pixel_range: the float range of a non-export classifier (default: its `pixel_range`).
    """
    if is_export(classifier):
        signature = classifier.signatures["logits"]
        return lambda images: signature(images=signature_images(signature, images))["logits"]
    if isinstance(classifier, ExportLogits):
        return uint8_logits_fn(classifier.loaded)
    lo_hi = model_pixel_range(classifier, pixel_range)
    fn = logits_fn(classifier)
    return lambda images: fn(to_pixel_range(tf.convert_to_tensor(images), lo_hi))


def uint8_images(images: TensorLike, name: str = "images", max_examples: int | None = None) -> np.ndarray:
    """`images` as a non-empty uint8 `[N, H, W, C]` array, cut to the first `max_examples`."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"`{name}` must be non-empty uint8 [N, H, W, C] in [0, 255] (convert float samples with "
            "keras_ebm.data.from_pixel_range; models get them mapped to their pixel range). "
            f"Received: dtype={images.dtype}, shape={images.shape}"
        )
    return images[: int(max_examples)] if max_examples else images


def predict_logits(
    fn: Callable[[Any], Any], images: np.ndarray, batch_size: int = 256, progress: bool = False, label: str = "logits"
) -> np.ndarray:
    """Logits of `images` (numpy, any leading size) in batches, as a float32 numpy array.

    Args:
        fn: `fn(batch) -> logits` (uint8 or float batches, whatever `images` holds).
        images: `[N, ...]` array.
        batch_size: images per call.
        progress: show a `keras.utils.Progbar` over the batches.
        label: the progress bar's name.
    """
    images = np.asarray(images)
    n = len(images)
    bar = _progbar(n, label) if progress else None
    out = []
    for start in range(0, n, batch_size):
        out.append(np.asarray(fn(images[start : start + batch_size]), np.float32))
        if bar is not None:
            bar.update(min(start + batch_size, n))
    if not out:
        raise ValueError(f"`images` must hold at least one image. Received: images.shape={images.shape}")
    return np.concatenate(out)


def _progbar(total, label):
    import keras

    print(f"[keras_ebm.eval] {label}: {total}", flush=True)
    return keras.utils.Progbar(total, unit_name="image")
