"""`ServingModule`: the `tf.Module` an export saves and its functions.

Every function takes `images`: pixel values 0..255 `[batch, height, width, channels]` with the
training image shape (see `input_checks.py`), and maps them into the model's `pixel_range` itself.
Scores follow the papers' orientation: **higher means more in-distribution**.

Classifiers and other EBMs. A model is a classifier unless it sets `is_classifier = False`
(`EBMTrainer` attribute). For a classifier the logits define JEM's EBM: energy -logsumexp(logits),
`probabilities`, and the built-in scores `log_px`, `max_softmax`, `grad_norm`. A model that is not a
classifier (CLEL: its "logits" are a latent) is asked for its own quantities through two hooks:
`model.energy(x)` (the `EBMTrainer.energy` method, overridden by CLEL: 0.5 ||f(x)||^2) gives
`energy`, and `model.scores(x)` gives every score; no built-in score and no `probabilities`
are exported for it (they would be JEM quantities of a latent), and no gradient is computed.
Format version 2 (this rule); version 1 exported the JEM quantities for every model.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import tensorflow as tf

from keras_ebm import energy as energy_lib
from keras_ebm import scores as scores_lib
from keras_ebm.data.pixel_range import to_pixel_range  # pure tf ops, the one uint8 -> float map
from keras_ebm.export import input_checks
from keras_ebm.export.format import ENDPOINTS, FORMAT_VERSION, SIGNATURE_DTYPE

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    import keras

BUILTIN_SCORES = scores_lib.CLASSIFIER_SCORES
# Scores that need a gradient: TensorFlow-only (not in the ONNX model).
GRADIENT_SCORES = ("grad_norm",)

# Attribute calls accept these dtypes (besides uint8) with the value checks; any other dtype gets
# TensorFlow's "Could not find matching concrete function".
_CHECKED_DTYPES = (tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)
_SCORE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class _Forward:
    """Holds the model out of sight of object tracking, so that saving never walks the model."""

    def __init__(self, model, extra_scores):
        self.model = model
        self.extra_scores = extra_scores


def _checked_arguments(image_shape, pixel_range, extra_scores):
    """`(image_shape, (lo, hi), extra_scores)` as ints, floats and a dict, or a ValueError."""
    try:
        shape = tuple(int(d) for d in image_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(
            f"`image_shape` must be (height, width, channels) with positive ints. Received: image_shape={image_shape}"
        )
    lo, hi = (float(v) for v in pixel_range)
    if not lo < hi:
        raise ValueError(f"`pixel_range` must be (lo, hi) with lo < hi. Received: pixel_range={pixel_range}")
    extra_scores = dict(extra_scores or {})
    for score_name, fn in extra_scores.items():
        if not callable(fn):
            raise ValueError(
                f"`extra_scores` values must be callables fn(model, x_float) -> [batch]. "
                f"Received: extra_scores[{score_name!r}]={fn!r}"
            )
    return shape, (lo, hi), extra_scores


class ServingModule(tf.Module):
    """A `tf.Module` scoring images (pixel values 0..255) with a trained model, ready for
    `tf.saved_model.save`.

    For a classifier (the default; `model.is_classifier` absent or True) the logits f(x) define the
    energy-based model of JEM: E(x) = -logsumexp_y f(x)[y], i.e. log p(x) = -E(x) - log Z
    (`keras_ebm.energy`). For a model with `is_classifier = False` (CLEL) the energy is
    `model.energy(x)`, the scores are those of `model.scores(x)` (and `extra_scores`) only,
    and `serving_default` has no `probabilities`.

    Built-in OOD scores of classifiers (higher = more in-distribution):
    - `"log_px"`: logsumexp f(x) = -E(x), log p(x) up to the constant log Z (JEM).
    - `"max_softmax"`: max_y p(y|x), the classifier baseline.
    - `"grad_norm"`: -||d log p(x) / dx||_2 per sample, x being the float image in `pixel_range`
      (JEM's "approximate mass"; GMMC). The network runs in inference mode, so samples of a batch
      do not interact and the gradient of the summed log p(x) is the per-sample gradient.

    Functions (each a `tf.function` attribute and, in the SavedModel, a signature of the same
    name), all taking `images`: pixel values 0..255 `[batch, height, width, channels]`, declared
    float32 in the signatures; the attribute functions also take uint8, float16/64 and int32/64
    (`keras_ebm.export.input_checks`):
    - `logits(images)` -> `{"logits": [batch, num_classes]}`
    - `energy(images)` -> `{"energy": [batch]}`: E(x) = -logsumexp(logits) for a classifier,
      `model.energy(x)` otherwise.
    - `ood_score(images)` -> `{"ood_score": [batch]}`, the score named by `ood_score`.
    - `scores(images)` -> `{name: [batch]}` for every score in `score_names`.
    - `serving_default(images)` -> `{"logits", "probabilities", "energy", "ood_score"}` (no
      `"probabilities"` for a model that is not a classifier).

    Metadata variables: `image_shape` (int32 [3]), `pixel_range` (float32 [2]), `num_classes`
    (int32), `ood_score_name` (string), `score_names` (string [n]), `format_version` (int32).
    `network_variables` holds the variables the functions read, and nothing else.

    Args:
        model: a `keras.Model` (or any callable) with `model(x, training=False)` returning logits
            `[batch, num_classes]` for float images `x` in `pixel_range`. If it has a method
            `scores(x)` returning a dict name -> `[batch]` tensor (model-specific scores,
            e.g. CLEL's), those scores are exported too. With `is_classifier = False` it must have
            `energy(x)` returning `[batch]` energies (lower = more probable).
        image_shape: `(height, width, channels)` of the training images.
        pixel_range: `(lo, hi)` range of the float images the model expects; uint8 images are
            mapped by x / 255 * (hi - lo) + lo.
        ood_score: name of the default OOD score, a built-in or extra score name (default
            `model.default_ood_score`, else "log_px").
        extra_scores: optional dict name -> `fn(model, x_float)` returning `[batch]` scores,
            higher = more in-distribution.
        name: name of the module.

    Example:
    ```python
    module = ServingModule(trainer.network, (32, 32, 3), pixel_range=(-1.0, 1.0))
    module.serving_default(tf.zeros([4, 32, 32, 3], tf.uint8))["ood_score"]
    ```
    """

    def __init__(
        self,
        model: keras.Model,
        image_shape: tuple[int, int, int],
        pixel_range: tuple[float, float] = (-1.0, 1.0),
        ood_score: str | None = None,
        extra_scores: Mapping[str, Callable[[keras.Model, tf.Tensor], tf.Tensor]] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        image_shape, (lo, hi), extra_scores = _checked_arguments(image_shape, pixel_range, extra_scores)
        weights = list(getattr(model, "weights", None) or [])  # the export's variable order
        model = scores_lib.as_scorer(model)
        self._forward = _Forward(model, extra_scores)
        self._image_shape = image_shape
        self._pixel_range = (lo, hi)

        # One eager call builds the model and tells the number of classes and the names of the
        # model's own scores, before anything is traced.
        probe = tf.zeros((2,) + image_shape, tf.float32) + (lo + hi) / 2.0
        num_classes = self._probe_model(probe)
        if ood_score is None:
            ood_score = model.default_ood_score
        score_names = self._probe_scores(probe, extra_scores)
        if ood_score not in score_names:
            raise ValueError(f"`ood_score` must be one of {score_names}. Received: ood_score={ood_score!r}")
        self._num_classes = num_classes
        self._ood_score = ood_score
        self._score_names = tuple(score_names)
        self._output_keys = {
            "logits": {"logits": (num_classes,)},
            "energy": {"energy": ()},
            "ood_score": {"ood_score": ()},
            "scores": dict.fromkeys(score_names, ()),
            "serving_default": {
                "logits": (num_classes,),
                "energy": (),
                "ood_score": (),
            },
        }
        if self._classifier:
            self._output_keys["serving_default"]["probabilities"] = (num_classes,)

        self.image_shape = tf.Variable(image_shape, dtype=tf.int32, trainable=False, name="image_shape")
        self.pixel_range = tf.Variable([lo, hi], dtype=tf.float32, trainable=False, name="pixel_range")
        self.num_classes = tf.Variable(num_classes, dtype=tf.int32, trainable=False, name="num_classes")
        self.ood_score_name = tf.Variable(ood_score, dtype=tf.string, trainable=False)
        self.score_names = tf.Variable(list(score_names), dtype=tf.string, trainable=False)
        self.format_version = tf.Variable(FORMAT_VERSION, dtype=tf.int32, trainable=False)

        self.logits = self._make_function("logits", self._logits_fn)
        self.energy = self._make_function("energy", self._energy_fn)
        self.ood_score = self._make_function("ood_score", self._ood_score_fn)
        self.scores = self._make_function("scores", self._scores_fn)
        self.serving_default = self._make_function("serving_default", self._serving_default_fn)
        self.network_variables = self._captured_variables(weights)

    def _probe_model(self, probe):
        """Call the model (and, for a model that is not a classifier, its energy) on `probe`;
        check the output shapes and return the number of classes."""
        model = self._forward.model
        logits = model(probe, training=False)
        if len(logits.shape) != 2 or logits.shape[0] != 2:
            raise ValueError(
                "`model(x, training=False)` must return logits of shape [batch, num_classes]. "
                f"Received: logits.shape={tuple(logits.shape)} for x.shape={tuple(probe.shape)}"
            )
        num_classes = int(logits.shape[-1])
        self._classifier = bool(model.is_classifier)
        if not self._classifier:
            energy = model.energy(probe)
            if tuple(energy.shape) != (2,):
                raise ValueError(
                    "`model.energy(x)` must return shape [batch]. Received: "
                    f"shape={tuple(energy.shape)} for a batch of 2"
                )
        return num_classes

    def _probe_scores(self, probe, extra_scores):
        """The names of every exported score (built-ins first, then the model's, then
        `extra_scores`), each checked to be a new identifier with values of shape [batch]."""
        model_scores = self._model_scores(probe)
        score_names = list(BUILTIN_SCORES) if self._classifier else []
        for source, names in (("scores", model_scores), ("extra_scores", extra_scores)):
            for score_name in names:
                if not isinstance(score_name, str) or not _SCORE_NAME.match(score_name):
                    raise ValueError(
                        f"Score names from `{source}` must be identifiers (letters, digits, _). "
                        f"Received: name={score_name!r}"
                    )
                if score_name in score_names:
                    raise ValueError(
                        f"Score name {score_name!r} from `{source}` is already taken; scores "
                        f"so far: {score_names}. Received: name={score_name!r}"
                    )
                score_names.append(score_name)
        for score_name, value in self._all_extra_scores(probe).items():
            if tuple(value.shape) != (2,):
                raise ValueError(
                    f"Score {score_name!r} must have shape [batch]. Received: "
                    f"shape={tuple(value.shape)} for a batch of 2"
                )
        return score_names

    def _captured_variables(self, weights):
        """Exactly the variables the traced functions captured: anything else the model owns
        (replay buffer, queue, optimizer slots, EMA copies) stays out of the SavedModel. In the
        model's own weight order (then by name): the traces list their captures in an order that
        changes from process to process, and an export should be reproducible."""
        captured = {}
        for endpoint in ENDPOINTS:
            for variable in self.concrete_function(endpoint).variables:
                captured.setdefault(id(variable), variable)
        order = {}
        for weight in weights:
            order.setdefault(id(getattr(weight, "value", weight)), len(order))
        return sorted(captured.values(), key=lambda v: (order.get(id(v), len(order)), v.name))

    # ------------------------------------------------------------------ public helpers
    @property
    def score_name_list(self) -> list[str]:
        """Names of all exported scores, built-ins first."""
        return list(self._score_names)

    def concrete_function(self, endpoint: str) -> tf.types.experimental.ConcreteFunction:
        """The float32 `[None, H, W, C]` concrete function of `endpoint`, exported as its signature."""
        return getattr(self, endpoint).get_concrete_function(self._input_spec(SIGNATURE_DTYPE))

    def signature_functions(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """Dict endpoint name -> concrete function, for `tf.saved_model.save(signatures=...)`."""
        return {endpoint: self.concrete_function(endpoint) for endpoint in ENDPOINTS}

    @property
    def onnx_output_names(self) -> list[str]:
        """Outputs of the ONNX model: logits, probabilities (classifiers), energy, every score
        that needs no gradient, and ood_score when the default score is one of them."""
        names = ["logits"] + (["probabilities"] if self._classifier else []) + ["energy"]
        names += [n for n in self._score_names if n not in GRADIENT_SCORES]
        if self._ood_score not in GRADIENT_SCORES:
            names.append("ood_score")
        return names

    def onnx_function(self) -> tf.types.experimental.PolymorphicFunction:
        """A `tf.function` of uint8 `[None, H, W, C]` images returning `onnx_output_names`: the
        forward quantities only, without the in-graph shape assertions (ONNX has no ops for them;
        onnxruntime checks the declared input shape and dtype itself)."""
        forward_scores = [n for n in self._score_names if n not in GRADIENT_SCORES]

        def forward(images):
            x = to_pixel_range(images, self._pixel_range)
            logits, scores = self._compute_scores(x, forward_scores)
            if logits is None:
                logits = self._call_model(x)
            out = {"logits": logits, "energy": self._energy(x, logits)}
            if self._classifier:
                out["probabilities"] = tf.nn.softmax(logits, axis=-1)
            out.update(scores)
            if self._ood_score not in GRADIENT_SCORES:
                out["ood_score"] = tf.identity(scores[self._ood_score])
            return {name: tf.identity(out[name], name=name) for name in self.onnx_output_names}

        return tf.function(forward, input_signature=[self._input_spec(tf.uint8, declared=True)])

    def metadata(self) -> dict[str, Any]:
        """The JSON-serialisable description written beside the SavedModel."""
        h, w, c = self._image_shape
        input_spec = {
            "images": {
                "dtype": SIGNATURE_DTYPE.name,
                "shape": [None, h, w, c],
                "values": "whole numbers in [0, 255] (pixel values)",
            }
        }
        return {
            "format": "keras_ebm.export",
            "format_version": FORMAT_VERSION,
            "image_shape": list(self._image_shape),
            "pixel_range": list(self._pixel_range),
            "num_classes": self._num_classes,
            # False for models whose "logits" are not class scores (CLEL: a latent): their energy
            # and scores are the model's own, and evaluation reports no accuracy/ECE.
            "classifier": self._classifier,
            "ood_score": self._ood_score,
            "score_names": list(self._score_names),
            "signatures": {
                endpoint: {"inputs": input_spec, "outputs": sorted(self._output_keys[endpoint])}
                for endpoint in ENDPOINTS
            },
            "conventions": {
                "scores": "higher = more in-distribution",
                "energy": self._energy_convention(),
                "pixel_range": "pixel values 0..255 are mapped to x / 255 * (hi - lo) + lo",
            },
        }

    def _energy_convention(self):
        if self._classifier:
            return "E(x) = -logsumexp(logits) = -log p(x) - log Z (lower = more probable)"
        doc = (self._forward.model.energy.__doc__ or "").strip().splitlines()
        return (
            f"{type(self._forward.model).__name__}.energy: {doc[0] if doc else 'the model energy'} "
            "(lower = more probable)"
        )

    # ------------------------------------------------------------------ tracing
    def _input_spec(self, dtype=SIGNATURE_DTYPE, declared=True):
        """`images` `[None, H, W, C]` of `dtype`; `declared=False`: unknown rank (the
        attribute-call traces that assert the shape themselves, with a readable message)."""
        shape = (None,) + self._image_shape if declared else None
        return tf.TensorSpec(shape=shape, dtype=dtype, name="images")

    def _make_function(self, endpoint, body):
        def core(images, from_uint8):
            x = input_checks.model_input(images, from_uint8, self._image_shape, self._pixel_range)
            # An empty batch gets an empty result: some kernels (oneDNN batch norm) fail on
            # zero-sized batches with "Incompatible shapes: [0,8,8,32] vs. [64]".
            return tf.cond(
                tf.shape(x)[0] > 0,
                lambda: body(x),
                lambda: self._empty_outputs(endpoint),
            )

        # The model is traced once, for float32 of unknown rank; the function callers see casts
        # any accepted dtype to float32 (exact for uint8, and for the whole numbers 0..255 that
        # pass the checks) and calls it.
        core.__name__ = endpoint + "_core"
        traced_core = tf.function(
            core, input_signature=[self._input_spec(tf.float32, declared=False), tf.TensorSpec([], tf.bool)]
        )

        def function(images):
            return traced_core(tf.cast(images, tf.float32), tf.constant(images.dtype == tf.uint8))

        function.__name__ = endpoint
        traced = tf.function(function)
        traced.get_concrete_function(self._input_spec(SIGNATURE_DTYPE, declared=True))  # the signature
        for dtype in (tf.uint8,) + _CHECKED_DTYPES:
            traced.get_concrete_function(self._input_spec(dtype, declared=False))
        return traced

    def _empty_outputs(self, endpoint):
        return {key: tf.zeros((0,) + tail, tf.float32) for key, tail in self._output_keys[endpoint].items()}

    # ------------------------------------------------------------------ scores
    def _call_model(self, x):
        return self._forward.model(x, training=False)

    def _model_scores(self, x):
        """The model's own scores: `model.scores(x, names)` for the names of `model.score_names`
        that are not built-ins (all of them for a model that is not a classifier)."""
        model = self._forward.model
        names = [n for n in model.score_names if not (self._classifier and n in BUILTIN_SCORES)]
        if not names:
            return {}
        scores = model.scores(x, names)
        if not isinstance(scores, dict):
            raise ValueError(
                f"`model.scores(x, names)` must return a dict name -> [batch] tensor. Received: {type(scores).__name__}"
            )
        return dict(scores)

    def _all_extra_scores(self, x):
        scores = self._model_scores(x)
        for score_name, fn in self._forward.extra_scores.items():
            scores[score_name] = fn(self._forward.model, x)
        return {k: tf.cast(v, tf.float32) for k, v in scores.items()}

    def _energy(self, x, logits=None):
        if self._classifier:
            return energy_lib.energy_from_logits(self._call_model(x) if logits is None else logits)
        return tf.cast(self._forward.model.energy(x), tf.float32)

    def _compute_scores(self, x, names, logits=None):
        """(logits or None, {name: score}); the logits only when a built-in score needed them."""
        builtin = [n for n in names if n in BUILTIN_SCORES]
        scores = {}
        if builtin:  # one forward pass (and one backward for grad_norm): keras_ebm.scores
            logits, scores = scores_lib.classifier_scores(self._call_model, x, builtin, return_logits=True)
        if any(n not in BUILTIN_SCORES for n in names):
            scores.update(self._all_extra_scores(x))
        return logits, {n: scores[n] for n in names}

    def _logits_fn(self, x):
        return {"logits": self._call_model(x)}

    def _energy_fn(self, x):
        return {"energy": self._energy(x)}

    def _ood_score_fn(self, x):
        _, scores = self._compute_scores(x, [self._ood_score])
        return {"ood_score": scores[self._ood_score]}

    def _scores_fn(self, x):
        _, scores = self._compute_scores(x, self._score_names)
        return scores

    def _serving_default_fn(self, x):
        logits, scores = self._compute_scores(x, [self._ood_score])
        if logits is None:
            logits = self._call_model(x)
        out = {"logits": logits, "energy": self._energy(x, logits), "ood_score": scores[self._ood_score]}
        if self._classifier:
            out["probabilities"] = tf.nn.softmax(logits, axis=-1)
        return out
