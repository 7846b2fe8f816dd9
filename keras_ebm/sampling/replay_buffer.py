"""`ReplayBuffer`: the persistent chains of PCD-style SGLD (JEM, JEM++, SADA-JEM, GMMC, CLEL)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from keras_ebm import distribute, memory, random_draws, run_settings
from keras_ebm.sampling.initializers import UniformInitializer

if TYPE_CHECKING:
    from keras_ebm.sampling.initializers import InformativeInitializer, UniformInitializer


@keras.saving.register_keras_serializable(package="keras_ebm")
class ReplayBuffer(keras.layers.Layer):
    """A replay buffer of SGLD chain states, stored as non-trainable weights.

    Because it is a `keras.layers.Layer`, assigning it as an attribute of a `keras.Model` (the
    trainer) puts `buffer` (and `labels`) into the model's `non_trainable_weights`, so
    `save_weights`, `tf.train.Checkpoint` and `CheckpointManager` save and restore it with the
    network, as the JEM reference does. The buffer is filled by `initializer` when the layer is
    built (at construction, deterministically from `seed`); a class-aware initialiser
    (`InformativeInitializer`) fills it class-balanced, `size / num_classes` chains per class in
    contiguous blocks, as the JEM++ and SADA-JEM code does.

    Sampling (`sample`) draws indices uniformly, or, for a class-partitioned buffer, inside the
    contiguous block of `size // num_classes` rows of each requested class
    (`idx = y * block + randint(block)`, JEM's conditional buffer). Each drawn state is replaced by
    a fresh `initializer.init` sample with probability `reinit_prob`.

    Distribution: the buffer is one mirrored variable (aggregation "none"). `update` gathers
    `(idx, x)` from every replica with `all_gather` and every replica applies the same
    `scatter_update`, so the mirrors stay identical and no replica's samples are lost. Randomness
    folds the replica id into the seed (`keras_ebm.distribute.replica_seed`), so replicas draw
    different indices. Without a strategy the same code runs in the default replica context.
    Build the buffer under `strategy.scope()`.

    Duplicate indices (drawn twice by one replica, or by two replicas) are written once with the
    sample that comes last in replica-id-then-batch order ("last write wins", deterministically:
    every write to a row carries that sample, so the scatter order does not matter).

    Serialization: `get_config` holds the settings, the initialiser as a nested Keras object
    (`keras.saving.serialize_keras_object`); saving the owning model as `.keras` stores the chain
    states and labels as the layer's weights, plus a data-fitted initialiser's statistics
    (`InformativeInitializer.get_statistics`), which loading puts back.

    Args:
        size: int, number of stored states (JEM: 10000).
        image_shape: `(height, width, channels)` of the states.
        initializer: chain initialiser with `init(shape, seed, y=None)`, e.g.
            `UniformInitializer((-1, 1))` (default) or `InformativeInitializer`.
        reinit_prob: float in [0, 1], probability γ that a drawn state is replaced by a fresh
            `initializer` sample (JEM 0.05, CLEL 0.001).
        num_classes: int, required when `class_conditional`.
        class_conditional: bool, partition the buffer into `num_classes` contiguous blocks, one
            per class; `labels` holds each row's class. `size` must be divisible by `num_classes`.
        seed: optional int seeding the fill and the `keras.random.SeedGenerator` of `sample`.
        replacement: bool. True (default): each step draws its rows independently, with
            replacement (JEM's `torch.randint`). False: distinct rows within a replica's draw
            (CLEL's `random.sample`; needs `batch <= size`, not for a class-conditional buffer).

    Call args of `sample(batch_size, y=None)`:
        batch_size: int or scalar int tensor (use `tf.shape(x)[0]`); ignored when `y` is given.
        y: optional int labels `[batch]`; only for a class-conditional buffer. Without it a
            class-conditional buffer draws classes uniformly (recover them with `labels_of(idx)`).

    Returns of `sample`: `(x0, idx)`, float32 states `[batch, height, width, channels]` with
    re-initialisations mixed in, and int32 buffer rows `[batch]` to pass to `update`.

    Example:

    ```python
    buffer = ReplayBuffer(size=10000, image_shape=(32, 32, 3), reinit_prob=0.05, seed=0)
    x0, idx = buffer.sample(tf.shape(x)[0])
    x_sample = sampler(energy_fn, x0)
    buffer.update(idx, x_sample)
    ```

    Reference:
        - [Du and Mordatch, 2019](https://arxiv.org/abs/1903.08689), replay buffer.
        - [Grathwohl et al., 2020 (JEM)](https://arxiv.org/abs/1912.03263), PCD buffer.
    """

    # A variable the step reads (change it between steps, no retrace); turning it on or off (0)
    # rebuilds the step (keras_ebm.run_settings).
    reinit_prob = run_settings.Setting(minimum=0.0, maximum=1.0, structure=lambda v: v > 0)

    def __init__(
        self,
        size: int = 10000,
        image_shape: tuple[int, int, int] = (32, 32, 3),
        initializer: UniformInitializer | InformativeInitializer | None = None,
        reinit_prob: float = 0.05,
        num_classes: int | None = None,
        class_conditional: bool = False,
        seed: int | None = None,
        replacement: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        size = int(size)
        image_shape = tuple(int(d) for d in image_shape)
        if size < 1:
            raise ValueError(f"`size` must be a positive integer. Received: size={size}")
        if len(image_shape) != 3:
            raise ValueError(f"`image_shape` must be (height, width, channels). Received: image_shape={image_shape}")
        if not 0.0 <= float(reinit_prob) <= 1.0:
            raise ValueError(f"`reinit_prob` must lie in [0, 1]. Received: reinit_prob={reinit_prob}")
        if class_conditional:
            if num_classes is None or int(num_classes) < 1:
                raise ValueError(
                    f"A class-conditional buffer needs a positive `num_classes`. Received: num_classes={num_classes}"
                )
            if size % int(num_classes):
                raise ValueError(
                    "A class-conditional buffer is split into `num_classes` equal blocks, so "
                    "`size` must be divisible by `num_classes`. "
                    f"Received: size={size}, num_classes={num_classes}"
                )
        if not replacement and class_conditional:
            raise ValueError(
                "A class-conditional buffer draws its rows with replacement. "
                f"Received: replacement={replacement}, class_conditional={class_conditional}"
            )
        self.replacement = bool(replacement)
        self.size = size
        self.image_shape = image_shape
        self.initializer = initializer if initializer is not None else UniformInitializer()
        self.reinit_prob = float(reinit_prob)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_conditional = bool(class_conditional)
        self.seed = seed
        self.block_size = size // self.num_classes if self.class_conditional else size
        # The fill seed is fixed here so that the buffer content is a function of `seed` alone
        # (`random` is what keras.utils.set_random_seed seeds when `seed` is None).
        self._fill_seed = seed if seed is not None else random.randint(0, 2**31 - 1)
        self.seed_generator = keras.random.SeedGenerator(seed)
        memory.check_allocation(
            f"The replay buffer ({size} images of shape {image_shape}, float32)",
            memory.float32_bytes(size, *image_shape) + (4 * size if self.class_conditional else 0),
            "Lower the buffer size (gin: e.g. JEM.buffer_size = 10000, the papers' size).",
            copies=memory.host_copies(),
        )
        self.build()

    def build(self, input_shape: tuple[int | None, ...] | None = None) -> None:
        if self.built:
            return
        fill_seed = tf.constant([self._fill_seed, 0], tf.int64)
        if self.class_conditional:
            self.labels = self.add_weight(
                shape=(self.size,),
                dtype="int32",
                initializer=lambda shape, dtype=None: self._block_labels(),
                trainable=False,
                name="labels",
            )
        else:
            self.labels = None

        def fill(shape, dtype=None):
            dtype = tf.as_dtype(dtype or self.variable_dtype)
            return tf.cast(self._init(shape, fill_seed, self._fill_labels(), dtype), dtype)

        self.buffer = self.add_weight(
            shape=(self.size,) + self.image_shape,
            # float32, also under mixed_bfloat16 (the variable dtype); float64 under a float64 policy.
            dtype=self.variable_dtype,
            initializer=fill,
            trainable=False,
            # `update` scatters into the variable itself; autocast would hand it a cast copy.
            autocast=False,
            name="buffer",
        )
        self.built = True

    def _init(self, shape, seed, y, dtype):
        """`initializer.init` in `dtype` (float64 buffers); float32 buffers call it as before, so
        initialisers without a `dtype` argument keep working."""
        if tf.as_dtype(dtype) == tf.float32:
            return self.initializer.init(shape, seed, y=y)
        return self.initializer.init(shape, seed, y=y, dtype=dtype)

    def _block_labels(self):
        return tf.repeat(tf.range(self.num_classes, dtype=tf.int32), self.block_size)

    def _fill_labels(self):
        """Classes of the initial fill: the blocks of a class-conditional buffer; for a class-aware
        initialiser (JEM++'s class Gaussians) class-contiguous blocks of `size // C` rows
        (sizes differ by at most one when `C` does not divide `size`), as the JEM++ / SADA-JEM code
        fills `buffer_size / C` chains per class; None for a class-free initialiser."""
        if self.class_conditional:
            return self._block_labels()
        num_classes = getattr(self.initializer, "num_classes", None)
        if not num_classes:
            return None
        return tf.cast(tf.range(self.size, dtype=tf.int64) * int(num_classes) // self.size, tf.int32)

    def labels_of(self, idx: tf.Tensor) -> tf.Tensor:
        """The class of buffer rows `idx` in a class-conditional buffer (`idx // block_size`)."""
        if not self.class_conditional:
            raise ValueError(
                f"`labels_of` needs a class-conditional buffer. Received: class_conditional={self.class_conditional}"
            )
        return tf.cast(idx, tf.int32) // self.block_size

    def sample(self, batch_size: int, y: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Draw chain starts `(x0, idx)`; see the class docstring for the arguments."""
        seed = distribute.replica_seed(self.seed_generator)
        fold = tf.random.experimental.stateless_fold_in
        if y is not None:
            if not self.class_conditional:
                raise ValueError(
                    "Labels were passed to `sample` but the buffer is not class-conditional; "
                    "build it with class_conditional=True and num_classes. "
                    f"Received: class_conditional={self.class_conditional}"
                )
            y = tf.cast(tf.reshape(y, [-1]), tf.int32)
            batch_size = tf.shape(y)[0]
        batch_size = tf.cast(batch_size, tf.int32)
        if self.class_conditional:
            if y is None:
                y = random_draws.uniform(
                    "buffer_class", [batch_size], seed=fold(seed, 0), maxval=self.num_classes, dtype=tf.int32
                )
            offset = random_draws.uniform(
                "buffer_index", [batch_size], seed=fold(seed, 1), maxval=self.block_size, dtype=tf.int32
            )
            idx = y * self.block_size + offset
        elif not self.replacement:
            tf.debugging.assert_less_equal(
                batch_size, self.size, message="ReplayBuffer(replacement=False) needs batch <= size"
            )
            idx = random_draws.indices_without_replacement("buffer_index", batch_size, self.size, seed=fold(seed, 1))
        else:
            idx = random_draws.uniform(
                "buffer_index", [batch_size], seed=fold(seed, 1), maxval=self.size, dtype=tf.int32
            )
        # A sparse read: converting the Keras variable to a tensor would copy the whole buffer.
        x_buffer = tf.gather(self.buffer.value, idx)
        if not run_settings.structure_of(self, "reinit_prob"):  # 0: no fresh draws in the graph
            return x_buffer, idx
        # Fresh samples for the whole batch keep the shapes static; only a fraction is kept.
        fresh = tf.cast(self._init(tf.shape(x_buffer), fold(seed, 2), y, x_buffer.dtype), x_buffer.dtype)
        u = random_draws.uniform("reinit", [batch_size], seed=fold(seed, 3))
        reinit = u < run_settings.as_tensor(self.reinit_prob, u.dtype)
        x0 = tf.where(reinit[:, None, None, None], fresh, x_buffer)
        return x0, idx

    def update(self, idx: tf.Tensor, x: tf.Tensor) -> Any:
        """Write states `x` `[batch, height, width, channels]` at buffer rows `idx` `[batch]`.

        Call it in replica context (inside `strategy.run`, e.g. in `train_step`) or without a
        strategy; every replica's rows are written to every mirror.
        """
        idx = tf.cast(tf.reshape(idx, [-1]), tf.int32)
        x = tf.cast(tf.stop_gradient(x), self.buffer.dtype)
        ctx = tf.distribute.get_replica_context()
        if ctx is None:
            raise RuntimeError(
                "ReplayBuffer.update must run in replica context (inside strategy.run or "
                "train_step), where each replica passes its own samples. Received: a call in "
                "cross-replica context"
            )
        if ctx.num_replicas_in_sync > 1:
            idx = ctx.all_gather(idx, axis=0)
            x = ctx.all_gather(x, axis=0)
        # Every write to a row carries the row's last sample, so duplicate indices give the same
        # result whatever order the scatter applies them in (it is unspecified), and the mirrors
        # cannot diverge.
        positions = tf.range(tf.shape(idx)[0], dtype=tf.int32)
        last = tf.math.unsorted_segment_max(positions, idx, num_segments=self.size)
        x = tf.gather(x, tf.gather(last, idx))
        return self.buffer.value.scatter_update(tf.IndexedSlices(x, idx))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "size": self.size,
                "image_shape": list(self.image_shape),
                "initializer": keras.saving.serialize_keras_object(self.initializer),
                "reinit_prob": self.reinit_prob,
                "num_classes": self.num_classes,
                "class_conditional": self.class_conditional,
                "seed": self.seed,
                "replacement": self.replacement,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ReplayBuffer:
        config = dict(config)
        init_config = config.pop("initializer", None)
        if init_config is None:
            initializer = None
        elif "module" in init_config or "registered_name" in init_config:
            initializer = keras.saving.deserialize_keras_object(init_config)
        elif init_config.get("config") is not None:  # the earlier format: a UniformInitializer
            initializer = UniformInitializer(**init_config["config"])
        else:
            raise ValueError(
                f"A {init_config['class_name']} is built from data and cannot be restored from a "
                "config; construct the buffer with `ReplayBuffer(initializer=..., **config)`. "
                f"Received: initializer={init_config}"
            )
        return cls(initializer=initializer, **config)

    # A data-fitted initialiser's statistics travel with the buffer's weights (`.keras` files).
    _STATISTICS_PREFIX = "initializer_"

    def save_own_variables(self, store: dict[str, Any]) -> None:
        super().save_own_variables(store)
        get_statistics = getattr(self.initializer, "get_statistics", None)
        for key, value in (get_statistics() if get_statistics else {}).items():
            store[self._STATISTICS_PREFIX + key] = value

    def load_own_variables(self, store: dict[str, Any]) -> None:
        keys = list(store.keys())
        statistics = {
            k[len(self._STATISTICS_PREFIX) :]: store[k] for k in keys if k.startswith(self._STATISTICS_PREFIX)
        }
        super().load_own_variables({k: store[k] for k in keys if not k.startswith(self._STATISTICS_PREFIX)})
        if statistics:
            self.initializer.set_statistics(**statistics)
