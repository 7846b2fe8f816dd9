"""Gradient functions for the trainers (plain gradients, SAM / ASAM) and `TorchAdam`."""

from keras_ebm.optim.gradients import PlainGradients
from keras_ebm.optim.gradients import add_weight_decay
from keras_ebm.optim.gradients import SAMGradients
from keras_ebm.optim.torch_adam import TorchAdam

__all__ = ["PlainGradients", "SAMGradients", "TorchAdam", "add_weight_decay"]
