"""`SGLDSampler`: stochastic gradient Langevin dynamics that descends an energy function."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_ebm import random_draws, run_settings
from keras_ebm.sampling.chains import ChainSampler, call_energy, chain_stats, check_clamps


@keras.saving.register_keras_serializable(package="keras_ebm")
class SGLDSampler(ChainSampler):
    """Stochastic gradient Langevin dynamics (SGLD) on an energy function.

    Runs `n_steps` of

        x <- x - step_size * dE/dx + noise_std * N(0, I)

    where E is the sum (or mean) over the batch of the per-sample energies returned by
    `energy_fn(x, y, training=energy_training)`. The sampler always *descends* the energy
    (`keras_ebm.energy` holds the sign convention: E(x) = -logsumexp f(x)). It is a plain Python
    object, like keras-hub's `Sampler`: no weights of its own apart from a seed generator, no
    reference to a model, and one `tf.while_loop`, so it runs eagerly, inside `tf.function`, and
    inside a `train_step` under `tf.distribute.MirroredStrategy`.

    Settings of the reference implementations:

    | method | n_steps | step_size | noise_std | grad_clip | x_clip | reduction | energy_training |
    |---|---|---|---|---|---|---|---|
    | JEM (PCD) | 20 | 1.0 | 0.01 | None | None | "sum" | False |
    | JEM++ / SADA-JEM | 5-10 | 1.0 | 0.0 | 1.0 | (-1, 1) | "sum" | True |
    | GMMC | 20 | 1.0 | 0.0 | None | (-1, 1) | "mean" | False |
    | CLEL | 60 | 100.0 | 0.001 | 100.0 | (0, 1) | "sum" | True |

    "sum" leaves every sample's gradient unscaled (JEM, SADA-JEM, CLEL); "mean" divides the step by
    the batch size, as GMMC does. A gradient clamp to `[-grad_clip, grad_clip]` followed by a clamp
    of x is the "proximal" SGLD of JEM++ and SADA-JEM.

    BatchNorm while sampling: with `energy_training=True` a BatchNormalization layer in the energy
    function normalises with batch statistics *and*, by default, updates its moving statistics on
    every SGLD step (what JEM++ and SADA-JEM do in PyTorch, so at evaluation the moving statistics
    mix data and sample statistics). `freeze_bn_stats=True` runs the energy function inside a
    `keras.StatelessScope`, which discards every variable assignment (moving statistics, seed
    generator states) made during sampling; the batch statistics are still used.

    Args:
        n_steps: int, number of SGLD steps K per call (overridable per call).
        step_size: float, the step size α multiplying the energy gradient.
        noise_std: float, the standard deviation σ of the Gaussian noise added after each step.
            `0` gives deterministic gradient descent on the energy.
        grad_clip: optional float; if set, the gradient is clamped elementwise to
            `[-grad_clip, grad_clip]` before the step.
        x_clip: optional `(lo, hi)` pair; if set, x is clamped to it after every step (the pixel
            range, e.g. `(-1, 1)`).
        energy_reduction: `"sum"` or `"mean"`, how per-sample energies are reduced over the batch
            before differentiating.
        energy_training: bool, the `training` flag passed to `energy_fn` while sampling.
        freeze_bn_stats: bool, discard the variable updates made by `energy_fn` during sampling
            (BatchNorm moving statistics). Default False reproduces the reference code.
        seed: optional int, seed of the sampler's `keras.random.SeedGenerator`. Create the
            sampler under `strategy.scope()` when training with a distribution strategy.
        jit_compile: bool, compile the chain (the whole `tf.while_loop`) with XLA, alone, inside
            whatever step calls it. Off by default: on a 2-core CPU the XLA loop of WRN-16-4 at
            batch 64 ran about 4x slower than TensorFlow's own kernels (and one XLA SGLD step 1.3x);
            it is there to measure on accelerators. XLA draws its own Gaussian stream from the
            same seeds, so the noise (not its distribution) differs from the uncompiled chain's.

    Call args:
        energy_fn: callable `energy_fn(x, y, training=...)` returning per-sample energies
            `[batch]` (lower = more probable).
        x_init: float tensor `[batch, height, width, channels]` (any shape with a leading batch
            axis), the chain starts.
        y: optional labels `[batch]` forwarded to `energy_fn` (class-conditional chains).
        n_steps: optional int or scalar int tensor overriding the constructor's `n_steps`.

    Returns:
        The final samples, same shape and dtype as `x_init`, with the gradient stopped.
        `sample_with_stats` also returns a dict of float32 scalar diagnostics: `grad_norm`, the
        mean over samples of the L2 norm of the gradient of the reduced energy (the one the step
        uses, before the clamp) at the last step; `energy_start`, the mean per-sample energy of
        `x_init`; `energy_end`, the mean per-sample energy at the input of the last step (no extra
        forward pass is spent on the final samples). All three are 0 when `n_steps` is 0.

    Run-time settings (`keras_ebm.run_settings`): `n_steps`, `step_size` and `noise_std` are
    variables the compiled chain reads (assign them between training steps, e.g. the divergence
    guard's "more SGLD steps"; no retrace); `grad_clip`, `x_clip`, `energy_reduction`,
    `energy_training`, `freeze_bn_stats` and `jit_compile` shape the graph, so a change rebuilds
    the trainer's step. The noise is scaled by `noise_std`; at 0 no noise is drawn (crossing 0 retraces).

    Cost: a step is one forward pass and one backward pass to the input, nothing else per step.
    The diagnostics of `sample_with_stats` are reduced once, after the loop, from the last step's
    energies and gradient (carried out of the loop); `__call__` computes none, and both give the
    same chain. The chain is invisible to any enclosing `GradientTape` (its output and start are
    gradient-stopped): inside `tf.function` the outer tape never differentiates the loop, so no
    step's activations are kept (memory is flat in `n_steps`); when called eagerly the chain runs
    as one `tf.function` (traced once per energy function and settings), because an eager loop
    under an outer tape would have every step's activations recorded on that tape until it is
    released (memory growing with `n_steps`).

    Example:

    ```python
    sampler = SGLDSampler(n_steps=20, step_size=1.0, noise_std=0.01)
    energy_fn = lambda x, y, training: keras_ebm.energy.energy_from_logits(
        network(x, training=training)
    )
    x_sample = sampler(energy_fn, x_init)
    ```

    Reference:
        - [Welling and Teh, 2011](https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf)
        - [Grathwohl et al., 2020 (JEM)](https://arxiv.org/abs/1912.03263)
        - [Yang and Ji, 2021 (JEM++)](https://arxiv.org/abs/2109.09032)
        - [Yang, Su and Ji, 2023 (SADA-JEM)](https://arxiv.org/abs/2209.07959)
    """

    n_steps = run_settings.Setting("int32", minimum=0)
    step_size = run_settings.Setting(minimum=0.0)
    noise_std = run_settings.Setting(minimum=0.0, structure=lambda v: v > 0)
    grad_clip = run_settings.TraceSetting()
    x_clip = run_settings.TraceSetting()
    energy_reduction = run_settings.TraceSetting()
    energy_training = run_settings.TraceSetting(bool)
    freeze_bn_stats = run_settings.TraceSetting(bool)
    jit_compile = run_settings.TraceSetting(bool)

    def __init__(
        self,
        n_steps: int = 20,
        step_size: float = 1.0,
        noise_std: float = 0.01,
        grad_clip: float | None = None,
        x_clip: tuple[float, float] | None = None,
        energy_reduction: str = "sum",
        energy_training: bool = False,
        freeze_bn_stats: bool = False,
        seed: int | None = None,
        jit_compile: bool = False,
    ) -> None:
        if int(n_steps) < 0:
            raise ValueError(f"`n_steps` must be a non-negative integer. Received: n_steps={n_steps}")
        if float(step_size) < 0:
            raise ValueError(f"`step_size` must be non-negative. Received: step_size={step_size}")
        if float(noise_std) < 0:
            raise ValueError(f"`noise_std` must be non-negative. Received: noise_std={noise_std}")
        grad_clip, x_clip = check_clamps(grad_clip, x_clip, energy_reduction)
        self.n_steps = int(n_steps)
        self.step_size = float(step_size)
        self.noise_std = float(noise_std)
        self._init_chain_settings(grad_clip, x_clip, energy_reduction, energy_training, freeze_bn_stats, seed)
        self.jit_compile = bool(jit_compile)

    def _sample(self, energy_fn, x_init, y, n_steps, with_stats):
        """`(x, None)`, or with `with_stats` `(x, stats)` (the keys: see the class docstring)."""
        x_init, n_steps, seed = self._start(x_init, n_steps)
        if self.jit_compile or tf.executing_eagerly():
            chain = self._chain_function(energy_fn, with_stats)
            x, out = chain(x_init, y, seed, n_steps)
        else:
            x, out = self._chain(energy_fn, x_init, y, seed, n_steps, with_stats)
        if not with_stats:
            return x, None
        # Reduced once here; the loop only carried the last step's gradient and energies.
        return x, chain_stats(*out)

    def _chain_function(self, energy_fn, with_stats):
        """The chain as a cached `tf.function` (XLA-compiled with `jit_compile`)."""
        # n_steps, step_size and noise_std are variables the function reads: not part of the key
        # (noise_std's structural part, whether noise is drawn at all, is in the signature).
        key = (energy_fn, with_stats, run_settings.signature(self), random_draws.replaying())

        def run_chain(x, y, seed, n_steps):
            return self._chain(energy_fn, x, y, seed, n_steps, with_stats)

        return self._cached_chain(key, run_chain, jit_compile=self.jit_compile or None)

    def _chain(self, energy_fn, x_init, y, seed, n_steps, with_stats):
        """`n_steps` SGLD steps from `x_init`: `(x, None)`, or with `with_stats` `(x, (gradient of
        the last step before the clamp, float32 energies of the first step's input, of the last
        step's input))`, zeros when `n_steps` is 0."""

        def step_fn(step, x):
            energies, grad = self._energy_and_grad(energy_fn, x, y)
            step_grad = grad
            if self.grad_clip is not None:
                step_grad = tf.clip_by_value(grad, -self.grad_clip, self.grad_clip)
            # Exact in float64 (run_settings.as_tensor: no detour through float32).
            x_next = x - run_settings.as_tensor(self.step_size, x.dtype) * step_grad
            if run_settings.structure_of(self, "noise_std"):  # noise_std > 0 (a variable otherwise)
                noise = random_draws.normal(
                    "sgld_noise",
                    tf.shape(x),
                    seed=tf.random.experimental.stateless_fold_in(seed, step),
                    dtype=x.dtype,
                )
                x_next = x_next + run_settings.as_tensor(self.noise_std, x.dtype) * noise
            if self.x_clip is not None:
                x_next = tf.clip_by_value(x_next, self.x_clip[0], self.x_clip[1])
            return x_next, energies, grad

        # The steps form a chain; running one at a time also keeps stateful energy functions
        # (BatchNorm moving statistics) in step order.
        loop = dict(parallel_iterations=1)
        start = tf.constant(0, tf.int32)
        if not with_stats:

            def body(step, x):
                return step + 1, step_fn(step, x)[0]

            _, x = tf.while_loop(lambda step, _: step < n_steps, body, (start, x_init), **loop)
            return tf.stop_gradient(x), None

        def body_with_stats(step, x, grad, energies_start, energies_end):
            x_next, energies, grad = step_fn(step, x)
            energies = tf.cast(energies, tf.float32)
            energies_start = tf.where(tf.equal(step, 0), energies, energies_start)
            return step + 1, x_next, grad, energies_start, energies

        batch_energies = tf.zeros(tf.shape(x_init)[:1], tf.float32)
        _, x, grad, energies_start, energies_end = tf.while_loop(
            lambda step, *_: step < n_steps,
            body_with_stats,
            (start, x_init, tf.zeros_like(x_init), batch_energies, batch_energies),
            shape_invariants=(start.shape, x_init.shape, x_init.shape, tf.TensorShape([None]), tf.TensorShape([None])),
            **loop,
        )
        return tf.stop_gradient(x), (grad, energies_start, energies_end)

    def _energy_and_grad(self, energy_fn, x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            energies = call_energy(energy_fn, x, y, self.energy_training, self.freeze_bn_stats)
            if self.energy_reduction == "sum":
                total = tf.reduce_sum(energies)
            else:
                total = tf.reduce_mean(energies)
        grad = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if grad.dtype != x.dtype:
            grad = tf.cast(grad, x.dtype)
        return energies, grad

    def get_config(self) -> dict[str, Any]:
        return {
            "n_steps": self.n_steps,
            "step_size": self.step_size,
            "noise_std": self.noise_std,
            **self._chain_settings_config(),
            "jit_compile": self.jit_compile,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SGLDSampler:
        return cls(**config)
