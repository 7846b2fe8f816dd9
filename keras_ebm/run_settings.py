"""Run-time settings: what may change between training steps, and how the change reaches the step.

Keras traces `train_step` once and reuses the compiled `train_function` within a `fit` call and
across `fit` calls; the multi-worker loop of `keras_ebm.training` does the same. A Python
attribute read while tracing is a constant of that trace: assigning it later changes nothing that
is computed. Every setting that a remedy of the divergence guard, a callback, a schedule or a
user may change after the first step is therefore one of two kinds, declared in the class that
owns it:

* `Setting` - a number held in a `tf.Variable` that the compiled step reads. Assigning the
  attribute (`model.energy_l2 = 0.1`, `model.sampler.n_steps = 10`) takes effect at the next step
  without a retrace. Read in eager code it is a Python number; read while tracing it is the
  variable's value (a tensor), so no trace can freeze it. A `Setting` may have a structural part
  (`structure=`): `px_weight > 0` decides whether SGLD runs at all; crossing it retraces (see
  below), other changes do not.
* `TraceSetting` - a Python value that decides the graph's structure (which terms exist, which
  branch, the energy reduction). Changing it makes the trainer's compiled functions stale:
  `EBMTrainer.make_train_function` (and the multi-worker loop) compare the trainer's
  `trace_signature()` before every step and rebuild on a change (one retrace, the cost of a first
  step).

`EBMTrainer.set_run_options({...})` is the explicit API (the divergence guard uses it): it checks
each name against the settings declared here and routes it to the trainer, a component
(`sampler.n_steps`, `gradients.rho`, `buffer.reinit_prob`) or an optimizer
(`optimizer.learning_rate`). Plain attribute assignment goes through the same descriptors.

The variables are deliberately not tracked by Keras or `tf.train.Checkpoint` (they are kept in a
plain store on the object): checkpoints and `.keras` files keep their layout, so older ones load.
`get_config` reads the current values, and the divergence guard's changes persist through its
checkpointed `RecoveryState`. Created under the strategy scope that is active when the object is
built (a `MirroredVariable`, assigned in cross-replica context between steps).

`SETTINGS` below is the one list of every run-time setting, its kind and why (docs/run_time_settings.md
shows it; a test checks that the declarations in the classes match it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from typing import Any

VARIABLE = "variable"
TRACE = "trace"

# (owner class, attribute, kind, why). "variable": a tf.Variable the compiled step reads (changes
# cost nothing); "trace": a Python value the trace reads (a change forces one retrace). A variable
# with a structural part retraces only when that part changes.
SETTINGS = (
    (
        "SGLDSampler",
        "n_steps",
        VARIABLE,
        "the tf.while_loop bound: the 'sgld_steps' remedy and K schedules; a variable bound costs nothing",
    ),
    ("SGLDSampler", "step_size", VARIABLE, "scales the gradient step; a number in the loop"),
    (
        "SGLDSampler",
        "noise_std",
        VARIABLE,
        "scales the Langevin noise; structural at 0 (no noise drawn, as the noise-free recipes)",
    ),
    ("SGLDSampler", "grad_clip", TRACE, "None removes the clamp from the graph"),
    ("SGLDSampler", "x_clip", TRACE, "None removes the clamp from the graph"),
    ("SGLDSampler", "energy_reduction", TRACE, "sum or mean: a different graph"),
    ("SGLDSampler", "energy_training", TRACE, "the training flag of the energy function (BN mode)"),
    ("SGLDSampler", "freeze_bn_stats", TRACE, "wraps the energy function in a stateless scope"),
    ("SGLDSampler", "jit_compile", TRACE, "compiles the chain as its own XLA function"),
    ("SAMGradients", "rho", VARIABLE, "the perturbation radius; a number"),
    ("SAMGradients", "eta", VARIABLE, "ASAM's T = |w| + eta; a number"),
    ("SAMGradients", "epsilon", VARIABLE, "added to the gradient norm; a number"),
    ("SAMGradients", "adaptive", TRACE, "SAM or ASAM: a different graph"),
    ("SAMGradients", "sync_perturbation", TRACE, "adds an all-reduce to the graph"),
    ("ReplayBuffer", "reinit_prob", VARIABLE, "the restart probability; structural at 0 (no fresh draws at all)"),
    ("EBMTrainer", "weight_decay", VARIABLE, "coupled L2 added to the gradients (at 0 it adds exactly 0)"),
    ("EBMTrainer", "check_finite_inputs", TRACE, "adds or removes the input asserts"),
    ("JEM", "clf_weight", VARIABLE, "weight of log p(y|x); a number"),
    ("JEM", "px_weight", VARIABLE, "weight of log p(x); structural at 0 (no SGLD chain, no sample forward)"),
    ("JEM", "pxy_weight", VARIABLE, "weight of log p(x, y); structural at 0 (no class-conditional chain)"),
    (
        "JEM",
        "energy_l2",
        VARIABLE,
        "the 'energy_l2' remedy: the penalty is always computed (two reductions) and multiplied by it",
    ),
    ("JEM", "energy_l2_mode", TRACE, "which penalty: a different graph"),
    ("JEM", "bn_stats_from_samples", TRACE, "wraps the sample forward pass in a stateless scope"),
    ("JEM", "energy_l2_second_pass", TRACE, "whether SAM's second pass adds the penalty: a different loss closure"),
    (
        "HDGE",
        "clf_weight",
        VARIABLE,
        "alpha (the `alpha` property); structural at 1 (the contrastive term leaves the loss exactly)",
    ),
    ("HDGE", "temperature", TRACE, "the loss function checks it as a Python number"),
    ("HDGE", "score", TRACE, "which contrastive score: a different graph"),
    ("HDGE", "label_smoothing", TRACE, "0 removes the smoothed targets from the graph"),
    ("GMMC", "mode", TRACE, "discriminative / generative / joint: which terms and whether SGLD runs"),
    ("GMMC", "sampling", TRACE, "staged or noise-injected chains: a different loop"),
    ("GMMC", "latent_std", TRACE, "None reads the head's sigma, 0 draws no noise"),
    ("GMMC", "balance_factor", VARIABLE, "beta of eq. 7; a number"),
    ("GMMC", "switch_step", VARIABLE, "joint mode's switch, compared with optimizer.iterations in the graph"),
    ("GMMC", "ramp_steps", VARIABLE, "joint mode's ramp length, arithmetic in the graph"),
    ("CLEL", "alpha", VARIABLE, "energy L2 coefficient of eq. 3; a number"),
    ("CLEL", "beta", VARIABLE, "latent guidance weight of eq. 3; a number"),
    ("CLEL", "temperature", TRACE, "the NT-Xent function checks it as a Python number"),
    ("CLEL", "ebm_batch_fraction", TRACE, "decides a slice of the batch (1 takes all of it)"),
    ("CLEL", "ema_decay", VARIABLE, "the EMA decay after the start step; a number"),
    ("CLEL", "ema_start_step", VARIABLE, "compared with optimizer.iterations in the graph"),
    ("CLEL", "encoder_weight_decay", VARIABLE, "coupled L2 on the encoder's gradients; a number"),
    ("CLEL", "augment_chain_starts", TRACE, "adds or removes the augmentation of the chain starts"),
    ("CLEL", "ema_timing", TRACE, "moves the EMA update before or after the optimizer step"),
    ("CLEL", "guidance_view", TRACE, "adds or removes the guidance view's encoder pass"),
)


class _Constant:
    """The value of a setting of an object built inside a traced function (no variable there)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _Store:
    """Per-object values of its settings: not a trackable (kept out of checkpoints and .keras files)."""

    __slots__ = ("variables", "structure")

    def __init__(self):
        self.variables = {}
        self.structure = {}


def _store(obj):
    store = obj.__dict__.get("_run_settings")
    if store is None:
        store = _Store()
        object.__setattr__(obj, "_run_settings", store)  # bypasses Keras' and TF's tracking
    return store


def _check_range(name, value, minimum, maximum, exclusive_minimum=False):
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        bound = f"> {minimum}" if exclusive_minimum else f">= {minimum}"
        raise ValueError(f"`{name}` must be {bound}. Received: {name}={value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}. Received: {name}={value}")


class _Declared:
    """What both kinds of setting do as descriptors: know their name, read the object's store."""

    def __set_name__(self, owner, name):
        self.name = name

    def _stored(self, obj, table):
        """The object's stored entry of this setting in `table` ("variables" or "structure")."""
        try:
            return getattr(_store(obj), table)[self.name]
        except KeyError:
            raise AttributeError(f"{type(obj).__name__}.{self.name} has not been set") from None


class Setting(_Declared):
    """A numeric run-time setting held in a `tf.Variable` that the compiled step reads.

    Float settings are stored in float64 and read, while tracing, in the run's float width
    (`read_dtype`: float64 under `keras.config.set_floatx("float64")`, float32 otherwise), so a
    float32 step reads the correctly rounded float32 value (as a constant would be) and a float64
    step the exact one (the float64 parity tests need 0.01, not float32's 0.0099999998).

    Args:
        dtype: "float64" (default), "float32", "int32" or "int64".
        minimum, maximum: allowed range (checked on every assignment).
        structure: optional `fn(value) -> hashable`, the part of the value that decides the graph
            (e.g. `lambda v: v > 0`); a change of it makes the compiled step stale (a retrace).
    """

    def __init__(
        self,
        dtype: str = "float64",
        minimum: float | None = None,
        maximum: float | None = None,
        structure: Callable[[Any], Hashable] | None = None,
    ) -> None:
        self.dtype = tf.as_dtype(dtype)
        self.minimum = minimum
        self.maximum = maximum
        self.structure = structure

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        var = self._stored(obj, "variables")
        if isinstance(var, _Constant):
            return var.value
        if tf.executing_eagerly():
            value = var.numpy()
            # float32 0.1 reads back as 0.1 (the shortest decimal that round-trips), as it was set.
            return int(value) if self.dtype.is_integer else float(str(value))
        value = tf.convert_to_tensor(var)  # while tracing: read by the step at run time
        return value if self.dtype.is_integer else tf.cast(value, read_dtype())

    def __set__(self, obj, value):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"`{self.name}` takes a number (set between steps), not {value!r}. Received: {self.name}={value!r}"
            ) from None
        if self.dtype.is_integer:
            if value != int(value):
                raise ValueError(f"`{self.name}` must be an integer. Received: {self.name}={value}")
            value = int(value)
        _check_range(self.name, value, self.minimum, self.maximum)
        store = _store(obj)
        var = store.variables.get(self.name)
        if (var is None or isinstance(var, _Constant)) and tf.inside_function():
            # An object built inside a traced function (e.g. a gradient function made per call):
            # no variable can be created there, and its values are constants of that trace anyway.
            store.variables[self.name] = _Constant(value)
        else:
            self._assign(store, value)
        if self.structure is not None:
            store.structure[self.name] = self.structure(value)

    def _assign(self, store, value):
        with tf.init_scope():
            var = store.variables.get(self.name)
            if var is None or isinstance(var, _Constant):
                store.variables[self.name] = tf.Variable(value, dtype=self.dtype, trainable=False, name=self.name)
            else:
                var.assign(tf.constant(value, self.dtype))  # not tf.cast: a Python float would pass float32

    def variable(self, obj: object) -> tf.Variable:
        """The variable behind the setting of `obj` (tests count and compare through it)."""
        return _store(obj).variables[self.name]


class TraceSetting(_Declared):
    """A Python run-time setting that decides the graph: a change forces the compiled step to be
    rebuilt (see `EBMTrainer.trace_signature`). `normalize` maps an assigned value to the stored
    one (and may raise ValueError); stored values must be hashable."""

    def __init__(self, normalize: Callable[[Any], Hashable] | None = None) -> None:
        self.normalize = normalize

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return self._stored(obj, "structure")

    def __set__(self, obj, value):
        _store(obj).structure[self.name] = self.normalize(value) if self.normalize is not None else value


def learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """An optimizer's current learning rate as a Python float (a schedule: its value now; also
    under a distribution strategy, whose variables `float()` does not take)."""
    return float(tf.convert_to_tensor(optimizer.learning_rate).numpy())


def read_dtype() -> tf.DType:
    """The dtype float settings are read in while tracing: float64 in a float64 run (floatx),
    float32 otherwise (float32 and mixed-precision runs compute losses in float32)."""
    return tf.float64 if keras.config.floatx() == "float64" else tf.float32


def as_tensor(value: float | int | tf.Tensor, dtype: tf.DType | str) -> tf.Tensor:
    """A setting's value (a Python number eagerly, a tensor while tracing) as a `dtype` tensor,
    exactly: `tf.constant` for Python numbers (`tf.cast` of a Python float goes through float32)."""
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


def structure_of(obj: object, name: str) -> Hashable:
    """The structural part of `obj`'s setting `name` (e.g. `px_weight > 0`), a Python value."""
    return _store(obj).structure[name]


def signature(obj: object) -> tuple | None:
    """What the traces of `obj` depend on among its settings: every `TraceSetting` value and the
    structural part of every `Setting` (hashable; equal signatures share a trace)."""
    if obj is None:
        return None
    return tuple(sorted(_store(obj).structure.items(), key=lambda kv: kv[0]))


def declared(cls: type) -> dict[str, Setting | TraceSetting]:
    """`{name: Setting or TraceSetting}` declared on `cls` and its bases."""
    out = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, (Setting, TraceSetting)):
                out[name] = value
    return out


def values(obj: object) -> dict[str, Any]:
    """`{name: current value}` of every setting declared on `obj`'s class."""
    return {name: getattr(obj, name) for name in declared(type(obj))}
