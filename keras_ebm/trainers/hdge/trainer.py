"""HDGE and HDGE+JEM: cross-entropy plus a contrastive estimate of log q(x|y) over a logit queue.

HDGE (Liu & Abbeel 2020, arXiv:2007.09070, eq. 14-15, Algorithm 1) minimises

    alpha * CE(f(x), y) + (1 - alpha) * L_contrastive(f(x), y; queue)

where the queue holds the logits of the last K training examples (`FeatureQueue`,
queue.py) and `keras_ebm.losses.hdge.hdge_contrastive_loss` is the contrastive term.
HDGE+JEM (eq. 17) adds JEM's SGLD log q(x) term; it is this trainer with `px_weight > 0`, using
JEM's sampler and replay buffer unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from keras_ebm import energy as energy_lib
from keras_ebm import run_settings
from keras_ebm.losses.hdge import SCORES, hdge_contrastive_loss, smoothed_labels
from keras_ebm.trainers.hdge.queue import FeatureQueue
from keras_ebm.trainers.jem import JEM

if TYPE_CHECKING:
    from keras_ebm.trainers.hdge.queue import FeatureQueue

# The classifier logits travel from the loss to `after_step` under this key; trackers ignore it.
_LOGITS_KEY = "_hdge_logits"
QUEUE_INITS = ("empty", "random_normal")


@keras.saving.register_keras_serializable(package="keras_ebm")
class HDGE(JEM):
    """Hybrid Discriminative-Generative Energy-based model trainer (HDGE, and HDGE+JEM).

    Each step computes the logits f(x) of the classifier batch once and uses them for
    - log q(y|x): the softmax cross-entropy (JEM's / `EBMTrainer.classifier_logs`' term), and
    - log q(x|y): `hdge_contrastive_loss` of f(x) against the queue of past logits, with the
      unfilled queue rows masked out;
    then, after the optimizer step, enqueues this batch's raw logits (detached), as the official
    code does (lhao499/HDGE model.py; normalising on write, as Algorithm 1's listing does, gives the same
    loss because the loss L2-normalises the queue rows). Under a distribution strategy every
    replica enqueues the logits of the whole global batch, so all replicas hold the same queue.

    The total is `alpha * clf_loss + (1 - alpha) * contrastive_loss (+ px_weight * px_loss)`.
    `alpha = 1` is exactly the cross-entropy trainer (the contrastive term is reported but not
    added), `alpha = 0` is "HDGE (log q(x|y) only)" (Table 1).

    HDGE+JEM (eq. 17, Table 4): pass `px_weight > 0`; the log q(x) term, SGLD sampler and replay
    buffer are JEM's (see `JEM`). Eq. 17 weights the three log-likelihoods equally, which is
    `alpha = 0.5, px_weight = 0.5` (eq. 17 halved; Adam's update does not change when the loss is
    scaled). The official code's README run (`--pyxce 1 --pxycontrast 1 --pxsgld 1`) has the same
    equal weights; its other flags are mis-wired (`--pxcontrast` is weighted by `pxycontrast`,
    the `pxysgld` term by `pxsgld`, lhao499/HDGE train_wrn.py) and are not reproduced here.

    Args:
        network, image_shape, num_classes, pixel_range, gradients, seed: see `EBMTrainer`.
        alpha: weight in [0, 1] of log q(y|x); log q(x|y) gets 1 - alpha (paper: 0.5).
        temperature: tau of the contrastive softmax (paper: 0.1).
        queue_size: K, the number of queued logits (paper: 65536). Any size works; it need not be
            a multiple of the batch size.
        score: `"code"` (default; Algorithm 1 and the official code: masked logsumexp of the
            L2-normalised logits with the one-hot label) or `"logit"` (the normalised class-y
            logit of eq. 15); see `keras_ebm.losses.hdge`.
        label_smoothing: s in [0, 1) applied to the labels of both terms (code `--smoothing`,
            default 0).
        queue: a `FeatureQueue` of dimension `num_classes` to use instead of building one.
        queue_init: `"empty"` (default: zeros, every row masked until written, so an empty queue
            contributes no fake negatives) or `"random_normal"` (the official code: N(0, 1)
            vectors that count as negatives from the first step).
        px_weight: weight of JEM's log q(x) term (default 0: pure HDGE, no replay buffer and no
            SGLD). `sampler`, `buffer_size`, `reinit_prob`, `initializer`, `pxy_weight`,
            `energy_l2` and the rest of JEM's arguments apply when it is positive.

    Batches: `(x, y)`, or `((x, y), (x_px, y_px))` with HDGE+JEM (the code draws the p(x) batch
    separately); the queue gets the classifier batch's logits.

    Reported: loss, clf_loss, contrastive_loss, clf_acc, queue_fill (fraction of valid queue
    rows when the loss was computed), plus JEM's px_loss, energy_data, energy_sample,
    energy_gap, sgld_grad_norm when `px_weight > 0` (and pxy_loss when `pxy_weight > 0`).

    Example:

    ```python
    trainer = HDGE(network, image_shape=(32, 32, 3), num_classes=10, alpha=0.5,
                   temperature=0.1, queue_size=65536)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4))
    trainer.fit(keras_ebm.data.make_dataset("cifar10", "train", 256), steps_per_epoch=195)
    ```

    Reference:
        - [Liu and Abbeel, 2020 (HDGE)](https://arxiv.org/abs/2007.09070), eq. 14-15 and 17,
          Algorithm 1.
        - [Grathwohl et al., 2020 (JEM)](https://arxiv.org/abs/1912.03263) for the log q(x) term.
    """

    def __init__(
        self,
        network: keras.Model,
        image_shape: tuple[int, int, int],
        num_classes: int,
        alpha: float = 0.5,
        temperature: float = 0.1,
        queue_size: int = 65536,
        score: str = "code",
        label_smoothing: float = 0.0,
        queue: FeatureQueue | None = None,
        queue_init: str = "empty",
        px_weight: float = 0.0,
        pxy_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if "clf_weight" in kwargs:
            raise ValueError(
                "HDGE weights the cross-entropy with `alpha` (and the contrastive term with "
                f"1 - alpha); pass alpha instead. Received: clf_weight={kwargs['clf_weight']}"
            )
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"`alpha` must lie in [0, 1]. Received: alpha={alpha}")
        if not float(temperature) > 0:
            raise ValueError(f"`temperature` must be positive. Received: temperature={temperature}")
        if score not in SCORES:
            raise ValueError(f"`score` must be one of {SCORES}. Received: score={score!r}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"`label_smoothing` must lie in [0, 1). Received: label_smoothing={label_smoothing}")
        if queue_init not in QUEUE_INITS:
            raise ValueError(f"`queue_init` must be one of {QUEUE_INITS}. Received: queue_init={queue_init!r}")
        # The reported metrics depend on which JEM terms are on; the base class builds its
        # trackers from `tracked_names` in its constructor, so this must be set first.
        names = ["loss", "clf_loss", "contrastive_loss", "clf_acc", "queue_fill"]
        if px_weight > 0:
            names += ["px_loss", "energy_data", "energy_sample", "energy_gap", "sgld_grad_norm"]
        if pxy_weight > 0:
            names += ["pxy_loss"]
        self.tracked_names = tuple(names)
        super().__init__(
            network,
            image_shape,
            num_classes,
            clf_weight=float(alpha),
            px_weight=px_weight,
            pxy_weight=pxy_weight,
            **kwargs,
        )
        self.temperature = float(temperature)
        self.score = score
        self.label_smoothing = float(label_smoothing)
        if queue is None:
            seed = kwargs.get("seed")
            if queue_init == "empty":
                initializer = "zeros"
            else:  # torch.randn, as the official code's queue
                initializer = keras.initializers.RandomNormal(stddev=1.0, seed=None if seed is None else seed + 2)
            queue = FeatureQueue(
                size=queue_size,
                dim=self.num_classes,
                initializer=initializer,
                initially_full=queue_init == "random_normal",
                name="logit_queue",
            )
        elif queue.dim != self.num_classes:
            raise ValueError(
                "The HDGE queue stores logits, so its `dim` must equal `num_classes` "
                f"({self.num_classes}). Received: queue.dim={queue.dim}"
            )
        self.queue = queue
        self.queue_init = queue_init

    # JEM's arguments without clf_weight, which is alpha here.
    config_attributes = tuple(name for name in JEM.config_attributes if name != "clf_weight") + (
        "alpha",
        "temperature",
        "score",
        "label_smoothing",
        "queue",
        "queue_init",
    )

    # Run-time settings (keras_ebm.run_settings): alpha (stored as JEM's clf_weight) is a variable
    # the step reads; reaching or leaving 1 (the contrastive term leaves the loss) rebuilds the
    # step, as do the temperature, score and label smoothing (Python numbers of the loss).
    clf_weight = run_settings.Setting(minimum=0.0, maximum=1.0, structure=lambda v: v < 1.0)
    temperature = run_settings.TraceSetting(float)
    score = run_settings.TraceSetting()
    label_smoothing = run_settings.TraceSetting(float)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "queue_size": self.queue.size}

    @property
    def alpha(self) -> float:
        """Weight of log q(y|x); it is JEM's `clf_weight`, so the two cannot disagree."""
        return self.clf_weight

    @alpha.setter
    def alpha(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"`alpha` must lie in [0, 1]. Received: alpha={value}")
        self.clf_weight = value

    def _contrastive_on(self):
        """Whether the contrastive term is in the loss (alpha < 1): decides the graph."""
        return run_settings.structure_of(self, "clf_weight")

    def classifier_logs(self, logits: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        """JEM's classifier logs plus the contrastive term; also used by `test_step`."""
        # The queue and the contrastive term are float32 (float64 under a float64 policy).
        logits = tf.cast(logits, energy_lib.wide_dtype(logits.dtype))
        logs = super().classifier_logs(logits, y)
        if self.label_smoothing:
            dist = smoothed_labels(y, self.num_classes, self.label_smoothing, dtype=logits.dtype)
            logs["clf_loss"] = tf.reduce_mean(keras.losses.categorical_crossentropy(dist, logits, from_logits=True))
        contrastive = tf.reduce_mean(
            hdge_contrastive_loss(
                logits,
                y,
                self.queue.values(),
                temperature=self.temperature,
                score=self.score,
                label_smoothing=self.label_smoothing,
                queue_mask=self.queue.valid_mask(),
            )
        )
        logs["contrastive_loss"] = contrastive
        logs["queue_fill"] = self.queue.fill_fraction()
        logs["loss"] = self._hybrid(logs["clf_loss"], contrastive)
        logs[_LOGITS_KEY] = logits
        return logs

    def _hybrid(self, clf_loss, contrastive_loss):
        # alpha = 1 leaves the contrastive term out of the graph of the loss, so its value and
        # gradients are exactly the cross-entropy's.
        if not self._contrastive_on():
            return clf_loss
        alpha = run_settings.as_tensor(self.alpha, clf_loss.dtype)
        return alpha * clf_loss + (1.0 - alpha) * contrastive_loss

    def compute_losses(
        self, batch: dict[str, tf.Tensor], negatives: Any, training: bool = True
    ) -> dict[str, tf.Tensor]:
        # JEM's total is alpha * clf_loss (clf_weight = alpha) plus its log q(x) terms.
        logs = super().compute_losses(batch, negatives, training=training)
        if self._contrastive_on():
            logs["loss"] = (
                logs["loss"]
                + (1.0 - run_settings.as_tensor(self.alpha, logs["contrastive_loss"].dtype)) * logs["contrastive_loss"]
            )
        return logs

    def after_step(self, batch: dict[str, tf.Tensor], negatives: Any, logs: dict[str, tf.Tensor]) -> None:
        super().after_step(batch, negatives, logs)
        # After the loss has read the queue (Algorithm 1: enqueue the current minibatch last).
        self.queue.enqueue(logs.pop(_LOGITS_KEY))
