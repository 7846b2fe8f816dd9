"""Where local sources find their files, and the one reader of `.npz` archives they share.

Local files are looked for in the directory named by the environment variable KERAS_EBM_DATA_DIR,
then KERAS_EBM_SHARED_DATA, the working directory, Keras' dataset cache (`~/.keras/datasets`) and
`../shared/data` (see `data_search_dirs`), unless `local_path=` names them.
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

DATA_DIR_ENV = "KERAS_EBM_DATA_DIR"
SHARED_DATA_ENV = "KERAS_EBM_SHARED_DATA"  # the older name, still read after KERAS_EBM_DATA_DIR


def data_search_dirs() -> list[pathlib.Path]:
    """The directories local files are looked for in, in order: $KERAS_EBM_DATA_DIR,
    $KERAS_EBM_SHARED_DATA, the working directory, Keras' dataset cache ($KERAS_HOME/datasets or
    ~/.keras/datasets, where `keras.datasets.cifar10.load_data` extracts the CIFAR archives),
    `../shared/data` beside the working directory and beside this checkout."""
    envs = (DATA_DIR_ENV, SHARED_DATA_ENV)
    dirs = [pathlib.Path(os.environ[e]).expanduser() for e in envs if os.environ.get(e)]
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    dirs += [
        pathlib.Path.cwd(),
        pathlib.Path(keras_home).expanduser() / "datasets",
        pathlib.Path.cwd().parent / "shared" / "data",
        # The checkout's sibling shared/data, so scripts also work when run from another directory.
        pathlib.Path(__file__).resolve().parents[4] / "shared" / "data",
    ]
    return dirs


def given_path(name: str, local_path: str | os.PathLike, what: str) -> pathlib.Path:
    """`local_path` as a path, which must exist; `what` says what it should be."""
    path = pathlib.Path(local_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"The '{name}' source has nothing at {path}. Check the path, or pass `local_path=` "
            f"{what}. Received: local_path={str(local_path)!r}"
        )
    return path


def resolve_local_path(
    name: str, local_path: str | os.PathLike | None, default_file: tuple[str, str] | None = None
) -> pathlib.Path:
    """The file the local source `name` reads: `local_path` when given, else its
    `default_file = (environment variable, file name)`: the file the variable names, then the file
    name in `data_search_dirs()`."""
    if local_path is not None:
        return given_path(name, local_path, "an existing file")
    if default_file is None:
        raise ValueError(f"The '{name}' source reads a local file: pass `local_path=<path>`. Received: local_path=None")
    env, filename = default_file
    candidates = [pathlib.Path(os.environ[env])] if os.environ.get(env) else []
    candidates += [d / filename for d in data_search_dirs()]
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(
        f"The '{name}' source needs the file {filename}, which is not in any default location: "
        f"{', '.join(str(p) for p in candidates)}. Pass `local_path=<path to {filename}>`, set "
        f"the environment variable {env} (or {DATA_DIR_ENV} to its directory), or use the "
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


def load_npz_arrays(
    path: str | os.PathLike, name: str, keys: Sequence[str]
) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """`({key: array}, all keys)`: the existing `keys` of the npz at `path`, with one clear error
    for a directory, a truncated or corrupt archive, or object (pickled) arrays."""
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
