"""The "npz" source: any `.npz` of uint8 NHWC images; "dtd_npz" and "celeba_npz" name the shared DTD
and CelebA subsets (`dtd_subset_32.npz`, `celeba_subset_32.npz`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from keras_ebm.data.sources import common, files
from keras_ebm.data.sources.registry import register_source

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

# name -> (environment variable, file name in the shared data directory)
DEFAULT_FILES = {
    "dtd_npz": ("KERAS_EBM_DTD_NPZ", "dtd_subset_32.npz"),
    "celeba_npz": ("KERAS_EBM_CELEBA_NPZ", "celeba_subset_32.npz"),
}


def _array_keys(path, split, keys):
    """`(image key, label key)` of `split`: `x_<split>`/`y_<split>`, else the whole-file `x`/`y`."""
    if f"x_{split}" in keys:
        return f"x_{split}", f"y_{split}"
    if "x" in keys:
        # A single array: every split is the whole file (the OOD use case).
        return "x", "y"
    raise ValueError(
        f"{path} has no image array for split '{split}': expected a key 'x' (with an "
        f"optional 'y'), or 'x_{split}'/'y_{split}'. Received: keys={sorted(keys)}"
    )


def _checked_images(path, x_key, x):
    """`x` as uint8 `[N, H, W, C]` (a grayscale `[N, H, W]` gains its channel axis)."""
    if x.dtype != np.uint8:
        raise ValueError(
            f"'{x_key}' in {path} must be uint8 images [N, H, W, C] (or [N, H, W]) in 0..255; "
            "convert floats in [0, 1] with np.round(x * 255).astype(np.uint8). "
            f"Received: {x_key}.dtype={x.dtype}"
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"'{x_key}' in {path} must have shape [N, H, W, C] or [N, H, W]. Received: {x_key}.shape={x.shape}"
        )
    return x


def _checked_labels(path, y_key, labels, n):
    """`labels` as int64 class indices >= 0, one per image (all 0 for a label-free file)."""
    if labels is None:
        labels = np.zeros((n,), np.int64)
    labels = np.asarray(labels).reshape(-1)
    if not (
        np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating) or labels.dtype == bool
    ):
        raise ValueError(
            f"'{y_key}' in {path} must hold integer class labels 0..num_classes-1. "
            f"Received: {y_key}.dtype={labels.dtype}"
        )
    if (
        np.issubdtype(labels.dtype, np.floating)
        and len(labels)
        and not (np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)))
    ):
        raise ValueError(
            f"'{y_key}' in {path} must hold integer class labels; it holds non-integer values "
            "(one-hot or soft labels must be stored as class indices, e.g. y.argmax(-1)). "
            f"Received: {y_key}.dtype={labels.dtype}, e.g. {labels[labels != np.round(labels)][:3]}"
        )
    labels = labels.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise ValueError(
            f"'{y_key}' in {path} must hold class labels >= 0 (a label-free set is a file with "
            f"no '{y_key}'). Received: {y_key} min={labels.min()}"
        )
    if len(labels) != n:
        raise ValueError(
            f"'{y_key}' in {path} must have one label per image ({n}). Received: {y_key}.shape={labels.shape}"
        )
    return labels


def _class_names(path, y_key, arrays, labels, label_free_celeba):
    """The file's `class_names`, else "face" for the label-free CelebA subset, else "0".."K-1"."""
    if "class_names" in arrays:
        class_names = tuple(str(c) for c in arrays["class_names"])
    elif label_free_celeba:
        class_names = ("face",)
    else:
        num = int(labels.max()) + 1 if len(labels) else 1
        class_names = tuple(str(i) for i in range(num))
    if len(labels) and labels.max() >= len(class_names):
        raise ValueError(
            f"'{y_key}' in {path} has labels up to {labels.max()}, but the file's class_names "
            f"name {len(class_names)} classes. Received: class_names={list(class_names)}"
        )
    return class_names


@register_source("npz", *DEFAULT_FILES)
def npz_source(
    name: str,
    split: str,
    *,
    classes: Sequence[int] | None = None,
    max_examples: int | None = None,
    local_path: str | os.PathLike | None = None,
) -> common.SourceData:
    """An `.npz` with uint8 images `x_<split>` [N, H, W, C] (or [N, H, W]) and integer labels
    `y_<split>`, or a single `x` (and optional `y`) that every split reads; optional
    `class_names`. A file without labels is a label-free OOD set (`SourceInfo.has_labels`).

    Options:
        local_path: the file ("npz" needs it); "dtd_npz" and "celeba_npz" default to the file the
            environment variable KERAS_EBM_DTD_NPZ / KERAS_EBM_CELEBA_NPZ names, then
            dtd_subset_32.npz / celeba_subset_32.npz in `data_search_dirs()`.
    """
    path = files.resolve_local_path(name, local_path, DEFAULT_FILES.get(name))
    keys = files.load_npz_arrays(path, name, ())[1]
    x_key, y_key = _array_keys(path, split, keys)
    arrays, _ = files.load_npz_arrays(path, name, (x_key, y_key, "class_names"))
    x = _checked_images(path, x_key, arrays[x_key])
    has_labels = arrays.get(y_key) is not None
    labels = _checked_labels(path, y_key, arrays.get(y_key), len(x))
    label_free_celeba = name == "celeba_npz" and y_key not in keys
    class_names = _class_names(path, y_key, arrays, labels, label_free_celeba)
    data = common.from_arrays(x, labels, class_names, classes, max_examples)
    return dataclasses.replace(data, has_labels=has_labels, single_split=x_key == "x")
