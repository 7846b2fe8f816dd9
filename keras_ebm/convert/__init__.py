"""Official PyTorch checkpoints -> keras_ebm trainers.

A user with a checkpoint released by (or trained with) one of the official implementations can
evaluate, export and serve it with keras_ebm:

    state = keras_ebm.convert.load_torch_state_dict("last_ckpt.pt")   # needs torch (optional extra)
    keras_ebm.convert.convert_official("jem", state, trainer)          # a dict of NumPy arrays works too

Each submodule of this package registers the converters of one official codebase with
`@register("<method>")`; a converter takes the official state dict (names -> NumPy arrays) and a
built keras_ebm trainer of the matching architecture, assigns every weight, and raises a
`ValueError` naming every official key it cannot place and every trainer weight left unset.
Submodules are imported here automatically, so adding a codebase touches only its own file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping
    from typing import Any

    import keras

_CONVERTERS = {}


def register(method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(state_dict, trainer, **options)` as the converter of `method`."""

    def decorator(fn):
        if method in _CONVERTERS:
            raise ValueError(f"A converter for {method!r} is already registered")
        _CONVERTERS[method] = fn
        return fn

    return decorator


def methods() -> tuple[str, ...]:
    """The names `convert_official` accepts."""
    return tuple(sorted(_CONVERTERS))


def convert_official(method: str, state_dict: Mapping[str, Any], trainer: keras.Model, **options: Any) -> keras.Model:
    """Assign an official PyTorch state dict (name -> array or tensor) to `trainer`; returns it."""
    if method not in _CONVERTERS:
        raise ValueError(f"No converter for {method!r}: choose one of {methods()}.")
    arrays = {k: _to_numpy(v) for k, v in state_dict.items()}
    return _CONVERTERS[method](arrays, trainer, **options)


def load_torch_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """Read a `.pt` / `.pth` file into {name: NumPy array} (needs torch: `pip install torch`).

    Official checkpoints nest the weights (`{"model_state_dict": ..., "replay_buffer": ...}`);
    `key` picks one entry; without it the nested dicts are flattened with "/"-joined names.
    """
    try:
        import torch  # noqa: PLC0415 (optional dependency, only for reading .pt files)
    except ImportError as e:
        raise ImportError(
            f"Reading {path} needs PyTorch (a CPU build is enough: `pip install torch`). "
            "Without it, pass convert_official a dict of NumPy arrays instead."
        ) from e
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if key is not None:
        obj = obj[key]
    return dict(_flatten(obj))


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}{k}/" if isinstance(v, dict) else f"{prefix}{k}")
    else:
        yield prefix, _to_numpy(obj)


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
