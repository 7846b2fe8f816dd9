"""What every source shares: `SourceInfo`, the `SourceData` a source returns, and the helpers that
filter, convert and materialise `(uint8 image, int32 label)` datasets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What `load_source` returns next to the dataset.

    Attributes:
        name: the source name as requested (e.g. "cifar10_jpeg_interp").
        split: the split as requested.
        num_examples: number of examples, or None where it is unknown without a full pass
            (a tfds set filtered by `classes`, or a tfds set whose metadata has no split sizes).
        image_shape: `(height, width, channels)` of every image.
        num_classes: number of labels (after a `classes` filter: `len(classes)`).
        class_names: tuple of `num_classes` names.
        has_labels: False for a label-free file (an "npz" with `x` but no `y`): every label is 0,
            so it is an OOD / evaluation set, never training data (`make_dataset` refuses it for a
            train split).
        single_split: True when the file has no per-split arrays (an "npz" with `x`/`y` instead of
            `x_train`/`x_test`): every split is the whole file.
    """

    name: str
    split: str
    num_examples: int | None
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    has_labels: bool = True
    single_split: bool = False


@dataclasses.dataclass(frozen=True)
class SourceData:
    """What a registered source function returns: its images after the `classes` filter and
    `max_examples`, before `load_source` resizes them to `image_size` and converts `channels`.

    Attributes:
        ds: unbatched `tf.data.Dataset` of `(uint8 image [H, W, C], int32 label)`.
        num_examples: number of examples, or None when unknown without a full pass.
        image_shape: `(height, width, channels)` of every image (None for a size that varies).
        class_names: the names of the kept classes, in label order.
        has_labels: False for a label-free set (every label 0; see `SourceInfo`).
        single_split: True when every split is the same data (see `SourceInfo`).
    """

    ds: tf.data.Dataset
    num_examples: int | None
    image_shape: tuple[int | None, int | None, int]
    class_names: tuple[str, ...]
    has_labels: bool = True
    single_split: bool = False


def normalize_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """`image_size` as a `(height, width)` pair of positive ints (None stays None)."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    else:
        try:
            size = tuple(int(v) for v in image_size)
        except (TypeError, ValueError):
            size = ()
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(
            f"`image_size` must be a positive int or a pair (height, width). Received: image_size={image_size!r}"
        )
    return size


def check_classes(classes: Sequence[int] | None, num_classes: int) -> list[int] | None:
    """`classes` as a list of distinct labels in `[0, num_classes)` (None stays None)."""
    if classes is None:
        return None
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(
            "`classes` must be a non-empty list of distinct labels to keep (they are remapped "
            f"to 0..len(classes)-1 in the given order). Received: classes={classes!r}"
        )
    bad = [c for c in classes if c < 0 or (num_classes is not None and c >= num_classes)]
    if bad:
        raise ValueError(
            f"`classes` must be labels in [0, {num_classes}) for this source; {bad} are not. "
            f"Received: classes={classes!r}"
        )
    return classes


def kept_class_names(class_names: Sequence[str], classes: Sequence[int] | None) -> tuple[str, ...]:
    """The names of the kept `classes` (all of `class_names` without a filter), as a tuple."""
    return tuple(class_names) if classes is None else tuple(class_names[c] for c in classes)


def select_numpy(
    y: np.ndarray, classes: Sequence[int] | None, max_examples: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the kept examples and their (remapped) labels."""
    idx = np.arange(len(y))
    if classes is not None:
        remap = {c: i for i, c in enumerate(classes)}
        idx = idx[np.isin(y, classes)]
        y = np.array([remap[int(v)] for v in y[idx]], dtype=np.int32)
    else:
        y = np.asarray(y, dtype=np.int32)
    if max_examples is not None:
        idx, y = idx[:max_examples], y[:max_examples]
    return idx, y


def select_tf(ds: tf.data.Dataset, classes: Sequence[int] | None, max_examples: int | None) -> tf.data.Dataset:
    """`ds` with only the labels in `classes` (remapped to their position) and at most
    `max_examples` examples."""
    if classes is not None:
        classes_t = tf.constant(classes, tf.int32)
        ds = ds.filter(lambda x, y: tf.reduce_any(tf.equal(y, classes_t)))

        def remap(x, y):
            return x, tf.cast(tf.argmax(tf.cast(tf.equal(classes_t, y), tf.int32)), tf.int32)

        ds = ds.map(remap)
    if max_examples is not None:
        ds = ds.take(max_examples)
    return ds


def to_uint8(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def resize_uint8(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    # Antialiasing matches PIL's (torchvision's) downscaling; the result is rounded back to uint8 so
    # that every source yields the same dtype.
    return to_uint8(tf.image.resize(image, size, method="bilinear", antialias=True))


def convert_images(
    ds: tf.data.Dataset,
    image_shape: tuple[int | None, int | None, int],
    image_size: tuple[int, int] | None,
    channels: int | None,
) -> tuple[tf.data.Dataset, tuple[int | None, int | None, int]]:
    """Resize to `image_size` and convert to `channels`; returns (ds, new image_shape)."""
    h, w, c = image_shape
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 (grayscale) or 3 (RGB). Received: channels={channels!r}")
    out_c = c if channels is None else channels
    if c != out_c and c not in (1, 3):
        raise ValueError(
            f"Cannot convert {c}-channel images to {out_c} channels; only 1 <-> 3 is supported. "
            f"Received: channels={channels!r}"
        )
    out_size = image_size if image_size is not None else (h, w)
    if out_size[0] is None or out_size[1] is None:
        raise ValueError(
            f"This source has images of varying size; pass `image_size` (e.g. 32). Received: image_size={image_size!r}"
        )
    resize = (h, w) != tuple(out_size)

    def convert(x, y):
        if resize:
            x = resize_uint8(x, out_size)
        if c == 3 and out_c == 1:
            x = to_uint8(tf.image.rgb_to_grayscale(tf.cast(x, tf.float32)))
        elif c == 1 and out_c == 3:
            x = tf.image.grayscale_to_rgb(x)
        return tf.ensure_shape(x, (out_size[0], out_size[1], out_c)), y

    if resize or c != out_c:
        ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return ds, (int(out_size[0]), int(out_size[1]), int(out_c))


def dataset_from_arrays(x: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
    """An unbatched dataset of the rows of `x` with int32 labels `y`."""
    return tf.data.Dataset.from_tensor_slices((x, np.asarray(y, np.int32)))


def from_arrays(
    x: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    classes: Sequence[int] | None = None,
    max_examples: int | None = None,
) -> SourceData:
    """The `SourceData` of in-memory uint8 images `x [N, H, W, C]` with integer `labels [N]`,
    after the `classes` filter and `max_examples`: what a source that holds its data in numpy
    returns (see `register_source`)."""
    classes = check_classes(classes, len(class_names))
    idx, y = select_numpy(labels, classes, max_examples)
    shape = tuple(int(v) for v in x.shape[1:])
    if len(idx) < len(x):  # else idx is every row in order: no copy of the images
        x = x[idx]
    class_names = kept_class_names(class_names, classes)
    return SourceData(dataset_from_arrays(x, y), len(idx), shape, class_names)


def dataset_to_arrays(
    ds: tf.data.Dataset, max_examples: int | None = None, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Materialise an unbatched `(image, label)` dataset: numpy `(x [N, H, W, C], y int32 [N])`."""
    if max_examples is not None:
        ds = ds.take(max_examples)
    xs, ys = [], []
    for x, y in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE):
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        shape = tuple(ds.element_spec[0].shape)
        return np.zeros((0,) + shape, np.uint8), np.zeros((0,), np.int32)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


def deterministic_split(n: int, split: str, name: str, train_fraction: float = 0.8, seed: int = 0) -> np.ndarray:
    """Indices of `split` of `n` examples: "train" a fixed `train_fraction` of a seeded
    permutation, "test" the rest, "all" every index in order."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(train_fraction * n))
    if split == "train":
        return perm[:n_train]
    if split == "test":
        return perm[n_train:]
    if split == "all":
        return np.arange(n)
    raise ValueError(
        f"The '{name}' source has the splits 'train' (a fixed {int(train_fraction * 100)}% of it), "
        f"'test' (the rest) and 'all'. Received: split={split!r}"
    )
