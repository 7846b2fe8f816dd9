"""The SavedModel writer: `export_model` writes an export whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

import tensorflow as tf

from keras_ebm.export.cleanup import recover_export
from keras_ebm.export.format import METADATA_FILENAME, looks_like_export
from keras_ebm.export.onnx_writer import ONNX_FILENAME, ONNX_OPSET, import_tf2onnx, write_onnx
from keras_ebm.export.serving import ServingModule

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import keras


def export_model(
    model: keras.Model,
    export_dir: str | os.PathLike,
    image_shape: tuple[int, int, int],
    pixel_range: tuple[float, float] = (-1.0, 1.0),
    ood_score: str | None = None,
    extra_scores: Mapping[str, Callable[[keras.Model, tf.Tensor], tf.Tensor]] | None = None,
    onnx: bool = False,
) -> str:
    """Export `model` as a SavedModel scoring images, pixel values 0..255 (see `ServingModule`).

    The SavedModel is written to a temporary sibling directory and renamed into place, so a crash
    mid-export never leaves a half-written export at `export_dir`; a previous export there is
    replaced only once the new one is complete (it briefly sits beside it as `.<name>.old-*`).
    A non-empty `export_dir` that is not an export is refused rather than deleted. Local
    filesystems only (directory renames).

    Args:
        model: a `keras.Model` mapping float images in `pixel_range` to logits; pass the trained
            network or the trainer: only the variables the forward pass reads are exported.
        export_dir: directory to write; created, or replaced if it holds an export.
        image_shape: `(height, width, channels)` of the training images.
        pixel_range: `(lo, hi)` range of the float images the model expects.
        ood_score: name of the default OOD score (`"log_px"`, `"max_softmax"`, `"grad_norm"`
            or a model or extra score name; default `model.default_ood_score`, else `"log_px"`).
        extra_scores: optional dict name -> `fn(model, x_float)` returning `[batch]` scores.
        onnx: also write `<export_dir>/onnx/model.onnx` (tf2onnx; `pip install "keras_ebm[onnx]"`)
            with the forward outputs (`ServingModule.onnx_output_names`); the metadata's "onnx"
            entry names its file, input and outputs.

    Returns:
        `export_dir`.
    """
    export_dir = os.fspath(export_dir)
    target = os.path.abspath(export_dir)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"`export_dir` exists and is not a directory. Received: export_dir={export_dir}")
    if os.path.isdir(target) and os.listdir(target) and not looks_like_export(target):
        raise ValueError(
            "`export_dir` is a non-empty directory that holds no SavedModel; refusing to replace "
            f"it. Pass a new or empty directory. Received: export_dir={export_dir}"
        )
    if onnx:
        import_tf2onnx()  # fail before any work when it is not installed
    module = ServingModule(model, image_shape, pixel_range=pixel_range, ood_score=ood_score, extra_scores=extra_scores)
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    recover_export(target)
    staging = tempfile.mkdtemp(prefix=f".{base}.tmp-{os.getpid()}-", dir=parent)
    old = None
    try:
        tf.saved_model.save(module, staging, signatures=module.signature_functions())
        metadata = module.metadata()
        if onnx:
            os.makedirs(os.path.join(staging, "onnx"))
            outputs = write_onnx(module, os.path.join(staging, "onnx", ONNX_FILENAME))
            h, w, c = module._image_shape
            metadata["onnx"] = {
                "path": f"onnx/{ONNX_FILENAME}",
                "opset": ONNX_OPSET,
                "inputs": {"images": {"dtype": "uint8", "shape": [None, h, w, c]}},
                "outputs": outputs,
            }
        os.makedirs(os.path.join(staging, "assets"), exist_ok=True)
        with open(os.path.join(staging, "assets", METADATA_FILENAME), "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=f".{base}.old-{os.getpid()}-", dir=parent)
            os.rmdir(old)
            os.rename(target, old)
        # mkdtemp creates 0700 directories; an export is meant to be read by serving processes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and os.path.exists(old) and not os.path.exists(target):
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return export_dir
