"""SavedModel export of a trained keras_ebm model (classifier or EBM) for OOD detection and classification.

`export_model` writes a TensorFlow SavedModel that scores images (pixel values 0..255) with nothing
but TensorFlow:
neither keras_ebm nor the training code is needed to load and run it,

    loaded = tf.saved_model.load(export_dir)
    loaded.serving_default(images)        # logits, probabilities, energy, ood_score
    loaded.signatures["scores"](images=images)

and `<export_dir>/assets/keras_ebm_export.json` describes it (image shape, pixel range, score names)
for readers without TensorFlow.

What is exported is only what the forward pass reads: the functions are traced first and the module
then tracks exactly the variables those traces captured. Replay buffers, feature queues, optimizer
slots and EMA shadows of a trainer are therefore absent even when the trainer itself is passed.

The package: `serving.py` (`ServingModule` and its functions), `input_checks.py` (their checks of
the images), the writers `saved_model.py` (`export_model`) and `onnx_writer.py` (`write_onnx`),
`format.py` (format version, signatures, metadata; `read_export_metadata`, `load_export`) and
`cleanup.py` (`recover_export`: what a killed export left behind).

Reference: the energy convention of JEM (Grathwohl et al. 2020, arXiv:1912.03263), the gradient-norm
score of JEM's OOD section ("approximate mass", also GMMC, arXiv:2010.03759).
"""

from keras_ebm.export.cleanup import recover_export
from keras_ebm.export.format import (
    ENDPOINTS,
    FORMAT_VERSION,
    METADATA_FILENAME,
    SIGNATURE_DTYPE,
    load_export,
    read_export_metadata,
)
from keras_ebm.export.onnx_writer import ONNX_FILENAME, ONNX_OPSET, import_tf2onnx, write_onnx
from keras_ebm.export.saved_model import export_model
from keras_ebm.export.serving import BUILTIN_SCORES, GRADIENT_SCORES, ServingModule

__all__ = [
    "BUILTIN_SCORES",
    "ENDPOINTS",
    "FORMAT_VERSION",
    "GRADIENT_SCORES",
    "METADATA_FILENAME",
    "ONNX_FILENAME",
    "ONNX_OPSET",
    "SIGNATURE_DTYPE",
    "ServingModule",
    "export_model",
    "import_tf2onnx",
    "load_export",
    "read_export_metadata",
    "recover_export",
    "write_onnx",
]
