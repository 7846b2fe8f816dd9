"""Chain initialisers p_0(x): where SGLD chains start (replay-buffer fill and re-initialisation).

An initialiser is a plain object with `init(shape, seed, y=None, dtype=tf.float32)` returning images of
`shape = [n, height, width, channels]` (`n` may be a scalar tensor), drawn with the stateless seed
`seed` (an int tensor of shape [2]), optionally conditioned on int labels `y` [n].
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from keras_ebm import memory, random_draws

if TYPE_CHECKING:
    from tensorflow.types.experimental import TensorLike


def _check_pixel_range(pixel_range):
    if len(pixel_range) != 2 or not float(pixel_range[0]) < float(pixel_range[1]):
        raise ValueError(f"`pixel_range` must be a (lo, hi) pair with lo < hi. Received: pixel_range={pixel_range}")
    return float(pixel_range[0]), float(pixel_range[1])


@keras.saving.register_keras_serializable(package="keras_ebm")
class UniformInitializer:
    """Uniform noise U(lo, hi) per pixel: the JEM / CLEL chain start.

    Args:
        pixel_range: `(lo, hi)`, the pixel range of the images, `(-1, 1)` for the JEM family and
            `(0, 1)` for CLEL.

    Example:

    ```python
    init = UniformInitializer((-1, 1))
    x0 = init.init([64, 32, 32, 3], seed=tf.constant([1, 2]))
    ```
    """

    def __init__(self, pixel_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        self.pixel_range = _check_pixel_range(pixel_range)

    def init(
        self, shape: tuple[int, ...], seed: tf.Tensor, y: tf.Tensor | None = None, dtype: tf.DType | str = tf.float32
    ) -> tf.Tensor:
        """Images U(lo, hi) of `shape` and `dtype`; `y` is ignored (the distribution has no classes)."""
        lo, hi = self.pixel_range
        return random_draws.uniform("init_uniform", shape, seed=seed, minval=lo, maxval=hi, dtype=dtype)

    def get_config(self) -> dict[str, Any]:
        return {"pixel_range": list(self.pixel_range)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UniformInitializer:
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_ebm")
class InformativeInitializer:
    """Class-conditional Gaussians fitted to the training images (JEM++ "informative" init).

    For each class c, the mean μ_c and full covariance Σ_c of the flattened training images
    (height × width × channels order, in the pixel range, biased 1/N estimator) define
    N(μ_c, Σ_c + jitter·I). A sample is μ_c + L_c z with L_c the Cholesky factor and z ~ N(0, I),
    clamped to the pixel range. Without labels the class is drawn uniformly.

    The statistics are derived from the data, so they are held as plain tensors (not variables,
    not checkpointed); `from_dataset` computes them once and caches them to an `.npz` file. For
    CIFAR-10 the factors take 10 × 3072² float32 ≈ 377 MB (3.8 GB for 100 classes). Under a
    multi-device strategy they live on the device where they were built and replicas read them
    from there.

    Serialization: `get_config` holds the settings (`pixel_range`, `jitter`, `num_classes`, `dim`);
    the fitted statistics (`mean` and the Cholesky factors) are state, not config:
    `get_statistics()` / `set_statistics(...)` move them, and the `ReplayBuffer` that owns the
    initialiser stores them among its weights in a `.keras` file, so a saved trainer reloads
    with the very factors it was trained with (no data and no refit needed; the file grows by the
    size of the factors). `from_config` alone gives an initialiser of the right shape whose
    statistics are zeros (every sample is the clamped 0 image) until `set_statistics` is called.

    Args:
        mean: float array `[num_classes, dim]`, per-class means (dim = height·width·channels).
        cov: float array `[num_classes, dim, dim]`, per-class covariances.
        pixel_range: `(lo, hi)` range the samples are clamped to.
        jitter: float added to the covariance diagonal before the Cholesky factorisation (JEM++
            uses 1e-4); it makes rank-deficient covariances (fewer images than pixels, constant
            pixels) factorisable.
        factor_order: the pixel order of the flattened vectors `mean` and `cov` describe:
            `"hwc"` (default, channels-last, keras_ebm's images) or `"chw"` (channels-first, the
            order of the official JEM++ / SADA-JEM code, which flattens NCHW tensors). The Cholesky
            factor of a permuted covariance is not the permuted factor, so the same standard-normal
            draw z gives a different image in each order; `"chw"` reproduces the official samples
            from the official draws (tests/test_parity_jempp.py). Samples are returned channels-last
            either way.
        dtype: `"float32"` (default) or `"float64"`, the dtype of the stored factors, of z and of
            the sample arithmetic (float64 for float64 parity runs; it doubles the memory).

    Example:

    ```python
    init = InformativeInitializer.from_dataset(
        (x_train, y_train), num_classes=10, pixel_range=(-1, 1), cache_path="cifar10_gauss.npz"
    )
    x0 = init.init([64, 32, 32, 3], seed=tf.constant([1, 2]), y=y)
    ```

    Reference:
        - [Yang and Ji, 2021 (JEM++)](https://arxiv.org/abs/2109.09032), section 3.
    """

    def __init__(
        self,
        mean: TensorLike,
        cov: TensorLike,
        pixel_range: tuple[float, float] = (-1.0, 1.0),
        jitter: float = 1e-4,
        factor_order: str = "hwc",
        dtype: str = "float32",
    ) -> None:
        mean = np.asarray(mean, np.float64)
        cov = np.asarray(cov, np.float64)
        if mean.ndim != 2 or cov.ndim != 3 or cov.shape != mean.shape + mean.shape[-1:]:
            raise ValueError(
                "`mean` must have shape [num_classes, dim] and `cov` [num_classes, dim, dim]. "
                f"Received: mean.shape={mean.shape}, cov.shape={cov.shape}"
            )
        if jitter < 0:
            raise ValueError(f"`jitter` must be non-negative. Received: jitter={jitter}")
        self.pixel_range = _check_pixel_range(pixel_range)
        self.jitter = float(jitter)
        self.factor_order = _check_factor_order(factor_order)
        self.dtype = _check_dtype(dtype)
        num_classes, dim = mean.shape
        check_gaussian_memory(num_classes, dim, accumulate=False)
        # One class at a time into `dtype` factors: the peak is the covariances plus the factors.
        cholesky = np.empty(cov.shape, self.dtype)
        eye = self.jitter * np.eye(dim)
        for c in range(num_classes):
            try:
                cholesky[c] = np.linalg.cholesky(cov[c] + eye)
            except np.linalg.LinAlgError as error:
                raise ValueError(
                    "A class covariance is not positive definite even after adding the jitter; "
                    "increase `jitter`. Received: "
                    f"jitter={jitter} (class {c})"
                ) from error
        self.set_statistics(mean, cholesky)

    def get_statistics(self) -> dict[str, np.ndarray]:
        """The fitted statistics as numpy arrays (of `dtype`): `mean` `[C, D]` and `cholesky`
        `[C, D, D]` (the factors of the jittered covariances)."""
        return {"mean": self.mean.numpy(), "cholesky": self.cholesky.numpy()}

    def set_statistics(self, mean: TensorLike, cholesky: TensorLike) -> None:
        """Install fitted statistics (`get_statistics()`'s arrays); the shapes set `num_classes`
        and `dim`."""
        dtype = getattr(self, "dtype", "float32")
        mean = np.asarray(mean, dtype)
        cholesky = np.asarray(cholesky, dtype)
        if mean.ndim != 2 or cholesky.shape != mean.shape + mean.shape[-1:]:
            raise ValueError(
                "`mean` must have shape [num_classes, dim] and `cholesky` [num_classes, dim, dim]. "
                f"Received: mean.shape={mean.shape}, cholesky.shape={cholesky.shape}"
            )
        self.num_classes, self.dim = (int(d) for d in mean.shape)
        self.mean = tf.constant(mean, dtype)
        self.cholesky = tf.constant(cholesky, dtype)

    def get_config(self) -> dict[str, Any]:
        return {
            "pixel_range": list(self.pixel_range),
            "jitter": self.jitter,
            "factor_order": self.factor_order,
            "dtype": self.dtype,
            "num_classes": self.num_classes,
            "dim": self.dim,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> InformativeInitializer:
        """An initialiser with the settings of `config` and zero statistics (see the class
        docstring: the statistics come back with `set_statistics`, which loading a `.keras` file
        does)."""
        config = dict(config)
        num_classes, dim = int(config.pop("num_classes")), int(config.pop("dim"))
        init = cls.__new__(cls)
        init.pixel_range = _check_pixel_range(config.pop("pixel_range", (-1.0, 1.0)))
        init.jitter = float(config.pop("jitter", 1e-4))
        init.factor_order = _check_factor_order(config.pop("factor_order", "hwc"))
        init.dtype = _check_dtype(config.pop("dtype", "float32"))
        if config:
            raise ValueError(f"Unknown InformativeInitializer config keys. Received: {sorted(config)}")
        init.set_statistics(np.zeros([num_classes, dim], init.dtype), np.zeros([num_classes, dim, dim], init.dtype))
        return init

    @classmethod
    def from_dataset(
        cls,
        dataset_or_arrays: tuple[np.ndarray, np.ndarray] | Iterable[tuple[TensorLike, TensorLike]],
        num_classes: int,
        pixel_range: tuple[float, float] = (-1.0, 1.0),
        cache_path: str | None = None,
        jitter: float = 1e-4,
        source: Mapping[str, Any] | None = None,
        factor_order: str = "hwc",
    ) -> InformativeInitializer:
        """Fit the per-class Gaussians to labelled images (or reload them from `cache_path`).

        Args:
            dataset_or_arrays: `(images, labels)` numpy arrays, or a `tf.data.Dataset` (or any
                iterable) of `(images, labels)` batches. Images `[n, height, width, channels]`:
                float images already in `pixel_range`, or uint8 images in [0, 255], which are
                mapped linearly to `pixel_range`.
            num_classes: int, the number of classes; labels are ints in `[0, num_classes)`.
            pixel_range: `(lo, hi)`, the pixel range of the float images and of the samples.
            cache_path: optional `.npz` path. If the file exists the statistics are read from it
                (the data is not touched); otherwise they are computed and written there.
            jitter, factor_order: see the class docstring.
            source: optional dict describing the data (dataset, split, max_examples), stored in
                the cache with `num_classes` and `pixel_range`; a cache written for other data or
                another pixel range is refused instead of being reused silently.
        """
        key = {
            "num_classes": int(num_classes),
            "pixel_range": [float(v) for v in pixel_range],
            **({"factor_order": factor_order} if factor_order != "hwc" else {}),
            **dict((source or {}).items()),
        }
        if cache_path is not None and os.path.exists(cache_path):
            with np.load(cache_path) as cached:
                mean, cov = cached["mean"], cached["cov"]
                stored = json.loads(str(cached["key"])) if "key" in cached else None
            if mean.shape[0] != num_classes:
                raise ValueError(
                    f"The cached statistics at {cache_path} are for {mean.shape[0]} classes, not "
                    "num_classes; delete the file or pass another cache_path. Received: "
                    f"num_classes={num_classes}"
                )
            if stored is not None:
                differ = {k: (stored.get(k), v) for k, v in key.items() if stored.get(k) != v}
                if differ:
                    raise ValueError(
                        f"The cached class statistics at {cache_path} were computed for other data "
                        f"(cached vs requested: {differ}); delete the file or pass another cache_path."
                    )
            return cls(mean, cov, pixel_range=pixel_range, jitter=jitter, factor_order=factor_order)
        mean, cov = class_gaussian_statistics(dataset_or_arrays, num_classes, pixel_range, factor_order)
        # Rounded to the float32 the cache stores (in place, per class: no extra float64 copy), so
        # the run that fits the statistics and every run that reads them back (a resumed run, the
        # next run) sample the same chains: a run killed and resumed ends bit-identical to an
        # uninterrupted one (benchmarks/fault_injection.py; before, max |diff| 4.2e-4 for SADA-JEM).
        mean = mean.astype(np.float32).astype(np.float64)
        for c in range(cov.shape[0]):
            cov[c] = cov[c].astype(np.float32)
        if cache_path is not None:
            directory = os.path.dirname(os.path.abspath(cache_path))
            os.makedirs(directory, exist_ok=True)
            tmp = f"{cache_path}.{os.getpid()}.tmp.npz"  # written whole, then renamed: no half files
            np.savez(tmp, mean=mean.astype(np.float32), cov=cov.astype(np.float32), key=json.dumps(key))
            os.replace(tmp, cache_path)
        return cls(mean, cov, pixel_range=pixel_range, jitter=jitter, factor_order=factor_order)

    def init(
        self, shape: tuple[int, ...], seed: tf.Tensor, y: tf.Tensor | None = None, dtype: tf.DType | str = tf.float32
    ) -> tf.Tensor:
        """Samples `[n, height, width, channels]` from the class Gaussians of `y` (or random classes),
        computed in the factors' dtype (`self.dtype`) and returned as `dtype`."""
        shape = tf.convert_to_tensor(shape, tf.int32)
        n = shape[0]
        seed = tf.cast(seed, tf.int64)
        if y is None:
            y = random_draws.uniform(
                "init_class",
                [n],
                seed=tf.random.experimental.stateless_fold_in(seed, 1),
                minval=0,
                maxval=self.num_classes,
                dtype=tf.int32,
            )
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        z = random_draws.normal("init_normal", [n, self.dim], seed=seed, dtype=self.dtype)
        # One matmul per class over that class's rows only: gathering a [dim, dim] factor per
        # sample would cost batch × 38 MB for CIFAR.
        positions = tf.dynamic_partition(tf.range(n), y, self.num_classes)
        z_parts = tf.dynamic_partition(z, y, self.num_classes)
        x_parts = [
            self.mean[c] + tf.matmul(z_parts[c], self.cholesky[c], transpose_b=True) for c in range(self.num_classes)
        ]
        x = tf.dynamic_stitch(positions, x_parts)
        x = tf.clip_by_value(x, self.pixel_range[0], self.pixel_range[1])
        if self.factor_order == "chw":
            x = tf.transpose(tf.reshape(x, tf.stack([n, shape[3], shape[1], shape[2]])), [0, 2, 3, 1])
        return tf.cast(tf.reshape(x, shape), dtype)


def _check_factor_order(factor_order):
    if factor_order not in ("hwc", "chw"):
        raise ValueError(f"`factor_order` must be 'hwc' or 'chw'. Received: factor_order={factor_order!r}")
    return factor_order


def _check_dtype(dtype):
    if dtype not in ("float32", "float64"):
        raise ValueError(f"`dtype` must be 'float32' or 'float64'. Received: dtype={dtype!r}")
    return dtype


def check_gaussian_memory(num_classes: int, dim: int, accumulate: bool) -> None:
    """Refuse (`keras_ebm.memory.ResourceError`) class Gaussians that would not fit: while fitting
    (`accumulate`), C x D x D float64 sums of outer products then covariances (in place) and the
    float32 factors and their tensor; when loading, the float64 covariances, the factors and the
    tensor. CIFAR-10 at 32x32x3: 10 x 3072^2 x 16 bytes = 1.5 GB; CIFAR-100: 15.1 GB."""
    per_entry = 8 + 4 + 4
    memory.check_allocation(
        f"JEM++'s informative initialisation ({num_classes} class covariances of {dim} x {dim})",
        per_entry * num_classes * dim * dim,
        "Use the uniform initialiser (drop `initializer=@informative_initializer()`), or train at a "
        "smaller image size, or on a machine with more memory.",
    )


def class_gaussian_statistics(
    dataset_or_arrays: tuple[np.ndarray, np.ndarray] | Iterable[tuple[TensorLike, TensorLike]],
    num_classes: int,
    pixel_range: tuple[float, float] = (-1.0, 1.0),
    factor_order: str = "hwc",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean `[C, D]` and biased covariance `[C, D, D]` (float64) of flattened images
    (flattened channels-last, or channels-first with `factor_order="chw"`).

    Streams over the batches, accumulating sums and sums of outer products in float64. See
    `InformativeInitializer.from_dataset` for the accepted inputs. Raises if a class has no image.
    """
    lo, hi = _check_pixel_range(pixel_range)
    if (
        isinstance(dataset_or_arrays, tuple)
        and len(dataset_or_arrays) == 2
        and isinstance(dataset_or_arrays[0], np.ndarray)
    ):
        batches = [dataset_or_arrays]
    else:
        batches = dataset_or_arrays
    sums = counts = outer = None
    for images, labels in batches:
        images = np.asarray(images)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if images.dtype == np.uint8:
            images = images.astype(np.float64) / 255.0 * (hi - lo) + lo
        if _check_factor_order(factor_order) == "chw":
            images = np.transpose(images, (0, 3, 1, 2))
        flat = images.reshape(images.shape[0], -1).astype(np.float64)
        if sums is None:
            dim = flat.shape[1]
            check_gaussian_memory(num_classes, dim, accumulate=True)
            sums = np.zeros([num_classes, dim])
            outer = np.zeros([num_classes, dim, dim])
            counts = np.zeros([num_classes])
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"Labels must lie in [0, num_classes). Received: labels in "
                f"[{labels.min()}, {labels.max()}] with num_classes={num_classes}"
            )
        for c in np.unique(labels):
            rows = flat[labels == c]
            sums[c] += rows.sum(axis=0)
            outer[c] += rows.T @ rows
            counts[c] += rows.shape[0]
    if counts is None or np.any(counts == 0):
        missing = [] if counts is None else np.flatnonzero(counts == 0).tolist()
        raise ValueError(
            "Every class needs at least one image to fit its Gaussian. "
            f"Received: no images for classes {missing if counts is not None else 'all'}"
        )
    mean = sums / counts[:, None]
    for c in range(num_classes):  # in place: no second [C, D, D] array
        outer[c] /= counts[c]
        outer[c] -= np.outer(mean[c], mean[c])
    return mean, outer


def default_cache_path(
    dataset: str, split: str, num_classes: int, pixel_range: tuple[float, float], max_examples: int | None = None
) -> str:
    """Where `informative_initializer(cache_path="auto")` caches the class statistics:
    `$KERAS_EBM_CACHE` (default `~/.cache/keras_ebm`)/class_gaussians/<data and range>.npz."""
    root = os.environ.get("KERAS_EBM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "keras_ebm"))
    lo, hi = (float(v) for v in pixel_range)
    name = f"{dataset}_{split}_c{int(num_classes)}_r{lo:g}_{hi:g}" + (f"_n{max_examples}" if max_examples else "")
    return os.path.join(root, "class_gaussians", name + ".npz")


def informative_initializer(
    dataset: str = "cifar10",
    split: str = "train",
    num_classes: int = 10,
    pixel_range: tuple[float, float] = (-1.0, 1.0),
    cache_path: str | None = "auto",
    max_examples: int | None = None,
    jitter: float = 1e-4,
    **source_kwargs: Any,
) -> InformativeInitializer:
    """JEM++'s informative initialiser fitted on a keras_ebm data source (gin entry point).

    Loads `dataset`/`split` as uint8 arrays with `keras_ebm.data.load_arrays` (unless `cache_path`
    already holds the statistics) and returns `InformativeInitializer.from_dataset(...)`.

    Args:
        dataset: a `keras_ebm.data` source name (e.g. "cifar10", "cifar10_jpeg", "digits").
        split: split to fit on.
        num_classes: number of classes.
        pixel_range: the model's pixel range.
        cache_path: `.npz` cache of the per-class means and covariances: "auto" (default) for
            `default_cache_path(...)`, a path, or None to recompute at every start. JEM++ computes
            them once; a cache made for another dataset, split, size or pixel range is refused.
        max_examples: optional cap on the images used.
        jitter: diagonal jitter added to each covariance (JEM++: 1e-4).
        **source_kwargs: forwarded to `load_arrays` (local_path, data_dir, ...).
    """
    if cache_path == "auto":
        cache_path = default_cache_path(dataset, split, num_classes, pixel_range, max_examples)
    if cache_path and os.path.exists(cache_path):
        data = None
    else:
        from keras_ebm.data import load_arrays  # data sits beside sampling; imported only here

        data = load_arrays(dataset, split, max_examples=max_examples, **source_kwargs)
    return InformativeInitializer.from_dataset(
        data,
        num_classes=num_classes,
        pixel_range=pixel_range,
        cache_path=cache_path,
        jitter=jitter,
        source={"dataset": dataset, "split": split, "max_examples": max_examples},
    )
