"""The one seam every random draw of a training step goes through (and the parity tests replay).

Each draw a train step makes (buffer indices, re-initialisation mask, initialiser noise, SGLD
noise, ...) is made by `uniform(kind, ...)` or `normal(kind, ...)` here, named by its *kind*.
Normally these are exactly the `tf.random.stateless_uniform` / `stateless_normal` calls the
components made before the seam existed (same shapes, seeds and dtypes, so the streams, the tests
pinned to them and resumed checkpoints are bit-identical); the kind is only a label, checked at
trace time, and costs nothing.

Inside `replay(draws)` (tests only) the functions instead return recorded arrays: `draws` maps a
kind to the list of arrays, in the order the step consumes them, e.g. the draws the official
PyTorch code made (`tests/data/parity/*.npz`, `benchmarks/parity/`), transposed to NHWC. Each
*execution* of a draw pops the next array of its kind (a `tf.py_function`), so replay works
eagerly, inside `tf.function`, inside the SGLD `tf.while_loop` (one pop per loop iteration) and
across steps of a cached trace. A replayed array must have the requested shape; it is cast to the
requested dtype (float64 draws stay float64). Traces made while replaying contain the
`py_function`s: build the trainer and its step functions inside the context (the sampler keys its
cached chains on `replaying()`, so a chain traced outside is not reused inside, nor the reverse).
Replay covers eager and single-device runs (no distribution strategy).

Kinds (`KINDS`), what draws them and what the official codes draw for them:

| kind | drawn by | shape | official |
|---|---|---|---|
| `buffer_index` | `ReplayBuffer.sample` | `[B]` int | `t.randint(0, buffer_size, (bs,))` |
| `buffer_class` | `ReplayBuffer.sample` (class-conditional, no y) | `[B]` int | - |
| `reinit` | `ReplayBuffer.sample` (U(0,1), re-init where < reinit_prob) | `[B]` | `t.rand(bs) < reinit_freq` |
| `init_uniform` | `UniformInitializer.init` (U(lo, hi)) | `[B, H, W, C]` | `FloatTensor(...).uniform_(-1, 1)` |
| `init_class` | `InformativeInitializer.init` without y | `[B]` int | class of each fresh sample |
| `init_normal` | `InformativeInitializer.init` (N(0, I) before the class factor) | `[B, H*W*C]` | the class Gaussian's standard-normal draw |
| `sgld_noise` | `SGLDSampler`, one per SGLD step | `[B, H, W, C]` | `t.randn_like(x_k)` |
| `latent_normal` | `GMMC.draw_latents` (z = mu_y + std * N(0, I); staged: once per chain call) | `[B, D]` | GMMC `t.randn(bs, centers.shape[1])` |
| `augment_chain_start` | `CLEL.sample_negatives` (strong augmentation of chain starts) | `[B, H, W, C]` images | CLEL `sampler.augmentation(x)` output |
| `augment_guidance` | `CLEL.compute_losses` (the view whose latent guides the EBM, eq. 3) | `[B, H, W, C]` images | CLEL `ebm_augmentation(x_pos)` output |
| `augment_views` | `CLEL.compute_losses`, twice (the two SimCLR views, eq. 4) | `[B, H, W, C]` images | CLEL `encoder_augmentation(cat[x, x])` output, halves |

`buffer_index` is also drawn by `indices_without_replacement` (`ReplayBuffer(replacement=False)`,
CLEL's `random.sample`). The `augment_*` kinds are drawn by `augmented(kind, images, fn)`: a replay
returns the recorded augmented images instead of running `fn` (an augmentation makes many small
draws, crop boxes, jitter factors, flips, whose order no two libraries share; the parity tests
inject its output).

A component that adds a draw adds its kind here and calls these functions, never
`tf.random.stateless_*` directly, so that every method's parity test can replay it.
"""  # noqa: E501  (Markdown table rows: a table row cannot wrap)

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

KINDS = (
    "buffer_index",
    "buffer_class",
    "reinit",
    "init_uniform",
    "init_class",
    "init_normal",
    "sgld_noise",
    "latent_normal",
    "augment_chain_start",
    "augment_guidance",
    "augment_views",
)

_ACTIVE = None  # the `Replay` of the enclosing `replay(...)` context, or None


def replaying() -> Replay | None:
    """The active `Replay` (an object usable as a cache key), or None outside `replay(...)`."""
    return _ACTIVE


def uniform(
    kind: str,
    shape: Sequence[int] | tf.Tensor,
    seed: tf.Tensor,
    minval: float | tf.Tensor = 0,
    maxval: float | tf.Tensor | None = None,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """`tf.random.stateless_uniform(shape, seed, minval, maxval, dtype)`, or the next recorded
    array of `kind` inside `replay(...)`."""
    _check_kind(kind)
    if _ACTIVE is None:
        return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval, dtype=dtype)
    return _ACTIVE.pop(kind, shape, dtype)


def normal(kind: str, shape: Sequence[int] | tf.Tensor, seed: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """`tf.random.stateless_normal(shape, seed, dtype=dtype)`, or the next recorded array of
    `kind` inside `replay(...)`."""
    _check_kind(kind)
    if _ACTIVE is None:
        return tf.random.stateless_normal(shape, seed=seed, dtype=dtype)
    return _ACTIVE.pop(kind, shape, dtype)


def indices_without_replacement(
    kind: str, n: int | tf.Tensor, population: int | tf.Tensor, seed: tf.Tensor
) -> tf.Tensor:
    """`n` distinct indices of `range(population)` in random order (int32 `[n]`): the first `n` of a
    random permutation, `top_k` of `population` uniform keys (`random.sample`'s distribution).
    Inside `replay(...)` the next recorded int array of `kind`."""
    _check_kind(kind)
    if _ACTIVE is None:
        keys = tf.random.stateless_uniform([population], seed=seed)
        return tf.math.top_k(keys, k=n, sorted=True).indices
    return _ACTIVE.pop(kind, [n], tf.int32)


def augmented(kind: str, images: tf.Tensor, fn: Callable[[], tf.Tensor]) -> tf.Tensor:
    """`fn()`, the augmentation of `images`; inside `replay(...)` the next recorded augmented
    images of `kind` (shape of `images`, its dtype)."""
    _check_kind(kind)
    if _ACTIVE is None:
        return fn()
    out = _ACTIVE.pop(kind, tf.shape(images), images.dtype)
    out.set_shape(images.shape)
    return out


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"Unknown draw kind {kind!r}: add it to keras_ebm.random_draws.KINDS. Known kinds: {KINDS}")


class Replay:
    """Recorded draws by kind, consumed in order (see the module docstring)."""

    def __init__(self, draws: Mapping[str, Sequence[np.ndarray]]) -> None:
        unknown = set(draws) - set(KINDS)
        if unknown:
            raise ValueError(f"Unknown draw kinds {sorted(unknown)}; known kinds: {KINDS}")
        self.queues = {kind: [np.asarray(a) for a in arrays] for kind, arrays in draws.items()}
        self.used = dict.fromkeys(self.queues, 0)

    def remaining(self) -> dict[str, int]:
        """{kind: number of recorded arrays not consumed yet} (a parity test checks it is all 0)."""
        return {kind: len(q) - self.used[kind] for kind, q in self.queues.items()}

    def _next(self, kind, shape):
        queue = self.queues.get(kind, [])
        n = self.used.get(kind, 0)
        if n >= len(queue):
            raise ValueError(
                f"The step drew {kind!r} #{n + 1} but the replay holds only {len(queue)} such draws: "
                "the step draws more (or in another kind) than the recorded run did."
            )
        value = queue[n]
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"The step drew {kind!r} #{n + 1} of shape {tuple(shape)} but the recorded draw has "
                f"shape {value.shape}."
            )
        self.used[kind] = n + 1
        return value

    def pop(self, kind: str, shape: Sequence[int] | tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        dtype = tf.as_dtype(dtype)
        shape_t = tf.convert_to_tensor(shape, tf.int32)

        def fetch(s):
            return self._next(kind, tuple(int(d) for d in s.numpy())).astype(dtype.as_numpy_dtype)

        out = tf.py_function(fetch, [shape_t], Tout=dtype)
        static = tf.get_static_value(shape_t)
        if static is not None:
            out.set_shape(static)
        elif shape_t.shape.rank == 1 and shape_t.shape[0] is not None:
            out.set_shape([None] * shape_t.shape[0])  # at least the rank, inside traced steps
        return out


@contextlib.contextmanager
def replay(draws: Mapping[str, Sequence[np.ndarray]]) -> Iterator[Replay]:
    """Within this context every draw of the seam returns the recorded arrays `draws` ({kind: [arrays]}).

    Yields the `Replay`, whose `remaining()` tells which recorded draws were not consumed.
    Tests only; not re-entrant.
    """
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("random_draws.replay(...) is already active; it does not nest.")
    _ACTIVE = Replay(draws)
    try:
        yield _ACTIVE
    finally:
        _ACTIVE = None
