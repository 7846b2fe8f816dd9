"""`EBMTrainer`: the one `train_step` every keras_ebm method shares.

A trainer is a `keras.Model` that owns a `network` (images -> logits) and the components of its method
(sampler, replay buffer, queue, EMA...). Its `train_step` is written once, here:

    batch      = self.unpack_batch(data)            # (x, y) or two loaders ((x, y), (x_px, y_px))
    self.before_step(batch)                         # CLEL's EMA (official timing); default nothing
    negatives  = self.sample_negatives(batch)       # SGLD samples, outside the gradient tape
    logs       = self.optimize(batch, negatives)    # gradient function (plain / SAM) + optimizer.apply
    self.after_step(batch, negatives, logs)         # queue enqueue, EMA, buffer bookkeeping
    return self.update_trackers(logs)

Methods override `compute_losses` (and, when needed, `sample_negatives`, `before_step`, `after_step` or
`optimize` for two optimizers), never `train_step`. The same `train_step` runs under `model.fit`, under
tf.distribute strategies, and inside the custom loop of `keras_ebm.training.run_training`.

Every trainer is a registered Keras object (`keras_ebm>JEM`, ...): `get_config` / `from_config`
hold its settings, its network(s) and components (sampler, replay buffer, queue, gradient
function) as nested Keras objects, so `trainer.save("model.keras")` and
`keras.saving.load_model("model.keras")` give a trainer of the same class, settings and weights,
compiled with the same optimizer(s) when it was compiled (see `EBMTrainer.get_config`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from keras_ebm import energy as energy_lib
from keras_ebm import run_settings
from keras_ebm import scores as scores_lib
from keras_ebm.optim.gradients import PlainGradients, add_weight_decay
from keras_ebm.sampling import ReplayBuffer, UniformInitializer

if TYPE_CHECKING:
    from tensorflow.types.experimental import TensorLike

    from keras_ebm.optim.gradients import SAMGradients
    from keras_ebm.sampling.initializers import InformativeInitializer


@keras.saving.register_keras_serializable(package="keras_ebm")
class EBMTrainer(keras.Model, scores_lib.Scorer):
    """Base class of the keras_ebm trainers.

    Args:
        network: a `keras.Model` mapping float images `[batch, height, width, channels]` in
            `pixel_range` to logits `[batch, num_classes]`.
        image_shape: `(height, width, channels)` of the training images. Batches of another shape
            raise a `ValueError` saying so.
        num_classes: number of classes of the logits.
        pixel_range: `(lo, hi)` range of the float images the network sees: `(-1, 1)` for the JEM
            family, `(0, 1)` for CLEL. The export maps uint8 images into it.
        gradients: the gradient function, `PlainGradients()` (default) or `SAMGradients(rho=...)`.
        check_finite_inputs: assert that input batches hold no NaN/Inf, that images are on the
            pixel_range scale (not 0..255) and labels are class ids in [0, num_classes) (cheap
            next to a conv net).
        weight_decay: coupled L2 weight decay added to the gradients of every trainable variable
            (PyTorch SGD's `weight_decay`, which the official code uses; Keras optimizers'
            `weight_decay` is decoupled and about 10x weaker with momentum 0.9). See
            `keras_ebm.optim.add_weight_decay`.
        seed: seed of the trainer's `keras.random.SeedGenerator` (sampling, augmentation).

    Subclasses list the scalars they report in `tracked_names`; `compute_losses` returns a dict with
    those keys, of which `"loss"` is the total that is differentiated. They list the constructor
    arguments they keep as same-named attributes in `config_attributes` (read by `get_config`).

    Hooks the rest of the library asks every trainer for (with defaults here, so no caller probes
    with `hasattr`): `optimizers` and `build_optimizers()` (CLEL has two), `after_training(data)`
    (GMMC's sigma), `generate(...)` (one implementation; trainers supply `run_chains`),
    `scores(x)` (the OOD scores of `keras_ebm.scores`; CLEL its eq. 5), `sampler` / `buffer`
    (None for a discriminative trainer), `is_generative`, `conditions_on_latents` (CLEL) and
    `default_buffer(...)`, the one replay-buffer factory of JEM, GMMC and CLEL.

    Serialization (`.keras` files): `get_config` gives every constructor argument, with the
    objects the constructor built in place of the shorthands that built them: the replay buffer
    (its size, re-initialisation probability and initialiser) instead of `buffer_size`,
    `reinit_prob` and `initializer`; HDGE's queue beside `queue_size`; the sampler and gradient
    function whether defaulted or passed. Networks, sampler, buffer, queue, gradient function and
    initialisers are nested Keras objects (`keras.saving.serialize_keras_object`), rebuilt by
    `from_config`. `model.save("x.keras")` stores every weight the trainer tracks (networks, BN
    statistics, replay buffer and labels, HDGE's queue, CLEL's EMA copies, GMMC's sigma), the
    data-fitted statistics of an `InformativeInitializer`, the RNG states (trainer, sampler,
    buffer, as checkpoints hold them) and, when compiled, the optimizer(s) and their slots, so a
    loaded trainer continues training where the saved one stopped. Not saved: data sources
    (GMMC's `sigma_data`) and CLEL's `class_latents` (call `set_class_latents` again). In a new
    process, `import keras_ebm.trainers` before `load_model` (it registers the classes).
    """

    tracked_names = ("loss", "clf_loss", "clf_acc", "energy_data")
    default_ood_score = "log_px"
    is_classifier = True  # `call` returns class logits (accuracy, ECE and log p(x) are meaningful)
    conditions_on_latents = False  # CLEL: class-conditional samples need `set_class_latents` first
    # The training objective reads the batch labels: they are checked to be class ids in
    # [0, num_classes) (CLEL, unsupervised, ignores them).
    uses_labels = True
    sampler = None  # the SGLD sampler of a generative trainer
    buffer = None  # its replay buffer
    # Constructor arguments kept as attributes of the same name: `get_config` reads them.
    config_attributes = (
        "network",
        "image_shape",
        "num_classes",
        "pixel_range",
        "gradients",
        "check_finite_inputs",
        "weight_decay",
        "seed",
    )
    energy_l2 = None  # the JEM family's energy L2 coefficient (None: the trainer has no such penalty)
    # Run-time settings (keras_ebm.run_settings): read by the compiled step from a variable, or
    # part of the trace signature (a change rebuilds the step).
    weight_decay = run_settings.Setting(minimum=0.0)
    check_finite_inputs = run_settings.TraceSetting(bool)

    def __init__(
        self,
        network: keras.Model,
        image_shape: tuple[int, int, int],
        num_classes: int,
        pixel_range: tuple[float, float] = (-1.0, 1.0),
        gradients: PlainGradients | SAMGradients | None = None,
        check_finite_inputs: bool = True,
        weight_decay: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        image_shape = tuple(int(d) for d in image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"`image_shape` must be (height, width, channels). Received: image_shape={image_shape}")
        lo, hi = (float(v) for v in pixel_range)
        if not lo < hi:
            raise ValueError(f"`pixel_range` must be (lo, hi) with lo < hi. Received: pixel_range={pixel_range}")
        self.network = network
        self.image_shape = image_shape
        self.num_classes = int(num_classes)
        self.pixel_range = (lo, hi)
        self.gradients = gradients if gradients is not None else PlainGradients()
        self.check_finite_inputs = bool(check_finite_inputs)
        self.weight_decay = weight_decay
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.tracked_names}

    # ------------------------------------------------------------------ Keras plumbing
    def call(self, x: TensorLike, training: bool = False) -> tf.Tensor:
        # float32 logits whatever the network computes in (mixed_bfloat16: energies, losses and
        # scores stay float32); float64 under a float64 policy (`energy_lib.wide_dtype`).
        logits = self.network(x, training=training)
        return tf.cast(logits, energy_lib.wide_dtype(logits.dtype))

    def build(self, input_shape: tuple[int | None, ...] | None = None) -> None:
        if not self.network.built:
            self.network.build((None,) + self.image_shape)
        self.built = True

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.trackers.values())

    # ------------------------------------------------------------------ serialization
    def get_config(self) -> dict[str, Any]:
        """Every constructor argument: the `config_attributes` of the class (nested Keras objects
        serialized), the sampler and replay buffer of a generative trainer, and the Keras model's
        name, trainable flag and dtype policy (see the class docstring)."""
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }
        names = self.config_attributes + (("sampler", "buffer") if self.is_generative else ())
        for name in names:
            value = getattr(self, name)
            if hasattr(value, "get_config"):  # network, gradients, sampler, buffer, queue...
                value = keras.saving.serialize_keras_object(value)
            config[name] = list(value) if isinstance(value, tuple) else value
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EBMTrainer:
        """`cls(**config)` with the nested Keras objects (networks, sampler, buffer...) rebuilt."""
        config = {
            key: keras.saving.deserialize_keras_object(value)
            if isinstance(value, dict) and "class_name" in value
            else value
            for key, value in config.items()
        }
        return cls(**config)

    def get_build_config(self) -> dict[str, Any]:
        # Always present, so that loading builds the trainer (and its optimizers) before the
        # weights are read, even if it was saved without ever being called.
        return {"input_shape": [None] + list(self.image_shape)}

    def build_from_config(self, config: dict[str, Any]) -> None:
        del config
        self.build()

    def get_compile_config(self) -> dict[str, Any] | None:
        config = super().get_compile_config()
        if config:  # whether the saved file holds optimizer slots (a trainer compiled but not trained has none)
            config["optimizers_built"] = all(o.built for o in self.optimizers.values())
        return config

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Compile with the saved compile arguments (CLEL: both optimizers) and, when the saved
        optimizers were built, build them on their variables, so that their saved slots load."""
        config = dict(config)
        optimizers_built = config.pop("optimizers_built", True)
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built and optimizers_built:
            self.build_optimizers()

    # The RNG states (`keras.random.SeedGenerator`s of the trainer, sampler, buffer and network)
    # are not layer weights; a `.keras` file stores them here, as checkpoints do
    # (`keras_ebm.callbacks.make_checkpoint`), so a loaded trainer continues every random sequence.
    _SEED_STATE_PREFIX = "seed_generator_state_"

    def _seed_states(self):
        return [v for v in self.variables if "seed_generator_state" in v.path]

    def save_own_variables(self, store: dict[str, Any]) -> None:
        super().save_own_variables(store)
        for i, state in enumerate(self._seed_states()):
            store[f"{self._SEED_STATE_PREFIX}{i}"] = state

    def load_own_variables(self, store: dict[str, Any]) -> None:
        keys = list(store.keys())
        saved = sorted(
            (k for k in keys if k.startswith(self._SEED_STATE_PREFIX)),
            key=lambda k: int(k[len(self._SEED_STATE_PREFIX) :]),
        )
        super().load_own_variables({k: store[k] for k in keys if not k.startswith(self._SEED_STATE_PREFIX)})
        states = self._seed_states()
        if saved and len(saved) != len(states):
            raise ValueError(
                f"The saved {type(self).__name__} has {len(saved)} RNG states, this one "
                f"{len(states)}: it was built differently. Received: {len(saved)} saved states"
            )
        for key, state in zip(saved, states):
            state.assign(store[key])

    # ------------------------------------------------------------------ run-time settings
    def run_components(self) -> dict[str, Any]:
        """The components whose run-time settings the step reads, by the name `set_run_options`
        uses for them (`sampler.n_steps`, `gradients.rho`, `buffer.reinit_prob`)."""
        return {"sampler": self.sampler, "gradients": self.gradients, "buffer": self.buffer}

    def trace_signature(self) -> tuple:
        """Everything the traced step depends on that is not a variable: the `TraceSetting` values
        and structural parts of the trainer and its components, which component objects are in
        place, and the dtype policies of the trainer's layers (mixed precision). The compiled
        functions are rebuilt when it changes (`make_train_function`); see `keras_ebm.run_settings`."""
        parts = [run_settings.signature(self)]
        for name, component in self.run_components().items():
            parts.append((name, id(component), run_settings.signature(component)))
        parts.append(
            tuple(layer.dtype_policy.name for layer in self._flatten_layers(include_self=True, recursive=False))
        )
        return tuple(parts)

    def run_options(self) -> dict[str, Any]:
        """Every run-time setting the step reads, `{name: value}` (names as `set_run_options` takes
        them), with the constant learning rates of the optimizers."""
        out = dict(run_settings.values(self))
        for prefix, component in self.run_components().items():
            if component is not None:
                out.update({f"{prefix}.{k}": v for k, v in run_settings.values(component).items()})
        if self.optimizer is not None:
            for prefix, opt in self.optimizers.items():
                if not isinstance(opt._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
                    out[f"{prefix}.learning_rate"] = run_settings.learning_rate(opt)
        return out

    def set_run_options(self, options: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Change run-time settings between steps so that the next step computes with them.

        Names: a setting of the trainer (`energy_l2`, `px_weight`, HDGE's `alpha`...), of a
        component (`sampler.n_steps`, `sampler.step_size`, `sampler.noise_std`, `gradients.rho`,
        `buffer.reinit_prob`) or an optimizer's constant rate (`optimizer.learning_rate`; CLEL
        also `encoder_optimizer.learning_rate`); `run_options()` lists them with their values.
        Variables are assigned (no retrace); a setting that shapes the graph makes the next call
        of the compiled step rebuild it (in `fit`, across `fit` calls and in `run_training`'s
        multi-worker loop). All names are checked before anything changes.

        Returns:
            `{name: value now in effect}`.
        """
        options = dict(options or {}, **kwargs)
        targets = {name: self._run_option_target(name) for name in options}
        applied = {}
        for name, value in options.items():
            owner, attr = targets[name]
            setattr(owner, attr, value)
            value = getattr(owner, attr)
            applied[name] = run_settings.learning_rate(owner) if attr == "learning_rate" else value
        return applied

    def _run_option_target(self, name):
        prefix, _, attr = str(name).rpartition(".")
        components = self.run_components()
        optimizers = self.optimizers if self.optimizer is not None else {}
        if not prefix:
            owner = self
        elif prefix in optimizers:
            owner = optimizers[prefix]
            if attr != "learning_rate":
                raise ValueError(f"Only `{prefix}.learning_rate` is a run option of an optimizer. Received: {name!r}")
            if isinstance(owner._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
                raise ValueError(
                    f"`{prefix}` has a learning-rate schedule: a constant cannot replace it between steps. "
                    "Scale it instead (keras_ebm.divergence.ScaledSchedule, which the divergence guard's "
                    f"'lower_lr' remedy uses). Received: {name!r}"
                )
            return owner, attr
        elif components.get(prefix) is not None:
            owner = components[prefix]
        else:
            raise ValueError(
                f"Unknown run option {name!r} for {type(self).__name__}: choose from {sorted(self.run_options())}."
            )
        prop = getattr(type(owner), attr, None)
        if attr not in run_settings.declared(type(owner)) and not (isinstance(prop, property) and prop.fset):
            raise ValueError(
                f"Unknown run option {name!r} for {type(self).__name__}: choose from {sorted(self.run_options())}."
            )
        return owner, attr

    def make_train_function(self, force: bool = False) -> Callable[..., Any]:
        """Keras' train function, rebuilt before a step whose `trace_signature()` differs from
        the one it was built with (a graph-shaping setting changed between steps)."""
        return self._checked_function("train_function", super().make_train_function, force)

    def make_test_function(self, force: bool = False) -> Callable[..., Any]:
        return self._checked_function("test_function", super().make_test_function, force)

    def _checked_function(self, attr, make, force):
        function = getattr(self, attr)
        if function is not None and not force:
            return function
        make(force=True)
        function = getattr(self, attr)
        signature = self.trace_signature()

        def checked(*args, **kwargs):
            if self.trace_signature() != signature:
                return self._checked_function(attr, make, True)(*args, **kwargs)
            return function(*args, **kwargs)

        setattr(self, attr, checked)
        return checked

    # ------------------------------------------------------------------ the one train_step
    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        batch = self.unpack_batch(data, training=True)
        self.before_step(batch)
        negatives = self.sample_negatives(batch)
        logs = self.optimize(batch, negatives)
        self.after_step(batch, negatives, logs)
        return self.update_trackers({**logs, **self.sampler_logs()})

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        batch = self.unpack_batch(data, training=False)
        logits = self(batch["x"], training=False)
        return self.update_trackers(self.classifier_logs(logits, batch["y"]))

    # ------------------------------------------------------------------ hooks
    def unpack_batch(self, data: Any, training: bool = False) -> dict[str, tf.Tensor]:
        """Normalise a batch to a dict: `x`, `y` (classifier branch) and `x_px`, `y_px` (p(x) branch).

        Accepts `(x, y)`, a dict with those keys, or the two-loader form `((x, y), (x_px, y_px))` of
        SADA-JEM (augmentation only in the classifier branch). With one loader both branches share x.
        `training`: a training batch, which must not be empty on any replica.
        """
        if isinstance(data, dict):
            batch = dict(data)
        elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (tuple, list)):
            (x, y), (x_px, y_px) = data
            batch = {"x": x, "y": y, "x_px": x_px, "y_px": y_px}
        elif isinstance(data, (tuple, list)) and len(data) >= 2:
            batch = {"x": data[0], "y": data[1]}
        else:
            raise ValueError(
                "A batch must be (images, labels), a dict with 'x' and 'y', or "
                "((images, labels), (images_px, labels_px)). Received: "
                f"{type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}"
            )
        batch["x"] = self._check_images(batch["x"], "x", require_examples=training)
        batch["y"] = self._check_labels(batch["y"], "y")
        if "x_px" in batch:
            batch["x_px"] = self._check_images(batch["x_px"], "x_px", require_examples=training)
            batch["y_px"] = self._check_labels(batch["y_px"], "y_px")
        else:  # one loader: the very same tensors, so trainers can reuse the classifier forward
            batch["x_px"], batch["y_px"] = batch["x"], batch["y"]
        return batch

    def sample_negatives(self, batch: dict[str, tf.Tensor]) -> Any:
        """Samples from the model (SGLD); None for a purely discriminative trainer."""
        return None

    def compute_losses(
        self, batch: dict[str, tf.Tensor], negatives: Any, training: bool = True
    ) -> dict[str, tf.Tensor]:
        """Return a dict of scalars with key "loss" (the total) and the `tracked_names`."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_losses().")

    def optimize(self, batch: dict[str, tf.Tensor], negatives: Any) -> dict[str, tf.Tensor]:
        """One optimisation step of every trainable variable with `self.optimizer`.

        CLEL (two networks, two optimizers) overrides this; everything else shares it. The gradient
        function (plain or SAM) differentiates `logs["loss"]`.
        """
        variables = self.trainable_variables
        grads, logs = self.gradients(self.loss_closure(batch, negatives), variables)
        self.optimizer.apply(add_weight_decay(grads, variables, self.weight_decay), variables)
        return logs

    def loss_closure(self, batch: dict[str, tf.Tensor], negatives: Any) -> Callable[[], dict[str, tf.Tensor]]:
        """The zero-argument loss function the gradient function differentiates (SAM calls it twice:
        at w, then at w + e). Default: `compute_losses(batch, negatives, training=True)` each time."""
        return lambda: self.compute_losses(batch, negatives, training=True)

    def before_step(self, batch: dict[str, tf.Tensor]) -> None:
        """Side effects before sampling and the update (CLEL's official EMA timing). Default: nothing."""
        del batch

    def after_step(self, batch: dict[str, tf.Tensor], negatives: Any, logs: dict[str, tf.Tensor]) -> None:
        """Side effects after the update: queue enqueue (HDGE), EMA (CLEL). Default: nothing."""
        del batch, negatives, logs

    # ------------------------------------------------------------------ shared pieces
    def classifier_logs(self, logits: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        """Cross-entropy, accuracy and mean data energy of a classifier batch (in float32; float64
        for float64 logits)."""
        logits = tf.cast(logits, energy_lib.wide_dtype(logits.dtype))
        clf_loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        clf_acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y), logits.dtype))
        return {
            "loss": clf_loss,
            "clf_loss": clf_loss,
            "clf_acc": clf_acc,
            "energy_data": tf.reduce_mean(energy_lib.energy_from_logits(logits)),
        }

    def track_sampler_logs(self) -> None:
        """Add trackers for what the sampler reports after each step (its `log_names`: an MCMC
        sampler's acceptance rate and step size, `keras_ebm.sampling.mcmc`; SGLD reports none).
        Generative trainers call it once their sampler is set."""
        for name in getattr(self.sampler, "log_names", ()):
            if name not in self.trackers:
                self.trackers[name] = keras.metrics.Mean(name=name)

    def sampler_logs(self) -> dict[str, tf.Tensor]:
        """The sampler's diagnostics after the step (read from its variables), or {}."""
        if not getattr(self.sampler, "log_names", ()):
            return {}
        return self.sampler.logs()

    def update_trackers(self, logs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, tracker in self.trackers.items():
            if name in logs:
                tracker.update_state(logs[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    # Input checks. Shapes and dtypes are checked when the step is traced (a ValueError before the
    # first step runs); values (NaN/Inf, pixel scale, label range) by cheap asserts in the step,
    # and up front for numpy arrays given to `fit` (`check_fit_data`).
    _PIXEL_SCALE_MARGIN = 10.0  # images beyond pixel_range by 10 range-widths: 0..255 pixels
    # [0, 1] images given to a model built for a range with a negative half ([-1, 1]): refused when
    # a batch of at least this many images has no value below 0 (and none above 1). Mapped real
    # images fill the negative half: it is every pixel darker than mid-grey, so a batch of 8 images
    # without one (in any channel) is not a real image batch; [0, 1] data always is one. Ranges
    # without a negative half (CLEL's [0, 1]) are never checked this way.
    _UNIT_RANGE_MIN_BATCH = 8

    def _pixel_bounds(self):
        lo, hi = self.pixel_range
        margin = self._PIXEL_SCALE_MARGIN * (hi - lo)
        return lo - margin, hi + margin

    def _checks_unit_range(self):
        lo, hi = self.pixel_range
        return lo < 0.0 and hi >= 1.0

    def _unit_range_message(self, name):
        lo, hi = (float(v) for v in self.pixel_range)
        fix = "x * 2.0 - 1.0" if (lo, hi) == (-1.0, 1.0) else f"x * {hi - lo:g} + {lo:g}"
        return (
            f"The {name} images lie in [0, 1], but {type(self).__name__} was built for "
            f"pixel_range {self.pixel_range}: training would run on the wrong scale without an "
            f"error. Map them: {name} = {fix} (uint8 images: "
            f"keras_ebm.data.to_pixel_range({name}, {self.pixel_range}))"
        )

    def _image_shape_error(self, name, shape):
        expected = tuple(self.image_shape)
        hint = "Check the dataset's image_size/channels or the trainer's image_shape."
        if len(shape) == 3 and expected[-1] == 1 and tuple(shape[1:]) == expected[:2]:
            hint = (
                f"Grayscale images [N, H, W] need a channel axis: pass {name}[..., None] "
                "(numpy) or tf.expand_dims(x, -1)."
            )
        elif len(shape) == 4 and tuple(shape[1:3]) == expected[:2] and shape[3] != expected[2]:
            hint = (
                f"The images have {shape[3]} channel(s), the trainer {expected[2]}: convert them "
                "(keras_ebm.data sources take `channels=`) or build the trainer for "
                f"image_shape={expected[:2] + (shape[3],)}."
            )
        elif len(shape) == 4 and tuple(shape[1:3]) == (expected[2], expected[0]) and shape[3] == expected[1]:
            hint = "The images look channels-first [N, C, H, W]: transpose them to [N, H, W, C]."
        return ValueError(
            f"{type(self).__name__} was built for images of shape [batch, "
            f"{', '.join(map(str, expected))}]; the '{name}' batch has shape "
            f"{tuple(shape)}. {hint} Received: {name}.shape={tuple(shape)}"
        )

    def _image_dtype_error(self, name, dtype):
        return ValueError(
            f"{type(self).__name__} expects float images in pixel_range {self.pixel_range}; the "
            f"'{name}' batch is {dtype}. Map uint8 images with "
            "keras_ebm.data.to_pixel_range (the datasets of keras_ebm.data do). "
            f"Received: {name}.dtype={dtype}"
        )

    def _check_images(self, x, name, require_examples=False):
        if not tf.is_tensor(x):
            x = tf.convert_to_tensor(x)
        if x.shape.rank != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise self._image_shape_error(name, tuple(x.shape))
        if not x.dtype.is_floating:
            raise self._image_dtype_error(name, x.dtype.name)
        # Images, chains and the replay buffer stay float32 (the variable dtype; float64 under a
        # float64 policy); a mixed-precision network casts its own inputs to its compute dtype.
        x = tf.cast(x, self.variable_dtype)
        if self.check_finite_inputs:
            replicas = tf.distribute.get_strategy().num_replicas_in_sync if require_examples else 1
            if replicas > 1:
                # A last batch smaller than the replica count leaves some replicas none, which
                # fails deep in the backward pass ("LeakyReluGrad ... [0,4,4,16] != [0,8,8,1]").
                # Training only: evaluation (`test_step`) allows it.
                nonempty = tf.debugging.assert_positive(
                    tf.shape(x)[0],
                    message=(
                        f"A replica got an empty {name} batch: the last batch of the dataset has "
                        f"fewer examples than the {replicas} replicas. Batch it with "
                        "drop_remainder=True (keras_ebm.data pipelines do for training), or use a "
                        "batch size and data size that leave every replica at least one example"
                    ),
                )
                with tf.control_dependencies([nonempty]):
                    x = tf.identity(x)
            x = tf.debugging.assert_all_finite(
                x, f"The '{name}' image batch contains NaN or Inf values: check the data pipeline."
            )
            low, high = self._pixel_bounds()
            in_scale = tf.debugging.assert_less_equal(
                tf.reduce_max(tf.abs(x - sum(self.pixel_range) / 2)),
                tf.cast((high - low) / 2, x.dtype),
                message=(
                    f"The {name} images lie far outside pixel_range {self.pixel_range} (beyond "
                    f"[{low:g}, {high:g}]): 0..255 pixels passed as floats? Map uint8 images with "
                    "keras_ebm.data.to_pixel_range(x, pixel_range)."
                ),
            )
            checks = [in_scale]
            if self._checks_unit_range():
                # [0, 1] images on a [-1, 1] model (rule: `_UNIT_RANGE_MIN_BATCH`).
                unit = tf.logical_and(
                    tf.shape(x)[0] >= self._UNIT_RANGE_MIN_BATCH,
                    tf.logical_and(tf.reduce_min(x) >= 0.0, tf.reduce_max(x) <= 1.0),
                )
                checks.append(tf.debugging.Assert(tf.logical_not(unit), [self._unit_range_message(name)]))
            with tf.control_dependencies(checks):
                x = tf.identity(x)
        return x

    def _check_labels(self, y, name):
        """Integer class ids `[batch]` in [0, num_classes): a one-hot batch is refused when the
        step is traced; float labels must hold whole numbers and every label be in range (cheap
        asserts, with `check_finite_inputs`), instead of truncating 2.7 to 2 or feeding an
        out-of-range id to the loss (on a GPU: NaN or silently wrong, no error)."""
        if not self.uses_labels:  # ignored by the objective (CLEL)
            return tf.cast(tf.reshape(y, [-1]), tf.int32)
        if not tf.is_tensor(y):
            y = tf.convert_to_tensor(y)
        if y.shape.rank is not None and (y.shape.rank > 2 or (y.shape.rank == 2 and y.shape[-1] != 1)):
            raise ValueError(
                f"{type(self).__name__} takes integer class labels of shape [batch] (or [batch, 1]); "
                f"the '{name}' batch has shape {tuple(y.shape)}. One-hot labels: pass "
                f"np.argmax({name}, axis=-1). Received: {name}.shape={tuple(y.shape)}"
            )
        if not (y.dtype.is_integer or y.dtype.is_floating or y.dtype == tf.bool):
            raise ValueError(
                f"{type(self).__name__} takes integer class labels; the '{name}' batch is "
                f"{y.dtype.name}. Received: {name}.dtype={y.dtype.name}"
            )
        y = tf.reshape(y, [-1])
        checks = []
        if self.check_finite_inputs and y.dtype.is_floating:
            checks.append(
                tf.debugging.assert_equal(
                    y,
                    tf.round(y),
                    message=(
                        f"The {name} labels are floats that are not whole numbers: labels are "
                        "class ids 0..num_classes-1 (one-hot or soft labels: pass their argmax)."
                    ),
                )
            )
        y = tf.cast(y, tf.int32)
        if self.check_finite_inputs:
            message = (
                f"The {name} labels must be class ids in [0, {self.num_classes}) "
                f"({type(self).__name__}(num_classes={self.num_classes})): the data has more "
                "classes than the trainer, or labels that are not ids (-1 for unlabelled?). "
                "Set num_classes to the number of classes of the data, or remap the labels."
            )
            checks.append(tf.debugging.assert_non_negative(y, message=message))
            checks.append(tf.debugging.assert_less(y, tf.constant(self.num_classes, tf.int32), message=message))
        if checks:
            with tf.control_dependencies(checks):
                y = tf.identity(y)
        return y

    def check_fit_data(self, x: Any, y: Any = None, batch_size: int | None = None) -> None:
        """The checks `fit` runs on its data before anything is traced (cheap: a min/max pass).

        A `tf.data.Dataset` must not be empty (its cardinality is known); numpy arrays or eager
        tensors must be images `[N, *image_shape]`, float, finite, on the `pixel_range` scale,
        with labels `y` (class ids `[N]` in [0, num_classes)), and with a distribution strategy
        no batch smaller than the number of replicas. Anything else (generators, PyDatasets,
        dicts) is checked when the step is traced and run. Raises ValueError naming what is wrong.
        """
        import numpy as np

        if isinstance(x, tf.data.Dataset):
            if int(x.cardinality()) == 0:
                raise ValueError(
                    "The dataset passed to `fit` is empty: it yields no batch, so nothing would "
                    "train (Keras only warns that the input ran out of data). Check its source and "
                    "filters (and that `.batch(..., drop_remainder=True)` leaves a batch). "
                    "Received: x.cardinality()=0"
                )
            return
        if not isinstance(x, np.ndarray) and not (tf.is_tensor(x) and tf.executing_eagerly()):
            return
        x = np.asarray(x)
        if y is None:
            raise ValueError(
                f"{type(self).__name__}.fit needs labels with the images: fit(x, y, ...), y integer "
                "class ids [N] (a dataset of (images, labels) batches works too). Received: y=None"
            )
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(
                "`fit` was given no images: nothing would train (Keras only warns that the input ran "
                f"out of data). Received: x.shape={x.shape}"
            )
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise self._image_shape_error("x", x.shape)
        if not np.issubdtype(x.dtype, np.floating):
            raise self._image_dtype_error("x", x.dtype.name)
        lo_x, hi_x = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo_x) and np.isfinite(hi_x)):
            bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
            raise ValueError(
                f"{len(bad)} image(s) of `x` contain NaN or Inf values: remove or repair them. "
                f"Received: bad image indices {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}"
            )
        low, high = self._pixel_bounds()
        if lo_x < low or hi_x > high:
            raise ValueError(
                f"The images lie far outside the trainer's pixel_range {self.pixel_range}: 0..255 "
                "pixels passed as floats? Map uint8 images with keras_ebm.data.to_pixel_range(x, "
                f"pixel_range). Received: x in [{lo_x:g}, {hi_x:g}]"
            )
        if self._checks_unit_range() and len(x) >= self._UNIT_RANGE_MIN_BATCH and lo_x >= 0.0 and hi_x <= 1.0:
            raise ValueError(f"{self._unit_range_message('x')}. Received: x in [{lo_x:g}, {hi_x:g}]")
        y = np.asarray(y)
        if self.uses_labels and (y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1)):
            raise ValueError(
                f"{type(self).__name__} takes integer class labels of shape [N]; `y` has shape "
                f"{y.shape}. One-hot labels: pass np.argmax(y, axis=-1). Received: y.shape={y.shape}"
            )
        y = y.reshape(-1) if self.uses_labels else np.zeros(len(y), np.int32)  # CLEL ignores labels
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
            raise ValueError(f"`y` must hold integer class labels. Received: y.dtype={y.dtype}")
        if len(y) and np.issubdtype(y.dtype, np.floating) and not np.all(y == np.round(y)):
            raise ValueError(
                "`y` must hold class ids 0..num_classes-1; it holds floats that are not whole "
                "numbers (they would be truncated). One-hot or soft labels: pass their argmax. "
                f"Received: e.g. y={y[y != np.round(y)][:3].tolist()}"
            )
        if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(
                f"`y` must hold class ids in [0, {self.num_classes}) "
                f"({type(self).__name__}(num_classes={self.num_classes})). Set num_classes to the "
                "data's number of classes, or remap the labels. "
                f"Received: y in [{y.min():g}, {y.max():g}]"
            )
        replicas = self.distribute_strategy.num_replicas_in_sync
        if replicas > 1 and len(y) == len(x):
            size = batch_size or 32
            last = len(x) % size if len(x) > size else len(x)
            smallest = min(size, last) if last else size
            if smallest < replicas:
                raise ValueError(
                    f"With {replicas} replicas every batch needs at least {replicas} examples, but "
                    f"{'batch_size' if smallest == size else 'the last batch'} has {smallest} "
                    f"({len(x)} examples in batches of {size}). Use a batch size that is a multiple "
                    f"of {replicas} and divides the data, or drop the last "
                    f"{last} example(s). Received: batch_size={batch_size}, len(x)={len(x)}"
                )

    def fit(
        self, x: Any = None, y: Any = None, batch_size: int | None = None, *args: Any, **kwargs: Any
    ) -> keras.callbacks.History:
        """`keras.Model.fit`, after `check_fit_data` (clear errors for empty, mis-shaped, 0..255,
        NaN or mislabelled data before anything is traced)."""
        self.check_fit_data(x, y, batch_size)
        if self.optimizer is not None:
            # Build the optimizer(s) now, not inside the first traced step: after a step that failed
            # while tracing (mis-shaped data), the next `fit` would otherwise fail with TF's
            # "Creating variables on a non-first call to a function decorated with tf.function".
            if not self.built:
                self(tf.zeros((1,) + tuple(self.image_shape), tf.float32))
            with self.distribute_strategy.scope():
                self.build_optimizers()
        return super().fit(x, y, batch_size, *args, **kwargs)

    # ------------------------------------------------------------------ run hooks
    @property
    def optimizers(self) -> dict[str, keras.optimizers.Optimizer]:
        """The trainer's optimizers by name, as checkpoints name them (CLEL: two)."""
        return {"optimizer": self.optimizer}

    def build_optimizers(self) -> None:
        """Build every optimizer on its variables (before a checkpoint restores their slots)."""
        if self.optimizer is None:
            raise ValueError(
                f"Compile {type(self).__name__} first: `model.compile(optimizer=...)`. Received: optimizer=None"
            )
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def after_training(self, train_data: Any) -> None:
        """Post-training estimates that belong to the model (GMMC's sigma). Default: nothing."""
        del train_data

    @property
    def is_generative(self) -> bool:
        """True when the trainer has a sampler (`generate` works)."""
        return self.sampler is not None

    def default_buffer(
        self,
        size: int,
        initializer: UniformInitializer | InformativeInitializer | None = None,
        reinit_prob: float = 0.05,
        class_conditional: bool = False,
        replacement: bool = True,
    ) -> ReplayBuffer:
        """The replay buffer JEM, GMMC and CLEL build when none is given: `size` chains of the
        training image shape, started from `initializer` (default U(pixel_range)) and
        re-initialised with `reinit_prob`, seeded from the trainer's seed; rows drawn with
        `replacement` (CLEL: without)."""
        return ReplayBuffer(
            size=int(size),
            image_shape=self.image_shape,
            initializer=initializer or UniformInitializer(self.pixel_range),
            reinit_prob=reinit_prob,
            num_classes=self.num_classes,
            class_conditional=class_conditional,
            seed=None if self.seed is None else self.seed + 1,
            replacement=replacement,
        )

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        num_samples: int,
        y: TensorLike | None = None,
        n_steps: int | None = None,
        from_buffer: bool = False,
        **chain_kwargs: Any,
    ) -> tf.Tensor:
        """Draw samples: fresh chains from the initialiser (default) or from the replay buffer.

        Args:
            num_samples: number of samples.
            y: optional int labels `[num_samples]` for class-conditional chains (E(x, y) for the
                JEM family, GMMC's class-conditional energy; CLEL: p(x | z_bar_y)).
            n_steps: SGLD steps (default: the sampler's).
            from_buffer: start from buffer states instead of fresh initialiser draws.
            **chain_kwargs: trainer-specific options of `run_chains` (CLEL: latents, beta, sweeps).

        Returns:
            float images `[num_samples, H, W, C]` in `pixel_range`. The chains change no variable
            of the model (`SGLDSampler.frozen`): drawing samples must not alter what it evaluates.
        """
        if not self.is_generative:
            raise ValueError(f"{type(self).__name__} is not a generative model: it has no sampler.")
        num_samples = int(num_samples)
        seed = tf.random.experimental.stateless_fold_in(tf.cast(self.seed_generator.next(), tf.int64), 0)
        y = self.generation_labels(num_samples, y, tf.random.experimental.stateless_fold_in(seed, 1))
        if from_buffer:
            if self.buffer is None:
                raise ValueError(f"{type(self).__name__} has no replay buffer. Received: from_buffer=True")
            x0, _ = self.buffer.sample(num_samples, y=y if self.buffer.class_conditional else None)
        else:
            init = self.buffer.initializer if self.buffer is not None else UniformInitializer(self.pixel_range)
            x0 = init.init((num_samples,) + self.image_shape, seed, y=y)
        with self.sampler.frozen():
            return self.run_chains(x0, y, n_steps=n_steps, **chain_kwargs)

    def generation_labels(self, num_samples: int, y: TensorLike | None, seed: tf.Tensor) -> tf.Tensor | None:
        """The labels of `generate`'s chains: `y` as int32, or None (GMMC draws random classes)."""
        del num_samples, seed
        return None if y is None else tf.cast(tf.reshape(y, [-1]), tf.int32)

    def run_chains(self, x0: tf.Tensor, y: tf.Tensor | None, n_steps: int | None = None) -> tf.Tensor:
        """Run the sampler from `x0` (labels `y` or None) for `generate`; returns the samples."""
        raise NotImplementedError(f"{type(self).__name__} must implement run_chains() to generate.")
