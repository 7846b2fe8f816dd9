"""`TorchAdam`: Adam with PyTorch's placement of epsilon (`torch.optim.Adam`).

Keras' `Adam` folds both bias corrections into the step size and adds epsilon to the raw
sqrt(v) ("epsilon hat" of Kingma & Ba 2015, section 2):

    w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

PyTorch's `torch.optim.Adam`, which every official JEM-family code uses, adds epsilon to the
bias-corrected sqrt(v):

    w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

The two agree only when eps is negligible next to sqrt(v). At the first step sqrt(1 - b2) = 0.032,
so Keras' eps acts 32x larger; on parameters with small gradients (|g| ~ 1e-6, frequent in a
deep network's early layers) the Keras step is visibly smaller. The parity tests
(tests/test_parity_jem.py, docs/parity.md) measure it against the official JEM step. Use
`TorchAdam(learning_rate, epsilon=1e-8)` (PyTorch's default eps) to reproduce the official update
exactly; everything else (moments, amsgrad off, variables and their names) is Keras' `Adam`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_ebm")
class TorchAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` with epsilon added after the bias correction, as PyTorch (module
    docstring). Default `epsilon=1e-8` (PyTorch's). `amsgrad` is not supported."""

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        name: str = "torch_adam",
        **kwargs: Any,
    ) -> None:
        if kwargs.get("amsgrad"):
            raise ValueError("TorchAdam does not support amsgrad. Received: amsgrad=True")
        super().__init__(
            learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, name=name, **kwargs
        )

    def update_step(self, gradient: tf.Tensor, variable: keras.Variable, learning_rate: tf.Tensor) -> None:
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        local_step = ops.cast(self.iterations + 1, dtype)
        # convert_to_tensor(..., dtype), not cast: casting a Python float goes through float32
        # (0.999 -> 0.99900001), a 6e-6 relative error of the first float64 steps.
        bias_correction1 = 1 - ops.power(ops.convert_to_tensor(self.beta_1, dtype=dtype), local_step)
        bias_correction2 = 1 - ops.power(ops.convert_to_tensor(self.beta_2, dtype=dtype), local_step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        denom = ops.add(
            ops.divide(ops.sqrt(v), ops.sqrt(bias_correction2)), ops.convert_to_tensor(self.epsilon, dtype=dtype)
        )
        self.assign_sub(variable, ops.multiply(lr / bias_correction1, ops.divide(m, denom)))
