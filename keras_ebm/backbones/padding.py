"""PyTorch-style padding for strided convolutions.

PyTorch's `Conv2d(kernel_size=3, stride=2, padding=1)` pads one pixel on *every* side, so output pixel
i is centred on input pixel 2i, the pixel a 1x1 stride-2 shortcut reads. Keras' `padding="same"`
pads `k - 1 - (n - 1) % s` pixels in total and puts the extra one at the bottom/right; on an even
input with stride 2 that is 0 on top/left and 1 at the bottom/right, so the window is centred on
pixel 2i + 1 and the residual branch is shifted one pixel against the shortcut. The WideResNet of
the JEM family and CLEL's ResNet-18 encoder downsample with stride-2 3x3 convolutions, so they pad
explicitly (`ZeroPadding2D(k // 2)` then a "valid" convolution), which gives PyTorch's output size
`floor((n + 2p - k) / s) + 1` (= ceil(n / 2) for k = 3, s = 2) and PyTorch's alignment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    import tensorflow as tf


def conv_with_torch_padding(
    conv_kwargs: dict[str, Any], kernel_size: int, strides: int, name: str
) -> Callable[[tf.Tensor], tf.Tensor]:
    """A callable `h -> conv(pad(h))` padding `kernel_size // 2` on every side like PyTorch.

    Stride-1 convolutions (and 1x1 kernels, which PyTorch does not pad) keep Keras' "same", which
    then is identical to PyTorch's symmetric padding. `conv_kwargs` are the other `Conv2D`
    arguments (filters, use_bias, initializers...); the convolution keeps the layer name `name`.
    """
    k = int(kernel_size)
    s = int(strides) if not isinstance(strides, (tuple, list)) else int(strides[0])
    if s == 1 or k == 1:
        return keras.layers.Conv2D(kernel_size=k, strides=s, padding="same", name=name, **conv_kwargs)
    pad = keras.layers.ZeroPadding2D(k // 2, name=f"{name}_pad")
    conv = keras.layers.Conv2D(kernel_size=k, strides=s, padding="valid", name=name, **conv_kwargs)
    return lambda h: conv(pad(h))
