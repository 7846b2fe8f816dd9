"""The registry of data sources and `load_source`, the dispatcher that looks a name up in it.

A source is a function registered under one or more names:

    from keras_ebm.data import sources

    @sources.register_source("my_set")
    def my_set(name, split, *, classes=None, max_examples=None, scale=1):
        '''My data set; `scale` is its own option.'''
        x, y = ...  # uint8 [N, H, W, C], int [N]
        return sources.from_arrays(x, y, class_names, classes, max_examples)

It is called as `fn(name, split, classes=..., max_examples=..., **its options)` with the name it
was registered under, and returns a `SourceData`. Its keyword parameters are its options:
`load_source("my_set", "train", scale=2)` (`train/make_dataset_fn.scale = 2` in gin) passes `scale`
to it; `image_size` and `channels` reach it only when it names them (else `load_source` resizes and
converts what it returns). Options it does not name are ignored (another source's option, such as
`data_dir`, may be passed with every name); a keyword no registered source names is a `TypeError`.
`name + "_interp"` is then the interpolation OOD set of the new source as of every other one.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from keras_ebm.data.sources import common
from keras_ebm.data.sources import interp as interp_lib

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    import tensorflow as tf

INTERP_SUFFIX = "_interp"
# Taken by `load_source` itself: every source gets `classes` and `max_examples`, and those of
# `image_size`/`channels` it names; the `interp*` options build "_interp" sets.
_COMMON_OPTIONS = ("classes", "max_examples", "image_size", "channels")


@dataclasses.dataclass(frozen=True)
class Source:
    """A registered source: its `load` function, the options it takes (its keyword parameters
    besides `classes` and `max_examples`), and an optional `check_available(name, split,
    **options)` that fails early (before a model is built) when its data cannot be had."""

    name: str
    load: Callable[..., common.SourceData]
    options: tuple[str, ...]
    check_available: Callable[..., None] | None = None


_SOURCES: dict[str, Source] = {}
# option name -> check(value, requested name), run whatever the source (see `register_source`)
_OPTION_CHECKS: dict[str, Callable[[object, str], None]] = {}


def register_source(
    *names: str,
    check_available: Callable[..., None] | None = None,
    option_checks: Mapping[str, Callable[[object, str], None]] | None = None,
) -> Callable[[Callable[..., common.SourceData]], Callable[..., common.SourceData]]:
    """Decorator: register a source function under `names` (see this module's docstring).

    Args:
        *names: the names `load_source` knows it by (not ending in "_interp").
        check_available: optional `fn(name, split, **options)` raising when the data can be
            neither read nor fetched (`keras_ebm.data.sources.check_available` calls it).
        option_checks: optional `{option: check(value, name)}` run for every `load_source` call
            that passes the option, with the name as requested, whatever the source, before the
            name is looked up (e.g. the tensorflow-datasets source's `crop`).

    Returns:
        The decorator, which returns the function unchanged.
    """

    def register(fn):
        params = inspect.signature(fn).parameters
        missing = [p for p in ("classes", "max_examples") if p not in params]
        if missing:
            raise TypeError(
                f"A source function takes the keyword parameters `classes` and `max_examples` "
                f"(pass them to `from_arrays`); {fn.__name__} lacks {missing}."
            )
        options = tuple(
            p
            for p in list(params)[2:]
            if p not in ("classes", "max_examples") and params[p].kind != inspect.Parameter.VAR_KEYWORD
        )
        for name in names:
            if not isinstance(name, str) or not name or name.endswith(INTERP_SUFFIX):
                raise ValueError(
                    f"A source name is a non-empty string not ending in '{INTERP_SUFFIX}' (that "
                    f"suffix names the interpolation set of a source). Received: name={name!r}"
                )
            _SOURCES[name] = Source(name, fn, options, check_available)
        _OPTION_CHECKS.update(option_checks or {})
        return fn

    return register


def source_names() -> tuple[str, ...]:
    """The registered source names, in registration order."""
    return tuple(_SOURCES)


def known_names_text() -> str:
    return ", ".join(repr(n) for n in _SOURCES) + f", or any of these followed by '{INTERP_SUFFIX}'"


def split_interp(name: str) -> tuple[str, bool]:
    """`(base name, is an interpolation set)`: "x_interp" is the interpolation set of the
    registered source "x"."""
    if name.endswith(INTERP_SUFFIX) and name[: -len(INTERP_SUFFIX)] in _SOURCES:
        return name[: -len(INTERP_SUFFIX)], True
    return name, False


def get_source(name: str) -> Source:
    """The `Source` registered as `name` ("_interp" stripped); ValueError naming every
    registered name for an unknown one."""
    base, _ = split_interp(name)
    if base not in _SOURCES:
        raise ValueError(f"Unknown data set. Known names: {known_names_text()}. Received: name={name!r}")
    return _SOURCES[base]


def _check_option_names(options):
    known = set(_COMMON_OPTIONS + interp_lib.OPTIONS)
    known.update(o for source in _SOURCES.values() for o in source.options)
    for key in options:
        if key not in known:
            raise TypeError(f"load_source() got an unexpected keyword argument {key!r}")


def _check_options(name, options):
    """`options` with `image_size` as a pair, after the checks of the common options and of
    the options registered with `option_checks`."""
    if "image_size" in options:
        options["image_size"] = common.normalize_size(options["image_size"])
    max_examples = options.get("max_examples")
    if max_examples is not None and int(max_examples) < 0:
        raise ValueError(f"`max_examples` must be >= 0. Received: max_examples={max_examples!r}")
    for option, check in _OPTION_CHECKS.items():
        if option in options:
            check(options[option], name)
    return options


def load_source(name: str, split: str = "train", **options: Any) -> tuple[tf.data.Dataset, common.SourceInfo]:
    """Load a data set as an unbatched `tf.data.Dataset` of `(image uint8 [H, W, C], label int32)`.

    Args:
        name: a registered source (`source_names()`; `keras_ebm.data.sources` lists the built-in
            ones), or one followed by "_interp": the interpolation OOD set of that source (see
            `interpolate_images`).
        split: the split, as the source names them ("train", "test"; tfds split strings for
            tfds sources; "all" also for "digits" and "photo_patches").
        **options: the options every source takes:
            classes: labels to keep, remapped to `0..len(classes)-1` in the given order
                (held-out-class experiments: load the held-out labels as their own set).
            max_examples: keep only the first `max_examples` examples (after the `classes`
                filter; for "_interp" sets, of the interpolated set).
            image_size: int or `(height, width)`; images are resized (bilinear, antialiased)
                when their size differs.
            channels: 1 or 3 to convert grayscale <-> RGB (e.g. photo patches matching "digits").
            interp, interp_noise, interp_seed, interp_offset: the construction of "_interp" sets
                (`keras_ebm.data.sources.interp.load_interpolated`).
            And the source's own options, documented by its function (`data_dir`, `download`,
            `crop`: tensorflow-datasets; `local_path`: the local files; `label_mode`:
            "cifar100_python"; `patch_size`: "photo_patches"). Options the source does not take
            are ignored.

    Returns:
        `(ds, info)`: the dataset and a `SourceInfo`.
    """
    _check_option_names(options)
    if not isinstance(name, str):
        raise ValueError(f"`name` must be a string. Received: name={name!r}")
    options = _check_options(name, dict(options))
    source = get_source(name)
    if split_interp(name)[1]:
        return interp_lib.load_interpolated(load_source, name, source.name, split, options)
    kwargs = {k: options[k] for k in source.options if k in options}
    classes, max_examples = options.get("classes"), options.get("max_examples")
    data = source.load(name, split, classes=classes, max_examples=max_examples, **kwargs)
    ds, shape = common.convert_images(data.ds, data.image_shape, options.get("image_size"), options.get("channels"))
    info = common.SourceInfo(
        name=name,
        split=split,
        num_examples=data.num_examples,
        image_shape=shape,
        num_classes=len(data.class_names),
        class_names=tuple(data.class_names),
        has_labels=data.has_labels,
        single_split=data.single_split,
    )
    return ds, info


def check_available(name: str, split: str = "train", **options: Any) -> None:
    """Fail now, with what to do, when the data of source `name` can be neither read nor fetched
    (the source's own `check_available`: tensorflow-datasets sources probe the network for at
    most `PROBE_TIMEOUT` seconds when their data is not prepared). Other sources check their
    files when they load, at once; this lets `run_training` refuse before it builds a model.
    Unknown names pass (`load_source` names them)."""
    base, _ = split_interp(name)
    source = _SOURCES.get(base)
    if source is not None and source.check_available is not None:
        source.check_available(base, split, **options)
