"""Annealed importance sampling (AIS, Neal 2001) of an energy-based model's log partition function
log Z = log ∫ exp(-E(x)) dx, and the test log-likelihood log p(x) = -E(x) - log Z it gives.

The chains start from a tractable, normalised base q (uniform on the pixel box, the replay buffer's
initialiser, or a Gaussian fitted to data) and follow the geometric path
    log f_k(x) = (1 - β_k) log q(x) + β_k (-E(x)),   0 = β_0 < β_1 < ... < β_K = 1,
with MALA or HMC transitions (`keras_ebm.sampling.MALASampler` / `HMCSampler`, i.e. the same
`tfp.mcmc` kernels the trainers can sample with) leaving each f_k invariant. The log importance
weight of a chain is sum_k [log f_k(x_{k-1}) - log f_{k-1}(x_{k-1})]; exp(log w) is an unbiased
estimate of Z (q is normalised), so log Z ≈ log mean_i w_i. Its standard error over chains is the
delta method's sd(w) / (mean(w) √N).

Caveats, stated with every number (`variance_note` of the result):
* log mean w is a stochastic *lower* bound: E[log Ẑ] ≤ log Z (Jensen), the gap shrinking with more
  temperatures and chains (Grosse et al., 2015; Wu et al., 2017).
* The standard error is computed from the weights themselves; with heavy-tailed weights (a low
  effective sample size, `ess`) it underestimates the true error, so report `ess` with it.
* Step sizes: with `adapt_step_size` a pilot run (its own chains) adapts the step size along the
  path and the estimating run uses that fixed schedule, so the transitions do not depend on the
  chains whose weights they produce.
* Image models: exp(-E) of a classifier is usually not integrable over R^d (its logsumexp can grow
  linearly in x), so the density is taken on the pixel box (`box`, the `pixel_range`): the base is
  uniform or a truncated Gaussian on it and proposals leaving it are rejected.
* Bits per dimension of discrete (8-bit) images: p(x) is a density on the continuous box. With
  `dequantize=True` each test image gets uniform noise of one quantisation bin before scoring
  (Theis et al., 2016), and -log p is converted to the 0..256 scale (+ d log(256 / (hi - lo))):
  then bits/dim is an upper bound (in expectation over the noise) of the discrete model's
  -log2 P(x) / d, comparable with other density models' bits/dim. Without dequantisation the
  number is the density at the bin corners, which is not a likelihood of the discrete images.

Reference:
    - [Neal, 2001, Annealed importance sampling](https://arxiv.org/abs/physics/9803008)
    - [Salakhutdinov and Murray, 2008](https://www.cs.toronto.edu/~rsalakhu/papers/dbn_ais.pdf)
    - [Grosse, Maddison and Salakhutdinov, 2013](https://arxiv.org/abs/1311.1159) (annealing paths)
    - [Wu et al., 2017, On the quantitative analysis of decoder-based models](https://arxiv.org/abs/1611.04273)
    - [Theis, van den Oord and Bethge, 2016](https://arxiv.org/abs/1511.01844) (dequantisation)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_ebm.sampling.mcmc import MALASampler, MCMCSampler, _innermost

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from tensorflow.types.experimental import TensorLike

SCHEDULES = ("sigmoid", "linear")
VARIANCE_NOTE = (
    "log Z is log-mean-exp of the AIS weights over chains: a stochastic lower bound (E[log Z_hat] <= "
    "log Z); its standard error (delta method, sd(w) / (mean(w) sqrt(N))) comes from the same weights "
    "and understates the error when the effective sample size is low. The test log-likelihood carries "
    "the same log Z error for every image."
)


class UniformBase:
    """U(lo, hi)^d: the replay buffer's default initialiser; log q = -d log(hi - lo) on the box."""

    def __init__(self, box: tuple[float, float] = (-1.0, 1.0)) -> None:
        self.box = (float(box[0]), float(box[1]))
        if not self.box[0] < self.box[1]:
            raise ValueError(f"`box` must be (lo, hi) with lo < hi. Received: box={box}")

    def log_prob(self, x: tf.Tensor) -> tf.Tensor:
        d = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), x.dtype)
        return tf.fill(tf.shape(x)[:1], -d * math.log(self.box[1] - self.box[0]))

    def sample(self, shape: Sequence[int], seed: tf.Tensor) -> tf.Tensor:
        return tf.random.stateless_uniform(shape, seed, minval=self.box[0], maxval=self.box[1])


class GaussianBase:
    """A diagonal Gaussian N(mean, std^2) per pixel, truncated to `box` when given (then its log
    density includes the truncation's normaliser). `GaussianBase.fit(x, box)` fits it to data."""

    def __init__(self, mean: TensorLike, std: TensorLike, box: tuple[float, float] | None = None) -> None:
        self.mean = tf.constant(np.asarray(mean, np.float32))
        self.std = tf.constant(np.asarray(std, np.float32))
        self.box = None if box is None else (float(box[0]), float(box[1]))
        if self.box is None:
            self._dist = tfp.distributions.Normal(self.mean, self.std)
        else:
            self._dist = tfp.distributions.TruncatedNormal(self.mean, self.std, self.box[0], self.box[1])

    @classmethod
    def fit(cls, x: np.ndarray, box: tuple[float, float] | None = None, min_std: float = 0.05) -> GaussianBase:
        """Per-pixel mean and standard deviation (at least `min_std`) of images `x` `[N, ...]`."""
        x = np.asarray(x, np.float64)
        return cls(x.mean(0), np.maximum(x.std(0), min_std), box=box)

    def log_prob(self, x: tf.Tensor) -> tf.Tensor:
        lp = self._dist.log_prob(x)
        return tf.reduce_sum(tf.reshape(lp, [tf.shape(x)[0], -1]), axis=-1)

    def sample(self, shape: Sequence[int], seed: tf.Tensor) -> tf.Tensor:
        return self._dist.sample(shape[:1], seed=tf.cast(seed, tf.int32))


def annealing_schedule(num_temperatures: int, schedule: str = "sigmoid", sharpness: float = 4.0) -> np.ndarray:
    """β_0 = 0 < ... < β_K = 1 (K = `num_temperatures`): "linear", or "sigmoid" (denser at both
    ends, Grosse et al., 2013; Wu et al., 2017) with the given sharpness."""
    k = int(num_temperatures)
    if k < 1:
        raise ValueError(f"`num_temperatures` must be at least 1. Received: num_temperatures={num_temperatures}")
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}. Received: schedule={schedule!r}")
    t = np.linspace(0.0, 1.0, k + 1)
    if schedule == "linear":
        return t
    s = 1.0 / (1.0 + np.exp(-sharpness * (2.0 * t - 1.0)))
    return (s - s[0]) / (s[-1] - s[0])


def ais_log_partition(
    energy_fn: Callable[[tf.Tensor], tf.Tensor],
    base: UniformBase | GaussianBase,
    event_shape: Sequence[int],
    num_chains: int = 64,
    num_temperatures: int = 200,
    sampler: MCMCSampler | None = None,
    steps_per_temperature: int = 1,
    schedule: str = "sigmoid",
    adapt_step_size: bool = True,
    pilot_chains: int | None = None,
    seed: int = 0,
    return_samples: bool = False,
) -> dict[str, Any]:
    """Estimate log Z = log ∫ exp(-E(x)) dx by AIS from `base` (see the module docstring).

    Args:
        energy_fn: `energy_fn(x)` -> energies `[batch]` (inference mode; lower = more probable).
        base: `UniformBase` or `GaussianBase` (normalised, with `log_prob` and `sample`). Its `box`
            (if any) is also the support of exp(-E).
        event_shape: the shape of one x, e.g. `(32, 32, 3)`.
        num_chains: AIS chains (the standard error shrinks as 1/√num_chains).
        num_temperatures: K, intermediate distributions (the bias shrinks as K grows).
        sampler: a `MALASampler` (default `MALASampler(step_size=0.01)`) or `HMCSampler`: its
            kernel, initial step size, target acceptance and adaptation; `n_steps` is ignored.
        steps_per_temperature: transitions at each β.
        schedule: "sigmoid" or "linear" (`annealing_schedule`).
        adapt_step_size: run a pilot anneal (`pilot_chains`, default min(num_chains, 32)) that adapts
            the step size along the path; the estimating run uses its schedule of (geometric-mean)
            step sizes. False: the sampler's step size throughout.
        seed: int seed.
        return_samples: also return the final states (approximate samples of exp(-E)/Z).

    Returns:
        dict: `log_z`, `log_z_stderr`, `ess` (effective sample size of the weights), `log_weights`
        (numpy `[num_chains]`), `num_chains`, `num_temperatures`, `steps_per_temperature`,
        `gradient_evaluations` (per chain), `mean_accept_rate`, `step_sizes` (per temperature),
        `variance_note`; with `return_samples`, `samples`.
    """
    sampler = sampler if sampler is not None else MALASampler(step_size=0.01)
    if not isinstance(sampler, MCMCSampler):
        raise ValueError(
            "`sampler` must be a MALASampler or HMCSampler (AIS needs Metropolis-corrected "
            f"transitions). Received: {type(sampler).__name__}"
        )
    if int(num_chains) < 2:
        raise ValueError(f"`num_chains` must be at least 2 (for a standard error). Received: {num_chains}")
    if int(steps_per_temperature) < 1:
        raise ValueError(f"`steps_per_temperature` must be positive. Received: {steps_per_temperature}")
    betas = tf.constant(annealing_schedule(num_temperatures, schedule), tf.float32)
    event_shape = tuple(int(d) for d in event_shape)
    steps = int(steps_per_temperature)
    box = getattr(base, "box", None)
    initial = float(sampler.initial_step_size)
    seed = tf.constant([int(seed), 0], tf.int64)
    fold = tf.random.experimental.stateless_fold_in

    def run(n, step_sizes, adapt, run_seed):
        return _anneal(energy_fn, base, box, sampler, betas, event_shape, n, steps, step_sizes, adapt, run_seed)

    if adapt_step_size:
        pilot = int(pilot_chains or min(int(num_chains), 32))
        _, _, pilot_steps, _, _ = run(pilot, tf.fill([int(num_temperatures)], initial), True, fold(seed, 1))
        step_sizes = pilot_steps
    else:
        step_sizes = tf.fill([int(num_temperatures)], initial)
    log_w, x, used_steps, accept, _ = run(int(num_chains), step_sizes, False, fold(seed, 2))
    log_w = log_w.numpy().astype(np.float64)
    log_z, stderr, ess = log_mean_exp_with_stderr(log_w)
    result = {
        "log_z": log_z,
        "log_z_stderr": stderr,
        "ess": ess,
        "log_weights": log_w,
        "num_chains": int(num_chains),
        "num_temperatures": int(num_temperatures),
        "steps_per_temperature": steps,
        "schedule": schedule,
        "sampler": type(sampler).__name__,
        "gradient_evaluations": int(num_temperatures) * (1 + steps * sampler.gradient_evaluations_per_step),
        "mean_accept_rate": float(accept.numpy()),
        "step_sizes": used_steps.numpy().tolist(),
        "variance_note": VARIANCE_NOTE,
    }
    if return_samples:
        result["samples"] = x.numpy()
    return result


def log_mean_exp_with_stderr(log_w: np.ndarray) -> tuple[float, float, float]:
    """`(log mean exp(log_w), its delta-method standard error, effective sample size)`."""
    log_w = np.asarray(log_w, np.float64)
    n = len(log_w)
    top = np.max(log_w)
    w = np.exp(log_w - top)
    mean = w.mean()
    log_z = float(top + np.log(mean))
    stderr = float(w.std(ddof=1) / (mean * np.sqrt(n)))
    ess = float(w.sum() ** 2 / np.sum(w**2))
    return log_z, stderr, ess


def _anneal(energy_fn, base, box, sampler, betas, event_shape, n, steps, step_sizes, adapt, seed):
    """One anneal of `n` chains as a `tf.function`: `(log weights, final states, step size per
    temperature, mean acceptance, None)`."""
    run = tf.function(
        lambda s, sd: _anneal_body(energy_fn, base, sampler, betas, event_shape, n, steps, s, adapt, sd, box=box)
    )
    return run(step_sizes, seed)


def _anneal_body(energy_fn, base, sampler, betas, event_shape, n, steps, step_sizes, adapt, seed, box=None):
    num_k = tf.shape(betas)[0] - 1
    shape = (n,) + event_shape
    rank = len(shape)
    fold = tf.random.experimental.stateless_fold_in
    x0 = tf.cast(base.sample(shape, fold(seed, -1)), tf.float32)

    def log_f(beta):
        def target(x):
            lp = (1.0 - beta) * base.log_prob(x) - beta * tf.cast(energy_fn(x), tf.float32)
            if box is not None:
                axes = tf.range(1, tf.rank(x))
                inside = tf.logical_and(tf.reduce_all(x >= box[0], axis=axes), tf.reduce_all(x <= box[1], axis=axes))
                lp = tf.where(inside, lp, tf.constant(-math.inf, lp.dtype))
            return lp

        return target

    per_chain = tf.ones([n] + [1] * (rank - 1))

    def body(k, x, log_w, lp_prev, chain_step, accept_sum, used):
        beta = betas[k + 1]
        step = chain_step if adapt else per_chain * step_sizes[k]
        kernel = sampler.transition_kernel(log_f(beta), step, adaptation_steps=steps if adapt else None)
        results = kernel.bootstrap_results(x)
        lp_new = _innermost(results, "target_log_prob")
        log_w = log_w + (lp_new - lp_prev)  # log f_k(x_{k-1}) - log f_{k-1}(x_{k-1})

        def transition(i, x, results, accept):
            x, results = kernel.one_step(x, results, seed=fold(fold(seed, k), i))
            log_accept = _innermost(results, "log_accept_ratio")
            a = tf.where(tf.math.is_nan(log_accept), 0.0, tf.exp(tf.minimum(log_accept, 0.0)))
            return i + 1, x, results, accept + a

        _, x, results, accept = tf.while_loop(
            lambda i, *_: i < steps, transition, (tf.constant(0), x, results, tf.zeros([n]))
        )
        if adapt:
            chain_step = tf.reshape(results.new_step_size, tf.shape(chain_step))
        used = used.write(k, tf.exp(tf.reduce_mean(tf.math.log(tf.reshape(step, [-1]) * tf.ones([n])))))
        lp_prev = _innermost(results, "target_log_prob")
        return k + 1, x, log_w, lp_prev, chain_step, accept_sum + tf.reduce_mean(accept) / steps, used

    lp0 = log_f(tf.constant(0.0))(x0)
    chain_step = per_chain * step_sizes[0]
    used = tf.TensorArray(tf.float32, size=num_k)
    _, x, log_w, _, _, accept_sum, used = tf.while_loop(
        lambda k, *_: k < num_k,
        body,
        (tf.constant(0), x0, tf.zeros([n]), lp0, chain_step, tf.constant(0.0), used),
        parallel_iterations=1,
    )
    return log_w, x, used.stack(), accept_sum / tf.cast(num_k, tf.float32), None


def test_log_likelihood(
    energy_fn: Callable[[tf.Tensor], tf.Tensor],
    images: np.ndarray,
    log_z: float,
    log_z_stderr: float = 0.0,
    box: tuple[float, float] = (-1.0, 1.0),
    dequantize: bool = True,
    levels: int = 256,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean test log-likelihood log p(x) = -E(x) - log Z (see the module docstring).

    Args:
        energy_fn: `energy_fn(x)` -> energies `[batch]` of float images in `box`.
        images: uint8 images `[N, H, W, C]` (or float images already in `box`, then not dequantised).
        log_z, log_z_stderr: from `ais_log_partition`.
        box: the model's pixel range.
        dequantize: uint8 value k becomes lo + (k + u) (hi - lo) / levels, u ~ U(0, 1) (uniform
            dequantisation); False maps k to lo + k (hi - lo) / (levels - 1), the training images.

    Returns:
        dict: `log_likelihood` (nats per image, mean over images), `log_likelihood_stderr_images`
        (its standard error over images), `log_z_stderr` (shared by every image), `bits_per_dim`
        (-log2 of the density on the 0..`levels` scale per dimension), `num_examples`, `dequantized`.
    """
    images = np.asarray(images)
    lo, hi = float(box[0]), float(box[1])
    if images.dtype == np.uint8:
        k = images.astype(np.float32)
        if dequantize:
            u = np.random.RandomState(seed).uniform(0.0, 1.0, images.shape).astype(np.float32)
            x = lo + (k + u) * (hi - lo) / levels
        else:
            x = lo + k * (hi - lo) / (levels - 1)
    else:
        x, dequantize = images.astype(np.float32), False
    d = int(np.prod(x.shape[1:]))
    energies = np.concatenate(
        [np.asarray(energy_fn(tf.constant(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)]
    )
    log_p = -energies.astype(np.float64) - log_z
    # The density on the 0..levels scale: p(x) ((hi - lo) / levels)^d.
    log_p_levels = log_p + d * math.log((hi - lo) / levels)
    return {
        "log_likelihood": float(log_p.mean()),
        "log_likelihood_stderr_images": float(log_p.std(ddof=1) / np.sqrt(len(log_p))) if len(log_p) > 1 else 0.0,
        "log_z_stderr": float(log_z_stderr),
        "bits_per_dim": float(-log_p_levels.mean() / (d * math.log(2.0))),
        "num_examples": int(len(x)),
        "dequantized": bool(dequantize),
    }
