"""The FID Inception network: the 2015 TensorFlow Inception graph of the papers' FID and IS, in Keras.

The papers' FID (Heusel et al. 2017, TTUR `fid.py`) and IS (Salimans et al. 2016, OpenAI
`improved-gan/inception_score/model.py`) feed images to `inception-2015-12-05`'s
`classify_image_graph_def.pb`; JEM++, SADA-JEM and GMMC call exactly that code
(`Task/fid.py`, `Task/inception.py`), CLEL calls torchmetrics, which runs torch-fidelity's port of
the same graph. That graph is *not* `keras.applications.InceptionV3` (other weights, 1008 classes,
and three blocks that differ), so a FID computed with Keras' network cannot be compared with a
published one.

`build_fid_inception()` is the architecture that pytorch-fid ports from the graph
(github.com/mseitzer/pytorch-fid, `src/pytorch_fid/inception.py`, `fid_inception_v3`):
torchvision's Inception-v3 layout (conv without bias + BatchNorm(eps=1e-3) + ReLU per "BasicConv2d",
no auxiliary classifier) with its modified blocks:

* `FIDInceptionA` (Mixed_5b-d), `FIDInceptionC` (Mixed_6b-e), `FIDInceptionE_1` (Mixed_7b): the
  pooling branch averages a 3x3 window *without* the zero padding (TF's SAME average pool;
  torchvision's stock blocks use `count_include_pad=True`). Keras' `AveragePooling2D(padding="same")`
  is TF's pool, so it excludes the padding too.
* `FIDInceptionE_2` (Mixed_7c): the pooling branch is a 3x3 *max* pool (stride 1, SAME), not an
  average pool (pytorch-fid: "likely an error in this specific Inception implementation").
* Mixed_6a and Mixed_7a are torchvision's stock InceptionB / InceptionD (max pool 3x3 stride 2).
* A 1008-way `fc` layer (the graph's `softmax/logits`) on the 2048-d `pool3` features.

Outputs: `pool3` `[N, 2048]` (FID, KID) and the IS logits `pool3 @ W` `[N, 1008]` *without* the fc
bias: OpenAI's IS code takes `softmax/logits/MatMul`'s weight and computes
`softmax(matmul(pool3, w))` over all 1008 classes; torch-fidelity calls these `logits_unbiased`
(its default IS feature).

Input pipelines (`preprocessing=`), both from uint8 pixels:

* "tf2015" (default, the papers'): the graph's own ops after its `ExpandDims:0` input, i.e. TF1
  `ResizeBilinear` to 299x299 with `align_corners=False, half_pixel_centers=False`, then
  `(x - 128) * 0.0078125` (torch-fidelity reproduces the same two steps).
* "pytorch_fid": pytorch-fid's `InceptionV3.forward` on `x / 255`: bilinear resize to 299x299
  with `align_corners=False` (half-pixel centres), then `2 x - 1`. pytorch-fid's FIDs differ
  slightly from the TF code's for this reason.

Weights: pytorch-fid's port of the graph's weights, `pt_inception-2015-12-05-6726825d.pth` (a torch
state dict), which users download themselves from `FID_WEIGHTS_URL`. `load_state_dict` places a
`{torch name: NumPy array}` dict into the Keras model (every name must find its place and every
weight must be filled, or the error names the keys); `read_state_dict` reads the `.pth` (needs
PyTorch, an optional extra) or its `.npz` conversion (NumPy only), written once by

    python -m keras_ebm.evaluation.fid_inception --convert pt_inception-2015-12-05-6726825d.pth fid_inception.npz

`tests/test_fid_inception.py` checks `pool3` and the logits of this model, through this loader,
against pytorch-fid's and torch-fidelity's forward passes on random weights (recorded by
`benchmarks/parity/record_fid_inception.py`).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from keras_ebm.evaluation import generative

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from tensorflow.types.experimental import TensorLike

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
FID_WEIGHTS_NPZ = FID_WEIGHTS_FILE[: -len(".pth")] + ".npz"
WEIGHTS_ENV = "KERAS_EBM_FID_INCEPTION_WEIGHTS"
IMAGE_SIZE = 299
NUM_CLASSES = 1008
PREPROCESSING = ("tf2015", "pytorch_fid")
CONVERT_COMMAND = "python -m keras_ebm.evaluation.fid_inception --convert {pth} {npz}"
_IGNORED_SUFFIX = ".num_batches_tracked"  # BatchNorm's update counter: not a weight


# ---------------------------------------------------------------------------------- network
def _basic_conv(x, name, filters, kernel, strides=1, padding="valid"):
    """torchvision's BasicConv2d: conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU. Torch's symmetric
    padding (k - 1) / 2 of every stride-1 conv here is Keras' "same"; padding 0 is "valid"."""
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=f"{name}.conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, name=f"{name}.bn")(x)
    return keras.layers.ReLU(name=f"{name}.relu")(x)


def _pool_same(x, name, kind):
    """3x3 stride-1 pool over a SAME window that ignores the padding (TF's pools; torch's
    `avg_pool2d(count_include_pad=False)` and `max_pool2d(padding=1)`)."""
    layer = keras.layers.AveragePooling2D if kind == "avg" else keras.layers.MaxPooling2D
    return layer(3, strides=1, padding="same", name=f"{name}.pool")(x)


def _concat(tensors, name):
    return keras.layers.Concatenate(axis=-1, name=name)(tensors)


def _inception_a(x, name, pool_features):
    """FIDInceptionA: branches 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool (no pad) -> 1x1."""
    c = lambda t, sub, f, k: _basic_conv(t, f"{name}.{sub}", f, k, padding="same")  # noqa: E731
    b1 = c(x, "branch1x1", 64, 1)
    b5 = c(c(x, "branch5x5_1", 48, 1), "branch5x5_2", 64, 5)
    b3 = c(c(c(x, "branch3x3dbl_1", 64, 1), "branch3x3dbl_2", 96, 3), "branch3x3dbl_3", 96, 3)
    bp = c(_pool_same(x, name, "avg"), "branch_pool", pool_features, 1)
    return _concat([b1, b5, b3, bp], name)


def _inception_b(x, name):
    """torchvision's InceptionB (Mixed_6a): 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3x3/2."""
    b3 = _basic_conv(x, f"{name}.branch3x3", 384, 3, strides=2)
    bd = _basic_conv(x, f"{name}.branch3x3dbl_1", 64, 1)
    bd = _basic_conv(bd, f"{name}.branch3x3dbl_2", 96, 3, padding="same")
    bd = _basic_conv(bd, f"{name}.branch3x3dbl_3", 96, 3, strides=2)
    bp = keras.layers.MaxPooling2D(3, strides=2, name=f"{name}.pool")(x)
    return _concat([b3, bd, bp], name)


def _inception_c(x, name, c7):
    """FIDInceptionC: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg pool (no pad) -> 1x1."""
    c = lambda t, sub, f, k: _basic_conv(t, f"{name}.{sub}", f, k, padding="same")  # noqa: E731
    b1 = c(x, "branch1x1", 192, 1)
    b7 = c(c(c(x, "branch7x7_1", c7, 1), "branch7x7_2", c7, (1, 7)), "branch7x7_3", 192, (7, 1))
    bd = c(x, "branch7x7dbl_1", c7, 1)
    for i, (filters, kernel) in enumerate(((c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))), start=2):
        bd = c(bd, f"branch7x7dbl_{i}", filters, kernel)
    bp = c(_pool_same(x, name, "avg"), "branch_pool", 192, 1)
    return _concat([b1, b7, bd, bp], name)


def _inception_d(x, name):
    """torchvision's InceptionD (Mixed_7a): 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool 3x3/2."""
    b3 = _basic_conv(x, f"{name}.branch3x3_1", 192, 1)
    b3 = _basic_conv(b3, f"{name}.branch3x3_2", 320, 3, strides=2)
    b7 = _basic_conv(x, f"{name}.branch7x7x3_1", 192, 1)
    b7 = _basic_conv(b7, f"{name}.branch7x7x3_2", 192, (1, 7), padding="same")
    b7 = _basic_conv(b7, f"{name}.branch7x7x3_3", 192, (7, 1), padding="same")
    b7 = _basic_conv(b7, f"{name}.branch7x7x3_4", 192, 3, strides=2)
    bp = keras.layers.MaxPooling2D(3, strides=2, name=f"{name}.pool")(x)
    return _concat([b3, b7, bp], name)


def _inception_e(x, name, pool):
    """FIDInceptionE_1 (pool "avg", no pad) / FIDInceptionE_2 (pool "max"): 1x1 | 1x1 -> [1x3, 3x1]
    | 1x1 -> 3x3 -> [1x3, 3x1] | pool -> 1x1."""
    c = lambda t, sub, f, k: _basic_conv(t, f"{name}.{sub}", f, k, padding="same")  # noqa: E731
    b1 = c(x, "branch1x1", 320, 1)
    b3 = c(x, "branch3x3_1", 384, 1)
    b3 = _concat([c(b3, "branch3x3_2a", 384, (1, 3)), c(b3, "branch3x3_2b", 384, (3, 1))], f"{name}.branch3x3")
    bd = c(c(x, "branch3x3dbl_1", 448, 1), "branch3x3dbl_2", 384, 3)
    bd = _concat([c(bd, "branch3x3dbl_3a", 384, (1, 3)), c(bd, "branch3x3dbl_3b", 384, (3, 1))], f"{name}.branch3x3dbl")
    bp = c(_pool_same(x, name, pool), "branch_pool", 192, 1)
    return _concat([b1, b3, bd, bp], name)


def build_fid_inception() -> keras.Model:
    """The FID Inception network on preprocessed `[N, 299, 299, 3]` inputs in [-1, 1].

    Layer names are pytorch-fid's module paths (`Mixed_5b.branch1x1.conv`, `...bn`, `fc`), so a
    torch state-dict key names its Keras weight. Outputs `[pool3 [N, 2048], logits [N, 1008]]`
    (`fc` with its bias; `FIDInceptionFeatures` uses `pool3 @ fc.kernel` for IS).
    """
    from keras_ebm.training import dtype_policy

    with dtype_policy("float32"):  # float32 whatever the global policy (a bfloat16 run's)
        x = inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
        x = _basic_conv(x, "Conv2d_1a_3x3", 32, 3, strides=2)
        x = _basic_conv(x, "Conv2d_2a_3x3", 32, 3)
        x = _basic_conv(x, "Conv2d_2b_3x3", 64, 3, padding="same")
        x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool1")(x)
        x = _basic_conv(x, "Conv2d_3b_1x1", 80, 1)
        x = _basic_conv(x, "Conv2d_4a_3x3", 192, 3)
        x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool2")(x)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = _inception_a(x, name, pool_features)
        x = _inception_b(x, "Mixed_6a")
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = _inception_c(x, name, c7)
        x = _inception_d(x, "Mixed_7a")
        x = _inception_e(x, "Mixed_7b", "avg")
        x = _inception_e(x, "Mixed_7c", "max")
        pool3 = keras.layers.GlobalAveragePooling2D(name="pool3")(x)
        logits = keras.layers.Dense(NUM_CLASSES, name="fc")(pool3)
        return keras.Model(inputs, [pool3, logits], name="fid_inception")


def preprocess(images: TensorLike, preprocessing: str = "tf2015") -> tf.Tensor:
    """uint8 (or [0, 255] float) `[N, H, W, 3]` -> the network's `[N, 299, 299, 3]` input.

    "tf2015": the 2015 graph's ResizeBilinear (TF1: `half_pixel_centers=False`) of the [0, 255]
    values, then (x - 128) / 128. "pytorch_fid": x / 255, bilinear resize with half-pixel centres
    (torch `F.interpolate(align_corners=False)`, no antialiasing), then 2 x - 1.
    """
    x = tf.cast(images, tf.float32)
    size = tf.constant([IMAGE_SIZE, IMAGE_SIZE], tf.int32)
    if _checked_preprocessing(preprocessing) == "tf2015":
        x = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=False, half_pixel_centers=False)
        return (x - 128.0) * 0.0078125  # the graph's Sub and Mul
    x = tf.raw_ops.ResizeBilinear(images=x / 255.0, size=size, align_corners=False, half_pixel_centers=True)
    return 2.0 * x - 1.0


def _checked_preprocessing(preprocessing):
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"`preprocessing` must be one of {PREPROCESSING}. Received: preprocessing={preprocessing!r}")
    return preprocessing


# ---------------------------------------------------------------------------------- weights
def _placements(model):
    """`{torch key: (keras variable, kind)}` of every weight of `build_fid_inception`."""
    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out[f"{layer.name}.weight"] = (layer.kernel, "conv")
        elif isinstance(layer, keras.layers.BatchNormalization):
            for torch_name, var in (
                ("weight", layer.gamma),
                ("bias", layer.beta),
                ("running_mean", layer.moving_mean),
                ("running_var", layer.moving_variance),
            ):
                out[f"{layer.name}.{torch_name}"] = (var, "vector")
        elif isinstance(layer, keras.layers.Dense):
            out[f"{layer.name}.weight"] = (layer.kernel, "dense")
            out[f"{layer.name}.bias"] = (layer.bias, "vector")
    return out


def _to_keras(value, kind):
    if kind == "conv":  # torch [out, in, kh, kw] -> keras [kh, kw, in, out]
        return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value
    if kind == "dense":  # torch [out, in] -> keras [in, out]
        return value.T if value.ndim == 2 else value
    return value


def load_state_dict(
    model: keras.Model, state_dict: Mapping[str, np.ndarray], source: str = "state_dict"
) -> keras.Model:
    """Places pytorch-fid's state dict (`{name: array}`, torch layouts) into `build_fid_inception`'s
    weights. Every key must find its weight and every weight its key (BatchNorm's
    `num_batches_tracked` counters are skipped); otherwise a `ValueError` names the keys."""
    placements = _placements(model)
    given = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIX)}
    unknown = sorted(set(given) - set(placements))
    missing = sorted(set(placements) - set(given))
    if unknown or missing:
        raise ValueError(
            f"{source} is not pytorch-fid's FID Inception state dict ({FID_WEIGHTS_FILE}): "
            + (f"{len(unknown)} key(s) have no place in the network: {unknown[:10]}" if unknown else "")
            + ("; " if unknown and missing else "")
            + (f"{len(missing)} weight(s) are missing: {missing[:10]}" if missing else "")
            + f". Download {FID_WEIGHTS_URL} (or convert it with "
            f"`{CONVERT_COMMAND.format(pth='<.pth>', npz='<.npz>')}`)."
        )
    values = []
    for key, (var, kind) in placements.items():
        value = _to_keras(np.asarray(given[key]), kind)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(
                f"{source}: {key} has shape {np.asarray(given[key]).shape} (torch layout); the "
                f"network expects {tuple(var.shape)} in Keras layout. Is this the FID Inception "
                f"file {FID_WEIGHTS_FILE}?"
            )
        values.append((var, value))
    for var, value in values:
        var.assign(value.astype(var.dtype))
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`{name: NumPy array}` of a `.pth` torch state dict (needs PyTorch) or its `.npz` conversion."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No FID Inception weights file at {path!r}. Download {FID_WEIGHTS_URL}.")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading {path} (a torch state dict) needs PyTorch (`pip install torch`, CPU build is enough). "
            "Or convert it once where torch is installed and pass the .npz instead: "
            + CONVERT_COMMAND.format(pth=path, npz=FID_WEIGHTS_NPZ)
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict; expected {FID_WEIGHTS_FILE}.")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def fid_weights_path(weights: str | os.PathLike | None = None) -> str:
    """The FID Inception weights: `weights`, `$KERAS_EBM_FID_INCEPTION_WEIGHTS`, the Keras cache
    (`<~/.keras>/models/pt_inception-2015-12-05-6726825d.{npz,pth}`), or torch hub's cache, where
    pytorch-fid downloads it (`$TORCH_HOME` or `~/.cache/torch`, `hub/checkpoints/`). Raises
    `FileNotFoundError` naming the URL and the options; never downloads."""
    models = os.path.join(generative.keras_cache_dir(), "models")
    torch_home = os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch"))
    cached = [
        os.path.join(models, FID_WEIGHTS_NPZ),
        os.path.join(models, FID_WEIGHTS_FILE),
        os.path.join(torch_home, "hub", "checkpoints", FID_WEIGHTS_FILE),
    ]
    if weights:
        if os.path.isfile(weights):
            return weights
        where = f"at weights={weights!r}"
    elif os.environ.get(WEIGHTS_ENV):
        if os.path.isfile(os.environ[WEIGHTS_ENV]):
            return os.environ[WEIGHTS_ENV]
        where = f"at ${WEIGHTS_ENV}={os.environ[WEIGHTS_ENV]!r}"
    else:
        for candidate in cached:
            if os.path.isfile(candidate):
                return candidate
        where = f"in the caches ({', '.join(cached)})"
    raise FileNotFoundError(
        f"The FID Inception weights (feature_network='fid_inception') were not found {where}. keras_ebm never "
        "downloads them and never uses random Inception weights. Download pytorch-fid's port of the 2015 "
        f"TensorFlow Inception graph,\n  {FID_WEIGHTS_URL}\nand pass its path (eval.py --fid_inception_weights=PATH, "
        f"gin `inception_features.weights`, or ${WEIGHTS_ENV}) or put it at {cached[1]}. Reading the .pth needs "
        "PyTorch; to evaluate without it convert the file once:\n  "
        + CONVERT_COMMAND.format(pth=FID_WEIGHTS_FILE, npz=FID_WEIGHTS_NPZ)
        + "\n(feature_network='keras_inception_v3' uses Keras' Inception-v3 instead: not the papers' network, its "
        "FID/IS are not comparable with published ones.)"
    )


def convert(pth_path: str, npz_path: str) -> int:
    """One-time conversion of the `.pth` to an `.npz` that evaluation reads without PyTorch; the
    state dict is checked by loading it into the network first. Returns the number of tensors."""
    state = read_state_dict(pth_path)
    load_state_dict(build_fid_inception(), state, source=pth_path)
    kept = {k: np.asarray(v) for k, v in state.items() if not k.endswith(_IGNORED_SUFFIX)}
    tmp = npz_path + ".tmp.npz"
    np.savez(tmp, **kept)
    os.replace(tmp, npz_path)
    digest = generative.file_digest(pth_path, "sha256")
    print(f"wrote {npz_path}: {len(kept)} tensors from {pth_path} (sha256 {digest})", flush=True)
    return len(kept)


# ---------------------------------------------------------------------------------- features
class FIDInceptionFeatures(generative.ImageFeatures):
    """pool3 features (2048) and IS logits (1008, `pool3 @ W` without the bias) of the FID Inception.

    Args:
        weights: path of `pt_inception-2015-12-05-6726825d.pth` or its `.npz` conversion (default:
            `fid_weights_path()`'s search).
        preprocessing: "tf2015" (the 2015 graph's resize and scaling: the papers' code and
            torch-fidelity / torchmetrics) or "pytorch_fid" (pytorch-fid's). The name of the
            feature network, and so of the cache files and results, says which.
        state_dict: a `{torch name: array}` dict to load instead of a file (tests use random
            weights; results of such a network mean nothing).
    """

    metric_names = {"fd": "fid", "score": "inception_score", "kd": "kid"}

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        preprocessing: str = "tf2015",
        state_dict: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.preprocessing = _checked_preprocessing(preprocessing)
        self.name = "fid_inception" if preprocessing == "tf2015" else "fid_inception_pytorch_fid"
        source = "state_dict"
        if state_dict is None:
            source = fid_weights_path(weights)
            state_dict = read_state_dict(source)
        self.weights_source = source
        self.model = load_state_dict(build_fid_inception(), state_dict, source=source)
        self.fc_kernel = self.model.get_layer("fc").kernel
        super().__init__()

    def _forward_impl(self, images):
        pool3, _ = self.model(preprocess(images, self.preprocessing), training=False)
        return pool3, tf.matmul(pool3, self.fc_kernel)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m keras_ebm.evaluation.fid_inception",
        description=f"Convert pytorch-fid's FID Inception weights ({FID_WEIGHTS_URL}) to an .npz that keras_ebm "
        "reads without PyTorch (this command needs torch).",
    )
    parser.add_argument("--convert", nargs=2, metavar=("IN_PTH", "OUT_NPZ"), required=True)
    args = parser.parse_args(argv)
    convert(*args.convert)


if __name__ == "__main__":
    main()
