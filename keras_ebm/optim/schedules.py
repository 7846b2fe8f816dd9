"""Learning-rate schedules the papers use that Keras does not ship as one object.

* `LinearWarmup`: linear warm-up to any schedule (JEM: 1000 iterations; CLEL: 2k steps).
* `epoch_step_decay`: step decay at given epochs by a factor (JEM x0.3 at 160/180; SADA-JEM x0.2 at
  60/120/180; GMMC x0.3 at 30/50/80), built on Keras's PiecewiseConstantDecay.
"""

import keras


@keras.saving.register_keras_serializable(package="keras_ebm")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `schedule(warmup_steps)` over `warmup_steps`, then `schedule(step)`.

    The factor at step t (counted from 0) is `min(1, (t + offset) / warmup_steps)`.

    Args:
        schedule: a float learning rate or a `LearningRateSchedule`.
        warmup_steps: number of warm-up steps (0 disables it).
        offset: 1 (default: the first step trains at lr / warmup_steps, as CLEL's
            `LambdaLR(lambda step: (step + 1) / 2000)`) or 0 (the JEM and HDGE codes' `lr * cur_iter /
            warmup_iters`: the first step runs at lr 0, so it only updates the Adam moments and
            count; wgrathwohl/JEM train_wrn_ebm.py, lhao499/HDGE train_wrn.py).
    """

    def __init__(self, schedule, warmup_steps, offset=1):
        if warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0. Received: warmup_steps={warmup_steps}")
        if offset not in (0, 1):
            raise ValueError(f"`offset` must be 0 or 1. Received: offset={offset}")
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)
        self.offset = int(offset)

    def _base(self, step):
        if isinstance(self.schedule, keras.optimizers.schedules.LearningRateSchedule):
            return self.schedule(step)
        # convert_to_tensor(..., dtype), not cast: a cast Python float goes through float32.
        return keras.ops.convert_to_tensor(self.schedule, dtype=self._dtype())

    @staticmethod
    def _dtype():
        # float32; float64 under a float64 policy (a float32 lr is 2.5e-9 off 1e-4 in relative terms).
        return "float64" if keras.config.floatx() == "float64" else "float32"

    def __call__(self, step):
        step = keras.ops.cast(step, self._dtype())
        base = self._base(step)
        if self.warmup_steps == 0:
            return base
        ramp = keras.ops.minimum(1.0, (step + float(self.offset)) / float(self.warmup_steps))
        return base * ramp

    def get_config(self):
        schedule = self.schedule
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = keras.saving.serialize_keras_object(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps, "offset": self.offset}

    @classmethod
    def from_config(cls, config):
        schedule = config["schedule"]
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        return cls(schedule, config["warmup_steps"], config.get("offset", 1))


def epoch_step_decay(initial_learning_rate, decay_epochs, decay_factor, steps_per_epoch, warmup_steps=0):
    """Step decay: multiply the rate by `decay_factor` at each epoch in `decay_epochs`.

    Args:
        initial_learning_rate: the rate before the first decay.
        decay_epochs: epochs at which to decay, e.g. (60, 120, 180).
        decay_factor: multiplier at each decay, e.g. 0.2.
        steps_per_epoch: optimisation steps per epoch (dataset size // global batch).
        warmup_steps: optional linear warm-up (see `LinearWarmup`).
    """
    boundaries = [int(e * steps_per_epoch) for e in decay_epochs]
    values = [initial_learning_rate * decay_factor**i for i in range(len(boundaries) + 1)]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return LinearWarmup(schedule, warmup_steps) if warmup_steps else schedule
