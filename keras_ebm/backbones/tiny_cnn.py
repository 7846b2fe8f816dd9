"""A tiny CNN for tests, the quickstart and CPU smoke runs (any input size, 1 or 3 channels)."""

import keras

from keras_ebm.backbones.wide_resnet import NORMS


def TinyCNN(channels=(16, 32), norm=None, leak=0.2, input_shape=(None, None, 3), name="tiny_cnn"):
    """Stride-2 3x3 convolutions with LeakyReLU, then global average pooling.

    Args:
        channels: output channels of each conv; each halves the resolution (ceil).
        norm: None/"none" or "batch" (BatchNorm with PyTorch-equivalent momentum 0.1, eps 1e-5).
        leak: LeakyReLU negative slope.
        input_shape: `(height, width, channels)`; `None` sizes are allowed.
        name: model name.

    Returns:
        A functional `keras.Model` mapping images to `[batch, channels[-1]]` features.
    """
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}. Received: norm={norm!r}")
    if not channels:
        raise ValueError(f"`channels` must list at least one width. Received: channels={channels}")
    inputs = keras.Input(tuple(input_shape), name="images")
    h = inputs
    for i, c in enumerate(channels):
        h = keras.layers.Conv2D(int(c), 3, strides=2, padding="same", name=f"conv{i + 1}")(h)
        if norm == "batch":
            h = keras.layers.BatchNormalization(momentum=0.1, epsilon=1e-5, name=f"norm{i + 1}")(h)
        h = keras.layers.LeakyReLU(negative_slope=leak, name=f"act{i + 1}")(h)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, features, name=name)
