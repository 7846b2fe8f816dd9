"""`ChainSampler`: the interface and chain bookkeeping that `SGLDSampler` and the samplers of
`keras_ebm.sampling.mcmc` (`MCMCSampler`, `MALASampler`, `HMCSampler`) share, and the helpers
both use (clamp checks, the energy call, per-sample norms)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import tensorflow as tf

from keras_ebm import distribute
from keras_ebm.stateless_scope import discard_updates, get_stateless_scope

_REDUCTIONS = ("sum", "mean")


class ChainSampler:
    """Mixin of the samplers: the call interface `sampler(energy_fn, x_init, y=None, n_steps=None)`,
    `sample_with_stats` and `frozen()`, and the bookkeeping every sampler's chains need (the
    settings of the clamps, BatchNorm, reduction and seed; the checked chain starts; the cache of
    the chain's `tf.function`; the common diagnostics). A subclass implements
    `_sample(energy_fn, x_init, y, n_steps, with_stats)` returning `(x, stats)` (stats may be None
    without `with_stats`)."""

    # Set to True inside `frozen()` (MCMCSampler adds the flag that keeps its own variables).
    _frozen_attributes = ("freeze_bn_stats",)

    def __call__(
        self,
        energy_fn: Callable[..., tf.Tensor],
        x_init: tf.Tensor,
        y: tf.Tensor | None = None,
        n_steps: int | tf.Tensor | None = None,
    ) -> tf.Tensor:
        x, _ = self._sample(energy_fn, x_init, y, n_steps, with_stats=False)
        return x

    def sample_with_stats(
        self,
        energy_fn: Callable[..., tf.Tensor],
        x_init: tf.Tensor,
        y: tf.Tensor | None = None,
        n_steps: int | tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Run the chains and also return diagnostics: `(x, stats)`, `x` as from `__call__`, `stats`
        a dict of float32 tensors (see the sampler's class docstring for the keys)."""
        return self._sample(energy_fn, x_init, y, n_steps, with_stats=True)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Within this context the chains change no variable of the energy function: BatchNorm
        moving statistics and spectral-norm power-iteration vectors updated by a train-mode
        forward pass are discarded (as `freeze_bn_stats=True`); an `MCMCSampler` also keeps its
        step size and diagnostics. Generation from a trained model uses it: drawing samples must
        not alter the model it evaluates.
        """
        names = self._frozen_attributes
        previous = tuple(getattr(self, name) for name in names)
        for name in names:
            setattr(self, name, True)
        try:
            yield self
        finally:
            for name, value in zip(names, previous):
                setattr(self, name, value)

    def _sample(self, energy_fn, x_init, y, n_steps, with_stats):
        raise NotImplementedError

    def _init_chain_settings(self, grad_clip, x_clip, energy_reduction, energy_training, freeze_bn_stats, seed):
        """Set the settings every sampler has (`grad_clip` and `x_clip` as `check_clamps` returns
        them), the seed generator and the empty cache of chain functions."""
        self.grad_clip = grad_clip
        self.x_clip = x_clip
        self.energy_reduction = energy_reduction
        self.energy_training = bool(energy_training)
        self.freeze_bn_stats = bool(freeze_bn_stats)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # (energy_fn, settings of the trace) -> tf.function of the chain; see `_cached_chain`.
        # Set past Keras' attribute tracking (MCMCSampler is a layer).
        object.__setattr__(self, "_chain_functions", {})

    def _chain_settings_config(self) -> dict[str, Any]:
        """The `get_config` entries of the settings set by `_init_chain_settings`."""
        return {
            "grad_clip": self.grad_clip,
            "x_clip": None if self.x_clip is None else list(self.x_clip),
            "energy_reduction": self.energy_reduction,
            "energy_training": self.energy_training,
            "freeze_bn_stats": self.freeze_bn_stats,
            "seed": self.seed,
        }

    def _start(self, x_init, n_steps):
        """`(x_init, n_steps, seed)` of a call: the chain starts gradient-stopped and checked
        (`_check_start`), `n_steps` (the sampler's when None) as int32, and the call's seed."""
        x_init = tf.stop_gradient(tf.convert_to_tensor(x_init))
        if not x_init.dtype.is_floating:
            raise ValueError(
                "`x_init` must be a float tensor (images in the pixel range). "
                f"Received: x_init.dtype={x_init.dtype.name}"
            )
        x_init = self._check_start(x_init)
        n_steps = tf.cast(self.n_steps if n_steps is None else n_steps, tf.int32)
        # Drawn once per call and folded with the step index: one seed-generator advance per
        # call, distinct noise per step and (through replica_seed) per replica. Drawn outside the
        # chain's tf.function, which then holds no state of its own.
        seed = distribute.replica_seed(self.seed_generator)
        return x_init, n_steps, seed

    def _check_start(self, x_init):
        """Further checks of (or changes to) the float chain starts; none by default."""
        return x_init

    def _cached_chain(self, key, run_chain, jit_compile=None):
        """`run_chain` as a `tf.function` (XLA-compiled with `jit_compile`), cached under `key` (the
        energy function and every setting read while tracing). Inside a `keras.StatelessScope`
        (SAM's second pass, `discard_updates`) the trace captures the scope's variable values, so
        it is not cached."""
        chain = self._chain_functions.get(key)
        if chain is None:
            chain = tf.function(run_chain, jit_compile=jit_compile)
            if get_stateless_scope() is None:
                if len(self._chain_functions) >= 8:  # energy functions made afresh per call
                    self._chain_functions.clear()
                self._chain_functions[key] = chain
        return chain


def chain_stats(grad: tf.Tensor, energies_start: tf.Tensor, energies_end: tf.Tensor) -> dict[str, tf.Tensor]:
    """The diagnostics every sampler reports: `grad_norm` (mean over samples of the L2 norm of
    `grad`), `energy_start` and `energy_end` (means of the per-sample energies)."""
    return {
        "grad_norm": tf.reduce_mean(_per_sample_norm(grad)),
        "energy_start": tf.reduce_mean(energies_start),
        "energy_end": tf.reduce_mean(energies_end),
    }


def _per_sample_norm(t):
    t = tf.cast(t, tf.float32)
    flat = tf.reshape(t, [tf.shape(t)[0], -1])
    return tf.norm(flat, axis=-1)


def check_clamps(
    grad_clip: float | None, x_clip: tuple[float, float] | None, energy_reduction: str
) -> tuple[float | None, tuple[float, float] | None]:
    """`(grad_clip, x_clip)` as float / (lo, hi) floats or None, after checking them and
    `energy_reduction` (shared by `SGLDSampler` and the samplers of `keras_ebm.sampling.mcmc`)."""
    if grad_clip is not None and not float(grad_clip) > 0:
        raise ValueError(f"`grad_clip` must be a positive float or None (no clamp). Received: grad_clip={grad_clip}")
    if x_clip is not None:
        if len(x_clip) != 2 or not float(x_clip[0]) < float(x_clip[1]):
            raise ValueError(
                f"`x_clip` must be a (lo, hi) pair with lo < hi, or None (no clamp). Received: x_clip={x_clip}"
            )
        x_clip = (float(x_clip[0]), float(x_clip[1]))
    if energy_reduction not in _REDUCTIONS:
        raise ValueError(
            f"`energy_reduction` must be one of {_REDUCTIONS}. Received: energy_reduction={energy_reduction}"
        )
    return None if grad_clip is None else float(grad_clip), x_clip


def call_energy(
    energy_fn: Callable[..., tf.Tensor], x: tf.Tensor, y: tf.Tensor | None, training: bool, freeze_bn_stats: bool
) -> tf.Tensor:
    """`energy_fn(x, y, training=training)` as a tensor of per-sample energies `[batch]` (checked),
    inside `discard_updates()` with `freeze_bn_stats` (shared by `SGLDSampler` and
    `keras_ebm.sampling.mcmc`)."""
    if freeze_bn_stats:
        with discard_updates():
            energies = energy_fn(x, y, training=training)
    else:
        energies = energy_fn(x, y, training=training)
    energies = tf.convert_to_tensor(energies)
    if energies.shape.rank is not None and energies.shape.rank != 1:
        raise ValueError(
            f"`energy_fn` must return one energy per sample, shape [batch]. Received: energies.shape={energies.shape}"
        )
    return energies
