"""tensorflow-datasets sources: "cifar10", "cifar100", "svhn_cropped", "celeb_a", "dtd".

Data that is not prepared is downloaded when the network answers a 3-second probe; offline (where
tfds itself retries DNS for about 200 s before failing) a missing set raises `FileNotFoundError` at
once, naming the offline options (`download=False`: never download).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import tensorflow as tf

from keras_ebm.data.sources import common
from keras_ebm.data.sources.registry import register_source

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

TFDS_DATASETS = ("cifar10", "cifar100", "svhn_cropped", "celeb_a", "dtd")

# CelebA: the aligned 218x178 faces are centre-cropped to 140x140 before resizing (JEM, DCGAN
# convention; the shared celeba_subset_32.npz was made the same way).
_CELEBA_CROP = 140
_DEFAULT_SIZE = {"celeb_a": (32, 32), "dtd": (32, 32)}

_PROBE_HOST = ("storage.googleapis.com", 443)  # tfds' GCS mirror of prepared datasets
_OFFLINE_HINT = (
    "Offline, use a local source instead: 'cifar10_python', 'cifar100_python' or 'svhn_mat' (the "
    "files from the data sets' sites, cifar-10-python.tar.gz, cifar-100-python.tar.gz, "
    "train_32x32.mat/test_32x32.mat, in the directory $KERAS_EBM_DATA_DIR or at `local_path=`), "
    "'cifar10_jpeg' (the JPEG archive, `local_path=` or the KERAS_EBM_CIFAR10_JPEG environment "
    "variable), 'npz' (`local_path=` an .npz with uint8 arrays x/y), or 'folder' (`local_path=` a "
    "directory with one sub-folder per class)."
)
_OVERLAY_HINT = (
    "With train.py / eval.py, stack an offline data overlay on the config: "
    "--gin_file=gin_configs/data/cifar10_python.gin (or cifar100_python.gin, svhn_mat.gin), with "
    "the data sets' own files in $KERAS_EBM_DATA_DIR (docs/data.md, 'Offline data')."
)
_OFFLINE_ENV = "KERAS_EBM_OFFLINE"  # set (to anything but '' / '0'): never try the network
PROBE_TIMEOUT = 3.0


def _offline_env_set():
    return os.environ.get(_OFFLINE_ENV, "").strip() not in ("", "0")


def _network_reachable(timeout=PROBE_TIMEOUT):
    """A quick TCP probe (name lookup and connect, bounded by `timeout`) before tfds downloads.
    False at once when $KERAS_EBM_OFFLINE is set. Tests replace this function to simulate either
    case."""
    import socket
    import threading

    if _offline_env_set():
        return False
    result = []

    def probe():
        try:
            socket.create_connection(_PROBE_HOST, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _tfds_unavailable(name, split, data_dir, download, why):
    """The FileNotFoundError for tfds data that is not prepared and will not be downloaded."""
    import tensorflow_datasets as tfds

    where = data_dir or tfds.core.constants.DATA_DIR
    if why == "off":
        lead = (
            f"No prepared tensorflow-datasets data for '{name}' (split '{split}') under {where}, "
            "and downloading is off (download=False). With internet, leave `download` unset "
            "(the default downloads when the network answers) or pass `download=True`; with "
            "prepared data elsewhere, pass `data_dir=`."
        )
    else:
        how = (
            f"${_OFFLINE_ENV} is set"
            if _offline_env_set()
            else f"no answer from {_PROBE_HOST[0]}:{_PROBE_HOST[1]} within {PROBE_TIMEOUT:g} s"
        )
        lead = (
            f"download=True, but no network: cannot download '{name}' with tensorflow-datasets ({how})."
            if download
            else f"'{name}' (split '{split}') is not prepared under {where}, and tensorflow-datasets "
            f"cannot download it: no network ({how})."
        )
    return FileNotFoundError(
        f"{lead} {_OFFLINE_HINT} {_OVERLAY_HINT} Received: name={name!r}, data_dir={data_dir!r}, download={download!r}"
    )


def _refusal(name, split, data_dir, download):
    """The error for unprepared data that must not (download=False) or cannot (no network) be
    downloaded; None when it can be."""
    if download is False:
        return _tfds_unavailable(name, split, data_dir, download, "off")
    if not _network_reachable():
        return _tfds_unavailable(name, split, data_dir, download, "offline")
    return None


def check_available(
    name: str, split: str = "train", *, data_dir: str | None = None, download: bool | None = None, **unused_options: Any
) -> None:
    """Fail now when `name` is not prepared under `data_dir` and cannot be downloaded."""
    import tensorflow_datasets as tfds

    if tfds.builder(name, data_dir=data_dir).is_prepared():
        return
    error = _refusal(name, split, data_dir, download)
    if error is not None:
        raise error


def _check_crop(crop, unused_name):
    if crop not in ("center", "top_left"):
        raise ValueError(f"`crop` must be 'center' or 'top_left'. Received: crop={crop!r}")


def _read(builder, name, split, data_dir, download):
    try:
        # Prepared data is read without a probe. Without it tfds fails at once (an
        # AssertionError); checking `is_prepared()` first would also reject
        # `tfds.testing.mock_data`.
        return builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as e:
        # Offline, tfds would retry for minutes before failing: probe first, say at once what to do.
        error = _refusal(name, split, data_dir, download)
        if error is not None:
            raise error from e
        builder.download_and_prepare()
        return builder.as_dataset(split=split, shuffle_files=False)


def _crop_resize(ds, name, channels, size, crop):
    """CelebA: centre crop 140, then resize; DTD: a centre square (or CLEL's top-left corner,
    without resizing), resized to `size`."""

    def crop_resize(x, y):
        if name == "celeb_a":
            x = tf.image.resize_with_crop_or_pad(x, _CELEBA_CROP, _CELEBA_CROP)
            x = common.resize_uint8(x, size)
        elif crop == "top_left":  # CLEL's DTD: the top-left corner, no resizing
            x = tf.image.crop_to_bounding_box(x, 0, 0, size[0], size[1])
        else:
            side = tf.reduce_min(tf.shape(x)[:2])
            x = common.resize_uint8(tf.image.resize_with_crop_or_pad(x, side, side), size)
        return tf.ensure_shape(x, (size[0], size[1], channels)), y

    return ds.map(crop_resize, num_parallel_calls=tf.data.AUTOTUNE)


def _num_examples(builder, split, classes, max_examples):
    if classes is not None:
        return None
    try:
        num_examples = int(builder.info.splits[split].num_examples)
    except Exception:  # mock data and some split strings carry no sizes
        return None
    return num_examples if max_examples is None else min(num_examples, max_examples)


@register_source(*TFDS_DATASETS, check_available=check_available, option_checks={"crop": _check_crop})
def tfds_source(
    name: str,
    split: str,
    *,
    classes: Sequence[int] | None = None,
    max_examples: int | None = None,
    data_dir: str | None = None,
    download: bool | None = None,
    image_size: int | tuple[int, int] | None = None,
    crop: str = "center",
) -> common.SourceData:
    """A tensorflow-datasets set; "celeb_a" is a one-class set (label 0, "face").

    Options:
        data_dir: tensorflow-datasets data directory.
        download: sets that are not prepared under `data_dir`: None (default) downloads and
            prepares them when tfds' host answers a 3-second probe, and otherwise raises
            `FileNotFoundError` with the offline options (tfds itself would retry DNS for minutes);
            True the same, said as an explicit request; False never downloads. The environment
            variable KERAS_EBM_OFFLINE=1 makes the probe fail without touching the network.
        image_size: "celeb_a" and "dtd" default to 32 (CelebA: centre crop 140 first; DTD: centre
            square crop, or the top-left corner with `crop="top_left"` as CLEL).
        crop: "center" or "top_left", how "dtd" images become square.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    ds = _read(builder, name, split, data_dir, download)
    features = builder.info.features
    has_label = "label" in features
    class_names = tuple(features["label"].names) if has_label else ("face",)
    classes = common.check_classes(classes, len(class_names))

    def unpack(example):
        label = tf.cast(example["label"], tf.int32) if has_label else tf.constant(0, tf.int32)
        return example["image"], label

    ds = ds.map(unpack, num_parallel_calls=tf.data.AUTOTUNE)
    ds = common.select_tf(ds, classes, max_examples)
    image_shape = tuple(features["image"].shape)
    if name in _DEFAULT_SIZE:
        size = image_size or _DEFAULT_SIZE[name]
        ds = _crop_resize(ds, name, image_shape[-1], size, crop)
        image_shape = (size[0], size[1], image_shape[-1])
    return common.SourceData(
        ds,
        _num_examples(builder, split, classes, max_examples),
        image_shape,
        common.kept_class_names(class_names, classes),
    )
