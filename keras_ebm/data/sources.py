"""Image sources: every data set as an unbatched `tf.data.Dataset` of `(uint8 image, int32 label)`.

`load_source(name, split)` is the single entry point. Sources fall in four groups:

* tensorflow-datasets: "cifar10", "cifar100", "svhn_cropped", "celeb_a", "dtd". Data that is not
  prepared is downloaded when the network answers a 3-second probe; offline (where tfds itself
  retries DNS for about 200 s before failing) a missing set raises `FileNotFoundError` at once,
  naming the offline options (`download=False`: never download).
* the files the data sets' authors distribute, read pixel-exactly (`keras_ebm.data.official`):
  "cifar10_python" and "cifar100_python" (`cifar-10-python.tar.gz` / `cifar-100-python.tar.gz` or
  their extracted folders) and "svhn_mat" (`train_32x32.mat`, `test_32x32.mat`, `extra_32x32.mat`),
  or the npz `python -m keras_ebm.data.prepare` makes from them.
* local files: "cifar10_jpeg" (the JPEG-bytes archive of the shared data directory), "npz" (any
  `.npz` of uint8 NHWC arrays; "dtd_npz" and "celeba_npz" name the shared DTD and CelebA subsets),
  "folder" (one sub-folder per class).
* built into scikit-learn, for a quickstart that needs no files: "digits" (8x8 grayscale) and
  "photo_patches" (patches of the two sample photos, an OOD set of real textures).

Local files are looked for in the directory named by the environment variable KERAS_EBM_DATA_DIR,
then KERAS_EBM_SHARED_DATA, the working directory, Keras' dataset cache (`~/.keras/datasets`) and
`../shared/data` (see `data_search_dirs`), unless `local_path=` names them.

Any name followed by "_interp" ("cifar10_jpeg_interp", "digits_interp", ...) is the interpolation
OOD set built from that source: the average of two images of the set, as in JEM's and CLEL's
"CIFAR-10 interp" (see `interpolate_images`).
"""

import dataclasses
import os
import pathlib
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from keras_ebm.data import official

TFDS_DATASETS = ("cifar10", "cifar100", "svhn_cropped", "celeb_a", "dtd")
OFFICIAL_DATASETS = tuple(official.FORMATS)
LOCAL_DATASETS = (
    "cifar10_jpeg",
    "npz",
    "dtd_npz",
    "celeba_npz",
    "folder",
    "digits",
    "photo_patches",
)
KNOWN_DATASETS = TFDS_DATASETS + OFFICIAL_DATASETS + LOCAL_DATASETS
INTERP_SUFFIX = "_interp"

# name -> (environment variable, file name in the shared data directory)
_SHARED_FILES = {
    "cifar10_jpeg": ("KERAS_EBM_CIFAR10_JPEG", "cifar10_jpeg_bytes.npz"),
    "dtd_npz": ("KERAS_EBM_DTD_NPZ", "dtd_subset_32.npz"),
    "celeba_npz": ("KERAS_EBM_CELEBA_NPZ", "celeba_subset_32.npz"),
}
_DATA_DIR_ENV = "KERAS_EBM_DATA_DIR"
_SHARED_DATA_ENV = "KERAS_EBM_SHARED_DATA"  # the older name, still read after KERAS_EBM_DATA_DIR

# CelebA: the aligned 218x178 faces are centre-cropped to 140x140 before resizing (JEM, DCGAN
# convention; the shared celeba_subset_32.npz was made the same way).
_CELEBA_CROP = 140
_DEFAULT_TFDS_SIZE = {"celeb_a": (32, 32), "dtd": (32, 32)}


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What `load_source` returns next to the dataset.

    Attributes:
        name: the source name as requested (e.g. "cifar10_jpeg_interp").
        split: the split as requested.
        num_examples: number of examples, or None where it is unknown without a full pass
            (a tfds set filtered by `classes`, or a tfds set whose metadata has no split sizes).
        image_shape: `(height, width, channels)` of every image.
        num_classes: number of labels (after a `classes` filter: `len(classes)`).
        class_names: tuple of `num_classes` names.
        has_labels: False for a label-free file (an "npz" with `x` but no `y`): every label is 0,
            so it is an OOD / evaluation set, never training data (`make_dataset` refuses it for a
            train split).
        single_split: True when the file has no per-split arrays (an "npz" with `x`/`y` instead of
            `x_train`/`x_test`): every split is the whole file.
    """

    name: str
    split: str
    num_examples: Optional[int]
    image_shape: Tuple[int, int, int]
    num_classes: int
    class_names: Tuple[str, ...]
    has_labels: bool = True
    single_split: bool = False


# ---------------------------------------------------------------------------------- helpers
def _known_names_text():
    return (
        ", ".join(repr(n) for n in KNOWN_DATASETS)
        + f", or any of these followed by '{INTERP_SUFFIX}'"
    )


def _normalize_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    else:
        try:
            size = tuple(int(v) for v in image_size)
        except (TypeError, ValueError):
            size = ()
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(
            "`image_size` must be a positive int or a pair (height, width). "
            f"Received: image_size={image_size!r}"
        )
    return size


def _check_classes(classes, num_classes):
    if classes is None:
        return None
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(
            "`classes` must be a non-empty list of distinct labels to keep (they are remapped "
            f"to 0..len(classes)-1 in the given order). Received: classes={classes!r}"
        )
    bad = [c for c in classes if c < 0 or (num_classes is not None and c >= num_classes)]
    if bad:
        raise ValueError(
            f"`classes` must be labels in [0, {num_classes}) for this source; {bad} are not. "
            f"Received: classes={classes!r}"
        )
    return classes


def _select_numpy(y, classes, max_examples):
    """Indices of the kept examples and their (remapped) labels."""
    idx = np.arange(len(y))
    if classes is not None:
        remap = {c: i for i, c in enumerate(classes)}
        idx = idx[np.isin(y, classes)]
        y = np.array([remap[int(v)] for v in y[idx]], dtype=np.int32)
    else:
        y = np.asarray(y, dtype=np.int32)
    if max_examples is not None:
        idx, y = idx[:max_examples], y[:max_examples]
    return idx, y


def _select_tf(ds, classes, max_examples):
    if classes is not None:
        classes_t = tf.constant(classes, tf.int32)
        ds = ds.filter(lambda x, y: tf.reduce_any(tf.equal(y, classes_t)))

        def remap(x, y):
            return x, tf.cast(tf.argmax(tf.cast(tf.equal(classes_t, y), tf.int32)), tf.int32)

        ds = ds.map(remap)
    if max_examples is not None:
        ds = ds.take(max_examples)
    return ds


def _to_uint8(x):
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def _resize_uint8(image, size):
    # Antialiasing matches PIL's (torchvision's) downscaling; the result is rounded back to uint8 so
    # that every source yields the same dtype.
    return _to_uint8(tf.image.resize(image, size, method="bilinear", antialias=True))


def _convert_images(ds, image_shape, image_size, channels):
    """Resize to `image_size` and convert to `channels`; returns (ds, new image_shape)."""
    h, w, c = image_shape
    if channels is not None and channels not in (1, 3):
        raise ValueError(
            f"`channels` must be 1 (grayscale) or 3 (RGB). Received: channels={channels!r}"
        )
    out_c = c if channels is None else channels
    if c != out_c and c not in (1, 3):
        raise ValueError(
            f"Cannot convert {c}-channel images to {out_c} channels; only 1 <-> 3 is supported. "
            f"Received: channels={channels!r}"
        )
    out_size = image_size if image_size is not None else (h, w)
    if out_size[0] is None or out_size[1] is None:
        raise ValueError(
            "This source has images of varying size; pass `image_size` (e.g. 32). "
            f"Received: image_size={image_size!r}"
        )
    resize = (h, w) != tuple(out_size)

    def convert(x, y):
        if resize:
            x = _resize_uint8(x, out_size)
        if c == 3 and out_c == 1:
            x = _to_uint8(tf.image.rgb_to_grayscale(tf.cast(x, tf.float32)))
        elif c == 1 and out_c == 3:
            x = tf.image.grayscale_to_rgb(x)
        return tf.ensure_shape(x, (out_size[0], out_size[1], out_c)), y

    if resize or c != out_c:
        ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return ds, (int(out_size[0]), int(out_size[1]), int(out_c))


def data_search_dirs():
    """The directories local files are looked for in, in order: $KERAS_EBM_DATA_DIR,
    $KERAS_EBM_SHARED_DATA, the working directory, Keras' dataset cache ($KERAS_HOME/datasets or
    ~/.keras/datasets, where `keras.datasets.cifar10.load_data` extracts the CIFAR archives),
    `../shared/data` beside the working directory and beside this checkout."""
    envs = (_DATA_DIR_ENV, _SHARED_DATA_ENV)
    dirs = [pathlib.Path(os.environ[e]).expanduser() for e in envs if os.environ.get(e)]
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    dirs += [
        pathlib.Path.cwd(),
        pathlib.Path(keras_home).expanduser() / "datasets",
        pathlib.Path.cwd().parent / "shared" / "data",
        # The checkout's sibling shared/data, so scripts also work when run from another directory.
        pathlib.Path(__file__).resolve().parents[3] / "shared" / "data",
    ]
    return dirs


def _default_path_candidates(name):
    env, filename = _SHARED_FILES[name]
    candidates = [pathlib.Path(os.environ[env])] if os.environ.get(env) else []
    return candidates + [d / filename for d in data_search_dirs()]


def _given_path(name, local_path, what):
    """`local_path` as a path, which must exist; `what` says what it should be."""
    path = pathlib.Path(local_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"The '{name}' source has nothing at {path}. Check the path, or pass `local_path=` "
            f"{what}. Received: local_path={str(local_path)!r}"
        )
    return path


def _resolve_local_path(name, local_path):
    if local_path is not None:
        return _given_path(name, local_path, "an existing file")
    if name not in _SHARED_FILES:
        raise ValueError(
            f"The '{name}' source reads a local file: pass `local_path=<path>`. "
            "Received: local_path=None"
        )
    candidates = _default_path_candidates(name)
    for path in candidates:
        if path.exists():
            return path
    env, filename = _SHARED_FILES[name]
    raise FileNotFoundError(
        f"The '{name}' source needs the file {filename}, which is not in any default location: "
        f"{', '.join(str(p) for p in candidates)}. Pass `local_path=<path to {filename}>`, set "
        f"the environment variable {env} (or {_DATA_DIR_ENV} to its directory), or use the "
        "official files ('cifar10_python' reads cifar-10-python.tar.gz) or a tensorflow-datasets "
        "source with `download=True` on a machine with internet. Received: local_path=None"
    )


def _npz_error(path, name, what):
    return ValueError(
        f"{path} cannot be read as a .npz archive ({what}). It may be truncated (an interrupted "
        "copy or download) or not an npz at all: copy or re-create it, e.g. "
        f"np.savez(path, x=uint8_images, y=int_labels). Received: name={name!r}, "
        f"local_path={str(path)!r}"
    )


def _load_npz_arrays(path, name, keys):
    """`{key: array}` of the existing `keys` of the npz at `path`, with one clear error for a
    directory, a truncated or corrupt archive, or object (pickled) arrays."""
    import zipfile
    import zlib

    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(
            f"The '{name}' source reads one .npz file, and {path} is a directory: pass the file "
            f"itself as `local_path=`. Received: local_path={str(path)!r}"
        )
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # a bare .npy array
            raise _npz_error(path, name, "it is a single .npy array, not an .npz of named arrays")
        with f:
            return {k: f[k] for k in keys if k in f.files}, tuple(f.files)
    except ValueError as e:
        if "pickle" in str(e):  # object arrays, or not a numpy file at all
            raise _npz_error(path, name, f"numpy says: {e}") from None
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise _npz_error(path, name, f"{type(e).__name__}: {e}") from None


def _dataset_from_arrays(x, y):
    return tf.data.Dataset.from_tensor_slices((x, np.asarray(y, np.int32)))


def _arrays_source(x, labels, class_names, classes, max_examples):
    """The `(ds, num_examples, image_shape, class_names)` of in-memory uint8 images `[N, H, W, C]`
    with labels, after the `classes` filter and `max_examples`."""
    classes = _check_classes(classes, len(class_names))
    idx, y = _select_numpy(labels, classes, max_examples)
    if classes is not None:
        class_names = tuple(class_names[c] for c in classes)
    shape = tuple(int(v) for v in x.shape[1:])
    if len(idx) < len(x):  # else idx is every row in order: no copy of the images
        x = x[idx]
    return _dataset_from_arrays(x, y), len(idx), shape, tuple(class_names)


def dataset_to_arrays(ds, max_examples=None, batch_size=1024):
    """Materialise an unbatched `(image, label)` dataset: numpy `(x [N, H, W, C], y int32 [N])`."""
    if max_examples is not None:
        ds = ds.take(max_examples)
    xs, ys = [], []
    for x, y in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE):
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        shape = tuple(ds.element_spec[0].shape)
        return np.zeros((0,) + shape, np.uint8), np.zeros((0,), np.int32)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


def _deterministic_split(n, split, name, train_fraction=0.8, seed=0):
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(train_fraction * n))
    if split == "train":
        return perm[:n_train]
    if split == "test":
        return perm[n_train:]
    if split == "all":
        return np.arange(n)
    raise ValueError(
        f"The '{name}' source has the splits 'train' (a fixed {int(train_fraction * 100)}% of it), "
        f"'test' (the rest) and 'all'. Received: split={split!r}"
    )


# ------------------------------------------------------------------------------ tfds sources
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
    "the data sets' own files in $KERAS_EBM_DATA_DIR (README, 'Offline data')."
)
_OFFLINE_ENV = "KERAS_EBM_OFFLINE"  # set (to anything but '' / '0'): never try the network
PROBE_TIMEOUT = 3.0


def _network_reachable(timeout=PROBE_TIMEOUT):
    """A quick TCP probe (name lookup and connect, bounded by `timeout`) before tfds downloads.
    False at once when $KERAS_EBM_OFFLINE is set. Tests replace this function to simulate either
    case."""
    import socket
    import threading

    if os.environ.get(_OFFLINE_ENV, "").strip() not in ("", "0"):
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
        lead = (f"No prepared tensorflow-datasets data for '{name}' (split '{split}') under {where}, "
                "and downloading is off (download=False). With internet, leave `download` unset "
                "(the default downloads when the network answers) or pass `download=True`; with "
                "prepared data elsewhere, pass `data_dir=`.")
    else:
        how = (f"${_OFFLINE_ENV} is set" if os.environ.get(_OFFLINE_ENV, "").strip() not in ("", "0")
               else f"no answer from {_PROBE_HOST[0]}:{_PROBE_HOST[1]} within {PROBE_TIMEOUT:g} s")
        lead = (f"download=True, but no network: cannot download '{name}' with tensorflow-datasets "
                f"({how})." if download else
                f"'{name}' (split '{split}') is not prepared under {where}, and tensorflow-datasets "
                f"cannot download it: no network ({how}).")
    return FileNotFoundError(
        f"{lead} {_OFFLINE_HINT} {_OVERLAY_HINT} Received: name={name!r}, data_dir={data_dir!r}, "
        f"download={download!r}"
    )


def check_available(name, split="train", *, data_dir=None, download=None, **unused_source_kwargs):
    """Fail now, with what to do, when a tensorflow-datasets source can be neither read nor
    downloaded (not prepared, and downloads off or no network: a probe of at most
    `PROBE_TIMEOUT` seconds). Other sources check their files when they load, at once; this
    lets `run_training` refuse before it builds a model."""
    base = name[: -len(INTERP_SUFFIX)] if name.endswith(INTERP_SUFFIX) else name
    if base not in TFDS_DATASETS:
        return
    import tensorflow_datasets as tfds

    if tfds.builder(base, data_dir=data_dir).is_prepared():
        return
    if download is False:
        raise _tfds_unavailable(base, split, data_dir, download, "off")
    if not _network_reachable():
        raise _tfds_unavailable(base, split, data_dir, download, "offline")


def _tfds_source(name, split, data_dir, download, classes, max_examples, image_size, crop):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    try:
        # Prepared data is read without a probe. Without it tfds fails at once (an
        # AssertionError); checking `is_prepared()` first would also reject
        # `tfds.testing.mock_data`.
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as e:
        if download is False:
            raise _tfds_unavailable(name, split, data_dir, download, "off") from e
        # Offline, tfds would retry for minutes before failing: probe first, say at once what to do.
        if not _network_reachable():
            raise _tfds_unavailable(name, split, data_dir, download, "offline") from e
        builder.download_and_prepare()
        ds = builder.as_dataset(split=split, shuffle_files=False)

    features = builder.info.features
    if "label" in features:
        class_names = tuple(features["label"].names)
    else:  # celeb_a: a one-class OOD set
        class_names = ("face",)
    classes = _check_classes(classes, len(class_names))

    has_label = "label" in features

    def unpack(example):
        label = tf.cast(example["label"], tf.int32) if has_label else tf.constant(0, tf.int32)
        return example["image"], label

    ds = ds.map(unpack, num_parallel_calls=tf.data.AUTOTUNE)
    ds = _select_tf(ds, classes, max_examples)

    image_shape = tuple(features["image"].shape)
    if name in _DEFAULT_TFDS_SIZE:
        size = image_size or _DEFAULT_TFDS_SIZE[name]

        def crop_resize(x, y):
            if name == "celeb_a":
                x = tf.image.resize_with_crop_or_pad(x, _CELEBA_CROP, _CELEBA_CROP)
                x = _resize_uint8(x, size)
            elif crop == "top_left":  # CLEL's DTD: the top-left corner, no resizing
                x = tf.image.crop_to_bounding_box(x, 0, 0, size[0], size[1])
            else:
                side = tf.reduce_min(tf.shape(x)[:2])
                x = _resize_uint8(tf.image.resize_with_crop_or_pad(x, side, side), size)
            return tf.ensure_shape(x, (size[0], size[1], image_shape[-1])), y

        ds = ds.map(crop_resize, num_parallel_calls=tf.data.AUTOTUNE)
        image_shape = (size[0], size[1], image_shape[-1])

    num_examples = None
    if classes is None:
        try:
            num_examples = int(builder.info.splits[split].num_examples)
        except Exception:  # mock data and some split strings carry no sizes
            num_examples = None
        if num_examples is not None and max_examples is not None:
            num_examples = min(num_examples, max_examples)
    if classes is not None:
        class_names = tuple(class_names[c] for c in classes)
    return ds, num_examples, image_shape, class_names


# ----------------------------------------------------------------------------- local sources
def _cifar10_jpeg_source(split, local_path, classes, max_examples):
    path = _resolve_local_path("cifar10_jpeg", local_path)
    if split not in ("train", "test"):
        raise ValueError(
            "The 'cifar10_jpeg' source has the splits 'train' and 'test'. "
            f"Received: split={split!r}"
        )
    needed = [f"{split}_jpeg", f"{split}_offsets", f"{split}_y"]
    arrays, keys = _load_npz_arrays(path, "cifar10_jpeg", needed + ["class_names"])
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise ValueError(
            f"{path} is not a CIFAR-10 JPEG archive: keys {missing} are missing (the format: "
            f"<split>_jpeg, the JPEG files' bytes concatenated; <split>_offsets, where each starts, "
            f"and the end; <split>_y, the labels). Received: keys={sorted(keys)}"
        )
    data = arrays[f"{split}_jpeg"]
    offsets = arrays[f"{split}_offsets"].astype(np.int64)
    labels = arrays[f"{split}_y"].astype(np.int64)
    if "class_names" in arrays:
        class_names = tuple(str(c) for c in arrays["class_names"])
    else:
        class_names = tuple(str(i) for i in range(10))
    _check_jpeg_archive(path, split, data, offsets, labels, len(class_names))
    classes = _check_classes(classes, len(class_names))
    idx, y = _select_numpy(labels, classes, max_examples)
    encoded = np.array([data[offsets[i] : offsets[i + 1]].tobytes() for i in idx], dtype=object)

    def decode(jpeg, label):
        # INTEGER_ACCURATE makes the pixels equal Pillow's (the default IDCT differs by ~1 level).
        image = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE")
        return tf.ensure_shape(image, (32, 32, 3)), label

    ds = tf.data.Dataset.from_tensor_slices((tf.constant(encoded, tf.string), y))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    if classes is not None:
        class_names = tuple(class_names[c] for c in classes)
    return ds, len(idx), (32, 32, 3), class_names


def _check_jpeg_archive(path, split, data, offsets, labels, num_classes):
    """Cheap structural checks of a JPEG-bytes archive (no decoding): offsets in order and in
    bounds, one label per image in range, and every image a complete JPEG stream (starts with the
    SOI marker FF D8, ends with EOI FF D9), so a truncated or corrupt image is named now instead
    of failing inside tf.data mid-training."""
    n = len(labels)
    where = f"'{split}' split of {path}"
    if offsets.ndim != 1 or len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(data) \
            or np.any(np.diff(offsets) <= 0):
        raise ValueError(
            f"The {where} is corrupt: `{split}_offsets` must be {n + 1} increasing byte offsets "
            f"from 0 to {len(data)} (image i is bytes [offsets[i], offsets[i+1])). Copy the file "
            f"again. Received: {split}_offsets.shape={offsets.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"The {where} has labels outside [0, {num_classes}). Copy the file again. "
            f"Received: labels in [{labels.min()}, {labels.max()}]"
        )
    data = np.asarray(data, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    short = (ends - starts) < 4
    ok = ~short
    ok[ok] = (
        (data[starts[ok]] == 0xFF) & (data[starts[ok] + 1] == 0xD8)
        & (data[ends[ok] - 2] == 0xFF) & (data[ends[ok] - 1] == 0xD9)
    )
    bad = np.flatnonzero(~ok)
    if len(bad):
        raise ValueError(
            f"{len(bad)} image(s) of the {where} are not complete JPEG files (they must start "
            "with bytes FF D8 and end with FF D9): truncated or corrupt. Copy the file again. "
            f"Received: bad image indices {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}"
        )


def _npz_source(name, split, local_path, classes, max_examples):
    path = _resolve_local_path(name, local_path)
    keys = _load_npz_arrays(path, name, ())[1]
    if f"x_{split}" in keys:
        x_key, y_key = f"x_{split}", f"y_{split}"
    elif "x" in keys:
        # A single array: every split is the whole file (the OOD use case).
        x_key, y_key = "x", "y"
    else:
        raise ValueError(
            f"{path} has no image array for split '{split}': expected a key 'x' (with an "
            f"optional 'y'), or 'x_{split}'/'y_{split}'. Received: keys={sorted(keys)}"
        )
    arrays, _ = _load_npz_arrays(path, name, (x_key, y_key, "class_names"))
    x = arrays[x_key]
    labels = arrays.get(y_key)
    has_labels = labels is not None
    class_names = tuple(str(c) for c in arrays["class_names"]) if "class_names" in arrays else None
    if x.dtype != np.uint8:
        raise ValueError(
            f"'{x_key}' in {path} must be uint8 images [N, H, W, C] (or [N, H, W]) in 0..255; "
            "convert floats in [0, 1] with np.round(x * 255).astype(np.uint8). "
            f"Received: {x_key}.dtype={x.dtype}"
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"'{x_key}' in {path} must have shape [N, H, W, C] or [N, H, W]. "
            f"Received: {x_key}.shape={x.shape}"
        )
    if labels is None:
        labels = np.zeros((len(x),), np.int64)
    labels = np.asarray(labels).reshape(-1)
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
            or labels.dtype == bool):
        raise ValueError(
            f"'{y_key}' in {path} must hold integer class labels 0..num_classes-1. "
            f"Received: {y_key}.dtype={labels.dtype}"
        )
    if np.issubdtype(labels.dtype, np.floating) and len(labels) and not (
        np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))
    ):
        raise ValueError(
            f"'{y_key}' in {path} must hold integer class labels; it holds non-integer values "
            "(one-hot or soft labels must be stored as class indices, e.g. y.argmax(-1)). "
            f"Received: {y_key}.dtype={labels.dtype}, e.g. {labels[labels != np.round(labels)][:3]}"
        )
    labels = labels.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise ValueError(
            f"'{y_key}' in {path} must hold class labels >= 0 (a label-free set is a file with "
            f"no '{y_key}'). Received: {y_key} min={labels.min()}"
        )
    if len(labels) != len(x):
        raise ValueError(
            f"'{y_key}' in {path} must have one label per image ({len(x)}). "
            f"Received: {y_key}.shape={labels.shape}"
        )
    if class_names is None and name == "celeba_npz" and y_key not in keys:
        class_names = ("face",)
    if class_names is None:
        num = int(labels.max()) + 1 if len(labels) else 1
        class_names = tuple(str(i) for i in range(num))
    if len(labels) and labels.max() >= len(class_names):
        raise ValueError(
            f"'{y_key}' in {path} has labels up to {labels.max()}, but the file's class_names "
            f"name {len(class_names)} classes. Received: class_names={list(class_names)}"
        )
    ds, n, shape, class_names = _arrays_source(x, labels, class_names, classes, max_examples)
    return ds, n, shape, class_names, has_labels, x_key == "x"


def resolve_official_path(name, split, local_path=None, prepared=True):
    """The file or folder the official source `name` reads `split` from.

    `local_path` may be the file itself (an archive, an extracted folder, a `.mat` file, the
    prepared npz) or a directory holding it under its official name; without it the official names
    are looked for in `data_search_dirs()`, the prepared npz (`official.FORMATS[name].prepared`,
    fastest to load; `prepared=False` skips it) before the archive and its folders.
    """
    fmt = official.FORMATS[name]
    if split not in fmt.splits:
        raise ValueError(
            f"The '{name}' source has the splits {list(fmt.splits)}. Received: split={split!r}"
        )
    names = ([fmt.prepared] if prepared else []) + [n.format(split=split) for n in fmt.names]
    if local_path is not None:
        path = _given_path(name, local_path, f"one of {names} (from {fmt.url}) or its directory")
        if path.is_dir():
            inside = [path / n for n in names if (path / n).exists()]
            if inside:
                return inside[0]
            if name != "svhn_mat":
                return path  # the extracted batches folder itself (checked when read)
            raise FileNotFoundError(
                f"{path} holds none of {names} (from {fmt.url}). "
                f"Received: local_path={str(local_path)!r}"
            )
        other = [s for s in fmt.splits if s != split and path.name == f"{s}_32x32.mat"]
        if other:
            raise ValueError(
                f"{path} is SVHN's '{other[0]}' split, but split '{split}' was asked for: pass "
                f"the directory holding {split}_32x32.mat. Received: local_path={str(local_path)!r}"
            )
        return path
    dirs = data_search_dirs()
    for directory in dirs:
        for n in names:
            if (directory / n).exists():
                return directory / n
    raise FileNotFoundError(
        f"The '{name}' source needs one of {names} (download it from {fmt.url}); none is in "
        f"{', '.join(str(d) for d in dirs)}. Set the environment variable {_DATA_DIR_ENV} to the "
        "directory that holds it, or pass `local_path=<file or directory>`. "
        "Received: local_path=None"
    )


def _official_source(name, split, local_path, classes, max_examples, label_mode):
    path = resolve_official_path(name, split, local_path)
    x, labels, class_names = official.read_official(path, name, split, label_mode)
    return _arrays_source(x, labels, class_names, classes, max_examples)


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


def _folder_source(split, local_path, classes, max_examples, image_size, channels):
    import keras

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
    files = sorted(
        p for d in class_dirs for p in (root / d).iterdir() if p.suffix.lower() in _IMAGE_EXTENSIONS
    )
    if not class_dirs or not files:
        raise ValueError(
            f"{root} must contain one sub-folder per class holding images "
            f"({', '.join(_IMAGE_EXTENSIONS)}). Received: sub-folders={class_dirs}"
        )
    _check_image_headers(files)
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
    ds = ds.map(lambda x, y: (_to_uint8(x), tf.cast(y, tf.int32)))
    classes = _check_classes(classes, len(class_dirs))
    num_examples = len(labels) if classes is None else int(np.isin(labels, classes).sum())
    if max_examples is not None:
        num_examples = min(num_examples, max_examples)
    ds = _select_tf(ds, classes, max_examples)
    class_names = tuple(class_dirs) if classes is None else tuple(class_dirs[c] for c in classes)
    return ds, num_examples, (size[0], size[1], 1 if color_mode == "grayscale" else 3), class_names


def _digits_source(split, classes, max_examples):
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The 8x8 images hold counts 0..16; spread them over the uint8 range like any other image.
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    order = _deterministic_split(len(x), split, "digits")
    class_names = tuple(str(i) for i in range(10))
    return _arrays_source(x[order], digits.target[order], class_names, classes, max_examples)


def photo_patches(patch_size=32):
    """Non-overlapping `patch_size` patches of scikit-learn's two sample photos, in raster order.

    Returns:
        `(x uint8 [N, patch_size, patch_size, 3], y int32 [N])`, the label being the photo
        (0: "china", 1: "flower").
    """
    from sklearn.datasets import load_sample_images

    xs, ys = [], []
    for label, image in enumerate(load_sample_images().images):
        rows, cols = image.shape[0] // patch_size, image.shape[1] // patch_size
        image = image[: rows * patch_size, : cols * patch_size]
        patches = image.reshape(rows, patch_size, cols, patch_size, 3).transpose(0, 2, 1, 3, 4)
        xs.append(patches.reshape(-1, patch_size, patch_size, 3))
        ys.append(np.full((rows * cols,), label, np.int32))
    return np.concatenate(xs).astype(np.uint8), np.concatenate(ys)


def _photo_patches_source(split, classes, max_examples, patch_size):
    if int(patch_size) <= 0:
        raise ValueError(f"`patch_size` must be positive. Received: patch_size={patch_size!r}")
    x, labels = photo_patches(int(patch_size))
    order = _deterministic_split(len(x), split, "photo_patches")
    return _arrays_source(x[order], labels[order], ("china", "flower"), classes, max_examples)


# ------------------------------------------------------------------------------ interpolation
def interpolate_images(x, y, method="jem", offset=100, noise=0.0, seed=0):
    """The "interp" OOD construction: averages of two images of the same set.

    * "jem" (JEM `eval_wrn_ebm.py`): shuffle the set with `seed`, cut it into batches of
      `offset` (100), and for every batch after the first average it with the previous batch;
      N//offset*offset - offset images (9,900 for a 10,000-image test set). JEM also adds Gaussian
      noise; `noise` is its sigma in the [-1, 1] pixel scale (JEM: 0.03), 0 by default.
    * "clel" (CLEL `datasets.py`): no shuffle; image i is averaged with image i + `offset`,
      N - offset images.

    Both pair images `offset` apart; the result is rounded (half to even) back to uint8.

    Args:
        x: uint8 images `[N, H, W, C]`.
        y: labels `[N]`; the label of the later (JEM) / earlier (CLEL) image of each pair is kept.
        method: "jem" or "clel".
        offset: batch size (JEM) / index offset (CLEL).
        noise: standard deviation of added N(0, noise^2) noise, in units of the [-1, 1] range.
        seed: seed of the shuffle and the noise.

    Returns:
        `(x_interp uint8, y_interp int32)`.
    """
    if method not in ("jem", "clel"):
        raise ValueError(f"`interp` must be 'jem' or 'clel'. Received: interp={method!r}")
    x = np.asarray(x)
    y = np.asarray(y, np.int32)
    n = len(x)
    if n <= offset:
        raise ValueError(
            f"The interpolation set pairs images {offset} apart, so its base set needs more than "
            f"{offset} images; lower `interp_offset` or use a larger split. Received: N={n}"
        )
    rng = np.random.default_rng(seed)
    x = x.astype(np.float32)
    if method == "jem":
        perm = rng.permutation(n)
        x, y = x[perm], y[perm]
        n_used = (n // offset) * offset  # a trailing partial batch has no full partner batch
        first, second, labels = x[offset:n_used], x[: n_used - offset], y[offset:n_used]
    else:
        first, second, labels = x[:-offset], x[offset:], y[:-offset]
    out = (first + second) / 2.0
    if noise:
        out = out + rng.standard_normal(out.shape).astype(np.float32) * (noise * 127.5)
    return np.clip(np.round(out), 0, 255).astype(np.uint8), labels


# ----------------------------------------------------------------------------------- main API
def load_source(
    name,
    split="train",
    *,
    data_dir=None,
    download=None,
    local_path=None,
    classes=None,
    image_size=None,
    channels=None,
    max_examples=None,
    interp="jem",
    interp_noise=0.0,
    interp_seed=0,
    interp_offset=100,
    patch_size=32,
    crop="center",
    label_mode="fine",
):
    """Load a data set as an unbatched `tf.data.Dataset` of `(image uint8 [H, W, C], label int32)`.

    Args:
        name: one of `KNOWN_DATASETS`, or one of them followed by "_interp" (the interpolation OOD
            set of that source, see `interpolate_images`).
        split: "train", "test" (tfds split strings for tfds sources; "all" also for "digits" and
            "photo_patches"). An "npz" with a single `x` array and the shared subsets ignore it.
        data_dir: tensorflow-datasets data directory (tfds sources).
        download: tfds sources that are not prepared under `data_dir`: None (default) downloads
            and prepares them when tfds' host answers a 3-second probe, and otherwise raises
            `FileNotFoundError` with the offline options (tfds itself would retry DNS for minutes);
            True the same, said as an explicit request; False never downloads. The environment
            variable KERAS_EBM_OFFLINE=1 makes the probe fail without touching the network.
        local_path: file or directory of the local sources. "cifar10_python", "cifar100_python",
            "svhn_mat": the official archive / extracted folder / `.mat` file, the npz `prepare`
            made, or a directory holding one of them; by default their official names are looked
            for in $KERAS_EBM_DATA_DIR and the other `data_search_dirs()`. The shared files of
            "cifar10_jpeg", "dtd_npz", "celeba_npz" default to the environment variables
            KERAS_EBM_CIFAR10_JPEG, KERAS_EBM_DTD_NPZ, KERAS_EBM_CELEBA_NPZ, then the same
            directories ($KERAS_EBM_DATA_DIR, $KERAS_EBM_SHARED_DATA, ..., `../shared/data/`).
        classes: labels to keep, remapped to `0..len(classes)-1` in the given order (held-out-class
            experiments: load the held-out labels as their own set).
        image_size: int or `(height, width)`; images are resized (bilinear, antialiased) when their
            size differs. "celeb_a" and "dtd" default to 32 (CelebA: centre crop 140 first; DTD:
            centre square crop, or the top-left corner with `crop="top_left"` as CLEL).
        channels: 1 or 3 to convert grayscale <-> RGB (e.g. photo patches matching "digits").
        max_examples: keep only the first `max_examples` examples (after the `classes` filter;
            for "_interp" sets, of the interpolated set).
        interp: "jem" or "clel", the construction of "_interp" sets.
        interp_noise: noise sigma of "_interp" sets in [-1, 1] units (JEM uses 0.03).
        interp_seed: shuffle/noise seed of "_interp" sets.
        interp_offset: JEM's batch size / CLEL's index offset (100).
        patch_size: patch size of "photo_patches", before resizing to `image_size`.
        crop: "center" or "top_left", how tfds "dtd" images become square.
        label_mode: "fine" (default), or "coarse" for the 20 superclasses of "cifar100_python".

    Returns:
        `(ds, info)`: the dataset and a `SourceInfo`.
    """
    if not isinstance(name, str):
        raise ValueError(f"`name` must be a string. Received: name={name!r}")
    image_size = _normalize_size(image_size)
    if max_examples is not None and int(max_examples) < 0:
        raise ValueError(f"`max_examples` must be >= 0. Received: max_examples={max_examples!r}")
    if crop not in ("center", "top_left"):
        raise ValueError(f"`crop` must be 'center' or 'top_left'. Received: crop={crop!r}")
    base_name = name[: -len(INTERP_SUFFIX)] if name.endswith(INTERP_SUFFIX) else name
    if label_mode != "fine" and base_name != "cifar100_python":
        raise ValueError(
            "`label_mode` other than 'fine' is only for 'cifar100_python' ('coarse': its 20 "
            f"superclasses). Received: name={name!r}, label_mode={label_mode!r}"
        )

    if name.endswith(INTERP_SUFFIX) and name[: -len(INTERP_SUFFIX)] in KNOWN_DATASETS:
        base_ds, base_info = load_source(
            name[: -len(INTERP_SUFFIX)],
            split,
            data_dir=data_dir,
            download=download,
            local_path=local_path,
            classes=classes,
            image_size=image_size,
            channels=channels,
            patch_size=patch_size,
            crop=crop,
            label_mode=label_mode,
        )
        x, y = dataset_to_arrays(base_ds)
        x, y = interpolate_images(
            x, y, method=interp, offset=int(interp_offset), noise=interp_noise, seed=interp_seed
        )
        if max_examples is not None:
            x, y = x[:max_examples], y[:max_examples]
        info = dataclasses.replace(base_info, name=name, num_examples=len(x))
        return _dataset_from_arrays(x, y), info

    has_labels, single_split = True, False
    if name in TFDS_DATASETS:
        ds, n, shape, class_names = _tfds_source(
            name, split, data_dir, download, classes, max_examples, image_size, crop
        )
    elif name in OFFICIAL_DATASETS:
        ds, n, shape, class_names = _official_source(
            name, split, local_path, classes, max_examples, label_mode
        )
    elif name == "cifar10_jpeg":
        ds, n, shape, class_names = _cifar10_jpeg_source(split, local_path, classes, max_examples)
    elif name in ("npz", "dtd_npz", "celeba_npz"):
        ds, n, shape, class_names, has_labels, single_split = _npz_source(
            name, split, local_path, classes, max_examples
        )
    elif name == "folder":
        ds, n, shape, class_names = _folder_source(
            split, local_path, classes, max_examples, image_size, channels
        )
    elif name == "digits":
        ds, n, shape, class_names = _digits_source(split, classes, max_examples)
    elif name == "photo_patches":
        ds, n, shape, class_names = _photo_patches_source(split, classes, max_examples, patch_size)
    else:
        raise ValueError(
            f"Unknown data set. Known names: {_known_names_text()}. Received: name={name!r}"
        )

    ds, shape = _convert_images(ds, shape, image_size, channels)
    info = SourceInfo(
        name=name,
        split=split,
        num_examples=n,
        image_shape=shape,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        has_labels=has_labels,
        single_split=single_split,
    )
    return ds, info
