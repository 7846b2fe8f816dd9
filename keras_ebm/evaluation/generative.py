"""Sample quality: Frechet Inception Distance, Inception Score and KID, and their offline stand-in
in the feature space of a classifier keras_ebm trains itself.

Metrics (numpy in, floats out; the feature network is a separate object):

* FID (Heusel et al. 2017): ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) between Gaussians
  fitted to pool features; the matrix square root is `scipy.linalg.sqrtm`, with the usual
  eps * I offset when the product is singular (as pytorch-fid / the TF reference code).
* IS (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), mean and std over 10 splits; the KL
  terms are `scipy.special.rel_entr` (0 log 0 = 0, so one-hot predictions are exact).
* KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the polynomial kernel
  (<x, y> / d + 1)^3 (`sklearn.metrics.pairwise.polynomial_kernel`), mean and std over random
  subsets (100 subsets of 1000, as torch-fidelity / tf-gan).

Protocols of the papers (JEM, GMMC, HDGE, SADA-JEM, CLEL): 50k samples against the CIFAR-10
training set (`PAPER_NUM_SAMPLES`, `reference_statistics(dataset="cifar10", split="train")`); the
reference statistics are computed once and cached per data set and feature network
(`$KERAS_EBM_CACHE/generative_stats/<dataset>_<split>__<network>__n<N>.npz`).

Inception networks (`inception_features(network=...)`, gin-configurable, eval.py
--feature_network): "fid_inception" (`fid_inception.FIDInceptionFeatures`) is the 2015 TensorFlow
Inception graph of the papers' FID/IS code, ported by pytorch-fid, with pytorch-fid's weight file
(`pt_inception-2015-12-05-6726825d.pth`, downloaded by the user; docs/fid.md); IS uses its 1008
logits without the fc bias, as OpenAI's IS code. "keras_inception_v3" (`InceptionV3Features`) is
`keras.applications.InceptionV3` (2048-d pool features and the 1000 logits), with weights read from
a local file or the Keras cache (`~/.keras/models/inception_v3_weights_tf_dim_ordering_tf_kernels.h5`):
a different network with other weights, so its FID/IS are comparable across keras_ebm runs only,
never with published numbers; its results carry a note saying so. "auto" (default) takes the FID
Inception when its weights are found, else Keras'. Without weights both raise a
`FileNotFoundError` that says how to provide them; neither falls back to random weights (tests pass
random weights explicitly). Every result names its network (`feature_network`, the results key
`<samples>/<network>`, the report's column titles).

Offline stand-in: no Inception weights can be fetched on machines without internet, so
`ClassifierFeatures` computes the same three statistics in the feature space (penultimate layer)
and logits of a classifier trained with keras_ebm. Its results are named `classifier_fd`,
`classifier_score` and `classifier_kd` and carry the network's name: they rank models evaluated
with the same network and are never "FID" / "IS".

Why not a library: tensorflow-gan (`tfgan.eval`) has FID/IS/KID but is unmaintained and loads its
Inception graph from TF-Hub at run time; keras-cv/keras-hub have no FID; clean-fid, pytorch-fid and
torch-fidelity are PyTorch. The metrics are a few lines on top of scipy and scikit-learn.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf
from scipy import linalg, special
from sklearn.metrics.pairwise import polynomial_kernel

from keras_ebm.evaluation import adapters

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from tensorflow.types.experimental import TensorLike

PAPER_NUM_SAMPLES = 50000
INCEPTION_IMAGE_SIZE = 299
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
INCEPTION_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/" + INCEPTION_WEIGHTS_FILE
)
INCEPTION_WEIGHTS_MD5 = "9a0d58056eeedaa3f26cb7ebd46da564"  # keras.applications' file_hash
WEIGHTS_ENV = "KERAS_EBM_INCEPTION_WEIGHTS"


def _log(msg):
    print(f"[keras_ebm.generative] {msg}", flush=True)


# ---------------------------------------------------------------------------------- metrics
def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[d]` and covariance `[d, d]` (float64, unbiased) of `[N, d]` features."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"`features` must be [N >= 2, d]. Received: features.shape={features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)). When the product is
    singular (fewer samples than dimensions) `eps` is added to both diagonals; an imaginary part
    above 1e-3 (numerical failure) raises.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            "Means and covariances must have matching shapes [d] and [d, d]. Received: "
            f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"Matrix square root has an imaginary component {np.max(np.abs(covmean.imag)):.3g}: "
                "the covariances are numerically broken (too few samples or non-finite features)."
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """`frechet_distance` of the Gaussians fitted to two `[N, d]` feature sets."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split; returns `(mean, std)` over the splits.

    Args:
        probs: `[N, classes]` class probabilities (softmax of the logits).
        splits: number of equal parts (the papers: 10 splits of 5000 for 50k samples).
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] < int(splits):
        raise ValueError(f"`probs` must be [N >= splits, classes]. Received: shape={probs.shape}, splits={splits}")
    if probs.min() < -1e-6 or not np.allclose(probs.sum(-1), 1.0, atol=1e-4):
        raise ValueError("`probs` must be probabilities (rows summing to 1); pass softmax(logits).")
    scores = []
    for part in np.array_split(probs, int(splits)):
        py = part.mean(axis=0, keepdims=True)
        kl = special.rel_entr(part, py).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def mmd2_unbiased(
    features1: np.ndarray, features2: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> float:
    """Unbiased MMD^2 with the polynomial kernel (gamma <x, y> + coef0)^degree (gamma default 1/d)."""
    x = np.asarray(features1, np.float64)
    y = np.asarray(features2, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD needs at least 2 samples per set. Received: {m} and {n}")
    kxx = polynomial_kernel(x, x, degree=degree, gamma=gamma, coef0=coef0)
    kyy = polynomial_kernel(y, y, degree=degree, gamma=gamma, coef0=coef0)
    kxy = polynomial_kernel(x, y, degree=degree, gamma=gamma, coef0=coef0)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    )


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and std of `mmd2_unbiased` over random subsets drawn without replacement.

    `subset_size` is capped by the smaller set. Returns `(mean, std)`.
    """
    x = np.asarray(features1, np.float64)
    y = np.asarray(features2, np.float64)
    size = min(int(subset_size), len(x), len(y))
    rng = np.random.RandomState(seed)
    values = [
        mmd2_unbiased(
            x[rng.choice(len(x), size, replace=False)],
            y[rng.choice(len(y), size, replace=False)],
            degree=degree,
            gamma=gamma,
            coef0=coef0,
        )
        for _ in range(int(num_subsets))
    ]
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------------------------- networks
def keras_cache_dir() -> str:
    """Keras' cache root: `$KERAS_HOME`, else `~/.keras` (`/tmp/.keras` if home is read-only)."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    home = os.path.expanduser("~")
    return os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")


def inception_weights_path(weights: str | os.PathLike | None = None) -> str:
    """The local Inception-v3 weights file: `weights`, `$KERAS_EBM_INCEPTION_WEIGHTS`, or the
    Keras cache. Raises `FileNotFoundError` saying how to provide the file; never downloads."""
    cached = os.path.join(keras_cache_dir(), "models", INCEPTION_WEIGHTS_FILE)
    for candidate in (weights, os.environ.get(WEIGHTS_ENV), cached):
        if candidate and os.path.isfile(candidate):
            return candidate
        if candidate and candidate is weights:
            break
    raise FileNotFoundError(
        "Inception-v3 weights for FID / IS / KID were not found"
        + (f" at weights={weights!r}" if weights else f" in the Keras cache ({cached})")
        + ". keras_ebm never uses random Inception weights. Provide them in one of these ways:\n"
        f"  1. on a machine with internet access run\n"
        "       python -c \"import keras; keras.applications.InceptionV3(weights='imagenet')\"\n"
        f"     and copy ~/.keras/models/{INCEPTION_WEIGHTS_FILE} to {cached} here;\n"
        f"  2. download {INCEPTION_WEIGHTS_URL} (md5 {INCEPTION_WEIGHTS_MD5}) and pass its path as "
        f"InceptionV3Features(weights=...) or set ${WEIGHTS_ENV}.\n"
        "Without Inception weights, `ClassifierFeatures` gives a Frechet distance in the feature "
        "space of a keras_ebm classifier (classifier_fd) for relative comparisons, not FID."
    )


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file (`hashlib.file_digest`), e.g. to check a downloaded weights file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


class ImageFeatures:
    """Base of the Inception feature networks: `net(uint8 [N, H, W, C])` ->
    `{"pool": [N, d], "logits": [N, classes]}`, grey images repeated to 3 channels.

    Subclasses set `name` (cache key and results label), `note` (added to every result, or None)
    and `_forward_impl(uint8 images) -> (pool, logits)`, and call `super().__init__()` last.
    """

    metric_names = {"fd": "fid", "score": "inception_score", "kd": "kid"}
    note = None

    def __init__(self) -> None:
        self._forward = tf.function(self._forward_impl, reduce_retracing=True)

    def _forward_impl(self, images):
        raise NotImplementedError

    def __call__(self, images_uint8: TensorLike) -> dict[str, np.ndarray]:
        images = np.asarray(images_uint8)
        if images.shape[-1] == 1:  # here, not in the traced function: its channel axis may be relaxed
            images = np.repeat(images, 3, axis=-1)
        pool, logits = self._forward(tf.convert_to_tensor(images, tf.uint8))
        return {"pool": pool.numpy(), "logits": logits.numpy()}


class InceptionV3Features(ImageFeatures):
    """Pool features (2048) and logits (1000) of `keras.applications.InceptionV3` for uint8 images
    (feature network "keras_inception_v3").

    Not the papers' network (see `fid_inception.FIDInceptionFeatures`): its results carry a note
    saying so. Images are resized to 299x299 (bilinear), grey images repeated to 3 channels, and
    scaled to [-1, 1] (`keras.applications.inception_v3.preprocess_input`).

    Args:
        weights: path of the top-included weights file (default: `$KERAS_EBM_INCEPTION_WEIGHTS`,
            then the Keras cache). The Keras file is checked against its md5.
        model: an already built `InceptionV3(classifier_activation=None)` to use instead (tests
            pass one with random weights to check shapes; results of such a model mean nothing).
    """

    name = "keras_inception_v3"
    note = (
        "keras_inception_v3 is Keras' Inception-v3, not the 2015 TensorFlow Inception graph of the papers' "
        "FID/IS code (feature_network='fid_inception'): not comparable with published FID/IS"
    )

    def __init__(self, weights: str | os.PathLike | None = None, model: keras.Model | None = None) -> None:
        if model is None:
            path = inception_weights_path(weights)
            if os.path.basename(path) == INCEPTION_WEIGHTS_FILE and file_digest(path) != INCEPTION_WEIGHTS_MD5:
                raise ValueError(
                    f"{path} does not have the md5 of Keras' Inception-v3 weights "
                    f"({INCEPTION_WEIGHTS_MD5}); the file is incomplete or another one. Replace it "
                    f"with {INCEPTION_WEIGHTS_URL}."
                )
            model = keras.applications.InceptionV3(include_top=True, weights=path, classifier_activation=None)
        try:
            pool = model.get_layer("avg_pool").output
        except ValueError as e:
            raise ValueError(
                "`model` must be keras.applications.InceptionV3(include_top=True, "
                f"classifier_activation=None), with an 'avg_pool' layer. Received: {model.name}"
            ) from e
        self.model = keras.Model(model.inputs, [pool, model.outputs[0]], name="inception_features")
        super().__init__()

    def _forward_impl(self, images):
        x = tf.cast(images, tf.float32)
        x = tf.image.resize(x, (INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE), method="bilinear")
        x = x / 127.5 - 1.0
        pool, logits = self.model(x, training=False)
        return pool, logits


FEATURE_NETWORKS = ("auto", "fid_inception", "keras_inception_v3")


def inception_features(
    network: str = "auto",
    weights: str | os.PathLike | None = None,
    keras_weights: str | os.PathLike | None = None,
    preprocessing: str = "tf2015",
) -> ImageFeatures:
    """The Inception feature network of FID / IS / KID (gin: `inception_features.network = ...`).

    Args:
        network: "fid_inception" (the papers' 2015 TF Inception graph, `fid_inception`; needs
            pytorch-fid's weight file), "keras_inception_v3" (Keras' network: not comparable with
            published numbers), or "auto": the FID Inception when its weights are found
            (`weights`, `$KERAS_EBM_FID_INCEPTION_WEIGHTS`, the caches), else Keras' when its
            weights are found, else a `FileNotFoundError` naming both.
        weights: the FID Inception weights (.pth or its .npz conversion).
        keras_weights: Keras' Inception-v3 weights file.
        preprocessing: the FID Inception's input pipeline, "tf2015" (the papers') or "pytorch_fid".
    """
    from keras_ebm.evaluation import fid_inception

    if network not in FEATURE_NETWORKS:
        raise ValueError(f"`network` must be one of {FEATURE_NETWORKS}. Received: network={network!r}")
    if network == "fid_inception" or (network == "auto" and weights):
        return fid_inception.FIDInceptionFeatures(weights=weights, preprocessing=preprocessing)
    if network == "keras_inception_v3" or keras_weights:
        return InceptionV3Features(weights=keras_weights)
    try:
        return fid_inception.FIDInceptionFeatures(preprocessing=preprocessing)
    except FileNotFoundError as fid_error:
        try:
            net = InceptionV3Features()
        except FileNotFoundError:
            raise fid_error from None
        _log(f"FID Inception weights not found: using {net.name}. {net.note}.")
        return net


class ClassifierFeatures:
    """Penultimate features and logits of a keras_ebm classifier, for `classifier_fd` and friends.

    Args:
        classifier: a `build_classifier` network, or a trainer (its `network` and `pixel_range`
            are used).
        name: identifies the feature network in cache files and results (e.g.
            "wrn28x10_softmax_cifar10"); a Frechet distance is only comparable with others
            computed with the same name.
        pixel_range: the classifier's float range (default: the trainer's).
    """

    metric_names = {"fd": "classifier_fd", "score": "classifier_score", "kd": "classifier_kd"}

    def __init__(self, classifier: Any, name: str, pixel_range: tuple[float, float] | None = None) -> None:
        from keras_ebm.backbones.classifier import feature_extractor

        if not name or not isinstance(name, str):
            raise ValueError(f"`name` must name the feature network (cache key, results). Received: name={name!r}")
        self.pixel_range = adapters.model_pixel_range(classifier, pixel_range)
        self.network = getattr(classifier, "network", classifier)
        self.backbone = feature_extractor(self.network)
        self.name = f"classifier_{name}"
        self._forward = tf.function(self._forward_impl, reduce_retracing=True)

    def _forward_impl(self, images):
        lo, hi = self.pixel_range
        x = tf.cast(images, tf.float32) * ((hi - lo) / 255.0) + lo
        return self.backbone(x, training=False), self.network(x, training=False)

    def __call__(self, images_uint8: TensorLike) -> dict[str, np.ndarray]:
        pool, logits = self._forward(tf.convert_to_tensor(images_uint8, tf.uint8))
        return {"pool": np.asarray(pool, np.float32), "logits": np.asarray(logits, np.float32)}


def extract_features(
    feature_net: ImageFeatures | ClassifierFeatures,
    images: np.ndarray,
    batch_size: int = 100,
    max_examples: int | None = None,
    progress: bool = True,
    label: str = "features",
) -> dict[str, np.ndarray]:
    """`{"pool": [N, d], "logits": [N, classes]}` of uint8 images, in batches, with a progress bar."""
    images = adapters.uint8_images(images, "images", max_examples)
    n = len(images)
    bar = adapters._progbar(n, f"{label} ({feature_net.name})") if progress else None
    pools, logits = [], []
    for start in range(0, n, batch_size):
        out = feature_net(images[start : start + batch_size])
        pools.append(out["pool"])
        logits.append(out["logits"])
        if bar is not None:
            bar.update(min(start + batch_size, n))
    return {"pool": np.concatenate(pools), "logits": np.concatenate(logits)}


# ---------------------------------------------------------------------------------- reference
def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text))


def reference_cache_path(
    dataset: str,
    split: str,
    feature_name: str,
    num_examples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """`<cache_dir>/<dataset>_<split>__<feature network>__n<N or all>.npz`;
    `cache_dir` defaults to `$KERAS_EBM_CACHE/generative_stats` (`~/.cache/keras_ebm/...`)."""
    if cache_dir is None:
        root = os.environ.get("KERAS_EBM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "keras_ebm"))
        cache_dir = os.path.join(root, "generative_stats")
    count = f"n{int(num_examples)}" if num_examples else "nall"
    return os.path.join(cache_dir, f"{_slug(dataset)}_{_slug(split)}__{_slug(feature_name)}__{count}.npz")


def reference_statistics(
    feature_net: ImageFeatures | ClassifierFeatures,
    dataset: str = "cifar10",
    split: str = "train",
    images: np.ndarray | Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    max_examples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    kid_features: int = 10000,
    batch_size: int = 100,
    progress: bool = True,
    seed: int = 0,
    **source_kwargs: Any,
) -> dict[str, Any]:
    """Feature statistics of a reference set, computed once and cached per data set + network.

    Args:
        feature_net: `InceptionV3Features` or `ClassifierFeatures`.
        dataset, split: the reference set (papers: CIFAR-10 train); loaded with
            `keras_ebm.data.load_arrays(dataset, split, ...)` unless `images` is given.
        images: optional uint8 images (or a callable returning them / `(images, labels)`)
            standing for `dataset`/`split`; they are cached under that name.
        max_examples: use only the first `max_examples` images (part of the cache key).
        cache_dir: where the `.npz` goes (default `$KERAS_EBM_CACHE/generative_stats`).
        use_cache: read and write the cache.
        kid_features: how many pool features (a random subset) are kept for KID.
        **source_kwargs: forwarded to `load_arrays` (local_path, data_dir, ...).

    Returns:
        dict: `mu`, `sigma`, `features` (KID subset), `num_examples`, `dataset`, `split`,
        `feature_network`, `path` (the cache file or None).
    """
    path = reference_cache_path(dataset, split, feature_net.name, max_examples, cache_dir) if use_cache else None
    if path and os.path.isfile(path):
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta["feature_network"] != feature_net.name or meta["dataset"] != str(dataset):
                raise ValueError(f"Cache {path} was made for {meta}; delete it or pass another cache_dir.")
            _log(f"reference statistics of {dataset}/{split} ({meta['num_examples']} images) from {path}")
            return dict(meta, mu=data["mu"], sigma=data["sigma"], features=data["features"], path=path)
    if images is None:
        from keras_ebm.data import load_arrays

        images, _ = load_arrays(dataset, split=split, max_examples=max_examples, **source_kwargs)
    elif callable(images):
        images = images()
        if isinstance(images, tuple):
            images = images[0]
    feats = extract_features(
        feature_net,
        images,
        batch_size=batch_size,
        max_examples=max_examples,
        progress=progress,
        label=f"reference {dataset}/{split}",
    )["pool"]
    mu, sigma = feature_statistics(feats)
    rng = np.random.RandomState(seed)
    keep = feats if len(feats) <= kid_features else feats[np.sort(rng.choice(len(feats), kid_features, replace=False))]
    meta = {
        "dataset": str(dataset),
        "split": str(split),
        "feature_network": feature_net.name,
        "num_examples": int(len(feats)),
    }
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, mu=mu, sigma=sigma, features=keep.astype(np.float32), meta=json.dumps(meta))
        os.replace(tmp, path)
        _log(f"cached reference statistics of {dataset}/{split} at {path}")
    return dict(meta, mu=mu, sigma=sigma, features=keep.astype(np.float32), path=path)


# ---------------------------------------------------------------------------------- evaluation
def evaluate_generative(
    samples: np.ndarray,
    feature_net: ImageFeatures | ClassifierFeatures,
    reference: Mapping[str, Any],
    splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    batch_size: int = 100,
    max_examples: int | None = None,
    progress: bool = True,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    name: str = "samples",
) -> dict[str, Any]:
    """FD, score (IS) and KD of uint8 samples in `feature_net`'s space against `reference`.

    Args:
        samples: uint8 samples `[N, H, W, C]` (papers: 50k).
        feature_net: `InceptionV3Features` (results "fid", "inception_score", "kid") or
            `ClassifierFeatures` ("classifier_fd", "classifier_score", "classifier_kd").
        reference: the dict of `reference_statistics` (same feature network).
        splits: IS splits (10). kid_subsets, kid_subset_size: KID subsets (100 of 1000).
        max_examples: evaluate only the first `max_examples` samples (quick checks).
        output_dir: if given, writes `generative_<name>.json`.

    Returns:
        dict of the three metrics (and their std), `num_samples`, `feature_network`, `reference`.
    """
    if reference["feature_network"] != feature_net.name:
        raise ValueError(
            f"The reference statistics were computed with {reference['feature_network']!r} but the "
            f"samples with {feature_net.name!r}: the distance is only defined in one feature space."
        )
    feats = extract_features(
        feature_net, samples, batch_size=batch_size, max_examples=max_examples, progress=progress, label=name
    )
    n = len(feats["pool"])
    fd = frechet_distance(*feature_statistics(feats["pool"]), reference["mu"], reference["sigma"])
    probs = special.softmax(np.asarray(feats["logits"], np.float64), axis=-1)
    score, score_std = inception_score(probs, splits=min(int(splits), n))
    kd, kd_std = kernel_inception_distance(
        feats["pool"], reference["features"], num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    names = feature_net.metric_names
    results = {
        "name": name,
        names["fd"]: fd,
        names["score"]: score,
        names["score"] + "_std": score_std,
        names["kd"]: kd,
        names["kd"] + "_std": kd_std,
        "num_samples": int(n),
        "feature_network": feature_net.name,
        "reference": {k: reference[k] for k in ("dataset", "split", "num_examples")},
        "kid_subset_size": int(min(kid_subset_size, n, len(reference["features"]))),
    }
    notes = []
    if n < PAPER_NUM_SAMPLES:
        notes.append(
            f"{n} samples (papers: {PAPER_NUM_SAMPLES}); the Frechet distance is biased "
            "upward for fewer samples, compare only runs with the same count"
        )
    if getattr(feature_net, "note", None):  # keras_inception_v3: not the papers' network
        notes.append(feature_net.note)
    if names["fd"] != "fid":
        notes.append(f"distances in the feature space of {feature_net.name}, not Inception: not FID/IS/KID")
    if notes:
        results["note"] = "; ".join(notes)
    _log(
        f"{name}: "
        + ", ".join(f"{names[k]} {results[names[k]]:.4g}" for k in ("fd", "score", "kd"))
        + f" ({n} samples, {feature_net.name})"
    )
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, f"generative_{_slug(name)}.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results
