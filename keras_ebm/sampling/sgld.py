"""`SGLDSampler`: stochastic gradient Langevin dynamics that descends an energy function."""

import contextlib

import keras
import tensorflow as tf

from keras_ebm.state import discard_updates

from keras_ebm import distribute

_REDUCTIONS = ("sum", "mean")


class SGLDSampler:
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

    Call args:
        energy_fn: callable `energy_fn(x, y, training=...)` returning per-sample energies
            `[batch]` (lower = more probable).
        x_init: float tensor `[batch, height, width, channels]` (any shape with a leading batch
            axis), the chain starts.
        y: optional labels `[batch]` forwarded to `energy_fn` (class-conditional chains).
        n_steps: optional int or scalar int tensor overriding the constructor's `n_steps`.

    Returns:
        The final samples, same shape and dtype as `x_init`, with the gradient stopped.
        `sample_with_stats` also returns a dict of scalar diagnostics.

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

    def __init__(
        self,
        n_steps=20,
        step_size=1.0,
        noise_std=0.01,
        grad_clip=None,
        x_clip=None,
        energy_reduction="sum",
        energy_training=False,
        freeze_bn_stats=False,
        seed=None,
    ):
        if int(n_steps) < 0:
            raise ValueError(
                f"`n_steps` must be a non-negative integer. Received: n_steps={n_steps}"
            )
        if float(step_size) < 0:
            raise ValueError(
                f"`step_size` must be non-negative. Received: step_size={step_size}"
            )
        if float(noise_std) < 0:
            raise ValueError(
                f"`noise_std` must be non-negative. Received: noise_std={noise_std}"
            )
        if grad_clip is not None and not float(grad_clip) > 0:
            raise ValueError(
                "`grad_clip` must be a positive float or None (no clamp). "
                f"Received: grad_clip={grad_clip}"
            )
        if x_clip is not None:
            if len(x_clip) != 2 or not float(x_clip[0]) < float(x_clip[1]):
                raise ValueError(
                    "`x_clip` must be a (lo, hi) pair with lo < hi, or None (no clamp). "
                    f"Received: x_clip={x_clip}"
                )
            x_clip = (float(x_clip[0]), float(x_clip[1]))
        if energy_reduction not in _REDUCTIONS:
            raise ValueError(
                f"`energy_reduction` must be one of {_REDUCTIONS}. "
                f"Received: energy_reduction={energy_reduction}"
            )
        self.n_steps = int(n_steps)
        self.step_size = float(step_size)
        self.noise_std = float(noise_std)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.x_clip = x_clip
        self.energy_reduction = energy_reduction
        self.energy_training = bool(energy_training)
        self.freeze_bn_stats = bool(freeze_bn_stats)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def __call__(self, energy_fn, x_init, y=None, n_steps=None):
        x, _ = self.sample_with_stats(energy_fn, x_init, y=y, n_steps=n_steps)
        return x

    @contextlib.contextmanager
    def frozen(self):
        """Within this context the chains change no variable of the energy function: BatchNorm
        moving statistics and spectral-norm power-iteration vectors updated by a train-mode
        forward pass are discarded (as `freeze_bn_stats=True`). Generation from a trained model
        uses it: drawing samples must not alter the model it evaluates.
        """
        previous = self.freeze_bn_stats
        self.freeze_bn_stats = True
        try:
            yield self
        finally:
            self.freeze_bn_stats = previous

    def sample_with_stats(self, energy_fn, x_init, y=None, n_steps=None):
        """Run the chains and also return diagnostics.

        Returns:
            `(x, stats)`: `x` as from `__call__`; `stats` a dict of float32 scalars:
            `grad_norm`, the mean over samples of the L2 norm of the gradient of the reduced
            energy (the one the step uses, before the clamp) at the last step; `energy_start`, the mean per-sample energy of `x_init`;
            `energy_end`, the mean per-sample energy at the input of the last step (no extra
            forward pass is spent on the final samples). All three are 0 when `n_steps` is 0.
        """
        x_init = tf.stop_gradient(tf.convert_to_tensor(x_init))
        if not x_init.dtype.is_floating:
            raise ValueError(
                "`x_init` must be a float tensor (images in the pixel range). "
                f"Received: x_init.dtype={x_init.dtype.name}"
            )
        n_steps = self.n_steps if n_steps is None else n_steps
        n_steps = tf.cast(n_steps, tf.int32)
        # Drawn once per call and folded with the step index: one seed-generator advance per
        # call, distinct noise per step and (through replica_seed) per replica.
        seed = distribute.replica_seed(self.seed_generator)
        zero = tf.constant(0.0, tf.float32)

        def body(step, x, grad_norm, energy_start, energy_end):
            energies, grad = self._energy_and_grad(energy_fn, x, y)
            energy_mean = tf.reduce_mean(tf.cast(energies, tf.float32))
            grad_norm = tf.reduce_mean(_per_sample_norm(grad))
            if self.grad_clip is not None:
                grad = tf.clip_by_value(grad, -self.grad_clip, self.grad_clip)
            x = x - tf.cast(self.step_size, x.dtype) * grad
            if self.noise_std > 0:
                noise = tf.random.stateless_normal(
                    tf.shape(x),
                    seed=tf.random.experimental.stateless_fold_in(seed, step),
                    dtype=x.dtype,
                )
                x = x + tf.cast(self.noise_std, x.dtype) * noise
            if self.x_clip is not None:
                x = tf.clip_by_value(x, self.x_clip[0], self.x_clip[1])
            energy_start = tf.where(tf.equal(step, 0), energy_mean, energy_start)
            return step + 1, x, grad_norm, energy_start, energy_mean

        _, x, grad_norm, energy_start, energy_end = tf.while_loop(
            lambda step, *_: step < n_steps,
            body,
            (tf.constant(0, tf.int32), x_init, zero, zero, zero),
            # The steps form a chain; running one at a time also keeps stateful energy
            # functions (BatchNorm moving statistics) in step order.
            parallel_iterations=1,
        )
        stats = {
            "grad_norm": grad_norm,
            "energy_start": energy_start,
            "energy_end": energy_end,
        }
        return tf.stop_gradient(x), stats

    def _energy_and_grad(self, energy_fn, x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            if self.freeze_bn_stats:
                with discard_updates():
                    energies = energy_fn(x, y, training=self.energy_training)
            else:
                energies = energy_fn(x, y, training=self.energy_training)
            energies = tf.convert_to_tensor(energies)
            if energies.shape.rank is not None and energies.shape.rank != 1:
                raise ValueError(
                    "`energy_fn` must return one energy per sample, shape [batch]. "
                    f"Received: energies.shape={energies.shape}"
                )
            if self.energy_reduction == "sum":
                total = tf.reduce_sum(energies)
            else:
                total = tf.reduce_mean(energies)
        grad = tape.gradient(
            total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return energies, tf.cast(grad, x.dtype)

    def get_config(self):
        return {
            "n_steps": self.n_steps,
            "step_size": self.step_size,
            "noise_std": self.noise_std,
            "grad_clip": self.grad_clip,
            "x_clip": None if self.x_clip is None else list(self.x_clip),
            "energy_reduction": self.energy_reduction,
            "energy_training": self.energy_training,
            "freeze_bn_stats": self.freeze_bn_stats,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _per_sample_norm(t):
    t = tf.cast(t, tf.float32)
    flat = tf.reshape(t, [tf.shape(t)[0], -1])
    return tf.norm(flat, axis=-1)
