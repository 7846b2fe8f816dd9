"""Divergence: detect the failure JEM-style training has when it starts, and recover from it.

What JEM does at small scale (measured with this library on the official small JEM recipe,
`benchmarks/fidelity_small.py`, and with the official code, which crashes at |loss| > 1e8): the
energy of the SGLD samples runs away from the energy of the data (the energy gap grows by an
order of magnitude within a few dozen steps), the classifier loss rises well above its running
level, and only hundreds of steps later does |loss| pass 1e8. A guard that waits for 1e8 restores a
checkpoint taken after the failure began. `DivergenceMonitor` watches every step for:

| signal | fires when | default |
|---|---|---|
| `non_finite` | any logged value is NaN / Inf | always on |
| `magnitude` | abs(loss) or abs(any energy_*) > `threshold` | 1e8 (JEM / JEM++ code; SADA-JEM 1e5) |
| `energy_gap` | abs(energy_gap) > `max_energy_gap` (at least 2 / energy L2 when a penalty is on) | off (the JEM-family configs set it) |
| `clf_loss_rise` | median clf_loss of the last `rise_window` steps > `clf_rise_factor` x the median of the `baseline_window` steps before them (one outlying step does not fire it) | x2, windows 10 / 100 |

A checkpoint counts as *good* only once `confirm_steps` steps after it passed with no signal;
`run_training` restores the newest good checkpoint, deletes the newer ones (they belong to the
failing branch) and applies the next remedy.

Remedies (JEM issue #4, wgrathwohl/JEM: restart from the last good checkpoint with a new seed, more
SGLD steps, an energy L2 penalty of about 0.1, a lower learning rate). Every recovery restarts
with new random seeds; in addition recovery n applies the n-th remedy of `remedies`, each at most
once and to an absolute value (recovery 3 with the default order runs with energy L2 0.1, twice
the SGLD steps and half the learning rate: nothing is halved again). Default order and why:
1. `energy_l2` (0.1 on the energies of data and samples): it bounds exactly what runs away, costs
   nothing per step, and changes the objective least; a new seed alone tends to repeat a
   systematic failure (the official JEM code diverged at steps 264 and 267 with two seeds).
2. `sgld_steps` (K -> `sgld_steps_factor` x K): better samples, at a cost proportional to K.
3. `lower_lr` (x `lr_factor`, once): slows all learning, so it comes last.
What each recovery changed is checkpointed (`RecoveryState`), so a run resumed in a new process
keeps it, and logged (console, TensorBoard `divergence/recoveries`, `divergence_events.jsonl` with
the signals that fired, their values and the change).
"""  # noqa: E501  (Markdown table rows: a table row cannot wrap)

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from keras_ebm import run_settings

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from keras_ebm.trainers.base import EBMTrainer

REMEDIES = ("energy_l2", "sgld_steps", "lower_lr")


class DivergenceError(RuntimeError):
    """Raised when training diverges; the last good checkpoint is kept."""


class DivergenceGuard:
    """Detect divergence when it starts and recover with the JEM authors' remedies.

    Args:
        max_recoveries: recoveries allowed before `run_training` gives up with `DivergenceError`.
        threshold: abs(loss) / abs(energy) treated as divergence (the official codes' crash
            thresholds: JEM / JEM++ 1e8, SADA-JEM 1e5).
        max_energy_gap: abs(energy_gap) (mean sample energy - mean data energy) treated as the
            onset of divergence; None turns the signal off.
        clf_rise_factor: the classifier loss's rise over its running level treated as divergence;
            None turns the signal off.
        rise_window: steps whose median is the current classifier loss.
        baseline_window: steps (before the rise window) whose median is the running level; the
            signal needs at least half of them.
        confirm_steps: healthy steps after a checkpoint before it counts as good.
        remedies: order of the remedies (from "energy_l2", "sgld_steps", "lower_lr"); recovery n
            applies the n-th (all of them restart with new random seeds).
        energy_l2: the energy L2 coefficient set by the "energy_l2" remedy (trainers with
            `energy_l2`, i.e. the JEM family).
        sgld_steps_factor: K is multiplied by this (once) by the "sgld_steps" remedy.
        lr_factor: learning rate (and schedule) multiplied by this (once) by "lower_lr".
        reseed: draw new random seeds at every recovery.
    """

    def __init__(
        self,
        max_recoveries: int = 4,
        threshold: float = 1e8,
        max_energy_gap: float | None = None,
        clf_rise_factor: float | None = 2.0,
        rise_window: int = 10,
        baseline_window: int = 100,
        confirm_steps: int = 100,
        remedies: Sequence[str] = REMEDIES,
        energy_l2: float = 0.1,
        sgld_steps_factor: float = 2.0,
        lr_factor: float = 0.5,
        reseed: bool = True,
    ) -> None:
        if max_recoveries < 0:
            raise ValueError(f"`max_recoveries` must be >= 0. Received: max_recoveries={max_recoveries}")
        unknown = [r for r in remedies if r not in REMEDIES]
        if unknown:
            raise ValueError(f"Unknown remedies {unknown}: choose from {REMEDIES}. Received: remedies={remedies}")
        if clf_rise_factor is not None and not clf_rise_factor > 1:
            raise ValueError(f"`clf_rise_factor` must be > 1 or None. Received: clf_rise_factor={clf_rise_factor}")
        self.max_recoveries = int(max_recoveries)
        self.threshold = float(threshold)
        self.max_energy_gap = None if max_energy_gap is None else float(max_energy_gap)
        self.clf_rise_factor = None if clf_rise_factor is None else float(clf_rise_factor)
        self.rise_window = int(rise_window)
        self.baseline_window = int(baseline_window)
        self.confirm_steps = int(confirm_steps)
        self.remedies = tuple(remedies)
        self.energy_l2 = float(energy_l2)
        self.sgld_steps_factor = float(sgld_steps_factor)
        self.lr_factor = float(lr_factor)
        self.reseed = bool(reseed)

    def exploded(self, logs: Mapping[str, Any]) -> bool:
        """abs(loss) or abs(energy) above `threshold` (the official codes' crash test)."""
        watched = [v for k, v in logs.items() if k == "loss" or k.startswith("energy")]
        return any(np.any(np.abs(v) > self.threshold) for v in watched)

    def monitor(self, model: EBMTrainer | None = None) -> DivergenceMonitor:
        """A fresh `DivergenceMonitor` with this guard's detectors (for `model`, whose energy L2
        penalty, if any, widens the energy-gap band: see `DivergenceMonitor`)."""
        return DivergenceMonitor(self, model=model)

    def apply(
        self, model: EBMTrainer, recovery: int, rng: np.random.Generator, state: RecoveryState | None = None
    ) -> str:
        """Change the run after recovery number `recovery` (1-based) restored a checkpoint.

        Returns a description of what changed. `state` is the run's `RecoveryState`
        (checkpointed with the model): the remedy is recorded there and applied through it
        (`RecoveryState.apply`), so later rollbacks and resumes keep it. Without one the remedy
        is applied to the model directly and a scheduled learning rate is left alone. Every
        change goes through `model.set_run_options` and reaches the compiled step (variables it
        reads, see `keras_ebm.run_settings`).
        """
        changes = []
        if self.reseed:
            for v in model.variables:
                if "seed_generator_state" in v.path:
                    v.assign(rng.integers(0, 2**30, size=v.shape).astype(v.dtype))
            changes.append("new random seeds")
        if recovery <= len(self.remedies):
            remedy = self.remedies[recovery - 1]
            changes.append(getattr(self, f"_remedy_{remedy}")(model, state))
        return ", ".join(changes) or "no change"

    def _remedy_energy_l2(self, model, state):
        if model.energy_l2 is None:
            return f"energy L2 not applicable to {type(model).__name__}"
        value = max(float(model.energy_l2), self.energy_l2)
        if state is not None:
            state.energy_l2.assign(value)
            state.apply(model)
        else:
            model.set_run_options(energy_l2=value)
        return f"energy L2 -> {model.energy_l2:g}"

    def _remedy_sgld_steps(self, model, state):
        sampler = model.sampler
        if sampler is None:
            return f"more SGLD steps not applicable to {type(model).__name__}"
        extra = int(round(int(sampler.n_steps) * (self.sgld_steps_factor - 1.0)))
        if state is not None:
            state.extra_sgld_steps.assign_add(extra)
            state.apply(model)
        else:
            model.set_run_options({"sampler.n_steps": int(sampler.n_steps) + extra})
        return f"SGLD steps -> {sampler.n_steps}"

    def _remedy_lower_lr(self, model, state):
        changes = []
        if state is not None:
            state.lr_scale.assign(state.lr_scale * self.lr_factor)
            state.apply(model)
        for name, opt in _optimizers(model).items():
            if isinstance(opt._learning_rate, ScaledSchedule) and state is not None:
                changes.append(f"{name}: learning-rate schedule x {float(state.lr_scale.numpy()):.3g}")
            elif isinstance(opt._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
                changes.append(f"{name}: learning-rate schedule left unchanged")
            else:
                if state is None:
                    model.set_run_options({f"{name}.learning_rate": run_settings.learning_rate(opt) * self.lr_factor})
                changes.append(f"{name}: learning rate -> {run_settings.learning_rate(opt):.3g}")
        return ", ".join(changes)


class DivergenceMonitor:
    """The guard's detectors over a run's per-step logs; `update(step, logs)` returns the signals
    that fire at that step (`[]` when healthy). State: the recent classifier losses.

    With an energy L2 penalty `energy_l2 = lam` (on mean E^2 of data and samples; the first remedy),
    the contrastive term and the penalty balance at E(x) = -1/(2 lam), E(x~) = +1/(2 lam): a
    bounded gap of 1/lam (10 at lam = 0.1) that is the penalty working, not a runaway. The
    energy-gap band is then `max(max_energy_gap, 2 / lam)`.

    The band follows the coefficient the step applies: it is read from `model` (the variable the
    compiled step reads) at every update, or fixed by `energy_l2` without a model.

    `clf_loss_rise` compares medians (of the rise window and of the baseline before it), so one
    outlying step, in either window, neither fires the signal nor hides a sustained rise.
    """

    def __init__(self, guard: DivergenceGuard, energy_l2: float = 0.0, model: EBMTrainer | None = None) -> None:
        self.guard = guard
        self.model = model
        self.energy_l2 = float(energy_l2 or 0.0)
        self.clf_losses = collections.deque(maxlen=guard.rise_window + guard.baseline_window)
        self.fired = {}

    @property
    def max_energy_gap(self) -> float | None:
        """The energy-gap band for the penalty now applied (None: the signal is off)."""
        band = self.guard.max_energy_gap
        lam = self.energy_l2
        if self.model is not None and self.model.energy_l2 is not None:
            lam = float(self.model.energy_l2)
        if band is not None and lam > 0:
            band = max(band, 2.0 / lam)
        return band

    def update(self, step: int, logs: Mapping[str, Any]) -> list[str]:
        g = self.guard
        signals = []
        values = {k: float(np.mean(v)) for k, v in logs.items()}
        if not all(np.all(np.isfinite(v)) for v in logs.values()):
            signals.append("non_finite")
        elif g.exploded(logs):
            signals.append("magnitude")
        band = self.max_energy_gap
        if band is not None and abs(values.get("energy_gap", 0.0)) > band:
            signals.append("energy_gap")
        if g.clf_rise_factor is not None and "clf_loss" in values and np.isfinite(values["clf_loss"]):
            self.clf_losses.append(values["clf_loss"])
            history = list(self.clf_losses)
            baseline = history[: -g.rise_window]
            if len(baseline) >= max(g.baseline_window // 2, 1):
                recent = float(np.median(history[-g.rise_window :]))
                level = float(np.median(baseline))
                if recent > g.clf_rise_factor * level:
                    signals.append("clf_loss_rise")
                    values["clf_loss_level"] = level
                    values["clf_loss_recent"] = recent
        self.fired = {"signals": signals, "step": int(step), "values": values} if signals else {}
        return signals


@keras.saving.register_keras_serializable(package="keras_ebm")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step) * scale`, with `scale` a variable: how the divergence guard lowers a
    scheduled learning rate without retracing, and how the lowered rate survives a resume."""

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, scale: tf.Variable) -> None:
        self.schedule = schedule
        self.scale = scale

    def __call__(self, step: int | tf.Tensor) -> tf.Tensor:
        return self.schedule(step) * keras.ops.cast(self.scale, "float32")

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "scale": float(keras.ops.convert_to_numpy(self.scale)),
        }


class RecoveryState(tf.Module):
    """What divergence recoveries changed, and the newest checkpoint known to be good; checkpointed
    beside the model (`recovery` in the checkpoint) so a run resumed in a new process keeps the
    lowered rate, the extra SGLD steps and the energy penalty."""

    def __init__(self) -> None:
        super().__init__(name="recovery")
        self.lr_scale = tf.Variable(1.0, trainable=False, name="lr_scale")
        self.extra_sgld_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="extra_sgld_steps")
        self.energy_l2 = tf.Variable(0.0, trainable=False, name="energy_l2")
        self.good_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_step")

    def snapshot(self) -> dict[str, Any]:
        """The remedies as Python values (a restore of an older checkpoint must not undo them)."""
        return {
            "lr_scale": float(self.lr_scale.numpy()),
            "extra_sgld_steps": int(self.extra_sgld_steps.numpy()),
            "energy_l2": float(self.energy_l2.numpy()),
        }

    def load(self, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            getattr(self, name).assign(value)

    def attach(self, model: EBMTrainer) -> None:
        """Route every scheduled learning rate of `model` through `lr_scale`, and remember the
        run's settings before any remedy (the SGLD steps, the energy penalty and the constant
        learning rates as built), which `apply` starts from."""
        self._base = {
            "n_steps": None if model.sampler is None else int(model.sampler.n_steps),
            "energy_l2": None if model.energy_l2 is None else float(model.energy_l2),
            "learning_rates": {},
        }
        for name, opt in _optimizers(model).items():
            schedule = opt._learning_rate
            if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
                if not isinstance(schedule, ScaledSchedule):
                    opt.learning_rate = ScaledSchedule(schedule, self.lr_scale)
            else:
                self._base["learning_rates"][name] = run_settings.learning_rate(opt)

    def apply(self, model: EBMTrainer) -> list[str]:
        """Make `model` run with the recorded remedies, from the settings `attach` saw: energy L2
        at least `energy_l2`, `extra_sgld_steps` more SGLD steps, constant learning rates times
        `lr_scale` (schedules read `lr_scale` themselves). Idempotent: called after every restore
        (a rollback, or a resume in a new process: the restored optimizer brings back its saved
        rate, which a remedy made after that checkpoint must not lose) and after every remedy.
        Goes through `model.set_run_options`, so it reaches the compiled step. Returns what was set.
        """
        base = getattr(self, "_base", None)
        if base is None:
            raise RuntimeError("RecoveryState.attach(model) must come before apply(model).")
        options = {}
        extra = int(self.extra_sgld_steps.numpy())
        if extra and base["n_steps"] is not None:
            options["sampler.n_steps"] = base["n_steps"] + extra
        energy_l2 = float(f"{float(self.energy_l2.numpy()):.7g}")  # the float32 variable's value, as set
        if energy_l2 > 0 and base["energy_l2"] is not None:
            options["energy_l2"] = max(base["energy_l2"], energy_l2)
        scale = float(self.lr_scale.numpy())
        if scale != 1.0:
            for name, lr in base["learning_rates"].items():
                options[f"{name}.learning_rate"] = lr * scale
        applied = model.set_run_options(options)
        return [f"{k} = {v:.4g}" for k, v in applied.items()]

    def reapply(self, model: EBMTrainer) -> list[str]:
        """After a restore into a freshly built model: `apply` (kept for callers of earlier releases)."""
        return self.apply(model)


def _optimizers(model):
    return model.optimizers
