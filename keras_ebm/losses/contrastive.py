"""NT-Xent (SimCLR's normalised-temperature cross-entropy) with extra negatives (CLEL eq. 4)."""

from __future__ import annotations

import tensorflow as tf

from keras_ebm import distribute


def _gather(tensor):
    # ReplicaContext.all_gather is differentiable (its gradient all-reduces the upstream gradient
    # and keeps the local slice), so keys from other replicas still send gradients to the shared
    # encoder and N replicas take the same step as one device with the gathered batch.
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tensor
    return ctx.all_gather(tensor, axis=0)


def nt_xent_loss(
    z1: tf.Tensor,
    z2: tf.Tensor,
    extra_negatives: tf.Tensor | None = None,
    temperature: float = 0.2,
    normalize: bool = True,
) -> tf.Tensor:
    """NT-Xent over two views, with the views of every replica and extra negatives as candidates.

    For the 2n local views `q` (rows of `z1` then `z2`), the candidates are the 2N views gathered
    from all replicas (N = global batch) plus the M gathered `extra_negatives`; the logits are
    cosine similarities over `temperature`, each view's similarity to itself is masked out, and the
    target of row i of `z1` is row i of `z2` (and vice versa):

        L = mean_q  -log( exp(q.k+ / tau) / sum_{k != q} exp(q.k / tau) )

    CLEL (eq. 4) passes the EBM's latents of its generated samples, z~ = g(f(x~)/||f(x~)||)
    (detached), as `extra_negatives`, so the encoder learns to push generated latents away from
    data views. Without them this is SimCLR's loss.

    Distribution: call it in replica context (inside `train_step` / `strategy.run`). It returns the
    replica's mean over its 2n rows, so the mean over replicas equals the one-device loss of the
    gathered batch; scale it with `keras_ebm.distribute.scale_loss` before differentiating. Local
    row i of replica r is global row `r * n + i` (views) and its positive `N + r * n + i`.

    Args:
        z1, z2: float `[n, d]`, embeddings of the two views of the same n images (row i of `z1` and
            row i of `z2` are positives).
        extra_negatives: optional float `[m, d]`, candidates that are negatives for every view
            (gathered from every replica; gradients do not flow into them).
        temperature: float tau > 0 (SimCLR CIFAR and CLEL: 0.2).
        normalize: L2-normalise the embeddings (set False when they already are).

    Returns:
        A float32 scalar (float64 for float64 embeddings), the mean loss over the 2n local views.

    Reference:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
        arXiv:2002.05709; Lee et al., "Guiding Energy-based Models via Contrastive Latent
        Variables", ICLR 2023, arXiv:2303.03023, eq. 4.
    """
    if not float(temperature) > 0:
        raise ValueError(f"`temperature` must be positive. Received: temperature={temperature}")
    dtype = tf.float64 if tf.as_dtype(z1.dtype) == tf.float64 else tf.float32  # float64 runs stay float64
    z1 = tf.cast(z1, dtype)
    z2 = tf.cast(z2, dtype)
    if normalize:
        z1 = tf.math.l2_normalize(z1, axis=-1)
        z2 = tf.math.l2_normalize(z2, axis=-1)
    n = tf.shape(z1)[0]
    z1_all = _gather(z1)
    z2_all = _gather(z2)
    n_all = tf.shape(z1_all)[0]
    keys = [z1_all, z2_all]
    if extra_negatives is not None:
        neg = tf.stop_gradient(tf.cast(extra_negatives, dtype))
        if normalize:
            neg = tf.math.l2_normalize(neg, axis=-1)
        keys.append(distribute.cross_replica_concat(neg))
    keys = tf.concat(keys, axis=0)
    queries = tf.concat([z1, z2], axis=0)
    logits = tf.matmul(queries, keys, transpose_b=True) / float(temperature)

    offset = distribute.replica_id() * n
    local = tf.range(n, dtype=tf.int32) + offset
    self_idx = tf.concat([local, local + n_all], axis=0)
    positive_idx = tf.concat([local + n_all, local], axis=0)
    self_mask = tf.one_hot(self_idx, tf.shape(keys)[0], on_value=True, off_value=False)
    # A large negative instead of -inf keeps the softmax gradient finite.
    logits = tf.where(self_mask, tf.constant(-1e9, logits.dtype), logits)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive_idx, logits=logits)
    return tf.reduce_mean(losses)
