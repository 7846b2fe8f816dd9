"""The one energy convention of keras_ebm (JEM, Grathwohl et al. 2020, eq. 4-5).

A classifier with logits f(x) defines an energy-based model of the joint distribution:

    E(x, y) = -f(x)[y]                      log p(x, y) = f(x)[y] - log Z
    E(x)    = -logsumexp_y f(x)[y]          log p(x)    = logsumexp_y f(x)[y] - log Z

Lower energy means more probable. Samplers always *descend* E. Every trainer, sampler, evaluation
score and export in the library goes through these functions; nothing else writes the sign. They
compute in float32 whatever the logits' dtype (a mixed_bfloat16 network's logits are cast first),
except float64 logits, which stay float64 (`wide_dtype`: a trainer built under a float64 policy
computes its whole step in float64, as the parity tests need).
"""

from __future__ import annotations

import tensorflow as tf


def wide_dtype(dtype: tf.DType | str) -> tf.DType:
    """The dtype energies, losses and logits are computed in for a tensor of `dtype`: float64 stays
    float64, every other float (float32, bfloat16, float16) gives float32."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def _wide(x):
    x = tf.convert_to_tensor(x)
    return tf.cast(x, wide_dtype(x.dtype))


def energy_from_logits(logits: tf.Tensor) -> tf.Tensor:
    """E(x) = -logsumexp(logits) over the last axis. Shape [batch, classes] -> [batch]."""
    return -tf.reduce_logsumexp(_wide(logits), axis=-1)


def log_px_from_logits(logits: tf.Tensor) -> tf.Tensor:
    """log p(x) up to the constant -log Z: logsumexp(logits) = -E(x). Higher is more in-distribution."""
    return tf.reduce_logsumexp(_wide(logits), axis=-1)


def class_energy(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """E(x, y) = -logits[y]. `y` int [batch] -> energy [batch]."""
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    return -tf.gather(_wide(logits), y, axis=-1, batch_dims=1)


def max_softmax(logits: tf.Tensor) -> tf.Tensor:
    """max_y p(y|x), the classifier's confidence; an OOD score (higher = in-distribution)."""
    return tf.reduce_max(tf.nn.softmax(_wide(logits), axis=-1), axis=-1)
