"""OOD scores, defined once: used by the trainers' `scores(x)`, the export and evaluation.

Every score is `[batch]` and **higher means more in-distribution** (the papers' orientation; AUROC
treats in-distribution as the positive class). For a classifier with logits f(x):

| name | score | reference |
|---|---|---|
| `log_px` | logsumexp_y f(x)[y] = -E(x), log p(x) up to -log Z | JEM (Grathwohl et al. 2020), section 5.2 |
| `max_softmax` | max_y p(y \\| x) | the classifier baseline (Hendrycks & Gimpel 2017) |
| `grad_norm` | -\\|\\| d log p(x) / dx \\|\\|_2 per sample, x the float image in the model's pixel range | JEM section 5.2 "approximate mass"; GMMC (Yang et al. 2021) section 4.3 |

Trainers with scores of their own override `EBMTrainer.scores` (CLEL: eq. 5 and its two parts).
"""  # noqa: E501  (Markdown table rows: a table row cannot wrap)

from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

from keras_ebm import energy as energy_lib

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import keras
    from tensorflow.types.experimental import TensorLike

CLASSIFIER_SCORES = ("log_px", "max_softmax", "grad_norm")


def log_px(logits: tf.Tensor) -> tf.Tensor:
    """logsumexp(logits) = -E(x): log p(x) up to the constant -log Z."""
    return energy_lib.log_px_from_logits(logits)


def max_softmax(logits: tf.Tensor) -> tf.Tensor:
    """max_y p(y|x)."""
    return energy_lib.max_softmax(logits)


def per_sample_norm(x: tf.Tensor) -> tf.Tensor:
    """L2 norm of each sample of a batch, `[batch]`."""
    return tf.norm(tf.reshape(x, [tf.shape(x)[0], -1]), axis=-1)


def logits_and_grad_norm(logits_fn: Callable[[tf.Tensor], tf.Tensor], x: TensorLike) -> tuple[tf.Tensor, tf.Tensor]:
    """`(logits, grad_norm)`: the logits of `x` and -||d log p(x)/dx|| per sample.

    `logits_fn` must run in inference mode (samples of a batch do not interact), so the gradient
    of the summed log p(x) is the per-sample gradient.
    """
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = logits_fn(x)
        value = log_px(logits)
    return logits, -per_sample_norm(tape.gradient(value, x))


def grad_norm(logits_fn: Callable[[tf.Tensor], tf.Tensor], x: TensorLike) -> tf.Tensor:
    """-||d log p(x) / dx||_2 per sample (JEM's approximate mass)."""
    return logits_and_grad_norm(logits_fn, x)[1]


def classifier_scores(
    logits_fn: Callable[[tf.Tensor], tf.Tensor],
    x: TensorLike,
    names: Sequence[str] | None = None,
    return_logits: bool = False,
) -> dict[str, tf.Tensor] | tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The scores `names` (default all of `CLASSIFIER_SCORES`) of images `x`, `{name: [batch]}`.

    One forward pass serves every score (with the backward pass of `grad_norm` when asked).
    With `return_logits`, returns `(logits, scores)`.
    """
    names = CLASSIFIER_SCORES if names is None else tuple(names)
    unknown = [n for n in names if n not in CLASSIFIER_SCORES]
    if unknown:
        raise ValueError(f"Unknown classifier scores {unknown}: choose from {CLASSIFIER_SCORES}.")
    if "grad_norm" in names:
        logits, norm = logits_and_grad_norm(logits_fn, x)
    else:
        logits, norm = logits_fn(x), None
    out = {}
    for name in names:
        out[name] = {
            "log_px": lambda: log_px(logits),
            "max_softmax": lambda: max_softmax(logits),
            "grad_norm": lambda: norm,
        }[name]()
    return (logits, out) if return_logits else out


class Scorer:
    """What the export and evaluation ask of a model: `model(x, training=False)` -> logits, and

    - `is_classifier`: the logits are class logits (JEM's energy, probabilities, the built-in scores);
    - `energy(x)`: `[batch]` energies, lower = more probable (-logsumexp(logits) for a classifier);
    - `scores(x, names=None)`: `{name: [batch]}`, higher = more in-distribution;
    - `score_names`, `default_ood_score`.

    `EBMTrainer` is a Scorer (CLEL overrides `energy`, `scores` and the names); any other Keras
    classifier is adapted with `NetworkScorer`.
    """

    is_classifier = True
    default_ood_score = "log_px"
    score_names = CLASSIFIER_SCORES

    def energy(self, x: TensorLike, training: bool = False) -> tf.Tensor:
        """E(x) = -logsumexp(logits), shape [batch]."""
        return energy_lib.energy_from_logits(self(x, training=training))

    def scores(self, x: TensorLike, names: Sequence[str] | None = None) -> dict[str, tf.Tensor]:
        """OOD scores of float images `x` (log_px, max_softmax, grad_norm), `{name: [batch]}`;
        `names` restricts the set (grad_norm costs a backward pass)."""
        return classifier_scores(lambda v: self(v, training=False), x, names=names)


class NetworkScorer(Scorer):
    """A plain Keras classifier (images -> logits) seen as a `Scorer`."""

    def __init__(self, network: keras.Model) -> None:
        self.network = network

    def __call__(self, x: TensorLike, training: bool = False) -> tf.Tensor:
        return self.network(x, training=training)


def as_scorer(model: keras.Model) -> Scorer:
    """`model` itself when it is a `Scorer` (every keras_ebm trainer), else a `NetworkScorer`."""
    return model if isinstance(model, Scorer) else NetworkScorer(model)
