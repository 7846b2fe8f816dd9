"""keras_ebm: hybrid discriminative-generative energy-based image models for Keras 3.

Methods (each a keras.Model trainer sharing one train_step, one sampling engine and one SAM):
softmax baseline, JEM / JEM++ / SADA-JEM, HDGE (+JEM), GMMC, CLEL. See README.md and docs/.

Sub-packages: data, backbones (networks and their layers), sampling, optim, losses, trainers (one
per method; GMMC, HDGE and CLEL with their own parts), evaluation, export, convert (official
checkpoints). Modules: energy (the sign convention), training (`run_training`), callbacks,
divergence, restore, generation, scores, distribute, run_settings, random_draws, memory
(allocation checks), stateless_scope, report_tables, configurables (the gin registry) and
run_config (parsing, checking and saving a run's gin config).
"""

__version__ = "0.1.0"
