"""WideResNet as used by JEM, HDGE, GMMC, JEM++ and SADA-JEM (CODE_FACTS 0.1).

Zagoruyko & Komodakis 2016 (arXiv:1605.07146), in the pre-activation form of the JEM code:
    stem: 3x3 conv -> 16 channels (with bias)
    3 groups of n = (depth - 4) / 6 blocks, widths 16k, 32k, 64k, group strides 1, 2, 2
    block: norm -> LeakyReLU(0.2) -> 3x3 conv (stride 1) -> dropout -> norm -> LeakyReLU(0.2)
           -> 3x3 conv (the block's stride sits here) + shortcut
           shortcut: 1x1 conv (bias, block stride) on the *raw* block input when the stride or the
           width changes, identity otherwise
    head: norm -> LeakyReLU(0.2) -> global average pool -> 64k features
`norm=None` makes every norm the identity ("WRN-28-10 without BN", JEM/HDGE/GMMC);
`norm="batch"` is BatchNorm with PyTorch momentum 0.9 = Keras momentum 0.1 and eps 1e-5
(JEM++, SADA-JEM). Porting traps handled here (CODE_FACTS 8): LeakyReLU slope 0.2 (Keras default
0.3) and PyTorch's default initialisation (U(+-1/sqrt(fan_in)) for weights and biases).
The reference pools with a fixed 8x8 window on 32x32 inputs; global average pooling is the same
there and lets the network take any input size.
"""

import math

import keras

NORMS = (None, "none", "batch")


@keras.saving.register_keras_serializable(package="keras_ebm")
class TorchBiasInitializer(keras.initializers.Initializer):
    """PyTorch's default bias init for conv/linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def __init__(self, fan_in, seed=None):
        self.fan_in = int(fan_in)
        self.seed = seed

    def __call__(self, shape, dtype=None):
        bound = 1.0 / math.sqrt(self.fan_in)
        return keras.random.uniform(shape, -bound, bound, dtype=dtype, seed=self.seed)

    def get_config(self):
        return {"fan_in": self.fan_in, "seed": self.seed}


def torch_kernel_initializer():
    """PyTorch's kaiming_uniform(a=sqrt(5)) default = U(+-1/sqrt(fan_in)) = VarianceScaling(1/3)."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")


def _conv(filters, kernel_size, strides, fan_in, torch_init, name):
    kwargs = {}
    if torch_init:
        kwargs = {"kernel_initializer": torch_kernel_initializer(),
                  "bias_initializer": TorchBiasInitializer(fan_in)}
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=True,
                               name=name, **kwargs)


def _norm(norm, bn_momentum, bn_epsilon, name):
    if norm == "batch":
        return keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name=name)
    return keras.layers.Identity(name=name)


def WideResNet(
    depth=28,
    width=10,
    norm=None,
    dropout=0.0,
    leak=0.2,
    bn_momentum=0.1,
    bn_epsilon=1e-5,
    torch_init=True,
    input_shape=(None, None, 3),
    name=None,
):
    """The JEM-family WideResNet feature extractor (images -> [batch, 64 * width] features).

    Args:
        depth: total depth; (depth - 4) must be divisible by 6 (28 -> 4 blocks per group).
        width: widening factor k (widths 16k, 32k, 64k).
        norm: None/"none" (no normalisation, JEM/HDGE/GMMC) or "batch" (JEM++/SADA-JEM).
        dropout: dropout rate between the two convolutions of a block (0 = none).
        leak: LeakyReLU negative slope (0.2 in every reference).
        bn_momentum: Keras momentum of the moving statistics (0.1 = PyTorch momentum 0.9).
        bn_epsilon: BatchNorm epsilon (PyTorch default 1e-5).
        torch_init: PyTorch default initialisation (the references never apply their xavier helper).
        input_shape: `(height, width, channels)`; `None` sizes are allowed.
        name: model name (default "wrn_<depth>_<width>").

    Returns:
        A functional `keras.Model`. WRN-28-10 without BN has 36,464,928 parameters, 36,471,338
        with a 10-class `build_classifier` head: the reference's 36.5M (its unused
        `energy_output` Linear(640, 1) would add 641). With BN: 36,507,242 with the head.

    Reference: [Zagoruyko & Komodakis 2016](https://arxiv.org/abs/1605.07146);
        [Grathwohl et al. 2020](https://arxiv.org/abs/1912.03263).
    """
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(
            f"WideResNet depth must satisfy (depth - 4) % 6 == 0 and depth >= 10 (10, 16, 22, 28, ...). "
            f"Received: depth={depth}"
        )
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}. Received: norm={norm!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
    n = (depth - 4) // 6
    widths = (16 * width, 32 * width, 64 * width)
    name = name or f"wrn_{depth}_{width}"

    inputs = keras.Input(tuple(input_shape), name="images")
    in_ch = int(input_shape[-1]) if input_shape[-1] is not None else 3
    h = _conv(16, 3, 1, 9 * in_ch, torch_init, "stem_conv")(inputs)
    channels = 16
    for g, (out_ch, group_stride) in enumerate(zip(widths, (1, 2, 2))):
        for b in range(n):
            stride = group_stride if b == 0 else 1
            prefix = f"group{g + 1}_block{b + 1}"
            x_in = h
            h = _norm(norm, bn_momentum, bn_epsilon, f"{prefix}_norm1")(x_in)
            h = keras.layers.LeakyReLU(negative_slope=leak, name=f"{prefix}_act1")(h)
            h = _conv(out_ch, 3, 1, 9 * channels, torch_init, f"{prefix}_conv1")(h)
            if dropout > 0:
                h = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(h)
            h = _norm(norm, bn_momentum, bn_epsilon, f"{prefix}_norm2")(h)
            h = keras.layers.LeakyReLU(negative_slope=leak, name=f"{prefix}_act2")(h)
            h = _conv(out_ch, 3, stride, 9 * out_ch, torch_init, f"{prefix}_conv2")(h)
            if stride != 1 or channels != out_ch:
                shortcut = _conv(out_ch, 1, stride, channels, torch_init, f"{prefix}_shortcut")(x_in)
            else:
                shortcut = x_in
            h = keras.layers.Add(name=f"{prefix}_add")([h, shortcut])
            channels = out_ch
    h = _norm(norm, bn_momentum, bn_epsilon, "final_norm")(h)
    h = keras.layers.LeakyReLU(negative_slope=leak, name="final_act")(h)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, features, name=name)
