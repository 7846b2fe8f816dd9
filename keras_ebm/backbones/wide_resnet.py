"""WideResNet as used by JEM, HDGE, GMMC, JEM++ and SADA-JEM (wgrathwohl/JEM wideresnet.py,
copied by the HDGE, GMMC, JEMPP and SADAJEM repositories).

Zagoruyko & Komodakis 2016 (arXiv:1605.07146), in the pre-activation form of the JEM code:

    stem:  3x3 conv -> 16 channels (with bias)
    body:  3 groups of n = (depth - 4) / 6 blocks, widths 16k, 32k, 64k, group strides 1, 2, 2
    block: norm -> LeakyReLU(0.2) -> 3x3 conv (stride 1) -> dropout -> norm -> LeakyReLU(0.2)
           -> 3x3 conv (the block's stride sits here, on conv2) + shortcut
           shortcut: 1x1 conv (bias, block stride) on the *raw* block input when the stride or the
           width changes, identity otherwise
    head:  norm -> LeakyReLU(0.2) -> global average pool -> 64k features

Porting traps handled here: LeakyReLU slope 0.2 (the Keras default is 0.3),
BatchNorm momentum 0.1 / epsilon 1e-5 (= PyTorch momentum 0.9 / eps 1e-5; Keras defaults 0.99 / 1e-3),
PyTorch's unbiased batch variance in the moving variance (`keras_ebm.backbones.layers.BatchNormalization`),
and PyTorch's default initialisation, U(+-1/sqrt(fan_in)) for weights *and* biases (Keras defaults to
glorot_uniform weights and zero biases).
"""

from __future__ import annotations

import math
import numbers

import keras

from keras_ebm.backbones.layers import BatchNormalization, LeakyReLU
from keras_ebm.backbones.padding import conv_with_torch_padding

NORMS = (None, "none", "batch")


def torch_kernel_initializer() -> keras.initializers.Initializer:
    """PyTorch's default conv/linear weight init as a Keras initializer.

    PyTorch uses kaiming_uniform(a=sqrt(5)), i.e. U(-b, b) with b = sqrt(6 / ((1 + 5) * fan_in))
    = 1 / sqrt(fan_in); `VarianceScaling(1/3, "fan_in", "uniform")` draws U(+-sqrt(3 * (1/3) / fan_in)),
    the same distribution. Keras computes fan_in = kernel_h * kernel_w * in_channels, as PyTorch does.
    """
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def torch_bias_initializer(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default conv/linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Keras initializers only see the bias shape `[filters]`, not the fan-in of the layer, so the
    bound is computed here from `fan_in` (= kernel_h * kernel_w * in_channels, or in_features for a
    dense layer) and handed to the built-in `RandomUniform` (serializable without a custom class).
    """
    bound = 1.0 / math.sqrt(int(fan_in))
    return keras.initializers.RandomUniform(minval=-bound, maxval=bound)


def _validate_norm(norm):
    if norm not in NORMS:
        raise ValueError(
            f'`norm` must be None or "none" (no normalization, JEM/HDGE/GMMC) or "batch" '
            f"(JEM++/SADA-JEM). Received: norm={norm!r}"
        )


def _conv(filters, kernel_size, strides, fan_in, torch_init, name):
    initializers = {}
    if torch_init:
        initializers = {
            "kernel_initializer": torch_kernel_initializer(),
            "bias_initializer": torch_bias_initializer(fan_in),
        }
    # Stride-2 3x3 convolutions pad 1 on every side, as PyTorch (keras_ebm.backbones.padding).
    return conv_with_torch_padding(dict(filters=filters, use_bias=True, **initializers), kernel_size, strides, name)


def _norm(norm, bn_momentum, bn_epsilon, name, unbiased=True):
    if norm == "batch":
        return BatchNormalization(
            momentum=bn_momentum, epsilon=bn_epsilon, unbiased_moving_variance=unbiased, name=name
        )
    # An Identity layer (rather than skipping) keeps layer names the same with and without norm.
    return keras.layers.Identity(name=name)


def WideResNet(
    depth: int = 28,
    width: int = 10,
    norm: str | None = None,
    dropout: float = 0.0,
    leak: float = 0.2,
    bn_momentum: float = 0.1,
    bn_epsilon: float = 1e-5,
    bn_unbiased_variance: bool = True,
    torch_init: bool = True,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    name: str | None = None,
) -> keras.Model:
    """The JEM-family WideResNet feature extractor: images -> `[batch, 64 * width]` features.

    The reference ends with a fixed 8x8 average pool, which on its 32x32 inputs (8x8 final maps) is
    exactly a global average pool. This port uses `GlobalAveragePooling2D` instead, so the network
    accepts any input size, odd ones included (stride-2 convolutions pad 1 on every side as PyTorch,
    `keras_ebm.backbones.padding`, giving ceil(size / 2)),
    and never silently drops rows on non-square inputs (the
    CelebA `Resize(32)` trap of the official evaluation scripts).

    Parameter counts (WRN-28-10, 32x32x3, `build_classifier(..., num_classes=10)` on top):
    without BN the backbone has 36,464,928 parameters and the classifier 36,471,338. The reference
    model object (JEM's `CCF`) also owns an `energy_output` Linear(640, 1) that is never used;
    PyTorch's `sum(p.numel() for p in f.parameters())` counts it, giving 36,471,979. Both round to the
    quoted "36.5M"; the Keras classifier omits the unused layer, so it has exactly 641 fewer.
    With `norm="batch"` the classifier has 36,489,290 trainable parameters (= the reference's
    parameters without `energy_output`) plus 17,952 BN moving statistics (`count_params()` =
    36,507,242; PyTorch keeps those as buffers, not parameters).

    Args:
        depth: total depth; `(depth - 4)` must be divisible by 6 (10, 16, 22, 28, ...; 28 gives 4
            blocks per group).
        width: widening factor k (group widths 16k, 32k, 64k).
        norm: `None`/`"none"` (every norm is the identity: "WRN-28-10 without BN", JEM/HDGE/GMMC)
            or `"batch"` (JEM++/SADA-JEM).
        dropout: dropout rate between the two convolutions of a block (0 = none, the reference).
        leak: LeakyReLU negative slope (0.2 in every reference; Keras' default would be 0.3).
        bn_momentum: Keras momentum of the BN moving statistics. The default 0.1 equals the
            references' PyTorch `BatchNorm2d(momentum=0.9)`: Keras keeps `momentum * old`, PyTorch
            keeps `(1 - momentum) * old`.
        bn_epsilon: BN epsilon (PyTorch default 1e-5; Keras' default would be 1e-3).
        bn_unbiased_variance: average the unbiased batch variance into the moving variance, as
            PyTorch's `BatchNorm2d` (every reference) does (`keras_ebm.backbones.layers.BatchNormalization`);
            False gives Keras' biased update.
        torch_init: PyTorch default initialisation of every conv (weights and biases
            U(+-1/sqrt(fan_in))). The references define a xavier `conv_init` but never apply it.
            `False` keeps Keras defaults (glorot_uniform, zero bias).
        input_shape: `(height, width, channels)`; height and width may be `None`, channels must be
            known (it sets the stem's fan-in).
        name: model name; default `"wrn_<depth>_<width>"`.

    Returns:
        A functional `keras.Model` mapping `[batch, height, width, channels]` images to
        `[batch, 64 * width]` features. Its `get_config`/`from_config` round trip is the
        functional model's own.

    Example:
    ```python
    backbone = WideResNet(depth=16, width=4, norm="batch", input_shape=(32, 32, 3))
    features = backbone(np.zeros((2, 32, 32, 3), "float32"))  # [2, 256]
    ```

    Reference:
        - [Zagoruyko & Komodakis 2016](https://arxiv.org/abs/1605.07146)
        - [Grathwohl et al. 2020, JEM](https://arxiv.org/abs/1912.03263)
    """
    if not isinstance(depth, numbers.Integral) or depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            "`depth` must be an integer >= 10 with (depth - 4) % 6 == 0, e.g. 10, 16, 22, 28. "
            f"Received: depth={depth!r}"
        )
    if not isinstance(width, numbers.Integral) or width < 1:
        raise ValueError(f"`width` must be a positive integer (e.g. 10). Received: width={width!r}")
    _validate_norm(norm)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] is None:
        raise ValueError(
            "`input_shape` must be (height, width, channels) with a known number of channels "
            f"(height and width may be None). Received: input_shape={input_shape}"
        )

    # === Layers and functional model ===
    depth, width = int(depth), int(width)
    n = (depth - 4) // 6
    widths = (16 * width, 32 * width, 64 * width)
    inputs = keras.Input(input_shape, name="images")
    h = _conv(16, 3, 1, 9 * int(input_shape[-1]), torch_init, "stem_conv")(inputs)
    channels = 16
    for g, (out_channels, group_stride) in enumerate(zip(widths, (1, 2, 2))):
        for b in range(n):
            stride = group_stride if b == 0 else 1
            prefix = f"group{g + 1}_block{b + 1}"
            block_input = h
            h = _norm(norm, bn_momentum, bn_epsilon, f"{prefix}_norm1", bn_unbiased_variance)(block_input)
            h = LeakyReLU(negative_slope=leak, name=f"{prefix}_act1")(h)
            h = _conv(out_channels, 3, 1, 9 * channels, torch_init, f"{prefix}_conv1")(h)
            if dropout > 0:
                h = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(h)
            h = _norm(norm, bn_momentum, bn_epsilon, f"{prefix}_norm2", bn_unbiased_variance)(h)
            h = LeakyReLU(negative_slope=leak, name=f"{prefix}_act2")(h)
            h = _conv(out_channels, 3, stride, 9 * out_channels, torch_init, f"{prefix}_conv2")(h)
            if stride != 1 or channels != out_channels:
                # On the raw block input, not the normalised/activated one (as the reference).
                shortcut = _conv(out_channels, 1, stride, channels, torch_init, f"{prefix}_shortcut")(block_input)
            else:
                shortcut = block_input
            h = keras.layers.Add(name=f"{prefix}_add")([h, shortcut])
            channels = out_channels
    h = _norm(norm, bn_momentum, bn_epsilon, "final_norm", bn_unbiased_variance)(h)
    h = LeakyReLU(negative_slope=leak, name="final_act")(h)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, features, name=name or f"wrn_{depth}_{width}")
