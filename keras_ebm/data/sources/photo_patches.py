"""The "photo_patches" source: patches of scikit-learn's two sample photos, an OOD set of real
textures that needs no files."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keras_ebm.data.sources import common
from keras_ebm.data.sources.registry import register_source

if TYPE_CHECKING:
    from collections.abc import Sequence


def photo_patches(patch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping `patch_size` patches of scikit-learn's two sample photos, in raster order.

    Returns:
        `(x uint8 [N, patch_size, patch_size, 3], y int32 [N])`, the label being the photo
        (0: "china", 1: "flower").
    """
    from sklearn.datasets import load_sample_images

    xs, ys = [], []
    for label, image in enumerate(load_sample_images().images):
        rows, cols = image.shape[0] // patch_size, image.shape[1] // patch_size
        image = image[: rows * patch_size, : cols * patch_size]
        patches = image.reshape(rows, patch_size, cols, patch_size, 3).transpose(0, 2, 1, 3, 4)
        xs.append(patches.reshape(-1, patch_size, patch_size, 3))
        ys.append(np.full((rows * cols,), label, np.int32))
    return np.concatenate(xs).astype(np.uint8), np.concatenate(ys)


@register_source("photo_patches")
def photo_patches_source(
    name: str,
    split: str,
    *,
    classes: Sequence[int] | None = None,
    max_examples: int | None = None,
    patch_size: int = 32,
) -> common.SourceData:
    """The patches of `photo_patches`, labelled by photo; "train" a fixed 80% of them, "test"
    the rest, "all" every patch in raster order.

    Options:
        patch_size: patch size, before resizing to `image_size` (32).
    """
    if int(patch_size) <= 0:
        raise ValueError(f"`patch_size` must be positive. Received: patch_size={patch_size!r}")
    x, labels = photo_patches(int(patch_size))
    order = common.deterministic_split(len(x), split, "photo_patches")
    return common.from_arrays(x[order], labels[order], ("china", "flower"), classes, max_examples)
