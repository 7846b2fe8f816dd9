"""`FeatureQueue`: a FIFO memory bank of past feature vectors (HDGE negatives, MoCo-style)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_ebm import distribute, memory
from keras_ebm import energy as energy_lib


@keras.saving.register_keras_serializable(package="keras_ebm")
class FeatureQueue(keras.layers.Layer):
    """A first-in-first-out queue of `size` vectors of dimension `dim`, stored as weights.

    The queue holds the negatives of a contrastive loss that are too many to recompute every step
    (MoCo, He et al. 2020; HDGE, Liu & Abbeel 2020, section 3, keeps the logits of past batches).
    Storage, write pointer and fill count are non-trainable `add_weight` variables, so assigning
    the queue as an attribute of a `keras.Model` puts them into the model's weights, and
    `save_weights` / `tf.train.Checkpoint` save and restore them with the network (the HDGE code
    keeps its queue in the model's state_dict too).

    `enqueue(rows)` writes rows at `pointer, pointer + 1, ...` modulo `size` and advances the
    pointer: `size` does not have to be a multiple of the batch size (partial last batches and
    writes that wrap around the end are fine; a batch larger than the queue keeps its last `size`
    rows). The queue is filled from row 0, so while it is not full the filled part is rows
    `[0, count)`: `valid_mask()` marks them, and a loss should ignore the other rows, which hold
    the initial content rather than real features. `values()` returns the whole storage
    `[size, dim]` (static shape, for graph mode); combine it with `valid_mask()`.

    Initial content: by default the queue starts empty (zeros, `count = 0`, every row masked), so
    an empty queue contributes no fake negatives. The official HDGE code instead fills its queue
    with `randn` and uses those vectors as negatives from the first step; reproduce that with
    `initializer=keras.initializers.RandomNormal(stddev=1.0), initially_full=True` (then
    `count = size` from the start and `valid_mask()` is all true).

    Distribution: every variable is one mirrored variable (aggregation "none"). `enqueue` first
    gathers the rows of every replica in replica-id order (`keras_ebm.distribute.
    cross_replica_concat`, MoCo's concat_all_gather), then every replica applies the same
    `scatter_update` and pointer update, so all replicas hold the same global queue and the
    pointer advances by the global batch. Build the queue under `strategy.scope()`; call
    `enqueue` in replica context (inside `strategy.run` / `train_step`) or without a strategy.

    Args:
        size: int, number of stored vectors K (HDGE: 65536).
        dim: int, dimension of each vector (HDGE: the number of classes, it stores logits).
        initializer: Keras initializer of the storage (default `"zeros"`).
        initially_full: bool, treat the initial content as valid entries (`count = size`), as the
            HDGE code does with its random initial queue. Default False: start empty.
        name: layer name; also prefixes the variables' paths in checkpoints.

    Call args of `enqueue(rows)`:
        rows: float tensor `[batch, dim]`; gradients are stopped.

    Example:

    ```python
    queue = FeatureQueue(size=65536, dim=10, name="logit_queue")
    loss = contrastive(logits, labels, queue.values(), queue_mask=queue.valid_mask())
    ...  # after the optimizer step
    queue.enqueue(logits)
    ```

    Reference:
        - [He et al., 2020 (MoCo)](https://arxiv.org/abs/1911.05722), dictionary as a queue.
        - [Liu and Abbeel, 2020 (HDGE)](https://arxiv.org/abs/2007.09070), section 3 and
          Algorithm 1.
    """

    def __init__(
        self,
        size: int,
        dim: int,
        initializer: str | keras.initializers.Initializer = "zeros",
        initially_full: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(name=name, **kwargs)
        if int(size) < 1:
            raise ValueError(f"`size` must be a positive integer. Received: size={size}")
        if int(dim) < 1:
            raise ValueError(f"`dim` must be a positive integer. Received: dim={dim}")
        self.size = int(size)
        self.dim = int(dim)
        self.initializer = keras.initializers.get(initializer)
        self.initially_full = bool(initially_full)
        # float32 storage, float64 under a float64 policy (`energy.wide_dtype`, the parity tests).
        self.storage_dtype = energy_lib.wide_dtype(keras.config.floatx()).name
        memory.check_allocation(
            f"The feature queue {self.name!r} ({self.size} x {self.dim} float32)",
            memory.float32_bytes(self.size, self.dim),
            "Lower the queue size (gin: e.g. HDGE.queue_size).",
            copies=memory.host_copies(),
        )
        self.build()

    def build(self, input_shape: tuple[int | None, ...] | None = None) -> None:
        if self.built:
            return
        self.queue = self.add_weight(
            shape=(self.size, self.dim),
            dtype=self.storage_dtype,
            initializer=self.initializer,
            trainable=False,
            # `enqueue` scatters into the variable itself; autocast would hand it a cast copy.
            autocast=False,
            name="queue",
        )
        self.pointer = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="pointer")
        self.count = self.add_weight(
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(self.size if self.initially_full else 0),
            trainable=False,
            name="count",
        )
        self.built = True

    def values(self) -> tf.Tensor:
        """The storage `[size, dim]` float32 (float64 under a float64 policy; all rows; mask them with
        `valid_mask()`)."""
        return tf.convert_to_tensor(self.queue.value)

    def valid_mask(self) -> tf.Tensor:
        """Bool `[size]`: True for rows that hold enqueued (or, if `initially_full`, initial) vectors."""
        return tf.range(self.size, dtype=tf.int32) < tf.convert_to_tensor(self.count.value)

    def fill_fraction(self) -> tf.Tensor:
        """Scalar float32 in [0, 1]: the fraction of rows that are valid."""
        return tf.cast(tf.convert_to_tensor(self.count.value), tf.float32) / float(self.size)

    def enqueue(self, rows: tf.Tensor) -> None:
        """Append `rows` `[batch, dim]` (every replica's, in replica order); see the class docstring."""
        rows = tf.stop_gradient(tf.cast(tf.convert_to_tensor(rows), self.storage_dtype))
        if rows.shape.rank != 2 or (rows.shape[-1] is not None and rows.shape[-1] != self.dim):
            raise ValueError(f"`enqueue` expects rows of shape [batch, {self.dim}]. Received: rows.shape={rows.shape}")
        if tf.distribute.get_replica_context() is None:
            raise RuntimeError(
                "FeatureQueue.enqueue must run in replica context (inside strategy.run or "
                "train_step), where each replica passes its own rows. Received: a call in "
                "cross-replica context"
            )
        rows = distribute.cross_replica_concat(rows, axis=0)
        n = tf.shape(rows)[0]
        # Only the last `size` rows of an oversized batch survive; writing just those keeps the
        # scatter free of duplicate indices (whose order a scatter does not define).
        kept = tf.minimum(n, self.size)
        rows = rows[n - kept :]
        pointer = tf.convert_to_tensor(self.pointer.value)
        idx = (pointer + (n - kept) + tf.range(kept, dtype=tf.int32)) % self.size
        self.queue.value.scatter_update(tf.IndexedSlices(rows, idx))
        self.pointer.assign((pointer + n) % self.size)
        self.count.assign(tf.minimum(tf.convert_to_tensor(self.count.value) + n, self.size))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "size": self.size,
                "dim": self.dim,
                "initializer": keras.initializers.serialize(self.initializer),
                "initially_full": self.initially_full,
            }
        )
        return config
