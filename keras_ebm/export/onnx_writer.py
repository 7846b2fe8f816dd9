"""The ONNX writer: the forward quantities of a `ServingModule` as an ONNX model (tf2onnx).

ONNX. `export_model(..., onnx=True)` also writes `onnx/model.onnx` (tf2onnx, the converter Keras'
own `Model.export(format="onnx")` uses): input `images` uint8 `[N, H, W, C]` (ONNX has no assertion
op for the value checks; onnxruntime itself refuses any other dtype), outputs logits,
probabilities (classifiers), energy, every score that needs no gradient and ood_score (when it is
one of those). Gradient-based scores (`grad_norm`) stay TensorFlow-only.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

    from keras_ebm.export.serving import ServingModule

ONNX_FILENAME = "model.onnx"
ONNX_OPSET = 17


def import_tf2onnx() -> ModuleType:
    """tf2onnx, patched for NumPy 2 by Keras' own ONNX export (keras.src.export), or a clear error."""
    try:
        import tf2onnx
    except ImportError as e:
        raise ImportError(
            'ONNX export needs tf2onnx, onnx and onnxruntime: pip install "keras_ebm[onnx]" '
            "(or pip install tf2onnx onnx onnxruntime)."
        ) from e
    try:  # the same NumPy-2 patch `keras.Model.export(format="onnx")` applies
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:  # a Keras without it: tf2onnx may still work with the installed NumPy
        pass
    else:
        with warnings.catch_warnings():  # "In the future `np.object` will be defined ..."
            warnings.simplefilter("ignore", FutureWarning)
            patch_tf2onnx()
    return tf2onnx


def write_onnx(module: ServingModule, path: str | os.PathLike, opset: int = ONNX_OPSET) -> list[str]:
    """Convert the forward quantities of a `ServingModule` to an ONNX model at `path` (tf2onnx).

    The ONNX model takes `images`, uint8 `[N, H, W, C]`, and returns `module.onnx_output_names`
    (logits, probabilities for classifiers, energy, every gradient-free score, ood_score);
    gradient-based scores (`grad_norm`) stay TensorFlow-only. Returns the output names.
    """
    tf2onnx = import_tf2onnx()
    function = module.onnx_function()
    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(logging.ERROR)  # its INFO/WARNING lines drown the training log
    try:
        tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=opset, output_path=os.fspath(path)
        )
    finally:
        tf2onnx_logger.setLevel(level)
    return module.onnx_output_names
