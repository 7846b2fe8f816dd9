"""Sampling: the SGLD, MALA and HMC samplers, the replay buffer and the chain initialisers."""

from keras_ebm.sampling.initializers import InformativeInitializer
from keras_ebm.sampling.initializers import UniformInitializer
from keras_ebm.sampling.initializers import class_gaussian_statistics
from keras_ebm.sampling.initializers import informative_initializer
from keras_ebm.sampling.mcmc import HMCSampler
from keras_ebm.sampling.mcmc import MALASampler
from keras_ebm.sampling.mcmc import MCMCSampler
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
