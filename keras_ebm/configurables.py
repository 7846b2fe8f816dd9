"""Every gin configurable of keras_ebm, registered in one place (STYLE.md section 4.3).

Library classes stay plain Keras and import without gin; this module is the whole config surface.
Gin files start with `import keras_ebm.configurables`. Objects are chosen by reference
(`run_training.trainer = @SoftmaxClassifier`), never by strings.
"""

import gin
import keras

from keras_ebm import actions, backbones, data, divergence, heads, optim, queues, sampling, trainers, training
from keras_ebm.evaluation import generative, runner
from keras_ebm.optim import schedules


def _register(obj, module):
    return gin.external_configurable(obj, module=module)


# Optimizers and schedules (scopes separate the two optimizers of CLEL: `ebm/Adam`, `encoder/SGD`).
for _opt in (keras.optimizers.Adam, keras.optimizers.AdamW, keras.optimizers.SGD):
    _register(_opt, "keras.optimizers")
for _sched in (
    keras.optimizers.schedules.CosineDecay,
    keras.optimizers.schedules.PiecewiseConstantDecay,
    keras.optimizers.schedules.ExponentialDecay,
):
    _register(_sched, "keras.optimizers.schedules")
_register(optim.TorchAdam, "keras_ebm.optim")
_register(optim.TorchSGD, "keras_ebm.optim")
_register(schedules.LinearWarmup, "keras_ebm.optim")
_register(schedules.epoch_step_decay, "keras_ebm.optim")

# Backbones.
_register(backbones.WideResNet, "keras_ebm.backbones")
_register(backbones.TinyCNN, "keras_ebm.backbones")
_register(backbones.build_classifier, "keras_ebm.backbones")
_register(heads.build_mmc_classifier, "keras_ebm.heads")
_register(backbones.build_clel_ebm, "keras_ebm.backbones")
_register(backbones.build_clel_projection, "keras_ebm.backbones")
_register(backbones.build_clel_encoder, "keras_ebm.backbones")

# Data.
_register(data.make_dataset_fn, "keras_ebm.data")
_register(data.make_two_branch_dataset_fn, "keras_ebm.data")
_register(data.load_arrays, "keras_ebm.data")

# Sampling engine and gradient functions.
_register(sampling.SGLDSampler, "keras_ebm.sampling")
_register(sampling.MALASampler, "keras_ebm.sampling")
_register(sampling.HMCSampler, "keras_ebm.sampling")
_register(sampling.ReplayBuffer, "keras_ebm.sampling")
_register(sampling.UniformInitializer, "keras_ebm.sampling")
_register(sampling.informative_initializer, "keras_ebm.sampling")
_register(optim.PlainGradients, "keras_ebm.optim")
_register(optim.SAMGradients, "keras_ebm.optim")

# Trainers.
_register(trainers.SoftmaxClassifier, "keras_ebm.trainers")
_register(trainers.JEM, "keras_ebm.trainers")
_register(trainers.JEMPP, "keras_ebm.trainers")
_register(trainers.SADAJEM, "keras_ebm.trainers")
_register(trainers.GMMC, "keras_ebm.trainers")
_register(trainers.HDGE, "keras_ebm.trainers")
_register(trainers.CLEL, "keras_ebm.trainers")
_register(queues.FeatureQueue, "keras_ebm")

# Evaluation: the Inception network of FID / IS / KID (eval.py --generative; flags override).
inception_features = _register(generative.inception_features, "keras_ebm.evaluation")

# Runners: run_training and run_eval are decorated with @gin.configurable where they are defined
# (they are the gin entry points that train.py / eval.py call).
_register(divergence.DivergenceGuard, "keras_ebm.experiment")  # the gin name of earlier releases
# After-training actions (`run_training.actions = [@SummaryAction(), @ExportAction(), ...]`).
for _action in (actions.SummaryAction, actions.ExportAction, actions.EvaluateAction, actions.SampleGridAction,
                actions.BaselineAction):
    _register(_action, "keras_ebm.actions")
assert runner.run_eval and training.run_training
