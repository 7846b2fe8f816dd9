"""The files the data sets' authors distribute, read pixel-exactly (`keras_ebm.data.official`):
"cifar10_python" and "cifar100_python" (`cifar-10-python.tar.gz` / `cifar-100-python.tar.gz` or
their extracted folders) and "svhn_mat" (`train_32x32.mat`, `test_32x32.mat`, `extra_32x32.mat`),
or the npz `python -m keras_ebm.data.prepare` makes from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keras_ebm.data import official
from keras_ebm.data.sources import common, files
from keras_ebm.data.sources.registry import register_source

if TYPE_CHECKING:
    import os
    import pathlib
    from collections.abc import Sequence

OFFICIAL_DATASETS = tuple(official.FORMATS)


def _find_in_directory(name, path, names, fmt, local_path):
    inside = [path / n for n in names if (path / n).exists()]
    if inside:
        return inside[0]
    if name != "svhn_mat":
        return path  # the extracted batches folder itself (checked when read)
    raise FileNotFoundError(f"{path} holds none of {names} (from {fmt.url}). Received: local_path={str(local_path)!r}")


def _given_official_path(name, split, local_path, names, fmt):
    path = files.given_path(name, local_path, f"one of {names} (from {fmt.url}) or its directory")
    if path.is_dir():
        return _find_in_directory(name, path, names, fmt, local_path)
    other = [s for s in fmt.splits if s != split and path.name == f"{s}_32x32.mat"]
    if other:
        raise ValueError(
            f"{path} is SVHN's '{other[0]}' split, but split '{split}' was asked for: pass "
            f"the directory holding {split}_32x32.mat. Received: local_path={str(local_path)!r}"
        )
    return path


def resolve_official_path(
    name: str, split: str, local_path: str | os.PathLike | None = None, prepared: bool = True
) -> pathlib.Path:
    """The file or folder the official source `name` reads `split` from.

    `local_path` may be the file itself (an archive, an extracted folder, a `.mat` file, the
    prepared npz) or a directory holding it under its official name; without it the official names
    are looked for in `data_search_dirs()`, the prepared npz (`official.FORMATS[name].prepared`,
    fastest to load; `prepared=False` skips it) before the archive and its folders.
    """
    fmt = official.FORMATS[name]
    if split not in fmt.splits:
        raise ValueError(f"The '{name}' source has the splits {list(fmt.splits)}. Received: split={split!r}")
    names = ([fmt.prepared] if prepared else []) + [n.format(split=split) for n in fmt.names]
    if local_path is not None:
        return _given_official_path(name, split, local_path, names, fmt)
    dirs = files.data_search_dirs()
    for directory in dirs:
        for n in names:
            if (directory / n).exists():
                return directory / n
    raise FileNotFoundError(
        f"The '{name}' source needs one of {names} (download it from {fmt.url}); none is in "
        f"{', '.join(str(d) for d in dirs)}. Set the environment variable {files.DATA_DIR_ENV} to "
        "the directory that holds it, or pass `local_path=<file or directory>`. "
        "Received: local_path=None"
    )


def _check_label_mode(label_mode, name):
    if label_mode != "fine" and name not in ("cifar100_python", "cifar100_python_interp"):
        raise ValueError(
            "`label_mode` other than 'fine' is only for 'cifar100_python' ('coarse': its 20 "
            f"superclasses). Received: name={name!r}, label_mode={label_mode!r}"
        )


@register_source(*OFFICIAL_DATASETS, option_checks={"label_mode": _check_label_mode})
def official_source(
    name: str,
    split: str,
    *,
    classes: Sequence[int] | None = None,
    max_examples: int | None = None,
    local_path: str | os.PathLike | None = None,
    label_mode: str = "fine",
) -> common.SourceData:
    """An official download, pixel-exact with the canonical arrays.

    Options:
        local_path: the official archive / extracted folder / `.mat` file, the npz `prepare` made,
            or a directory holding one of them; by default their official names are looked for in
            $KERAS_EBM_DATA_DIR and the other `data_search_dirs()`.
        label_mode: "fine" (default), or "coarse" for the 20 superclasses of "cifar100_python".
    """
    path = resolve_official_path(name, split, local_path)
    x, labels, class_names = official.read_official(path, name, split, label_mode)
    return common.from_arrays(x, labels, class_names, classes, max_examples)
