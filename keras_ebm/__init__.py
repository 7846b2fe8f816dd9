"""keras_ebm: hybrid discriminative-generative energy-based image models for Keras 3.

Methods (each a keras.Model trainer sharing one train_step, one sampling engine and one SAM):
softmax baseline, JEM / JEM++ / SADA-JEM, HDGE (+JEM), GMMC, CLEL. See README.md.

Sub-packages: energy (the sign convention), data, backbones, sampling, optim, trainers,
evaluation, export, experiment (train/eval runners), configurables (gin).
"""

__version__ = "0.1.0"
