"""Batched input pipelines: sources -> shuffle/repeat -> batch -> pixel range -> augment -> noise.

`make_dataset` builds one loader; `make_dataset_fn` wraps it for
`strategy.distribute_datasets_from_function` (per-replica batch and sharding from the
`tf.distribute.InputContext`, as SimCLR's `build_input_fn`); `make_two_branch_dataset` zips the
two independently shuffled loaders of SADA-JEM (augmented classifier batch, plain p(x) batch);
`load_arrays` returns numpy arrays for evaluation.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import tensorflow as tf

from keras_ebm.data import augment as augment_lib
from keras_ebm.data import pixel_range as pixel_range_lib
from keras_ebm.data import sources

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    import numpy as np

_MAX_SHUFFLE_BUFFER = 60_000  # all of CIFAR-10 train (150 MB of uint8): a full shuffle, as JEM
_UNKNOWN_SIZE_SHUFFLE_BUFFER = 10_000


def _check_batch_size(value, arg_name):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{arg_name}` must be a positive int. Received: {arg_name}={value!r}")


def _check_source_for_batches(name, split, info, train_labels, source_kwargs):
    """Refuse a source that would train nothing or train wrongly, before any batch is drawn."""
    if info.num_examples == 0:
        filters = {k: source_kwargs[k] for k in ("classes", "max_examples") if k in source_kwargs}
        raise ValueError(
            f"The '{name}' source has no examples in split '{split}'"
            f"{' after ' + str(filters) if filters else ''}: a pipeline over it yields no batch "
            "(training would stop at once, or wait forever for a first batch). Check the file, the "
            f"split and the filters. Received: name={name!r}, split={split!r}"
        )
    if train_labels and not info.has_labels:
        raise ValueError(
            f"The '{name}' file has images ('x') but no labels ('y'): every label would be 0. A "
            "label-free file is an OOD / evaluation set (e.g. in run_eval.ood_sets), not training "
            "data. To train on it, save integer labels with the images, np.savez(path, x=x, y=y), "
            "or per split: x_train/y_train and x_test/y_test (a trainer that ignores labels, "
            "such as CLEL, may pass require_labels=False). "
            f"Received: name={name!r}, split={split!r}, local_path={source_kwargs.get('local_path')!r}"
        )
    if train_labels and info.single_split:
        warnings.warn(
            f"The '{name}' file has no per-split arrays (x_train/x_test): its '{split}' split is the "
            "whole file, and so is every other split: a 'test' split read from it is the training "
            "data. Store x_train/y_train and x_test/y_test to keep test images apart. "
            f"(local_path={source_kwargs.get('local_path')!r})",
            stacklevel=3,
        )


def _is_train(split):
    return str(split).startswith("train")


def _resolve_augment(augment, pixel_range):
    if augment is None:
        return None
    if callable(augment):
        return augment
    if isinstance(augment, str):
        return None if augment == "none" else augment_lib.augment_fn(augment, pixel_range)
    raise ValueError(
        "`augment` must be None, 'pad_crop_flip', 'pad_crop', 'simclr' or a callable "
        f"fn(x, seed). Received: augment={augment!r}"
    )


def make_dataset(
    name: str,
    split: str,
    global_batch_size: int,
    *,
    input_context: tf.distribute.InputContext | None = None,
    pixel_range: tuple[float, float] = (-1.0, 1.0),
    augment: str | Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
    shuffle: bool | None = None,
    repeat: bool | None = None,
    drop_remainder: bool | None = None,
    dequantize_noise: float = 0.0,
    uniform_dequantize: bool = False,
    seed: int = 0,
    shuffle_buffer: int | None = None,
    cache: bool = False,
    require_labels: bool = True,
    **source_kwargs: Any,
) -> tf.data.Dataset:
    """A batched `tf.data.Dataset` of `(x float32 [b, H, W, C] in pixel_range, y int32 [b])`.

    Order of operations: load (`load_source`) -> shard (several input pipelines) -> cache ->
    shuffle -> repeat -> batch -> `to_pixel_range` -> `augment` -> `+ N(0, dequantize_noise^2)`
    -> prefetch. Augmentation and noise are stateless ops seeded per batch from `seed` (and the
    input pipeline id), so the same seed gives the same batches; shuffling uses `seed` as the op
    seed, combined with the global seed (`tf.random.set_seed`) when one is set.

    Args:
        name: a source name (see `keras_ebm.data.sources.source_names()`).
        split: the split ("train", "test", ...).
        global_batch_size: batch size summed over replicas.
        input_context: a `tf.distribute.InputContext`; the batch is then the per-replica batch and
            the data is sharded over the input pipelines.
        pixel_range: `(low, high)` of the float images (JEM: (-1, 1); CLEL: (0, 1)).
        augment: None, "pad_crop_flip", "pad_crop", "simclr", or a callable `fn(x, seed)` applied
            to the float batch.
        shuffle: shuffle the examples (default: True for a train split).
        repeat: repeat forever (default: True for a train split).
        drop_remainder: drop a last partial batch (default: True for a train split).
        dequantize_noise: sigma of Gaussian noise added to the float pixels (JEM: 0.03 on
            [-1, 1]); the result is not clipped, as in JEM.
        uniform_dequantize: map pixel value k to `(k + U(0, 1)) / 256` (then to `pixel_range`)
            instead of `k / 255`: the uniform dequantisation of CLEL's code (hankook/CLEL datasets.py),
            applied before `augment`.
        seed: seed of the shuffle, the augmentation and the noise.
        shuffle_buffer: shuffle buffer size (default: the whole set, up to 60,000 examples).
        cache: cache the decoded images in memory (saves JPEG decoding after the first epoch).
        require_labels: refuse a label-free file (an npz with `x` but no `y`) for a train split,
            where every label would silently be 0. A trainer that ignores labels (CLEL) may pass
            False.
        **source_kwargs: passed to `load_source` (`local_path`, `classes`, `image_size`,
            `max_examples`, `data_dir`, `download`, ...).

    Returns:
        The batched, prefetched dataset; its `source_info` attribute is the source's `SourceInfo`.
    """
    sources.get_source(name)  # an unknown name fails now, listing the registered ones
    _check_batch_size(global_batch_size, "global_batch_size")
    pixel_range_lib.check_pixel_range(pixel_range)
    if dequantize_noise < 0:
        raise ValueError(f"`dequantize_noise` must be >= 0. Received: dequantize_noise={dequantize_noise!r}")
    augment_fn = _resolve_augment(augment, pixel_range)
    train = _is_train(split)
    shuffle = train if shuffle is None else shuffle
    repeat = train if repeat is None else repeat
    drop_remainder = train if drop_remainder is None else drop_remainder

    ds, info = sources.load_source(name, split, **source_kwargs)
    _check_source_for_batches(name, split, info, train and require_labels, source_kwargs)

    batch_size, pipeline_id = global_batch_size, 0
    if input_context is not None:
        replicas = input_context.num_replicas_in_sync
        if global_batch_size % replicas:
            lower = global_batch_size // replicas * replicas
            sizes = f"{lower} or {lower + replicas}" if lower else f"{replicas}"
            raise ValueError(
                f"The global batch size {global_batch_size} must be a multiple of the number of "
                f"replicas ({replicas}: every replica gets the same share"
                f"{', and each needs at least one example' if global_batch_size < replicas else ''}"
                f"). Use a batch size of {sizes}, or fewer devices. "
                f"Received: global_batch_size={global_batch_size}, num_replicas_in_sync={replicas}"
            )
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        if input_context.num_input_pipelines > 1:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            pipeline_id = input_context.input_pipeline_id
    if cache:
        ds = ds.cache()
    if shuffle:
        buffer = shuffle_buffer or min(info.num_examples or _UNKNOWN_SIZE_SHUFFLE_BUFFER, _MAX_SHUFFLE_BUFFER)
        ds = ds.shuffle(max(int(buffer), 1), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)

    lo_hi = tuple(float(v) for v in pixel_range)
    if augment_fn is None and not dequantize_noise and not uniform_dequantize:
        ds = ds.map(
            lambda x, y: (pixel_range_lib.to_pixel_range(x, lo_hi), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        # One random int64 pair per batch; stateless ops below make every batch reproducible and
        # independent of how tf.data schedules the parallel map.
        batch_seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((ds, batch_seeds))

        def transform(batch, batch_seed):
            x, y = batch
            batch_seed = tf.random.experimental.stateless_fold_in(batch_seed, pipeline_id)
            aug_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(batch_seed, num=2))
            if uniform_dequantize:
                dequant_seed = tf.random.experimental.stateless_fold_in(batch_seed, 3)
                u = tf.random.stateless_uniform(tf.shape(x), dequant_seed)
                x = (tf.cast(x, tf.float32) + u) / 256.0 * (lo_hi[1] - lo_hi[0]) + lo_hi[0]
            else:
                x = pixel_range_lib.to_pixel_range(x, lo_hi)
            if augment_fn is not None:
                x = augment_fn(x, aug_seed)
            if dequantize_noise:
                x = x + dequantize_noise * tf.random.stateless_normal(tf.shape(x), noise_seed)
            return x, y

        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    ds.source_info = info  # what the source holds (class count, image shape), for checks
    return ds


def make_dataset_fn(name: str, split: str, global_batch_size: int, **kwargs: Any) -> Callable[..., tf.data.Dataset]:
    """`fn(input_context=None)` building `make_dataset(...)`, for
    `strategy.distribute_datasets_from_function` (which calls it once per input pipeline).

    The name and batch size are checked now, so configuration errors surface before training.
    Once called, `fn.source_info` is the source's `SourceInfo` (`run_training` compares its class
    count with the trainer's); `fn.check_available()` fails at once when a tensorflow-datasets
    source can be neither read nor downloaded (`run_training` calls it before building a model).
    """
    sources.get_source(name)  # an unknown name fails now, listing the registered ones
    _check_batch_size(global_batch_size, "global_batch_size")

    return _recording_source_info(
        lambda input_context: make_dataset(name, split, global_batch_size, input_context=input_context, **kwargs),
        name,
        split,
        kwargs,
    )


def _recording_source_info(build, name, split, kwargs):
    """`fn(input_context=None)` returning `build(input_context)`, whose `fn.source_info` is the
    dataset's `source_info` once `fn` has run (None before), and `fn.check_available()`
    `sources.check_available` of its source."""

    def dataset_fn(input_context=None):
        ds = build(input_context)
        dataset_fn.source_info = ds.source_info
        return ds

    dataset_fn.source_info = None
    dataset_fn.check_available = lambda: sources.check_available(name, split, **kwargs)
    return dataset_fn


def make_two_branch_dataset(
    name: str,
    split: str,
    clf_batch_size: int,
    px_batch_size: int,
    *,
    clf_augment: str | Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = "pad_crop_flip",
    px_augment: str | Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
    input_context: tf.distribute.InputContext | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> tf.data.Dataset:
    """Two independently shuffled loaders zipped: `((x_clf, y_clf), (x_px, y_px))`.

    SADA-JEM trains the classifier on augmented batches (`clf_batch_size`, pad-crop-flip) and
    the p(x) term on un-augmented ones (`px_batch_size`), from two separate data loaders.

    Args:
        name, split: the source, as in `make_dataset`.
        clf_batch_size: global batch size of the classifier branch (SADA-JEM: 128).
        px_batch_size: global batch size of the p(x) branch (SADA-JEM: 64).
        clf_augment: augmentation of the classifier branch.
        px_augment: augmentation of the p(x) branch (SADA-JEM: none).
        input_context: a `tf.distribute.InputContext`, as in `make_dataset`.
        seed: seed of the classifier branch; the p(x) branch uses `seed + 1`.
        **kwargs: passed to both `make_dataset` calls.

    Returns:
        The zipped dataset (repeated by default for a train split).

    Reference:
        Yang, Su and Ji, "Towards Bridging the Performance Gaps of Joint Energy-based Models"
        (SADA-JEM), CVPR 2023; code github.com/sndnyang/SADAJEM (`utils.py` get_data).
    """
    _check_batch_size(clf_batch_size, "clf_batch_size")
    _check_batch_size(px_batch_size, "px_batch_size")
    clf = make_dataset(
        name,
        split,
        clf_batch_size,
        input_context=input_context,
        augment=clf_augment,
        seed=seed,
        **kwargs,
    )
    px = make_dataset(
        name,
        split,
        px_batch_size,
        input_context=input_context,
        augment=px_augment,
        seed=seed + 1,
        **kwargs,
    )
    ds = tf.data.Dataset.zip((clf, px)).prefetch(tf.data.AUTOTUNE)
    ds.source_info = clf.source_info
    return ds


def make_two_branch_dataset_fn(
    name: str, split: str, clf_batch_size: int, px_batch_size: int, **kwargs: Any
) -> Callable[..., tf.data.Dataset]:
    """`fn(input_context=None)` building `make_two_branch_dataset(...)` (for
    `strategy.distribute_datasets_from_function`)."""
    sources.get_source(name)  # an unknown name fails now, listing the registered ones
    _check_batch_size(clf_batch_size, "clf_batch_size")
    _check_batch_size(px_batch_size, "px_batch_size")

    return _recording_source_info(
        lambda input_context: make_two_branch_dataset(
            name, split, clf_batch_size, px_batch_size, input_context=input_context, **kwargs
        ),
        name,
        split,
        kwargs,
    )


def load_arrays(
    name: str, split: str = "test", max_examples: int | None = None, **source_kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as numpy arrays, for evaluation.

    Args:
        name, split: the source (see `load_source`).
        max_examples: keep only the first `max_examples` examples.
        **source_kwargs: passed to `load_source`.

    Returns:
        `(x uint8 [N, H, W, C], y int32 [N])`.
    """
    sources.get_source(name)  # an unknown name fails now, listing the registered ones
    ds, _ = sources.load_source(name, split, max_examples=max_examples, **source_kwargs)
    return sources.dataset_to_arrays(ds)
