"""Gradient functions for the trainers: plain gradients and SAM / ASAM."""

from keras_ebm.optim.gradients import PlainGradients
from keras_ebm.optim.gradients import add_weight_decay
from keras_ebm.optim.gradients import SAMGradients

__all__ = ["PlainGradients", "SAMGradients", "add_weight_decay"]
