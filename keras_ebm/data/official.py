"""Readers of the files the data sets' authors distribute: CIFAR-10/100 python version, SVHN .mat.

Each reader returns numpy arrays `(x uint8 [N, 32, 32, 3], labels int64 [N], class_names)` equal,
pixel for pixel, to the official arrays; `keras_ebm.data.sources.official_files` wraps them as the
sources "cifar10_python", "cifar100_python" and "svhn_mat" and finds the files (see `FORMATS`).

* CIFAR-10 / CIFAR-100, "CIFAR-10 python version" (https://www.cs.toronto.edu/~kriz/cifar.html):
  `cifar-10-python.tar.gz` holds `cifar-10-batches-py/data_batch_1..5`, `test_batch` and
  `batches.meta`; `cifar-100-python.tar.gz` holds `cifar-100-python/train`, `test` and `meta`.
  Every batch is a pickled dict: b"data" uint8 [N, 3072], each row the 1024 red, then green, then
  blue values of a 32x32 image in row-major order; b"labels" (CIFAR-10) or b"fine_labels" and
  b"coarse_labels" (CIFAR-100). Read from the .tar.gz directly or from the extracted folder. The
  pickles are read by an unpickler that only rebuilds numpy arrays (as `keras.datasets.cifar10`).
* SVHN cropped digits, "Format 2" (http://ufldl.stanford.edu/housenumbers/): `train_32x32.mat`,
  `test_32x32.mat`, `extra_32x32.mat`, MATLAB files with X uint8 [32, 32, 3, N] and y [N, 1] in
  1..10, where 10 is the digit 0; it is mapped to 0 as tensorflow-datasets' `svhn_cropped` does.
* The npz `python -m keras_ebm.data.prepare` writes from any of them (`write_prepared`):
  uncompressed uint8 arrays `x_<split>`, `y_<split>` and `class_names` (the generic "npz" source
  reads them too).
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import pickle
import tarfile
import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


@dataclasses.dataclass(frozen=True)
class OfficialFormat:
    """How one official data set is distributed.

    Attributes:
        names: file or folder names searched for, in order ("{split}" stands for the split): the
            archive, the folder it extracts to, and the folder `keras.datasets` extracts it into.
        splits: the splits of the data set.
        url: where to download it.
        prepared: the file name `python -m keras_ebm.data.prepare` writes (searched first).
    """

    names: tuple[str, ...]
    splits: tuple[str, ...]
    url: str
    prepared: str


FORMATS = {
    "cifar10_python": OfficialFormat(
        ("cifar-10-python.tar.gz", "cifar-10-batches-py", "cifar-10-batches-py-target"),
        ("train", "test"),
        CIFAR_URL,
        "cifar10_python.npz",
    ),
    "cifar100_python": OfficialFormat(
        ("cifar-100-python.tar.gz", "cifar-100-python", "cifar-100-python-target"),
        ("train", "test"),
        CIFAR_URL,
        "cifar100_python.npz",
    ),
    "svhn_mat": OfficialFormat(("{split}_32x32.mat",), ("train", "test", "extra"), SVHN_URL, "svhn_mat.npz"),
}

# name -> (batch files of each split, meta file, label key, class-name key) per label mode
_CIFAR_LAYOUT = {
    "cifar10_python": {
        "batches": {
            "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
            "test": ("test_batch",),
        },
        "meta": "batches.meta",
        "fine": ("labels", "label_names"),
    },
    "cifar100_python": {
        "batches": {"train": ("train",), "test": ("test",)},
        "meta": "meta",
        "fine": ("fine_labels", "fine_label_names"),
        "coarse": ("coarse_labels", "coarse_label_names"),
    },
}

# What rebuilding the numpy arrays of the CIFAR pickles takes (numpy < 2 and >= 2 spellings).
_ALLOWED_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }
)
_PREPARED_MARKER = "keras_ebm_source"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a tampered file cannot run code."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"Refusing to load `{module}.{name}` from a CIFAR batch: the official batches hold "
            "only dicts, lists and numpy arrays. The file is corrupted or not a CIFAR batch."
        )


def _unpickle(raw, where):
    try:
        d = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"{where} is not a CIFAR python-version batch (pickled dict): {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{where} is not a CIFAR python-version batch: it is a {type(d).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read_members(path, members):
    """The bytes of the files `members` (base names) of a CIFAR .tar.gz or extracted folder."""
    path = pathlib.Path(path)
    found = {}
    if path.is_dir():
        # The batches folder itself, or a folder holding it (as keras.datasets' "-target" folder).
        for folder in [path] + sorted(p for p in path.iterdir() if p.is_dir()):
            if (folder / members[0]).is_file():
                found = {m: (folder / m).read_bytes() for m in members if (folder / m).is_file()}
                break
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                # One sequential pass: seeking backwards in a .gz re-reads it from the start.
                for info in tar:
                    base = os.path.basename(info.name)
                    if info.isfile() and base in members and base not in found:
                        found[base] = tar.extractfile(info).read()
                        if len(found) == len(members):
                            break
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            # EOFError: a .tar.gz cut short (an interrupted download) fails mid-stream.
            raise ValueError(
                f"{path} is not a readable tar archive ({type(e).__name__}: {e}): it may be "
                f"truncated (an interrupted download) or not the archive. Download it again from "
                f"{CIFAR_URL}, or pass the folder it extracts to. Received: local_path={str(path)!r}"
            ) from e
    missing = [m for m in members if m not in found]
    if missing:
        raise ValueError(
            f"{path} lacks the CIFAR batch files {missing}: expected the official python-version "
            f"archive (.tar.gz) or the folder it extracts to, from {CIFAR_URL}. "
            f"Received: path={str(path)!r}"
        )
    return found


def read_cifar_python(path: str | os.PathLike, name: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One split of CIFAR-10 ("cifar10_python") or CIFAR-100 ("cifar100_python"), python version.

    Args:
        path: `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz`, or the extracted folder.
        name: "cifar10_python" or "cifar100_python".
        split: "train" or "test".

    Returns:
        `(x uint8 [N, 32, 32, 3], {label_mode: (labels int64 [N], class_names)})` in the files'
        order (CIFAR-10 train: data_batch_1 to data_batch_5); the label modes are "fine" (CIFAR-10's
        labels; CIFAR-100's 100 classes) and, for CIFAR-100, "coarse" (its 20 superclasses).
    """
    layout = _CIFAR_LAYOUT[name]
    modes = [m for m in ("fine", "coarse") if m in layout]
    batches = layout["batches"][split]
    raw = _read_members(path, batches + (layout["meta"],))
    meta = _unpickle(raw[layout["meta"]], f"{path}:{layout['meta']}")
    xs, ys = [], {m: [] for m in modes}
    for member in batches:
        where = f"{path}:{member}"
        batch = _unpickle(raw[member], where)
        missing = [k for k in ["data"] + [layout[m][0] for m in modes] if k not in batch]
        if missing:
            raise ValueError(f"{where} has no {missing} entries. Received: keys={sorted(batch)}")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"'data' in {where} must be uint8 [N, 3072]. Received: {data.dtype} {data.shape}")
        # Rows are [R(1024) G(1024) B(1024)], each channel row-major: CHW -> HWC.
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        for m in modes:
            ys[m].append(np.asarray(batch[layout[m][0]], np.int64).reshape(-1))
    labels = {}
    for m in modes:
        names = meta[layout[m][1]]
        names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
        labels[m] = (np.concatenate(ys[m]), names)
    return np.ascontiguousarray(np.concatenate(xs)), labels


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, list[str]]]]:
    """One SVHN cropped-digits file (`train_32x32.mat`, `test_32x32.mat` or `extra_32x32.mat`).

    Returns:
        `(x uint8 [N, 32, 32, 3], {"fine": (labels int64 [N] in 0..9, class_names "0".."9")})`; the
        file's label 10 (the digit 0) becomes 0, as in tensorflow-datasets' `svhn_cropped`.
    """
    from scipy import io as scipy_io

    try:
        mat = scipy_io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as e:  # scipy raises several types for a wrong file
        raise ValueError(f"{path} is not an SVHN .mat file (Format 2, cropped digits, from {SVHN_URL}): {e}") from e
    if "X" not in mat or "y" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(
            f"{path} has no 'X' and 'y' arrays, so it is not an SVHN cropped-digits file "
            f"(Format 2, {SVHN_URL}). Received: variables={found}"
        )
    x, labels = mat["X"], np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.dtype != np.uint8 or x.shape[:3] != (32, 32, 3) or x.shape[3:] != (len(labels),):
        raise ValueError(
            f"'X' in {path} must be uint8 [32, 32, 3, N] with one label per image. Received: "
            f"X {x.dtype} {x.shape}, y {labels.shape}"
        )
    labels[labels == 10] = 0
    names = tuple(str(i) for i in range(10))
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), {"fine": (labels, names)}


def read_prepared(
    path: str | os.PathLike, name: str, split: str
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, list[str]]]]:
    """One split of an npz `write_prepared` wrote for the source `name` (as `read_official_all`)."""
    with np.load(path, allow_pickle=False) as f:
        made_from = str(f[_PREPARED_MARKER]) if _PREPARED_MARKER in f.files else None
        if made_from != name:
            raise ValueError(
                f"{path} was not made by `python -m keras_ebm.data.prepare {name}` (it records "
                f"source {made_from!r}). Rerun prepare, pass the official file as `local_path=`, "
                "or read an npz of your own with the 'npz' source."
            )
        if f"x_{split}" not in f.files:
            stored = sorted(k[2:] for k in f.files if k.startswith("x_"))
            raise ValueError(
                f"{path} holds the splits {stored}, not '{split}': rerun `python -m "
                f"keras_ebm.data.prepare {name} --splits ...` with it."
            )
        labels = {}
        for mode, (y_key, names_key) in _prepared_keys(split).items():
            if y_key in f.files:
                labels[mode] = (f[y_key].astype(np.int64), tuple(str(c) for c in f[names_key]))
        return f[f"x_{split}"], labels


def _prepared_keys(split):
    """label mode -> (label key, class-name key) of a prepared npz (the fine ones are those the
    'npz' source reads)."""
    return {
        "fine": (f"y_{split}", "class_names"),
        "coarse": (f"y_{split}_coarse", "coarse_class_names"),
    }


def read_official_all(
    path: str | os.PathLike, name: str, split: str
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, list[str]]]]:
    """`(x, {label_mode: (labels, class_names)})` of `split` of the official source `name` read from
    `path`: its archive, folder or `.mat` file, or the npz `write_prepared` made from them."""
    path = pathlib.Path(path)
    if path.suffix == ".npz":
        return read_prepared(path, name, split)
    if name == "svhn_mat":
        return read_svhn_mat(path)
    return read_cifar_python(path, name, split)


def read_official(
    path: str | os.PathLike, name: str, split: str, label_mode: str = "fine"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`(x uint8 [N, 32, 32, 3], labels int64 [N], class_names)` of `split`, one label mode."""
    x, labels = read_official_all(path, name, split)
    if label_mode not in labels:
        raise ValueError(
            f"The '{name}' source has the label modes {sorted(labels)}. Received: label_mode={label_mode!r}"
        )
    return (x,) + labels[label_mode]


def write_prepared(
    output: str | os.PathLike,
    name: str,
    splits: Sequence[str],
    read_split: Callable[[str], tuple[np.ndarray, dict[str, tuple[np.ndarray, list[str]]]]],
    log: Callable[[str], Any] = print,
) -> dict[str, int]:
    """Write the splits of the official source `name` into one uncompressed npz, atomically.

    Args:
        output: the npz path.
        name: the source name (recorded, so that the source refuses an npz made from another).
        splits: the splits to store.
        read_split: `fn(split) -> (x, {label_mode: (labels, class_names)})` (`read_official_all`).
        log: progress messages.

    Returns:
        `{split: number of images}`.
    """
    arrays, counts = {_PREPARED_MARKER: np.array(name)}, {}
    for split in splits:
        log(f"  {split}: reading ...")
        x, labels = read_split(split)
        arrays[f"x_{split}"] = x
        for mode, (y_key, names_key) in _prepared_keys(split).items():
            if mode in labels:
                arrays[y_key] = labels[mode][0].astype(np.uint8)
                arrays[names_key] = np.array(labels[mode][1])
        counts[split] = len(x)
        log(f"  {split}: {len(x)} images")
    output = pathlib.Path(output)
    partial = output.with_name(output.name + ".partial")
    with open(partial, "wb") as f:  # a file object: np.savez adds no ".npz" to the name
        np.savez(f, **arrays)
    os.replace(partial, output)
    return counts
