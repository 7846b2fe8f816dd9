"""`run_training(mixed_precision="mixed_bfloat16")`: networks in bfloat16, everything the recipes
need precise in float32 (images, chains, replay buffer, logits, energies, losses, HDGE's queue,
GMMC's head), every trainer trains with finite losses; SGLD's closed form holds within bf16's
precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import clel_sampler, tiny_clel
from keras_ebm import backbones, data, training
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers import GMMC, HDGE, SADAJEM, SoftmaxClassifier, gmmc

SHAPE = (8, 8, 1)


def classifier(norm=None):
    return backbones.build_classifier(
        backbones.TinyCNN((8, 16), norm=norm, input_shape=SHAPE), num_classes=10, input_shape=SHAPE
    )


def sampler(**kwargs):
    return SGLDSampler(n_steps=2, step_size=1.0, noise_std=0.01, x_clip=(-1.0, 1.0), seed=0, **kwargs)


def clel():
    return tiny_clel(SHAPE, buffer_size=32, ema_start_step=0, sampler=clel_sampler(2))


TRAINERS = {
    "softmax": (lambda: SoftmaxClassifier(classifier(), image_shape=SHAPE, num_classes=10), (-1.0, 1.0)),
    "sadajem": (
        lambda: SADAJEM(
            classifier("batch"),
            image_shape=SHAPE,
            num_classes=10,
            buffer_size=40,
            sampler=sampler(energy_training=True, freeze_bn_stats=True),
        ),
        (-1.0, 1.0),
    ),
    "hdge": (lambda: HDGE(classifier(), image_shape=SHAPE, num_classes=10, queue_size=64), (-1.0, 1.0)),
    "gmmc": (
        lambda: GMMC(
            gmmc.build_mmc_classifier(backbones.TinyCNN((8, 16), input_shape=SHAPE), num_classes=10, input_shape=SHAPE),
            image_shape=SHAPE,
            num_classes=10,
            buffer_size=40,
            sampler=sampler(energy_reduction="mean"),
        ),
        (-1.0, 1.0),
    ),
    "clel": (clel, (0.0, 1.0)),
}


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_every_trainer_trains_in_mixed_bfloat16_with_float32_state(name):
    build, pixel_range = TRAINERS[name]
    model = training.build_trainer(
        build, lambda: keras.optimizers.Adam(1e-3), tf.distribute.get_strategy(), mixed_precision="mixed_bfloat16"
    )
    assert keras.mixed_precision.dtype_policy().name == "float32"  # the global policy is restored
    assert any(layer.compute_dtype == "bfloat16" for layer in model.network.layers if layer.weights)
    ds = data.make_dataset("digits", "train", global_batch_size=16, pixel_range=pixel_range)
    history = model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0).history
    for key, values in history.items():
        assert np.all(np.isfinite(values)), (key, values)
    x = next(iter(ds))[0]
    assert model(x).dtype == tf.float32
    assert all(v.dtype == tf.float32 for v in model.scores(x).values())
    if model.buffer is not None:
        assert model.buffer.buffer.dtype == "float32"
    if name == "hdge":
        floats = [v for v in model.queue.weights if "float" in v.dtype]
        assert floats and all(v.dtype == "float32" for v in floats)
    if name == "gmmc":
        assert gmmc.mmc_head(model.network).compute_dtype == "float32"
    # Every variable the optimizer updates is float32.
    assert {v.dtype for v in model.trainable_variables} == {"float32"}


def test_sgld_closed_form_through_a_bfloat16_layer():
    """E(x) = 0.5 ||W x||^2 with W = I computed by a bf16 Dense layer: K steps of size s contract x by
    (1 - s)^K, within bf16's precision (8 bits of mantissa: relative error ~ 2^-8 per step)."""
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        layer = keras.layers.Dense(6, use_bias=False, kernel_initializer="identity")
        layer.build((None, 6))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert layer.compute_dtype == "bfloat16"

    def energy(x, y, training):
        h = tf.cast(layer(tf.reshape(x, [tf.shape(x)[0], -1])), tf.float32)
        return 0.5 * tf.reduce_sum(h**2, axis=-1)

    x = tf.constant(np.random.RandomState(0).randn(4, 6).astype("float32"))
    out = SGLDSampler(n_steps=5, step_size=0.2, noise_std=0.0)(energy, x)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), 0.8**5 * x.numpy(), rtol=2e-2, atol=2e-3)
    # The same chain in float32 is exact to 1e-5: the tolerance above is bf16's, not the sampler's.
    exact = SGLDSampler(n_steps=5, step_size=0.2, noise_std=0.0)(
        lambda v, y, training: 0.5 * tf.reduce_sum(tf.reshape(v, [tf.shape(v)[0], -1]) ** 2, axis=-1), x
    )
    np.testing.assert_allclose(exact.numpy(), 0.8**5 * x.numpy(), rtol=1e-5)


def test_float16_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="loss scaling"):
        with training.dtype_policy("mixed_float16"):
            pass


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_losses_in_mixed_bfloat16_match_float32_on_the_same_weights_and_batch(name):
    """The same trainer built in float32 and in mixed_bfloat16, with the same variables, on the same
    batch and negatives: every reported scalar agrees within 2e-2 relative, plus 2e-3 of the
    largest term for terms that are differences of large ones (px_loss, energy_gap near 0).

    Why that tolerance: bfloat16 keeps 8 significant bits, a relative rounding of 2^-9 = 2e-3 per
    value; the activations and weights of the few layers are rounded in turn (matmul and conv
    inputs), so logits carry a relative error of a few 1e-3, which the float32 losses inherit.
    2e-2 is several times that (measured: at most 3e-3 on the terms themselves, 1.6e-2 on GMMC's
    energy gap, a difference of two energies of about 50), and below what a term computed in
    bfloat16 end to end, or a skipped term, gives."""
    build, pixel_range = TRAINERS[name]
    models = []
    for precision in (None, "mixed_bfloat16"):
        keras.utils.set_random_seed(0)
        models.append(
            training.build_trainer(
                build, lambda: keras.optimizers.Adam(1e-3), tf.distribute.get_strategy(), mixed_precision=precision
            )
        )
    f32, bf16 = models
    assert len(f32.variables) == len(bf16.variables)
    for a, b in zip(f32.variables, bf16.variables):
        b.assign(a)
    ds = data.make_dataset("digits", "train", global_batch_size=16, pixel_range=pixel_range)
    x, y = next(iter(ds))
    batch = f32.unpack_batch((x, y), training=True)
    batch["views_seed"] = tf.constant([1, 2], tf.int64)  # CLEL's SimCLR views: the same for both
    negatives = f32.sample_negatives(batch)
    expected = f32.compute_losses(batch, negatives, training=True)  # JEM draws its samples here
    got = bf16.compute_losses(batch, negatives, training=True)
    keys = [key for key in f32.tracked_names if key in expected]  # the reported scalars
    assert "loss" in keys and sorted(got) == sorted(expected)
    scale = max(abs(float(expected[key])) for key in keys)
    for key in keys:
        np.testing.assert_allclose(float(got[key]), float(expected[key]), rtol=2e-2, atol=2e-3 * scale, err_msg=key)
