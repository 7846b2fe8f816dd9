"""`TorchSGD`: SGD with momentum in PyTorch's form (`torch.optim.SGD`).

Keras' `SGD` folds the learning rate into the velocity, PyTorch's into the step:

    Keras:    m <- mu m - lr_t g;     w <- w + m
    PyTorch:  b <- mu b + g;          w <- w - lr_t b          (dampening 0, b_0 = g_0)

With a constant rate the two are the same (m = -lr b). While the rate changes (warm-up, step
decay) they are not: Keras' velocity keeps each past gradient scaled by the rate of its own step,
PyTorch rescales the whole buffer by the current rate. The JEM++ and SADA-JEM recipes (SGD 0.1 with
a linear warm-up from 0 over 1000 iterations) spend their first step at rate 0: Keras moves
nothing and forgets the gradient, PyTorch keeps it in the buffer for the next steps. The parity
tests (tests/test_parity_jempp.py, tests/test_parity_sadajem.py) check `TorchSGD` against the
official updates. Weight decay stays coupled and outside (`EBMTrainer(weight_decay=...)`, PyTorch's
`weight_decay`); `nesterov` is not supported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_ebm")
class TorchSGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` with PyTorch's momentum buffer (module docstring); slot `momentums`
    holds PyTorch's `momentum_buffer`."""

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.01,
        momentum: float = 0.0,
        name: str = "torch_sgd",
        **kwargs: Any,
    ) -> None:
        if kwargs.get("nesterov"):
            raise ValueError("TorchSGD does not support nesterov. Received: nesterov=True")
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)

    def update_step(self, gradient: tf.Tensor, variable: keras.Variable, learning_rate: tf.Tensor) -> None:
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(lr, gradient))
            return
        m = self.momentums[self._get_variable_index(variable)]
        # convert_to_tensor, not cast: a Python float cast goes through float32 (0.9 -> 0.899999976).
        self.assign(m, ops.add(ops.multiply(m, ops.convert_to_tensor(self.momentum, dtype=dtype)), gradient))
        self.assign_sub(variable, ops.multiply(lr, m))
