"""The "cifar10_jpeg" source: CIFAR-10 from the project's JPEG-bytes archive (quality 75: close to,
not bit-identical with, the canonical pixels; the official files are "cifar10_python")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from keras_ebm.data.sources import common, files
from keras_ebm.data.sources.registry import register_source

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

# (environment variable, file name in the shared data directory)
DEFAULT_FILE = ("KERAS_EBM_CIFAR10_JPEG", "cifar10_jpeg_bytes.npz")


def _check_offsets(where, split, data, offsets, n):
    if (
        offsets.ndim != 1
        or len(offsets) != n + 1
        or offsets[0] != 0
        or offsets[-1] != len(data)
        or np.any(np.diff(offsets) <= 0)
    ):
        raise ValueError(
            f"The {where} is corrupt: `{split}_offsets` must be {n + 1} increasing byte offsets "
            f"from 0 to {len(data)} (image i is bytes [offsets[i], offsets[i+1])). Copy the file "
            f"again. Received: {split}_offsets.shape={offsets.shape}"
        )


def _check_jpeg_markers(where, data, offsets):
    data = np.asarray(data, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    short = (ends - starts) < 4
    ok = ~short
    ok[ok] = (
        (data[starts[ok]] == 0xFF)
        & (data[starts[ok] + 1] == 0xD8)
        & (data[ends[ok] - 2] == 0xFF)
        & (data[ends[ok] - 1] == 0xD9)
    )
    bad = np.flatnonzero(~ok)
    if len(bad):
        raise ValueError(
            f"{len(bad)} image(s) of the {where} are not complete JPEG files (they must start "
            "with bytes FF D8 and end with FF D9): truncated or corrupt. Copy the file again. "
            f"Received: bad image indices {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}"
        )


def _check_jpeg_archive(path, split, data, offsets, labels, num_classes):
    """Cheap structural checks of a JPEG-bytes archive (no decoding): offsets in order and in
    bounds, one label per image in range, and every image a complete JPEG stream (starts with the
    SOI marker FF D8, ends with EOI FF D9), so a truncated or corrupt image is named now instead
    of failing inside tf.data mid-training."""
    n = len(labels)
    where = f"'{split}' split of {path}"
    _check_offsets(where, split, data, offsets, n)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"The {where} has labels outside [0, {num_classes}). Copy the file again. "
            f"Received: labels in [{labels.min()}, {labels.max()}]"
        )
    _check_jpeg_markers(where, data, offsets)


def _read_archive(path, split):
    """`(jpeg bytes, offsets, labels, class_names)` of `split`, checked."""
    needed = [f"{split}_jpeg", f"{split}_offsets", f"{split}_y"]
    arrays, keys = files.load_npz_arrays(path, "cifar10_jpeg", needed + ["class_names"])
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise ValueError(
            f"{path} is not a CIFAR-10 JPEG archive: keys {missing} are missing (the format: "
            f"<split>_jpeg, the JPEG files' bytes concatenated; <split>_offsets, where each starts, "
            f"and the end; <split>_y, the labels). Received: keys={sorted(keys)}"
        )
    data = arrays[f"{split}_jpeg"]
    offsets = arrays[f"{split}_offsets"].astype(np.int64)
    labels = arrays[f"{split}_y"].astype(np.int64)
    if "class_names" in arrays:
        class_names = tuple(str(c) for c in arrays["class_names"])
    else:
        class_names = tuple(str(i) for i in range(10))
    _check_jpeg_archive(path, split, data, offsets, labels, len(class_names))
    return data, offsets, labels, class_names


def _decode(jpeg, label):
    # INTEGER_ACCURATE makes the pixels equal Pillow's (the default IDCT differs by ~1 level).
    image = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE")
    return tf.ensure_shape(image, (32, 32, 3)), label


@register_source("cifar10_jpeg")
def cifar10_jpeg_source(
    name: str,
    split: str,
    *,
    classes: Sequence[int] | None = None,
    max_examples: int | None = None,
    local_path: str | os.PathLike | None = None,
) -> common.SourceData:
    """CIFAR-10 "train" / "test" from an npz of JPEG bytes (`<split>_jpeg` concatenated bytes,
    `<split>_offsets`, `<split>_y`, optional `class_names`), decoded as Pillow decodes them.

    Options:
        local_path: the archive; by default the file the environment variable
            KERAS_EBM_CIFAR10_JPEG names, then cifar10_jpeg_bytes.npz in `data_search_dirs()`.
    """
    path = files.resolve_local_path(name, local_path, DEFAULT_FILE)
    if split not in ("train", "test"):
        raise ValueError(f"The 'cifar10_jpeg' source has the splits 'train' and 'test'. Received: split={split!r}")
    data, offsets, labels, class_names = _read_archive(path, split)
    classes = common.check_classes(classes, len(class_names))
    idx, y = common.select_numpy(labels, classes, max_examples)
    encoded = np.array([data[offsets[i] : offsets[i + 1]].tobytes() for i in idx], dtype=object)
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(encoded, tf.string), y))
    ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE)
    class_names = common.kept_class_names(class_names, classes)
    return common.SourceData(ds, len(idx), (32, 32, 3), class_names)
