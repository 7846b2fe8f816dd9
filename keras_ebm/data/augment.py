"""Batched image augmentations driven by a stateless seed.

Every function takes float images `[batch, height, width, channels]` in some pixel range and a
seed of shape `[2]` (int32/int64), and draws per-sample parameters with `tf.random.stateless_*`.
The same seed gives the same output, and the functions run eagerly, inside `tf.data.Dataset.map`
and inside a `tf.function` train step under `tf.distribute` (pass
`keras_ebm.distribute.replica_seed(seed_generator)` so replicas differ). No Keras layers are used:
Keras 3 has no random-resized-crop and its random layers own stateful generators.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

from keras_ebm.data.pixel_range import check_pixel_range

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _check_images(x, fn_name):
    x = tf.convert_to_tensor(x)
    if x.shape.rank is not None and x.shape.rank != 4:
        raise ValueError(
            f"`{fn_name}` expects a batch of images [batch, height, width, channels]; add a "
            f"batch axis with x[None] for a single image. Received: x.shape={x.shape}"
        )
    if not x.dtype.is_floating:
        raise ValueError(
            f"`{fn_name}` expects float images (map uint8 with keras_ebm.data.to_pixel_range "
            f"first). Received: x.dtype={x.dtype.name}"
        )
    return x


def _split_seed(seed, num):
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def _random_flip(x, seed):
    batch = tf.shape(x)[0]
    flip = tf.random.stateless_uniform([batch, 1, 1, 1], seed) < 0.5
    return tf.where(flip, tf.reverse(x, axis=[2]), x)


def pad_crop_flip(
    x: tf.Tensor, seed: tf.Tensor, pad: int = 4, flip: bool = True, pad_mode: str = "REFLECT"
) -> tf.Tensor:
    """Pad, crop back to the original size at a random offset, and flip horizontally.

    JEM's / SADA-JEM's CIFAR augmentation (`RandomCrop(32, padding=4, padding_mode="reflect")` +
    `RandomHorizontalFlip`; SVHN drops the flip). Crop offsets and flips are drawn per sample.

    Args:
        x: float images `[batch, height, width, channels]`, any pixel range.
        seed: stateless seed, shape `[2]`.
        pad: pixels padded on every side (the crop offset is uniform in `[0, 2 * pad]`).
        flip: whether to flip each image left-right with probability 1/2.
        pad_mode: `tf.pad` mode: "REFLECT" (JEM), "SYMMETRIC" or "CONSTANT" (zeros).

    Returns:
        Augmented images, same shape and dtype as `x`.
    """
    x = _check_images(x, "pad_crop_flip")
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"`pad` must be >= 0. Received: pad={pad}")
    if pad_mode.upper() not in ("REFLECT", "SYMMETRIC", "CONSTANT"):
        raise ValueError(f"`pad_mode` must be 'REFLECT', 'SYMMETRIC' or 'CONSTANT'. Received: pad_mode={pad_mode!r}")
    limit = pad if pad_mode.upper() == "REFLECT" else pad - 1
    small = [d for d in x.shape[1:3] if d is not None and d <= limit]
    if pad_mode.upper() != "CONSTANT" and small:
        raise ValueError(
            f"{pad_mode} padding by {pad} needs images larger than {limit} pixels on each side; "
            f"lower `pad` or use pad_mode='CONSTANT'. Received: pad={pad}, x.shape={x.shape}"
        )
    crop_seed, flip_seed = _split_seed(seed, 2)
    if pad > 0:
        shape = tf.shape(x)
        batch, height, width = shape[0], shape[1], shape[2]
        padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=pad_mode.upper())
        offsets = tf.random.stateless_uniform([batch, 2], crop_seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
        # Gathering rows, then columns, per sample is an exact integer crop (no interpolation).
        rows = offsets[:, :1] + tf.range(height)[None, :]
        cols = offsets[:, 1:] + tf.range(width)[None, :]
        out = tf.gather(padded, rows, axis=1, batch_dims=1)
        out = tf.gather(out, cols, axis=2, batch_dims=1)
        x = tf.ensure_shape(out, x.shape)
    if flip:
        x = _random_flip(x, flip_seed)
    return x


def _random_resized_crop(x, seed, crop_scale, aspect_ratio):
    shape = tf.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=batch)
    whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])

    def sample_box(sample_seed):
        # min_object_covered=0 with the whole image as the box makes this torchvision's
        # RandomResizedCrop: area fraction in crop_scale, aspect ratio in aspect_ratio.
        _, _, box = tf.image.stateless_sample_distorted_bounding_box(
            tf.stack([height, width, 1]),
            bounding_boxes=whole_image,
            seed=sample_seed,
            min_object_covered=0.0,
            aspect_ratio_range=aspect_ratio,
            area_range=crop_scale,
            max_attempts=100,
            use_image_if_no_bounding_boxes=True,
        )
        return tf.reshape(box, [4])

    boxes = tf.map_fn(sample_box, seeds, fn_output_signature=tf.TensorSpec([4], tf.float32))
    out = tf.image.crop_and_resize(x, boxes, tf.range(batch), tf.stack([height, width]), method="bilinear")
    return tf.ensure_shape(tf.cast(out, x.dtype), x.shape)


def _grayscale(x):
    return tf.image.rgb_to_grayscale(x)


def _color_jitter(u, seed, strength, channels):
    """SimCLR's colour distortion on [0, 1] images with per-sample factors (fixed order)."""
    batch = tf.shape(u)[0]
    s_bright, s_contrast, s_sat, s_hue = _split_seed(seed, 4)
    b, c, s, h = 0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength

    def factor(sub_seed, amount):
        return tf.random.stateless_uniform(
            [batch, 1, 1, 1], sub_seed, minval=max(0.0, 1.0 - amount), maxval=1.0 + amount
        )

    # Brightness and contrast are multiplicative, as torchvision/kornia ColorJitter (CLEL) and
    # SimCLR v2; contrast blends towards the per-image mean of the grayscale image.
    u = tf.clip_by_value(u * factor(s_bright, b), 0.0, 1.0)
    gray = _grayscale(u) if channels == 3 else u
    mean = tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True)
    u = tf.clip_by_value((u - mean) * factor(s_contrast, c) + mean, 0.0, 1.0)
    if channels == 3:
        gray = _grayscale(u)
        u = tf.clip_by_value((u - gray) * factor(s_sat, s) + gray, 0.0, 1.0)
        delta = tf.random.stateless_uniform([batch, 1, 1], s_hue, minval=-h, maxval=h)
        hsv = tf.image.rgb_to_hsv(u)
        hue = tf.math.floormod(hsv[..., 0] + delta, 1.0)
        u = tf.image.hsv_to_rgb(tf.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))
        u = tf.clip_by_value(u, 0.0, 1.0)
    return u


def simclr_augment(
    x: tf.Tensor,
    seed: tf.Tensor,
    pixel_range: tuple[float, float] = (-1.0, 1.0),
    crop_scale: tuple[float, float] = (0.08, 1.0),
    aspect_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    jitter_strength: float = 0.5,
    jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
    flip: bool = True,
) -> tf.Tensor:
    """SimCLR's "strong" augmentation, per sample: resized crop, colour jitter, grayscale, flip.

    CLEL's encoder/sampler augmentation (kornia `RandomResizedCrop(scale=(0.08, 1))`,
    `ColorJitter(.4, .4, .4, .1, p=.8)`, `RandomGrayscale(p=.2)`, horizontal flip), i.e. SimCLR
    with colour strength s = 0.5. The crop is resized back with bilinear interpolation (CLEL uses
    bicubic). Colour jitter applies brightness, contrast, saturation and hue in this fixed order.
    Grayscale (1-channel) images get brightness and contrast only.

    Args:
        x: float images `[batch, height, width, channels]` in `pixel_range`.
        seed: stateless seed, shape `[2]`.
        pixel_range: `(low, high)` of `x`; the output is clipped to it.
        crop_scale: range of the crop's area as a fraction of the image.
        aspect_ratio: range of the crop's width/height ratio.
        jitter_strength: SimCLR's colour strength s (brightness/contrast/saturation 0.8 s,
            hue 0.2 s).
        jitter_prob: probability of applying the colour jitter to a sample.
        grayscale_prob: probability of converting a sample to grayscale (RGB only).
        flip: whether to flip left-right with probability 1/2.

    Returns:
        Augmented images, same shape and dtype as `x`.

    Reference:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
        arXiv:2002.05709, Appendix A.
    """
    x = _check_images(x, "simclr_augment")
    lo, hi = check_pixel_range(pixel_range)
    channels = x.shape[-1]
    if channels is None:
        raise ValueError(f"`simclr_augment` needs a static number of channels. Received: x.shape={x.shape}")
    crop_seed, jitter_seed, jitter_mask_seed, gray_seed, flip_seed = _split_seed(seed, 5)
    batch = tf.shape(x)[0]
    dtype = x.dtype

    u = (tf.cast(x, tf.float32) - lo) / (hi - lo)
    u = tf.clip_by_value(u, 0.0, 1.0)
    if crop_scale is not None:
        u = _random_resized_crop(u, crop_seed, tuple(crop_scale), tuple(aspect_ratio))
    if jitter_strength and jitter_prob > 0:
        jittered = _color_jitter(u, jitter_seed, float(jitter_strength), channels)
        apply = tf.random.stateless_uniform([batch, 1, 1, 1], jitter_mask_seed) < jitter_prob
        u = tf.where(apply, jittered, u)
    if channels == 3 and grayscale_prob > 0:
        gray = tf.tile(_grayscale(u), [1, 1, 1, 3])
        apply = tf.random.stateless_uniform([batch, 1, 1, 1], gray_seed) < grayscale_prob
        u = tf.where(apply, gray, u)
    if flip:
        u = _random_flip(u, flip_seed)
    out = tf.clip_by_value(u * (hi - lo) + lo, lo, hi)
    return tf.ensure_shape(tf.cast(out, dtype), x.shape)


AUGMENTATIONS = ("pad_crop_flip", "pad_crop", "simclr", "none")


def augment_fn(
    name: str | None, pixel_range: tuple[float, float] = (-1.0, 1.0), **kwargs: Any
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """An augmentation `fn(x, seed) -> x` by name.

    Args:
        name: "pad_crop_flip" (JEM), "pad_crop" (the same without flip, JEM's SVHN), "simclr"
            (CLEL "strong"), or "none"/None (identity).
        pixel_range: pixel range of the images (used by "simclr").
        **kwargs: passed to the underlying function (e.g. `pad=2`, `crop_scale=(0.2, 1.0)`).

    Returns:
        A function of a float image batch `[batch, height, width, channels]` and a seed `[2]`.
    """
    if name is None or name == "none":
        return lambda x, seed: x
    if name == "pad_crop_flip":
        return lambda x, seed: pad_crop_flip(x, seed, **kwargs)
    if name == "pad_crop":
        kwargs.setdefault("flip", False)
        return lambda x, seed: pad_crop_flip(x, seed, **kwargs)
    if name == "simclr":
        return lambda x, seed: simclr_augment(x, seed, pixel_range=pixel_range, **kwargs)
    raise ValueError(
        f"Unknown augmentation; known: {', '.join(repr(a) for a in AUGMENTATIONS)}, None, or a "
        f"callable fn(x, seed). Received: name={name!r}"
    )
