"""CLEL networks (Lee et al., "Guiding Energy-based Models via Contrastive Latent Variables", ICLR
2023, arXiv:2303.03023; Appendix A, Table 2; hankook/CLEL architectures.py):

* `build_clel_ebm`: f_theta, images in [0, 1] -> features `[batch, feature_dim]`; a pre-activation
  ResNet with spectral normalisation on every convolution, average-pool downsampling, LeakyReLU 0.2
  and a 2-layer MLP head. The energy is E(x) = 0.5 ||f(x)||^2.
* `build_clel_projection`: g_theta, a bias-free 2-layer MLP with LeakyReLU, so g(c u) = c g(u) for
  c > 0 and the direction of g(f / ||f||) only depends on the direction of f.
* `build_clel_encoder`: h_phi, the CIFAR variant of ResNet-18 (3x3 stride-1 stem, no max-pool) with
  BatchNorm and a 2-layer MLP head (Linear-BN-ReLU-Linear), the SimCLR encoder of CLEL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

from keras_ebm.backbones.layers import BatchNormalization, LeakyReLU, Normalization, SpectralNormConv2D
from keras_ebm.backbones.padding import conv_with_torch_padding

if TYPE_CHECKING:
    from collections.abc import Sequence

# CIFAR-10 channel statistics in [0, 1] (CLEL prepends Normalize(mean, std) to both networks).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Table 2 (and CLEL:architectures.py): (stage widths, blocks per stage, input scales).
EBM_SIZES = {
    "small": ((64, 64, 128, 128), 1, (1,)),
    "base": ((128, 128, 256, 256), 2, (1,)),
    "large": ((256, 256, 256, 256), 2, (1, 2, 4)),
}


def _normalize(x, mean, std, channels, name):
    if mean is None:
        return x
    mean = tuple(float(m) for m in (mean if isinstance(mean, (tuple, list)) else [mean]))
    std = tuple(float(s) for s in (std if isinstance(std, (tuple, list)) else [std]))
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ValueError(
            f"`input_mean`/`input_std` need 1 or {channels} (channels) values, or input_mean=None "
            f"for no normalisation. Received: input_mean={mean}, input_std={std}"
        )
    # keras_ebm's Normalization: exact float64 constants (Keras' goes through float32).
    return Normalization(mean=list(mean), variance=[s * s for s in std], name=name)(x)


def _conv(filters, kernel_size, name, use_bias=True, sn_update_order="u_first"):
    # CLEL: kaiming_normal(fan_in, linear gain) -> std 1 / sqrt(fan_in).
    return SpectralNormConv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=use_bias,
        update_order=sn_update_order,
        kernel_initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "untruncated_normal"),
        name=name,
    )


def _ebm_resnet(x, widths, blocks, slope, name, order):
    h = _conv(widths[0], 3, f"{name}_stem", sn_update_order=order)(x)
    channels = widths[0]
    for s, width in enumerate(widths):
        if s > 0:
            h = keras.layers.AveragePooling2D(2, name=f"{name}_pool{s}")(h)
        for b in range(blocks):
            prefix = f"{name}_s{s}b{b}"
            r = LeakyReLU(slope)(h)
            r = _conv(width, 3, f"{prefix}_conv1", sn_update_order=order)(r)
            r = LeakyReLU(slope)(r)
            r = _conv(width, 3, f"{prefix}_conv2", sn_update_order=order)(r)
            # 1x1 shortcut without bias only where the width changes (CLEL), identity otherwise.
            shortcut = (
                h
                if channels == width
                else _conv(width, 1, f"{prefix}_shortcut", use_bias=False, sn_update_order=order)(h)
            )
            h = keras.layers.Add()([shortcut, r])
            channels = width
    h = LeakyReLU(slope)(h)
    return keras.layers.GlobalAveragePooling2D(name=f"{name}_gap")(h)


def build_clel_ebm(
    size: str = "base",
    input_shape: tuple[int, int, int] = (32, 32, 3),
    widths: Sequence[int] | None = None,
    blocks_per_stage: Sequence[int] | None = None,
    scales: Sequence[int] | None = None,
    head_units: int = 2048,
    feature_dim: int = 128,
    negative_slope: float = 0.2,
    input_mean: float | Sequence[float] | None = CIFAR10_MEAN,
    input_std: float | Sequence[float] | None = CIFAR10_STD,
    sn_update_order: str = "u_first",
    name: str = "clel_ebm",
) -> keras.Model:
    """CLEL's EBM feature network f_theta (Table 2): images -> features `[batch, feature_dim]`.

    Pre-activation residual blocks (LeakyReLU -> conv3x3 -> LeakyReLU -> conv3x3, plus an identity
    or 1x1 shortcut), average-pool downsampling before stages 2-4, spectral normalisation on every
    convolution (`SpectralNormConv2D`), LeakyReLU -> global average pool, then the head MLP
    `[head_units, feature_dim]` (LeakyReLU, with biases, weights N(0, 0.01)). The "large" model runs
    three independent ResNets on the image average-pooled to 1/1, 1/2 and 1/4 of its size (32, 16 and
    8 pixels for CIFAR) and concatenates their pooled features before the one head MLP.

    Args:
        size: "small" ((64, 64, 128, 128) x 1 block), "base" ((128, 128, 256, 256) x 2) or "large"
            (three (256,)*4 x 2 ResNets at three scales). The next three arguments override it.
        input_shape: `(height, width, channels)`; height and width must be divisible by
            `8 * max(scales)`.
        widths: optional tuple of stage widths.
        blocks_per_stage: optional int, residual blocks per stage.
        scales: optional tuple of downsampling factors, one ResNet per factor.
        head_units: hidden width of the head MLP (CLEL 2048).
        feature_dim: output dimension of f (CLEL 128).
        negative_slope: LeakyReLU slope (CLEL 0.2; Keras' default would be 0.3).
        input_mean, input_std: per-channel (or scalar) statistics of the input normalisation
            (default CIFAR-10's, CLEL's `Normalize`); `input_mean=None` disables it.
        sn_update_order: the spectral-norm power iteration order, "u_first" (default; CLEL's
            `torch.nn.utils.parametrizations.spectral_norm`) or "v_first" (`SpectralNormConv2D`).
        name: model name.

    Returns:
        A functional `keras.Model` mapping `[batch, height, width, channels]` in [0, 1] to
        `[batch, feature_dim]`.
    """
    if size not in EBM_SIZES:
        raise ValueError(f"`size` must be one of {sorted(EBM_SIZES)}. Received: size={size!r}")
    default_widths, default_blocks, default_scales = EBM_SIZES[size]
    widths = tuple(int(w) for w in (widths or default_widths))
    blocks = int(blocks_per_stage or default_blocks)
    scales = tuple(int(s) for s in (scales or default_scales))
    input_shape = tuple(int(d) for d in input_shape)
    factor = 2 ** (len(widths) - 1) * max(scales)
    if input_shape[0] % factor or input_shape[1] % factor:
        raise ValueError(
            f"The image height and width must be divisible by {factor} (2 ** (stages - 1) * "
            f"max(scales)). Received: input_shape={input_shape}, widths={widths}, scales={scales}"
        )
    inputs = keras.Input(input_shape)
    x = _normalize(inputs, input_mean, input_std, input_shape[-1], f"{name}_normalize")
    features = []
    for scale in scales:
        xs = x if scale == 1 else keras.layers.AveragePooling2D(scale, name=f"{name}_down{scale}")(x)
        features.append(_ebm_resnet(xs, widths, blocks, negative_slope, f"{name}_x{scale}", sn_update_order))
    h = features[0] if len(features) == 1 else keras.layers.Concatenate()(features)
    dense_init = keras.initializers.RandomNormal(stddev=0.01)
    h = keras.layers.Dense(head_units, kernel_initializer=dense_init, name=f"{name}_head1")(h)
    h = LeakyReLU(negative_slope)(h)
    outputs = keras.layers.Dense(feature_dim, kernel_initializer=dense_init, name=f"{name}_head2")(h)
    return keras.Model(inputs, outputs, name=name)


def build_clel_projection(
    feature_dim: int = 128,
    hidden_units: int = 2048,
    output_dim: int = 128,
    negative_slope: float = 0.2,
    name: str = "clel_projection",
) -> keras.Model:
    """CLEL's projection g_theta: a bias-free 2-layer MLP with LeakyReLU, `g(u) = W2 lrelu(W1 u)`.

    Without biases and with a positively homogeneous activation, g(c u) = c g(u) for every c > 0,
    so the direction of g(f) equals that of g(f / ||f||): the latent direction is a function of the
    direction of f only (CLEL section 2.2; hankook/CLEL architectures.py). Weights N(0, 0.01).

    Args:
        feature_dim: input dimension (the dimension of f).
        hidden_units: hidden width (CLEL 2048).
        output_dim: latent dimension (CLEL 128, that of the encoder).
        negative_slope: LeakyReLU slope.
        name: model name.

    Returns:
        A `keras.Model` `[batch, feature_dim] -> [batch, output_dim]`.
    """
    init = keras.initializers.RandomNormal(stddev=0.01)
    inputs = keras.Input((int(feature_dim),))
    h = keras.layers.Dense(hidden_units, use_bias=False, kernel_initializer=init, name=f"{name}_1")(inputs)
    h = LeakyReLU(negative_slope)(h)
    outputs = keras.layers.Dense(output_dim, use_bias=False, kernel_initializer=init, name=f"{name}_2")(h)
    return keras.Model(inputs, outputs, name=name)


def _bn(name, synchronized, zero_gamma=False, unbiased=True):
    # PyTorch BN defaults: momentum 0.1 (Keras 0.9), eps 1e-5, unbiased batch variance in the
    # running average (`unbiased`; False: Keras' biased update).
    return BatchNormalization(
        unbiased_moving_variance=unbiased,
        momentum=0.9,
        epsilon=1e-5,
        synchronized=synchronized,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )


def build_clel_encoder(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    widths: Sequence[int] = (64, 128, 256, 512),
    blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
    head_units: int = 2048,
    output_dim: int = 128,
    synchronized_bn: bool = False,
    input_mean: float | Sequence[float] | None = CIFAR10_MEAN,
    input_std: float | Sequence[float] | None = CIFAR10_STD,
    stem_width: int | None = None,
    bn_unbiased_variance: bool = True,
    name: str = "clel_encoder",
) -> keras.Model:
    """CLEL's latent encoder h_phi: CIFAR ResNet-18 + MLP head, images -> `[batch, output_dim]`.

    torchvision's ResNet-18 with a 3x3 stride-1 stem (no bias) and no max-pool, BasicBlocks with
    BatchNorm, the last BN of each block initialised to zero (`zero_init_residual=True`), then
    `Dense(head_units, no bias) -> BN -> ReLU -> Dense(output_dim)` (hankook/CLEL architectures.py get_encoder).

    Args:
        input_shape: `(height, width, channels)`.
        widths: stage widths (ResNet-18: 64, 128, 256, 512); stages 2+ downsample by 2.
        blocks_per_stage: BasicBlocks per stage (ResNet-18: 2 each).
        head_units: hidden width of the MLP head (CLEL 2048).
        output_dim: latent dimension (CLEL 128).
        synchronized_bn: use cross-replica BatchNorm (`BatchNormalization(synchronized=True)`),
            as large-batch SimCLR training does.
        input_mean, input_std: input normalisation (see `build_clel_ebm`).
        stem_width: channels of the 3x3 stem (default `widths[0]`; CLEL's stem is always 64, so a
            narrower first stage, as in the small parity networks, starts with a 1x1 downsample
            shortcut like torchvision's).
        bn_unbiased_variance: BatchNorm moving variances average the unbiased batch variance, as
            PyTorch's BatchNorm (hankook/CLEL's encoder) does; False: Keras' biased update
            (`keras_ebm.backbones.layers.BatchNormalization`).
        name: model name.

    Returns:
        A functional `keras.Model` `[batch, height, width, channels] -> [batch, output_dim]`.
    """
    widths = tuple(int(w) for w in widths)
    unbiased = bool(bn_unbiased_variance)
    blocks_per_stage = tuple(int(b) for b in blocks_per_stage)
    if len(widths) != len(blocks_per_stage):
        raise ValueError(
            "`widths` and `blocks_per_stage` need one entry per stage. "
            f"Received: widths={widths}, blocks_per_stage={blocks_per_stage}"
        )
    conv_init = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
    inputs = keras.Input(tuple(int(d) for d in input_shape))
    x = _normalize(inputs, input_mean, input_std, int(input_shape[-1]), f"{name}_normalize")
    channels = int(stem_width or widths[0])
    h = keras.layers.Conv2D(
        channels, 3, padding="same", use_bias=False, kernel_initializer=conv_init, name=f"{name}_stem"
    )(x)
    h = keras.layers.ReLU()(_bn(f"{name}_stem_bn", synchronized_bn, unbiased=unbiased)(h))
    for s, (width, blocks) in enumerate(zip(widths, blocks_per_stage)):
        for b in range(blocks):
            stride = 2 if (s > 0 and b == 0) else 1
            prefix = f"{name}_s{s}b{b}"
            r = conv_with_torch_padding(
                dict(filters=width, use_bias=False, kernel_initializer=conv_init), 3, stride, f"{prefix}_conv1"
            )(h)
            r = keras.layers.ReLU()(_bn(f"{prefix}_bn1", synchronized_bn, unbiased=unbiased)(r))
            r = keras.layers.Conv2D(
                width, 3, padding="same", use_bias=False, kernel_initializer=conv_init, name=f"{prefix}_conv2"
            )(r)
            r = _bn(f"{prefix}_bn2", synchronized_bn, zero_gamma=True, unbiased=unbiased)(r)
            if stride != 1 or channels != width:
                h = keras.layers.Conv2D(
                    width, 1, strides=stride, use_bias=False, kernel_initializer=conv_init, name=f"{prefix}_down"
                )(h)
                h = _bn(f"{prefix}_down_bn", synchronized_bn, unbiased=unbiased)(h)
            h = keras.layers.ReLU()(keras.layers.Add()([h, r]))
            channels = width
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(head_units, use_bias=False, name=f"{name}_head1")(h)
    h = keras.layers.ReLU()(_bn(f"{name}_head_bn", synchronized_bn, unbiased=unbiased)(h))
    outputs = keras.layers.Dense(output_dim, name=f"{name}_head2")(h)
    return keras.Model(inputs, outputs, name=name)
