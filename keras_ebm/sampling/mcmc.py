"""`MALASampler` and `HMCSampler`: Metropolis-corrected samplers of exp(-E(x) / T) on `tfp.mcmc`.

SGLD (`keras_ebm.sampling.SGLDSampler`) drops the Metropolis-Hastings correction and uses a fixed
step, so its chains sample a biased distribution (and, at the reference settings, one of a very low
effective temperature). These samplers keep the correction:

* `MALASampler`: the Metropolis-adjusted Langevin algorithm (Roberts and Tweedie, 1996), one
  gradient evaluation per step, `tfp.mcmc.MetropolisAdjustedLangevinAlgorithm`.
* `HMCSampler`: Hamiltonian Monte Carlo (Duane et al., 1987; Neal, 2011) with `num_leapfrog_steps`
  leapfrog steps per transition (that many gradient evaluations),
  `tfp.mcmc.HamiltonianMonteCarlo`.

Both adapt one step size per chain toward a target acceptance rate
(`tfp.mcmc.SimpleStepSizeAdaptation`, or `tfp.mcmc.DualAveragingStepSizeAdaptation`), and share the
call interface, BatchNorm handling, clamps, seeds and reduction of `SGLDSampler`, so a trainer or
gin config swaps one for the other (`JEM.sampler = @MALASampler()`).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow.python.ops import control_flow_v2_func_graphs
from tensorflow_probability.python.internal import unnest

from keras_ebm.sampling.chains import ChainSampler, call_energy, chain_stats, check_clamps

_ADAPTATIONS = ("simple", "dual_averaging", None)


class MCMCSampler(ChainSampler, keras.layers.Layer):
    """Base class of `MALASampler` and `HMCSampler`: a Metropolis-Hastings chain on
    pi(x) ∝ exp(-E(x) / T) per sample, with per-chain step-size adaptation. Use a subclass.

    Call interface (the same as `SGLDSampler`): `sampler(energy_fn, x_init, y=None, n_steps=None)`
    returns the final states; `sample_with_stats` also returns diagnostics; `frozen()` is a context
    in which the chains change no variable (of the energy function or of the sampler).

    Target. The log density of chain i is `-E(x_i) / (temperature * s)` with `s` = 1
    (`energy_reduction="sum"`) or the per-replica batch size (`"mean"`, what GMMC's SGLD step
    descends). `energy_fn(x, y, training=energy_training)` gives the per-sample energies
    `[batch]`. The correction is exact (the chain leaves pi invariant at a fixed step size) when the
    energy of a sample depends on that sample only: a network in inference mode
    (`energy_training=False`) or without BatchNorm. With BatchNorm in train mode
    (`energy_training=True`, JEM++/SADA-JEM) a sample's energy depends on the rest of the batch
    through the batch statistics, so the per-chain acceptance test is approximate.

    Temperature. SGLD with step α and noise σ approximates Langevin dynamics at temperature
    T = σ² / (2α): JEM's settings (α = 1, σ = 0.01) sample exp(-E / 5e-5), not exp(-E). Set
    `temperature` to compare at the same target; `temperature=1` is the model's own density.

    Clamps. `grad_clip` clamps the energy gradient elementwise (JEM++'s proximal SGLD); the clamped
    gradient is the drift of MALA's proposal *and* enters its proposal density, and it is HMC's
    leapfrog force (a volume-preserving, reversible map whatever the force), so both stay exact
    samplers of pi. `x_clip = (lo, hi)` restricts pi to the box: the chain starts are clamped
    into it and a proposal leaving it is rejected (clamping proposals as SGLD does would bias
    the chain).

    Step sizes. Every chain has its own step size (`[batch]`), adapted during the first
    `num_adaptation_steps` steps of each call (all of them by default) toward
    `target_accept_prob`: multiplied by `1 + adaptation_rate` after an acceptance probability
    above the target, divided by it otherwise (`tfp.mcmc.SimpleStepSizeAdaptation`), or by dual
    averaging (Hoffman and Gelman, 2014; `adaptation="dual_averaging"`). Each call starts every
    chain at the sampler's step size, a non-trainable variable; with `persist_step_size` (default)
    the call ends by setting it to the geometric mean of the chains' adapted step sizes over all
    replicas. A global value rather than one per replay-buffer slot: the slots are exchangeable
    (drawn at random, re-initialised at random) and the energy they sample changes with every
    optimiser step, so a slot's step size from its last visit (about buffer_size / batch steps
    ago) says little more about its next visit than the pooled value, which is estimated from
    every chain of every step; it also keeps the interface (no buffer indices) and the state
    (one scalar) of `SGLDSampler`. The variable is saved with the trainer (checkpoints, `.keras`).
    Adaptation changes the kernel from step to step, so the chain is exactly pi-invariant only
    after it stops (`num_adaptation_steps` < `n_steps`, or `adaptation=None`).

    Run-time changes. `n_steps` and `step_size` are variables that the compiled step reads: setting
    `sampler.n_steps = 40` or `sampler.step_size = 1e-3` (the divergence guard's remedy does the
    former) reaches a `train_step` that is already traced.

    Diagnostics: `sample_with_stats` returns `grad_norm`, `energy_start`, `energy_end` (as
    `SGLDSampler`; `energy_end` is the energy of the final states, which the chain has anyway),
    `accept_rate` (mean over chains of each chain's mean acceptance probability
    min(1, exp(log_accept_ratio)) over the steps), `accept_rate_min`, `step_size` (mean of the
    chains' final step sizes), and per chain `accept_rate_per_chain` and `step_size_per_chain`
    `[batch]`. The sampler also keeps the last call's mean and minimum acceptance (over every
    replica's chains) in variables, which trainers report as `mcmc_accept_rate`, `mcmc_accept_min`
    and `mcmc_step_size` (`log_names`, `logs()`).

    Cost: one gradient evaluation (forward and backward pass) to start the chain, then one per
    MALA step or `num_leapfrog_steps` per HMC transition (`gradient_evaluations`).

    Distribution: build the sampler (its variables) under `strategy.scope()`, as the trainer.
    Inside a replica the seed folds in the replica id (`keras_ebm.distribute.replica_seed`), and the
    step-size variable and diagnostics are reduced over replicas (one all-reduce per call), so every
    replica keeps the same value, the one a single device with the global batch computes. Called
    inside a `tf.while_loop` or `tf.cond` of the replica function, where tf.distribute refuses
    collectives, each replica keeps the values of its own chains (the variables are on-read: a
    checkpoint saves their mean).

    Args:
        n_steps: int, MCMC transitions per call (overridable per call).
        step_size: float, the initial step size ε (MALA: x' = x + (ε/2) ∇log pi(x) + √ε ξ;
            HMC: the leapfrog step).
        target_accept_prob: the acceptance probability the adaptation aims at.
        adaptation: "simple" (default), "dual_averaging" or None (fixed step size).
        adaptation_rate: the multiplicative step of "simple" adaptation.
        num_adaptation_steps: steps of each call that adapt; None adapts during every step.
        persist_step_size: carry the adapted step size over to the next call (see above).
        temperature: T of pi ∝ exp(-E / T).
        grad_clip, x_clip, energy_reduction, energy_training, freeze_bn_stats, seed: as
            `SGLDSampler` (see above for what the clamps mean here).

    Reference:
        - [Roberts and Tweedie, 1996](https://doi.org/10.2307/3318418) (MALA)
        - [Neal, 2011, MCMC using Hamiltonian dynamics](https://arxiv.org/abs/1206.1901)
        - [Hoffman and Gelman, 2014](https://jmlr.org/papers/v15/hoffman14a.html) (dual averaging)
        - [TensorFlow Probability, tfp.mcmc](https://www.tensorflow.org/probability/api_docs/python/tfp/mcmc)
    """

    log_names = ("mcmc_accept_rate", "mcmc_accept_min", "mcmc_step_size")
    default_target_accept_prob = 0.65

    def __init__(
        self,
        n_steps: int = 20,
        step_size: float = 0.01,
        target_accept_prob: float | None = None,
        adaptation: str | None = "simple",
        adaptation_rate: float = 0.03,
        num_adaptation_steps: int | None = None,
        persist_step_size: bool = True,
        temperature: float = 1.0,
        grad_clip: float | None = None,
        x_clip: tuple[float, float] | None = None,
        energy_reduction: str = "sum",
        energy_training: bool = False,
        freeze_bn_stats: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if target_accept_prob is None:
            target_accept_prob = self.default_target_accept_prob
        _check_n_steps(n_steps)
        if not float(step_size) > 0:
            raise ValueError(f"`step_size` must be positive. Received: step_size={step_size}")
        if not 0.0 < float(target_accept_prob) < 1.0:
            raise ValueError(
                f"`target_accept_prob` must lie in (0, 1). Received: target_accept_prob={target_accept_prob}"
            )
        if adaptation not in _ADAPTATIONS:
            raise ValueError(f"`adaptation` must be one of {_ADAPTATIONS}. Received: adaptation={adaptation!r}")
        if not float(adaptation_rate) > 0:
            raise ValueError(f"`adaptation_rate` must be positive. Received: adaptation_rate={adaptation_rate}")
        if num_adaptation_steps is not None and int(num_adaptation_steps) < 0:
            raise ValueError(
                "`num_adaptation_steps` must be a non-negative integer or None (every step). "
                f"Received: num_adaptation_steps={num_adaptation_steps}"
            )
        if not float(temperature) > 0:
            raise ValueError(f"`temperature` must be positive. Received: temperature={temperature}")
        grad_clip, x_clip = check_clamps(grad_clip, x_clip, energy_reduction)
        self.initial_step_size = float(step_size)
        self.target_accept_prob = float(target_accept_prob)
        self.adaptation = adaptation
        self.adaptation_rate = float(adaptation_rate)
        self.num_adaptation_steps = None if num_adaptation_steps is None else int(num_adaptation_steps)
        self.persist_step_size = bool(persist_step_size)
        self.temperature = float(temperature)
        self._init_chain_settings(grad_clip, x_clip, energy_reduction, energy_training, freeze_bn_stats, seed)

        # Written by `train_step` (the cross-replica means): replica-local copies (on-read) that
        # every replica sets to the same reduced value, so no merge_call is needed.
        def on_read(value, name, dtype="float32"):
            return keras.Variable(
                value,
                dtype=dtype,
                trainable=False,
                name=name,
                autocast=False,
                synchronization="on_read",
                aggregation="mean",
            )

        self.n_steps_variable = keras.Variable(int(n_steps), dtype="int32", trainable=False, name="n_steps")
        self.log_step_size = on_read(math.log(float(step_size)), "log_step_size")
        self.last_accept_rate = on_read(0.0, "accept_rate")
        self.last_accept_min = on_read(0.0, "accept_min")
        self._frozen = False
        self.built = True

    # ------------------------------------------------------------------ run-time settings
    @property
    def n_steps(self) -> int | tf.Tensor:
        """Transitions per call: a Python int eagerly, the variable's value inside a trace."""
        if tf.executing_eagerly():
            return int(self.n_steps_variable.numpy())
        return self.n_steps_variable.value

    @n_steps.setter
    def n_steps(self, value: int) -> None:
        _check_n_steps(value)
        self.n_steps_variable.assign(int(value))

    @property
    def step_size(self) -> float | tf.Tensor:
        """The step size each call starts its chains at (adapted across calls with
        `persist_step_size`): a float eagerly, a tensor inside a trace."""
        if tf.executing_eagerly():
            return float(math.exp(float(self.log_step_size.numpy())))
        return tf.exp(self.log_step_size.value)

    @step_size.setter
    def step_size(self, value: float) -> None:
        if not float(value) > 0:
            raise ValueError(f"`step_size` must be positive. Received: step_size={value}")
        self.log_step_size.assign(math.log(float(value)))

    @property
    def gradient_evaluations_per_step(self) -> int:
        """Forward-and-backward passes of the energy per transition (MALA 1, HMC its leapfrogs)."""
        return 1

    def gradient_evaluations(self, n_steps: int | None = None) -> int:
        """Passes per call of `n_steps` transitions: one to start the chain plus the transitions'."""
        n_steps = self.n_steps if n_steps is None else int(n_steps)
        return 1 + n_steps * self.gradient_evaluations_per_step if n_steps else 0

    # ------------------------------------------------------------------ interface of SGLDSampler
    # `__call__`, `sample_with_stats` and `frozen()` come from `ChainSampler`. A
    # `keras.layers.Layer` only so that its variables are tracked and saved with the trainer; it is
    # called like `SGLDSampler`, not like a layer. `frozen()` also keeps the sampler's step size and
    # diagnostics.
    _frozen_attributes = ("freeze_bn_stats", "_frozen")

    def logs(self) -> dict[str, tf.Tensor]:
        """The last call's diagnostics as the trainer reports them (read after the step)."""
        return {
            "mcmc_accept_rate": self.last_accept_rate.value,
            "mcmc_accept_min": self.last_accept_min.value,
            "mcmc_step_size": tf.exp(self.log_step_size.value),
        }

    # ------------------------------------------------------------------ the chain
    def _check_start(self, x_init):
        if x_init.shape.rank is not None and x_init.shape.rank < 2:
            raise ValueError(
                "`x_init` must have a leading batch axis and at least one more (one chain per row). "
                f"Received: x_init.shape={x_init.shape}"
            )
        if self.x_clip is not None:  # pi is restricted to the box: start inside it
            x_init = tf.clip_by_value(x_init, self.x_clip[0], self.x_clip[1])
        return x_init

    def _sample(self, energy_fn, x_init, y, n_steps, with_stats):
        """`(x, stats)` with or without `with_stats` (the diagnostics are recorded either way)."""
        x_init, n_steps, seed = self._start(x_init, n_steps)
        step0 = tf.fill(tf.shape(x_init)[:1], tf.exp(tf.cast(self.log_step_size.value, x_init.dtype)))
        if tf.executing_eagerly():
            chain = self._chain_function(energy_fn)
            x, out = chain(x_init, y, seed, n_steps, step0)
        else:
            x, out = self._chain(energy_fn, x_init, y, seed, n_steps, step0)
        accept_sum, step_sizes, grad, energies_start, energies_end = out
        steps = tf.cast(tf.maximum(n_steps, 1), tf.float32)
        accept = tf.where(n_steps > 0, accept_sum / steps, tf.ones_like(accept_sum))
        step_sizes = tf.cast(step_sizes, tf.float32)
        stats = {
            **chain_stats(grad, energies_start, energies_end),
            "accept_rate": tf.reduce_mean(accept),
            "accept_rate_min": tf.reduce_min(accept),
            "step_size": tf.reduce_mean(step_sizes),
            "accept_rate_per_chain": accept,
            "step_size_per_chain": step_sizes,
        }
        if not self._frozen:
            self._record(accept, step_sizes)
        return x, stats

    def _record(self, accept, step_sizes):
        """Set the step-size variable (with `persist_step_size`) and the diagnostics from the chains
        of every replica: the geometric mean of the step sizes, the mean and minimum acceptance."""
        count = tf.cast(tf.shape(accept)[0], tf.float32)
        sums = tf.stack([tf.reduce_sum(tf.math.log(step_sizes)), tf.reduce_sum(accept), count])
        ctx = tf.distribute.get_replica_context()
        low = tf.reduce_min(accept)
        # A collective inside a tf.while_loop / tf.cond body of the replica function is refused by
        # tf.distribute (merge_call); there (GMMC's noise-injected chains call the sampler once per
        # step of a loop) each replica keeps its own chains' values, and a checkpoint saves their mean.
        if ctx is not None and ctx.num_replicas_in_sync > 1 and not _in_control_flow_body():
            sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)
            low = tf.reduce_min(ctx.all_gather(low[None], axis=0))
        count = tf.maximum(sums[2], 1.0)
        if self.persist_step_size:
            self.log_step_size.assign(sums[0] / count)
        self.last_accept_rate.assign(sums[1] / count)
        self.last_accept_min.assign(low)

    def _chain_function(self, energy_fn):
        """The chain as a `tf.function` for eager calls, cached per energy function and per setting
        read while tracing (not inside a `keras.StatelessScope`, whose values the trace captures)."""
        key = (
            energy_fn,
            self.freeze_bn_stats,
            self.energy_training,
            self.temperature,
            self.grad_clip,
            self.x_clip,
            self.energy_reduction,
            self.target_accept_prob,
            self.adaptation,
            self.adaptation_rate,
            self.num_adaptation_steps,
        )

        def run_chain(x, y, seed, n_steps, step0):
            return self._chain(energy_fn, x, y, seed, n_steps, step0)

        return self._cached_chain(key, run_chain)

    def _target_log_prob_fn(self, energy_fn, y, batch_size, dtype):
        """log pi(x) per chain: -E(x) / (T * s), -inf outside `x_clip`, gradient clamped."""
        scale = self.temperature
        if self.energy_reduction == "mean":
            scale = scale * tf.cast(batch_size, dtype)
        scale = tf.cast(scale, dtype)

        def target_log_prob(x):
            x_in = x if self.grad_clip is None else _clamp_gradient(x, self.grad_clip, scale)
            energies = call_energy(energy_fn, x_in, y, self.energy_training, self.freeze_bn_stats)
            log_prob = -tf.cast(energies, dtype) / scale
            if self.x_clip is not None:
                axes = tf.range(1, tf.rank(x))
                inside = tf.logical_and(
                    tf.reduce_all(x >= self.x_clip[0], axis=axes), tf.reduce_all(x <= self.x_clip[1], axis=axes)
                )
                log_prob = tf.where(inside, log_prob, tf.constant(-math.inf, dtype))
            return log_prob

        return target_log_prob, scale

    def _chain(self, energy_fn, x_init, y, seed, n_steps, step0):
        """`n_steps` transitions from `x_init`: `(x, (per-chain sum of acceptance probabilities,
        per-chain final step sizes, log-density gradient of the final states, their energies at the
        start and at the end))`."""
        dtype = x_init.dtype
        batch_size = tf.shape(x_init)[0]
        target_log_prob, scale = self._target_log_prob_fn(energy_fn, y, batch_size, dtype)
        rank = x_init.shape.rank
        step_size = tf.reshape(step0, tf.concat([[-1], tf.ones([rank - 1], tf.int32)], 0))
        step_size.set_shape([None] + [1] * (rank - 1))
        kernel = self._adapted_kernel(target_log_prob, step_size, n_steps)
        results = kernel.bootstrap_results(x_init)
        energies_start = -tf.cast(_innermost(results, "target_log_prob"), tf.float32) * tf.cast(scale, tf.float32)

        def body(step, x, results, accept_sum):
            x, results = kernel.one_step(x, results, seed=tf.random.experimental.stateless_fold_in(seed, step))
            log_accept = tf.cast(_innermost(results, "log_accept_ratio"), tf.float32)
            # NaN (both ends outside the box cannot happen: the start is clamped inside) counts as 0.
            accept = tf.where(tf.math.is_nan(log_accept), 0.0, tf.exp(tf.minimum(log_accept, 0.0)))
            return step + 1, x, results, accept_sum + accept

        # The transitions form a chain; one at a time also keeps stateful energy functions
        # (BatchNorm moving statistics) in step order.
        _, x, results, accept_sum = tf.while_loop(
            lambda step, *_: step < n_steps,
            body,
            (tf.constant(0, tf.int32), x_init, results, tf.zeros([batch_size], tf.float32)),
            parallel_iterations=1,
        )
        final_step = tf.reshape(self._step_size_of(results, step_size), [-1])
        energies_end = -tf.cast(_innermost(results, "target_log_prob"), tf.float32) * tf.cast(scale, tf.float32)
        grad = tf.nest.flatten(_innermost(results, "grads_target_log_prob"))[0]
        out = (accept_sum, final_step, tf.stop_gradient(grad), energies_start, energies_end)
        return tf.stop_gradient(x), out

    def transition_kernel(
        self,
        target_log_prob_fn: Callable[[tf.Tensor], tf.Tensor],
        step_size: float | tf.Tensor,
        adaptation_steps: int | tf.Tensor | None = None,
    ) -> tfp.mcmc.TransitionKernel:
        """The sampler's `tfp.mcmc` kernel on `target_log_prob_fn` (log densities `[batch]`) with
        per-chain `step_size` (broadcastable to the state), wrapped in the sampler's step-size
        adaptation for `adaptation_steps` steps when that is given and `adaptation` is set.
        `keras_ebm.evaluation.ais` anneals with it."""
        if adaptation_steps is None:
            return self._kernel(target_log_prob_fn, step_size)
        return self._adapted_kernel(target_log_prob_fn, step_size, adaptation_steps)

    def _adapted_kernel(self, target_log_prob, step_size, n_steps):
        kernel = self._kernel(target_log_prob, step_size)
        if self.adaptation is None:
            return kernel
        adapt_steps = n_steps if self.num_adaptation_steps is None else tf.minimum(n_steps, self.num_adaptation_steps)
        if self.adaptation == "simple":
            return tfp.mcmc.SimpleStepSizeAdaptation(
                kernel,
                num_adaptation_steps=adapt_steps,
                target_accept_prob=self.target_accept_prob,
                adaptation_rate=self.adaptation_rate,
            )
        return tfp.mcmc.DualAveragingStepSizeAdaptation(
            kernel,
            num_adaptation_steps=adapt_steps,
            target_accept_prob=self.target_accept_prob,
        )

    def _step_size_of(self, results, initial):
        """Each chain's step size after the loop (dual averaging: its averaged iterate once the
        adaptation steps end, Hoffman and Gelman, 2014, Algorithm 5, as tfp returns it)."""
        if self.adaptation is None:
            return initial
        return results.new_step_size

    def _kernel(self, target_log_prob, step_size):
        raise NotImplementedError

    # ------------------------------------------------------------------ serialization
    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            n_steps=int(self.n_steps_variable.numpy()),
            step_size=self.initial_step_size,
            target_accept_prob=self.target_accept_prob,
            adaptation=self.adaptation,
            adaptation_rate=self.adaptation_rate,
            num_adaptation_steps=self.num_adaptation_steps,
            persist_step_size=self.persist_step_size,
            temperature=self.temperature,
            **self._chain_settings_config(),
        )
        return config


@keras.saving.register_keras_serializable(package="keras_ebm")
class MALASampler(MCMCSampler):
    """The Metropolis-adjusted Langevin algorithm on exp(-E(x) / T) (Roberts and Tweedie, 1996),
    on `tfp.mcmc.MetropolisAdjustedLangevinAlgorithm`, with per-chain step-size adaptation.

    Proposal x' = x + (ε/2) ∇log pi(x) + √ε ξ, accepted with probability
    min(1, pi(x') q(x | x') / (pi(x) q(x' | x))): one gradient evaluation per step, as SGLD, whose
    step α = ε / (2T) and noise σ = √ε it corrects. The default target acceptance is 0.574, the
    optimum of Roberts and Rosenthal (1998). See `MCMCSampler` for the arguments and behaviour.

    tfp's MALA caches the proposal drift of the current state, computed with the step size of
    the step that produced it; when the adapted step size changes, that drift is recomputed with
    the new one, so that each step's proposal and its density use the same step size.

    Example:

    ```python
    sampler = MALASampler(n_steps=20, step_size=1e-4, temperature=5e-5, x_clip=(-1, 1))
    x, stats = sampler.sample_with_stats(energy_fn, x_init)   # stats["accept_rate"], ...
    ```
    """

    default_target_accept_prob = 0.574

    def _kernel(self, target_log_prob, step_size):
        return _LangevinStepSizeInResults(target_log_prob, step_size)


@keras.saving.register_keras_serializable(package="keras_ebm")
class HMCSampler(MCMCSampler):
    """Hamiltonian Monte Carlo on exp(-E(x) / T) (Duane et al., 1987; Neal, 2011), on
    `tfp.mcmc.HamiltonianMonteCarlo`, with per-chain step-size adaptation.

    Each transition draws a momentum p ~ N(0, I), runs `num_leapfrog_steps` leapfrog steps of size
    ε on H(x, p) = E(x) / T + |p|² / 2 and accepts the end point with probability
    min(1, exp(-ΔH)): `num_leapfrog_steps` gradient evaluations per transition, so at equal cost
    `n_steps` is SGLD's steps divided by `num_leapfrog_steps`. Default target acceptance 0.65
    (Neal, 2011; Beskos et al., 2013). See `MCMCSampler` for the other arguments.

    Args:
        num_leapfrog_steps: int, leapfrog steps L per transition.
    """

    def __init__(self, n_steps: int = 4, step_size: float = 0.01, num_leapfrog_steps: int = 5, **kwargs: Any) -> None:
        if int(num_leapfrog_steps) < 1:
            raise ValueError(
                f"`num_leapfrog_steps` must be a positive integer. Received: num_leapfrog_steps={num_leapfrog_steps}"
            )
        self.num_leapfrog_steps = int(num_leapfrog_steps)
        super().__init__(n_steps=n_steps, step_size=step_size, **kwargs)

    @property
    def gradient_evaluations_per_step(self) -> int:
        return self.num_leapfrog_steps

    def _kernel(self, target_log_prob, step_size):
        return tfp.mcmc.HamiltonianMonteCarlo(
            target_log_prob,
            step_size=step_size,
            num_leapfrog_steps=self.num_leapfrog_steps,
            store_parameters_in_results=True,  # the adaptation sets the step size in the results
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_leapfrog_steps": self.num_leapfrog_steps}


_LangevinResults = collections.namedtuple("_LangevinResults", ["inner_results", "step_size"])


class _LangevinStepSizeInResults(tfp.mcmc.TransitionKernel):
    """`tfp.mcmc.MetropolisAdjustedLangevinAlgorithm` whose step size lives in the kernel results,
    where `tfp.mcmc.SimpleStepSizeAdaptation` and `DualAveragingStepSizeAdaptation` set it (tfp's
    MALA takes it only from its constructor). Before each step the cached drift of the current state
    is recomputed for the current step size (tfp's `_get_drift`:
    (ε/2) (volatility² ∇log pi + ∇volatility²))."""

    def __init__(self, target_log_prob_fn, step_size):
        self._parameters = dict(target_log_prob_fn=target_log_prob_fn, step_size=step_size)

    @property
    def parameters(self):
        return self._parameters

    @property
    def is_calibrated(self):
        return True

    def _mala(self, step_size):
        return tfp.mcmc.MetropolisAdjustedLangevinAlgorithm(self._parameters["target_log_prob_fn"], step_size=step_size)

    def one_step(self, current_state, previous_kernel_results, seed=None):
        step_size = previous_kernel_results.step_size
        inner = previous_kernel_results.inner_results
        accepted = inner.accepted_results
        volatility = tf.nest.flatten(accepted.volatility)
        drift = [
            0.5 * step_size * (tf.square(v) * g + gv)
            for v, g, gv in zip(volatility, accepted.grads_target_log_prob, accepted.grads_volatility)
        ]
        inner = inner._replace(accepted_results=accepted._replace(diffusion_drift=drift))
        state, inner = self._mala(step_size).one_step(current_state, inner, seed=seed)
        return state, previous_kernel_results._replace(inner_results=inner)

    def bootstrap_results(self, init_state):
        step_size = self._parameters["step_size"]
        return _LangevinResults(self._mala(step_size).bootstrap_results(init_state), step_size)


def _innermost(results, name):
    """A field of the innermost kernel results that has it (accepted results of an MH kernel)."""
    return unnest.get_innermost(results, name)


def _clamp_gradient(x, clip, scale):
    """Identity on x whose gradient (of log pi = -E / scale) is that of -clamp(dE/dx, ±clip) / scale:
    JEM++'s elementwise clamp of the energy gradient, applied to the drift / force."""

    @tf.custom_gradient
    def identity(x):
        def grad(upstream):
            return tf.clip_by_value(upstream * scale, -clip, clip) / scale

        return tf.identity(x), grad

    return identity(x)


def _in_control_flow_body():
    """Whether the code being traced is inside the body of a tf.while_loop or a tf.cond branch."""
    graph = tf.compat.v1.get_default_graph()
    while graph is not None:
        if isinstance(graph, _CONTROL_FLOW_GRAPHS):
            return True
        graph = getattr(graph, "outer_graph", None)
    return False


_CONTROL_FLOW_GRAPHS = (
    control_flow_v2_func_graphs.WhileBodyFuncGraph,
    control_flow_v2_func_graphs.WhileCondFuncGraph,
    control_flow_v2_func_graphs.CondBranchFuncGraph,
)


def _check_n_steps(n_steps):
    if int(n_steps) < 0:
        raise ValueError(f"`n_steps` must be a non-negative integer. Received: n_steps={n_steps}")
