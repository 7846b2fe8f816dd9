"""The export format: its version, the signatures every export has, and the metadata file beside
them (plain JSON, readable without TensorFlow)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    from typing import Any

METADATA_FILENAME = "keras_ebm_export.json"
# 3: signatures declare float32 images (checked pixel values 0..255); 2: uint8 signatures.
FORMAT_VERSION = 3
# The dtype every signature declares for `images` (see keras_ebm.export.input_checks).
SIGNATURE_DTYPE = tf.float32
ENDPOINTS = ("logits", "energy", "ood_score", "scores", "serving_default")


def looks_like_export(path: str | os.PathLike) -> bool:
    """`path` holds a SavedModel or the metadata of an export."""
    return os.path.isfile(os.path.join(path, "saved_model.pb")) or os.path.isfile(
        os.path.join(path, "assets", METADATA_FILENAME)
    )


def read_export_metadata(export_dir: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of an export (plain JSON; needs no TensorFlow to read)."""
    path = os.path.join(os.fspath(export_dir), "assets", METADATA_FILENAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"No keras_ebm export metadata at {path}; was the directory written by "
            f"`keras_ebm.export.export_model`? Received: export_dir={export_dir}"
        )
    with open(path) as f:
        return json.load(f)


def load_export(export_dir: str | os.PathLike) -> Any:
    """`tf.saved_model.load(export_dir)`: the module with `logits`, `energy`, `ood_score`,
    `scores`, `serving_default` (attributes and signatures) and the metadata variables.

    Keep a reference to the returned object while calling its functions: they read its variables,
    which TensorFlow frees with it (`load_export(d).logits(x)` fails with "referencing variables
    which have been deleted").
    """
    return tf.saved_model.load(os.fspath(export_dir))
