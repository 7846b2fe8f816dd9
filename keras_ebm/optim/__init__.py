"""Gradient functions for the trainers (plain gradients, SAM / ASAM) and the PyTorch-form
optimizers `TorchAdam`, `TorchSGD`."""

from keras_ebm.optim.gradients import PlainGradients, SAMGradients, add_weight_decay
from keras_ebm.optim.torch_adam import TorchAdam
from keras_ebm.optim.torch_sgd import TorchSGD

__all__ = ["PlainGradients", "SAMGradients", "TorchAdam", "TorchSGD", "add_weight_decay"]
