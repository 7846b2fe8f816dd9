"""The "folder" source: an image folder with one sub-folder per class."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from keras_ebm.data.sources import common
from keras_ebm.data.sources.registry import register_source

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def _check_image_headers(files):
    """Every file starts like a PNG, JPEG, GIF or BMP (reads 8 bytes of each): a file that is not
    an image (an HTML error page saved as .jpg, an empty or truncated download) is named now
    instead of failing inside tf.data mid-training."""
    bad = []
    for path in files:
        with open(path, "rb") as f:
            head = f.read(8)
        if not head.startswith(_IMAGE_MAGIC):
            bad.append(str(path))
    if bad:
        raise ValueError(
            f"{len(bad)} file(s) of the image folder are not PNG, JPEG, GIF or BMP images (empty, "
            "truncated, or another format under an image extension): remove or replace them. "
            f"Received: {bad[:5]}{' ...' if len(bad) > 5 else ''}"
        )


def _class_folders(split, local_path):
    """`(root, class folder names, image files)`: `<local_path>/<split>` when it exists, else
    `local_path`, with its sub-folders in sorted order."""
    if local_path is None:
        raise ValueError(
            "The 'folder' source reads an image folder with one sub-folder per class: pass "
            "`local_path=<directory>`. Received: local_path=None"
        )
    root = pathlib.Path(local_path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"The 'folder' source has no directory at {root}. Pass `local_path=<directory with "
            f"one sub-folder per class>`. Received: local_path={str(local_path)!r}"
        )
    if split and (root / split).is_dir():
        root = root / split
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = sorted(p for d in class_dirs for p in (root / d).iterdir() if p.suffix.lower() in _IMAGE_EXTENSIONS)
    if not class_dirs or not files:
        raise ValueError(
            f"{root} must contain one sub-folder per class holding images "
            f"({', '.join(_IMAGE_EXTENSIONS)}). Received: sub-folders={class_dirs}"
        )
    _check_image_headers(files)
    return root, class_dirs, files


@register_source("folder")
def folder_source(
    name: str,
    split: str,
    *,
    classes: Sequence[int] | None = None,
    max_examples: int | None = None,
    local_path: str | os.PathLike | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> common.SourceData:
    """The images of `local_path` (or of its sub-folder `split`, when there is one), labelled by
    sub-folder in sorted order, read in sorted order and centre-cropped to the aspect ratio of
    `image_size`.

    Options:
        local_path: the directory (required).
        image_size: the size images are read at (default: that of the first image).
        channels: 1 reads grayscale, 3 RGB (default: the first image's).
    """
    import keras

    root, class_dirs, files = _class_folders(split, local_path)
    first = tf.io.decode_image(tf.io.read_file(str(files[0])), expand_animations=False)
    native_channels = int(first.shape[-1])
    size = image_size or tuple(int(v) for v in first.shape[:2])
    color_mode = "grayscale" if (channels or native_channels) == 1 else "rgb"
    ds = keras.utils.image_dataset_from_directory(
        str(root),
        labels="inferred",
        label_mode="int",
        class_names=class_dirs,
        color_mode=color_mode,
        batch_size=None,
        image_size=size,
        shuffle=False,
        crop_to_aspect_ratio=True,
        verbose=False,
    )
    labels = np.array([class_dirs.index(pathlib.Path(p).parent.name) for p in ds.file_paths])
    ds = ds.map(lambda x, y: (common.to_uint8(x), tf.cast(y, tf.int32)))
    classes = common.check_classes(classes, len(class_dirs))
    num_examples = len(labels) if classes is None else int(np.isin(labels, classes).sum())
    if max_examples is not None:
        num_examples = min(num_examples, max_examples)
    ds = common.select_tf(ds, classes, max_examples)
    shape = (size[0], size[1], 1 if color_mode == "grayscale" else 3)
    return common.SourceData(ds, num_examples, shape, common.kept_class_names(class_dirs, classes))
