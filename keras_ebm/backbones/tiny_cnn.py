"""A tiny CNN for tests, the quickstart and CPU smoke runs (any input size, any channel count)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

from keras_ebm.backbones.wide_resnet import _validate_norm

if TYPE_CHECKING:
    from collections.abc import Sequence


def TinyCNN(
    channels: Sequence[int] = (16, 32),
    norm: str | None = None,
    leak: float = 0.2,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    name: str = "tiny_cnn",
) -> keras.Model:
    """Stride-2 3x3 convolutions with LeakyReLU, then global average pooling.

    Each convolution ("same" padding, stride 2) maps a size s to ceil(s / 2), so any input size
    works, odd ones and 8x8 grayscale included; the global pool removes the spatial dimensions.
    Keras default initialisation (the WRN's PyTorch-style init matters only for reproducing papers).

    Args:
        channels: output channels of each convolution (one conv per entry, 2-3 is typical).
        norm: `None`/`"none"` or `"batch"` (BatchNorm with the PyTorch-equivalent momentum 0.1 and
            epsilon 1e-5, as `WideResNet`).
        leak: LeakyReLU negative slope.
        input_shape: `(height, width, channels)`; height and width may be `None`.
        name: model name.

    Returns:
        A functional `keras.Model` mapping `[batch, height, width, in_channels]` images to
        `[batch, channels[-1]]` features.

    Example:
    ```python
    backbone = TinyCNN((8, 16), input_shape=(8, 8, 1))
    backbone(np.zeros((4, 8, 8, 1), "float32")).shape  # (4, 16)
    ```
    """
    _validate_norm(norm)
    channels = tuple(channels)
    if not channels or any(int(c) < 1 for c in channels):
        raise ValueError(
            f"`channels` must list at least one positive width, e.g. (16, 32). Received: channels={channels}"
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (height, width, channels). Received: input_shape={input_shape}")

    inputs = keras.Input(input_shape, name="images")
    h = inputs
    for i, c in enumerate(channels):
        h = keras.layers.Conv2D(int(c), 3, strides=2, padding="same", name=f"conv{i + 1}")(h)
        if norm == "batch":
            h = keras.layers.BatchNormalization(momentum=0.1, epsilon=1e-5, name=f"norm{i + 1}")(h)
        h = keras.layers.LeakyReLU(negative_slope=leak, name=f"act{i + 1}")(h)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, features, name=name)
