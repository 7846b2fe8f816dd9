"""Learning-rate schedules the papers use that Keras does not ship as one object.

* `LinearWarmup`: linear warm-up to any schedule (JEM: 1000 iterations; CLEL: 2k steps).
* `epoch_step_decay`: step decay at given epochs by a factor (JEM x0.3 at 160/180; SADA-JEM x0.2 at
  60/120/180; GMMC x0.3 at 30/50/80), built on Keras's PiecewiseConstantDecay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import keras

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_ebm")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `schedule(warmup_steps)` over `warmup_steps`, then `schedule(step)`.

    Args:
        schedule: a float learning rate or a `LearningRateSchedule`.
        warmup_steps: number of warm-up steps (0 disables it).
        from_zero: False (default) ramps `(step + 1) / warmup_steps`, so the first step already
            moves; True ramps `step / warmup_steps` up to and including step `warmup_steps`, the
            official JEM / JEM++ / SADA-JEM loops' `lr * cur_iter / warmup_iters` for
            `cur_iter <= warmup_iters` (their first step runs at rate 0; with PyTorch's SGD its
            gradient still enters the momentum buffer, see `TorchSGD`).

    A float `schedule` is computed in `keras.config.floatx()` (float64 runs get an exact float64
    rate); a `LearningRateSchedule` keeps its own dtype.
    """

    def __init__(
        self,
        schedule: float | keras.optimizers.schedules.LearningRateSchedule,
        warmup_steps: int,
        from_zero: bool = False,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0. Received: warmup_steps={warmup_steps}")
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)
        self.from_zero = bool(from_zero)

    def _base(self, step):
        if isinstance(self.schedule, keras.optimizers.schedules.LearningRateSchedule):
            return self.schedule(step)
        return keras.ops.convert_to_tensor(self.schedule, dtype=keras.config.floatx())

    def __call__(self, step: int | tf.Tensor) -> tf.Tensor:
        base = self._base(keras.ops.cast(step, "float32"))
        if self.warmup_steps == 0:
            return base
        step = keras.ops.cast(step, base.dtype)
        done = step if self.from_zero else step + 1.0
        ramp = keras.ops.minimum(1.0, done / float(self.warmup_steps))
        return base * ramp

    def get_config(self) -> dict[str, Any]:
        schedule = self.schedule
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = keras.saving.serialize_keras_object(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps, "from_zero": self.from_zero}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LinearWarmup:
        schedule = config["schedule"]
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        return cls(schedule, config["warmup_steps"], config.get("from_zero", False))


def epoch_step_decay(
    initial_learning_rate: float,
    decay_epochs: Sequence[int],
    decay_factor: float,
    steps_per_epoch: int,
    warmup_steps: int = 0,
    warmup_from_zero: bool = False,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Step decay: multiply the rate by `decay_factor` at each epoch in `decay_epochs`.

    Args:
        initial_learning_rate: the rate before the first decay.
        decay_epochs: epochs at which to decay, e.g. (60, 120, 180).
        decay_factor: multiplier at each decay, e.g. 0.2.
        steps_per_epoch: optimisation steps per epoch (dataset size // global batch).
        warmup_steps: optional linear warm-up (see `LinearWarmup`).
        warmup_from_zero: `LinearWarmup(from_zero=...)`: True for the official JEM-family ramp.
    """
    boundaries = [int(e * steps_per_epoch) for e in decay_epochs]
    values = [initial_learning_rate * decay_factor**i for i in range(len(boundaries) + 1)]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return LinearWarmup(schedule, warmup_steps, from_zero=warmup_from_zero) if warmup_steps else schedule
