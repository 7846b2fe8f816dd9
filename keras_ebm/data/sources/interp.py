"""The "_interp" sets: any source name followed by "_interp" ("cifar10_jpeg_interp",
"digits_interp", ...) is the interpolation OOD set built from that source, the average of two images
of the set, as in JEM's and CLEL's "CIFAR-10 interp" (see `interpolate_images`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from keras_ebm.data.sources import common

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    import tensorflow as tf

# The options of "_interp" sets, with their defaults (see `load_interpolated`).
DEFAULTS = {"interp": "jem", "interp_noise": 0.0, "interp_seed": 0, "interp_offset": 100}
OPTIONS = tuple(DEFAULTS)


def interpolate_images(
    x: np.ndarray, y: np.ndarray, method: str = "jem", offset: int = 100, noise: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
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


def load_interpolated(
    load_source: Callable[..., tuple[tf.data.Dataset, common.SourceInfo]],
    name: str,
    base: str,
    split: str,
    options: dict[str, Any],
) -> tuple[tf.data.Dataset, common.SourceInfo]:
    """`(ds, info)` of the "_interp" set `name` of the source `base`: the whole `split` of `base`
    loaded with `options` (all but `max_examples` and these), interpolated, then cut to
    `max_examples`.

    Its options:
        interp: "jem" or "clel", the construction (`interpolate_images`'s `method`).
        interp_noise: noise sigma in [-1, 1] units (JEM uses 0.03; default 0).
        interp_seed: shuffle/noise seed (0).
        interp_offset: JEM's batch size / CLEL's index offset (100).
    """
    settings = {k: options.get(k, v) for k, v in DEFAULTS.items()}
    base_options = {k: v for k, v in options.items() if k not in OPTIONS + ("max_examples",)}
    base_ds, base_info = load_source(base, split, **base_options)
    x, y = common.dataset_to_arrays(base_ds)
    x, y = interpolate_images(
        x,
        y,
        method=settings["interp"],
        offset=int(settings["interp_offset"]),
        noise=settings["interp_noise"],
        seed=settings["interp_seed"],
    )
    max_examples = options.get("max_examples")
    if max_examples is not None:
        x, y = x[:max_examples], y[:max_examples]
    info = dataclasses.replace(base_info, name=name, num_examples=len(x))
    return common.dataset_from_arrays(x, y), info
