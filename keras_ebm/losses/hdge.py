"""The HDGE objective (Liu & Abbeel 2020, arXiv:2007.09070): cross-entropy + a contrastive log q(x|y).

HDGE maximises alpha * log q(y|x) + (1 - alpha) * log q(x|y) (eq. 14). The first term is the
softmax classifier; the second, q(x|y) = exp(f(x)[y]) / Z(theta), is approximated by contrasting
the sample's class-y score with the class-y scores of K earlier training examples kept in a queue
(eq. 13, 15):

    log q(x|y) ~ log exp(s(x, y) / tau) / (exp(s(x, y) / tau) + sum_k exp(s_k(y) / tau))

where the scores are computed on L2-normalised logits and the queue holds the logits of past
batches (Algorithm 1). This module holds the pure functions; the queue (`keras_ebm.trainers.hdge.
FeatureQueue`) and its enqueue belong to the trainer (`keras_ebm.trainers.HDGE`).

Two score functions:

* `score="code"` (default; Algorithm 1 and the official code, lhao499/HDGE model.py): with p = f(x) /
  ||f(x)|| and d the (optionally smoothed) one-hot label,
      s(x, y)  = logsumexp_c(d_c * p_c)
      s_k(y)   = logsumexp_c(d_c * q_kc),   q_k = queue_k / ||queue_k||.
  With a one-hot d every other class contributes exp(0) = 1, so s = log(exp(p_y) + C - 1): a much
  flatter score than p_y (its range is about 2.2 for C = 10 and 0.23 for C = 100, after dividing
  by tau = 0.1). This is what produced the paper's numbers. Note the negatives use the *query's
  label* d with the stored vector (eq. 13: f(x_i)[y] with the same y), not the query's
  normalised logits as the einsum of Algorithm 1's listing suggests.
* `score="logit"` (eq. 15 as written): s(x, y) = <d, p> (= p_y for a one-hot
  label) and s_k(y) = <d, q_k>: the normalised class-y logit over tau, a much sharper loss.

The queue entries carry no gradient (they come from earlier steps), so only s(x, y) is
differentiated.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ebm.energy import wide_dtype

SCORES = ("code", "logit")


def _check(temperature, score, label_smoothing):
    if score not in SCORES:
        raise ValueError(f"`score` must be one of {SCORES}. Received: score={score!r}")
    if not float(temperature) > 0:
        raise ValueError(f"`temperature` must be positive. Received: temperature={temperature}")
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"`label_smoothing` must lie in [0, 1). Received: label_smoothing={label_smoothing}")


def smoothed_labels(
    labels: tf.Tensor, num_classes: int, label_smoothing: float = 0.0, dtype: tf.DType | str = tf.float32
) -> tf.Tensor:
    """One-hot labels `[batch, num_classes]`, smoothed as Keras does: (1 - s) * onehot + s / C."""
    dist = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), num_classes, dtype=dtype)
    if label_smoothing:
        dist = dist * (1.0 - label_smoothing) + label_smoothing / num_classes
    return dist


def hdge_contrastive_loss(
    logits: tf.Tensor,
    labels: tf.Tensor,
    queue_logits: tf.Tensor,
    temperature: float = 0.1,
    score: str = "code",
    label_smoothing: float = 0.0,
    queue_mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """Per-example contrastive estimate of -log q(x|y) (HDGE eq. 13/15, Algorithm 1).

    The loss of example n is the cross-entropy of the (1 + K)-way softmax over
    `[s(x_n, y_n), s_1(y_n), ..., s_K(y_n)] / temperature` with the positive at index 0, where the
    scores are those of the module docstring (`score="code"` or `"logit"`).

    Args:
        logits: float `[batch, num_classes]`, the classifier's raw logits f(x).
        labels: int `[batch]` class labels y.
        queue_logits: float `[K, num_classes]`, logits of earlier examples (raw or already
            normalised: rows are L2-normalised here, which is idempotent). No gradient flows
            into them.
        temperature: tau > 0 (paper: 0.1).
        score: `"code"` (default) or `"logit"`, see the module docstring.
        label_smoothing: s in [0, 1): the label d is (1 - s) * onehot + s / C (Keras's smoothing;
            the code's `--smoothing`, default 0).
        queue_mask: optional bool `[K]`; False rows (unfilled queue slots) are left out of the
            denominator. Default: every row counts.

    Returns:
        float32 `[batch]` (float64 for float64 logits). With an empty (all-masked) queue the loss is exactly 0.
    """
    _check(temperature, score, label_smoothing)
    dtype = wide_dtype(logits.dtype)  # float32; float64 logits stay float64
    logits = tf.cast(logits, dtype)
    num_classes = tf.compat.dimension_value(logits.shape[-1])
    if num_classes is None:
        raise ValueError(f"`logits` must have a static class dimension. Received: logits.shape={logits.shape}")
    queue = tf.stop_gradient(tf.cast(queue_logits, dtype))
    if queue.shape.rank != 2 or queue.shape[-1] != num_classes:
        raise ValueError(
            f"`queue_logits` must have shape [K, {num_classes}] (one row of logits per stored "
            f"example). Received: queue_logits.shape={queue_logits.shape}"
        )
    dist = smoothed_labels(labels, num_classes, label_smoothing, dtype=dtype)
    # F.normalize semantics (divide by max(||v||, 1e-12)); an all-zero row stays zero.
    query = tf.math.l2_normalize(logits, axis=-1, epsilon=1e-24)
    keys = tf.math.l2_normalize(queue, axis=-1, epsilon=1e-24)
    if score == "code":
        positive = tf.reduce_logsumexp(dist * query, axis=-1)
        negatives = _masked_lse_scores(keys, labels, label_smoothing, num_classes)
    else:
        positive = tf.reduce_sum(dist * query, axis=-1)
        negatives = tf.matmul(dist, keys, transpose_b=True)
    if queue_mask is not None:
        mask = tf.reshape(tf.cast(queue_mask, tf.bool), [1, -1])
        negatives = tf.where(mask, negatives, tf.constant(-float("inf"), negatives.dtype))
    # -log(exp(pos) / (exp(pos) + sum_k exp(neg_k))) = softplus(logsumexp_k(neg_k) - pos). The
    # negatives carry no gradient, so their [batch, K] logsumexp is reduced once and never enters
    # the backward pass (a concatenated (1 + K)-way softmax would differentiate all of it).
    # An empty queue gives logsumexp = -inf and a loss of exactly 0.
    negatives_lse = tf.stop_gradient(tf.reduce_logsumexp(negatives / temperature, axis=1))
    return tf.nn.softplus(negatives_lse - positive / temperature)


def _masked_lse_scores(keys, labels, label_smoothing, num_classes):
    """logsumexp_c(d_nc * k_kc) for every query n and key k, `[batch, K]`, in O(batch * K) memory.

    The direct form needs a [batch, K, C] tensor (6.7 GB for batch 256, K = 65536, C = 100). The
    smoothed label takes only two values, a = 1 - s + s/C on the label and b = s/C elsewhere, so
        sum_c exp(d_c k_c) = exp(a k_y) - exp(b k_y) + sum_c exp(b k_c),
    where the last sum does not depend on the query. |d_c k_c| <= 1 (unit keys), so the
    exponentials cannot overflow and no max-shift is needed.
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    b = label_smoothing / num_classes
    a = 1.0 - label_smoothing + b
    key_label = tf.transpose(tf.gather(keys, labels, axis=1))  # [batch, K]: k_{k, y_n}
    others = tf.reduce_sum(tf.exp(b * keys), axis=-1)  # [K]; = C for one-hot labels
    return tf.math.log(tf.exp(a * key_label) - tf.exp(b * key_label) + others[None, :])


def hdge_loss(
    logits: tf.Tensor,
    labels: tf.Tensor,
    queue_logits: tf.Tensor,
    alpha: float = 0.5,
    temperature: float = 0.1,
    score: str = "code",
    label_smoothing: float = 0.0,
    queue_mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """Per-example HDGE objective alpha * CE + (1 - alpha) * contrastive (eq. 14-15).

    `alpha = 1` is exactly the (label-smoothed) cross-entropy: the contrastive term is not
    computed at all. `alpha = 0` is "HDGE (log q(x|y) only)" of Table 1.

    Args:
        logits, labels, queue_logits, temperature, score, label_smoothing, queue_mask: see
            `hdge_contrastive_loss`; `label_smoothing` also applies to the cross-entropy, as in
            the official code (its CE uses the same smoothed label).
        alpha: weight in [0, 1] of log q(y|x).

    Returns:
        float32 `[batch]`.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must lie in [0, 1]. Received: alpha={alpha}")
    logits = tf.cast(logits, tf.float32)
    if label_smoothing:
        dist = smoothed_labels(labels, logits.shape[-1], label_smoothing)
        ce = keras.losses.categorical_crossentropy(dist, logits, from_logits=True)
    else:
        ce = keras.losses.sparse_categorical_crossentropy(tf.reshape(labels, [-1]), logits, from_logits=True)
    if alpha == 1.0:
        return ce
    contrastive = hdge_contrastive_loss(
        logits,
        labels,
        queue_logits,
        temperature=temperature,
        score=score,
        label_smoothing=label_smoothing,
        queue_mask=queue_mask,
    )
    if alpha == 0.0:
        return contrastive
    return alpha * ce + (1.0 - alpha) * contrastive
