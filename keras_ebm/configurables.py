"""Every gin configurable of keras_ebm, registered in one place, and the gin names of earlier releases.

Library classes stay plain Keras and import without gin; this module is the whole config surface.
Gin files start with `import keras_ebm.configurables`. Objects are chosen by reference
(`run_training.trainer = @SoftmaxClassifier`), never by strings.

`GIN_ALIASES` keeps the full gin names of earlier releases working (`keras_ebm.experiment.run_training`,
`keras_ebm.heads.build_mmc_classifier`, ...): a gin file or a saved `config.gin` may use them in
bindings and references. They are not registered as configurables of their own, so the short
names (`run_training.train_steps`) stay unambiguous and the configs gin writes use today's names.
"""

import gin
import keras
from gin import selector_map

from keras_ebm import actions, backbones, data, divergence, optim, sampling, trainers, training
from keras_ebm.evaluation import generative, runner
from keras_ebm.optim import schedules
from keras_ebm.trainers import gmmc, hdge

# Full gin name of an earlier release -> the configurable's gin name now.
GIN_ALIASES = {
    "keras_ebm.experiment.run_training": "keras_ebm.training.run_training",
    "keras_ebm.experiment.DivergenceGuard": "keras_ebm.divergence.DivergenceGuard",
    "keras_ebm.heads.build_mmc_classifier": "keras_ebm.trainers.gmmc.build_mmc_classifier",
    "keras_ebm.FeatureQueue": "keras_ebm.trainers.hdge.FeatureQueue",
    "keras_ebm.cli.optional_macros": "keras_ebm.run_config.optional_macros",
}


class _AliasingRegistry(selector_map.SelectorMap):
    """gin's registry of configurables, where a selector that names no configurable may name one
    of `GIN_ALIASES` (in full, or by a suffix such as `experiment.run_training`)."""

    def matching_selectors(self, partial_selector):
        found = super().matching_selectors(partial_selector)
        if found:
            return found
        return sorted(
            {new for old, new in GIN_ALIASES.items() if old == partial_selector or old.endswith("." + partial_selector)}
        )


# Every lookup of a selector in gin (bindings, references, query_parameter) goes through the
# registry's `matching_selectors`: the one instance gin holds takes the aliasing lookup.
if not isinstance(gin.config._REGISTRY, _AliasingRegistry):
    gin.config._REGISTRY.__class__ = _AliasingRegistry


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
_register(gmmc.build_mmc_classifier, "keras_ebm.trainers.gmmc")
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
_register(hdge.FeatureQueue, "keras_ebm.trainers.hdge")

# Evaluation: the Inception network of FID / IS / KID (eval.py --generative; flags override).
inception_features = _register(generative.inception_features, "keras_ebm.evaluation")

_register(divergence.DivergenceGuard, "keras_ebm.divergence")

# Runners: run_training and run_eval are decorated with @gin.configurable where they are defined
# (they are the gin entry points that train.py / eval.py call), as is `optional_macros` in
# keras_ebm.run_config (which parses every config).
# After-training actions (`run_training.actions = [@SummaryAction(), @ExportAction(), ...]`).
for _action in (
    actions.SummaryAction,
    actions.ExportAction,
    actions.EvaluateAction,
    actions.SampleGridAction,
    actions.BaselineAction,
):
    _register(_action, "keras_ebm.actions")
assert runner.run_eval and training.run_training
