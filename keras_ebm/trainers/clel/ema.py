"""`ModelEMA`: an exponential moving average of a Keras model's weights, as a tracked shadow model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from tensorflow.types.experimental import TensorLike


class ModelEMA(keras.layers.Layer):
    """Shadow copy of a model whose weights follow an exponential moving average.

    The shadow is a clone of `model` (`keras.models.clone_model`) marked non-trainable, so its
    weights are tracked variables of whatever owns this layer (they enter checkpoints) and are not
    optimised. `update(decay)` sets, for each pair of weights,

        shadow <- decay * shadow + (1 - decay) * weight     (trainable weights)
        shadow <- weight                                    (non-trainable: BN statistics, spectral-
                                                             norm vectors), as CLEL's EMA does

    `decay` may be a tensor, e.g. 0 during a burn-in (CLEL: 0 before step halflife / batch, then
    0.5 ** (batch / halflife)). Evaluate with `ema(x)` (inference mode) or the `model` attribute;
    `assign_to(model)` copies the averages into another model of the same architecture.

    Args:
        model: a built `keras.Model` (functional or Sequential, so that it can be cloned).
        name: layer name.

    Example:

    ```python
    ema = ModelEMA(network)
    ema.update(0.999)          # after each optimizer step
    scores = ema(x)            # the averaged network, training=False
    ```
    """

    def __init__(self, model: keras.Model, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if not model.built:
            raise ValueError(
                f"`ModelEMA` needs a built model (call it once or build it). Received: model.built={model.built}"
            )
        self.model = keras.models.clone_model(model)
        self.model.set_weights(model.get_weights())
        self.model.trainable = False
        # Held outside Keras' attribute tracking: the source weights belong to the source model,
        # and tracking them here would list them twice in the owner's (trainable) variables.
        self._refs = _Untracked(
            pairs=list(zip(self.model.weights, model.weights)),
            trainable={id(w) for w in model.trainable_weights},
        )
        for shadow, weight in self._refs.pairs:
            if tuple(shadow.shape) != tuple(weight.shape):
                raise ValueError(
                    "The clone's weights do not line up with the model's; use a functional model. "
                    f"Received: shadow {shadow.path} {shadow.shape} vs weight {weight.path} {weight.shape}"
                )

    def update(self, decay: float | tf.Tensor) -> None:
        """One EMA step with `decay` in [0, 1] (a float or a scalar tensor)."""
        decay = tf.convert_to_tensor(decay)  # cast per weight: a float64 decay stays exact for float64 weights
        for shadow, weight in self._refs.pairs:
            value = tf.convert_to_tensor(weight)
            if id(weight) in self._refs.trainable:
                d = tf.cast(decay, value.dtype)
                value = d * tf.convert_to_tensor(shadow) + (1.0 - d) * value
            shadow.assign(value)

    def assign_to(self, model: keras.Model) -> None:
        """Copy the averaged weights into `model` (same architecture), e.g. to evaluate it in place."""
        for shadow, weight in zip(self.model.weights, model.weights):
            weight.assign(shadow)

    def call(self, x: TensorLike, training: bool = False) -> tf.Tensor:
        return self.model(x, training=False)


class _Untracked:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
