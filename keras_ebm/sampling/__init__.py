"""Sampling: the SGLD, MALA and HMC samplers, the replay buffer and the chain initialisers."""

from keras_ebm.sampling.initializers import (
    InformativeInitializer,
    UniformInitializer,
    class_gaussian_statistics,
    informative_initializer,
)
from keras_ebm.sampling.mcmc import HMCSampler, MALASampler, MCMCSampler
from keras_ebm.sampling.replay_buffer import ReplayBuffer
from keras_ebm.sampling.sgld import SGLDSampler

__all__ = [
    "HMCSampler",
    "MALASampler",
    "MCMCSampler",
    "InformativeInitializer",
    "ReplayBuffer",
    "SGLDSampler",
    "UniformInitializer",
    "class_gaussian_statistics",
    "informative_initializer",
]
