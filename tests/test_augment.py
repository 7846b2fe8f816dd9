"""Tests of keras_ebm.data.augment: stateless, per-sample, batched augmentations."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import data

SEED = tf.constant([3, 7], tf.int64)


def _images(batch=8, size=12, channels=3, pixel_range=(-1.0, 1.0), seed=0):
    x = np.random.default_rng(seed).integers(0, 256, (batch, size, size, channels), dtype=np.uint8)
    return data.to_pixel_range(x, pixel_range)


def _same_image_batch(batch=8, channels=3, pixel_range=(-1.0, 1.0)):
    return tf.repeat(_images(1, channels=channels, pixel_range=pixel_range), batch, axis=0)


# ------------------------------------------------------------------------------ pad_crop_flip
def test_pad_crop_flip_identity_without_pad_and_flip():
    x = _images()
    np.testing.assert_array_equal(data.pad_crop_flip(x, SEED, pad=0, flip=False).numpy(), x.numpy())


def test_pad_crop_flip_outputs_are_crops_of_the_reflect_padded_image():
    x = _images(batch=6).numpy()
    out = data.pad_crop_flip(x, SEED, pad=2, flip=True).numpy()
    assert out.shape == x.shape and out.dtype == np.float32
    padded = np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    offsets = set()
    for i in range(len(x)):
        crops = [
            ((dy, dx, flipped), padded[i, dy : dy + 12, dx : dx + 12])
            for dy in range(5)
            for dx in range(5)
            for flipped in (False, True)
        ]
        matches = [key for key, crop in crops if np.array_equal(out[i], crop[:, ::-1] if key[2] else crop)]
        assert matches, f"sample {i} is not a (flipped) crop of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1  # offsets and flips are drawn per sample


def test_pad_crop_flip_flip_only():
    x = _images(batch=16).numpy()
    out = data.pad_crop_flip(x, SEED, pad=0, flip=True).numpy()
    flipped = np.array([np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x)])
    kept = np.array([np.array_equal(o, xi) for o, xi in zip(out, x)])
    assert np.all(flipped | kept) and flipped.any() and kept.any()


def _seeded_twice_and_reseeded(augment, x, other_seed):
    """`augment(x, SEED)` twice (asserted equal) and `augment(x, other_seed)`: returns both outputs."""
    a = augment(x, SEED).numpy()
    np.testing.assert_array_equal(a, augment(x, SEED).numpy())
    return a, augment(x, tf.constant(other_seed, tf.int64)).numpy()


def test_pad_crop_flip_per_sample_and_deterministic():
    x = _same_image_batch()
    a, c = _seeded_twice_and_reseeded(data.pad_crop_flip, x, [3, 8])
    assert not np.array_equal(a, c)
    assert len({a[i].tobytes() for i in range(len(a))}) > 1
    assert a.min() >= x.numpy().min() and a.max() <= x.numpy().max()


def test_pad_crop_flip_errors():
    with pytest.raises(ValueError, match="pad"):
        data.pad_crop_flip(_images(size=4), SEED, pad=4)
    with pytest.raises(ValueError, match="batch"):
        data.pad_crop_flip(_images()[0], SEED)
    with pytest.raises(ValueError, match="float"):
        data.pad_crop_flip(tf.zeros((2, 8, 8, 3), tf.uint8), SEED)


# ----------------------------------------------------------------------------- simclr_augment
@pytest.mark.parametrize("pixel_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_simclr_shape_range_per_sample(pixel_range):
    x = _same_image_batch(pixel_range=pixel_range)
    out = data.simclr_augment(x, SEED, pixel_range=pixel_range).numpy()
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= pixel_range[0] and out.max() <= pixel_range[1]
    assert np.isfinite(out).all()
    # Every pair of samples of the same image differs.
    flat = out.reshape(len(out), -1)
    assert all(not np.allclose(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8))


def test_simclr_deterministic():
    a, c = _seeded_twice_and_reseeded(data.simclr_augment, _images(), [1, 2])
    assert not np.allclose(a, c)


def test_simclr_identity_when_everything_is_off():
    x = _images()
    out = data.simclr_augment(
        x,
        SEED,
        crop_scale=(1.0, 1.0),
        aspect_ratio=(1.0, 1.0),
        jitter_strength=0.0,
        grayscale_prob=0.0,
        flip=False,
    )
    np.testing.assert_allclose(out.numpy(), x.numpy(), atol=1e-5)


def _colour_only(x, **kwargs):
    """`simclr_augment` of [0, 1] images with cropping and flipping off: colour changes only."""
    return data.simclr_augment(x, SEED, pixel_range=(0.0, 1.0), crop_scale=None, flip=False, **kwargs).numpy()


def test_simclr_grayscale_always():
    x = _images(pixel_range=(0.0, 1.0))
    out = _colour_only(x, jitter_strength=0.0, grayscale_prob=1.0)
    np.testing.assert_allclose(out[..., 0], out[..., 1])
    np.testing.assert_allclose(out[..., 0], out[..., 2])
    # ITU-R 601 luma of the input, which tf.image.rgb_to_grayscale uses.
    luma = x.numpy() @ np.array([0.2989, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(out[..., 0], luma, atol=1e-3)


def test_simclr_jitter_only_changes_colours_per_sample():
    x = _same_image_batch(pixel_range=(0.0, 1.0))
    out = _colour_only(x, jitter_prob=1.0, grayscale_prob=0.0)
    means = out.mean(axis=(1, 2))
    assert np.ptp(means, axis=0).max() > 0.02  # brightness/colour differ between samples


def test_simclr_grayscale_images():
    x = _same_image_batch(channels=1)
    out = data.simclr_augment(x, SEED).numpy()
    assert out.shape == (8, 12, 12, 1)
    assert -1.0 <= out.min() and out.max() <= 1.0
    assert len({o.tobytes() for o in out}) > 1


# ------------------------------------------------------------------------------ graph modes
@pytest.mark.parametrize("name", ["pad_crop_flip", "pad_crop", "simclr"])
def test_augment_fn_in_tf_function_and_tf_data(name):
    fn = data.augment_fn(name, (-1.0, 1.0))
    x = _images()
    eager = fn(x, SEED).numpy()
    graph = tf.function(fn)(x, SEED).numpy()
    np.testing.assert_allclose(graph, eager, atol=1e-5)

    ds = tf.data.Dataset.from_tensors(x).repeat(2)
    seeds = tf.data.Dataset.from_tensor_slices(tf.constant([[3, 7], [3, 7]], tf.int64))
    ds = tf.data.Dataset.zip((ds, seeds)).map(fn)
    for out in ds:
        assert out.shape == x.shape
        np.testing.assert_allclose(out.numpy(), eager, atol=1e-5)


def test_augment_under_distribution_strategy(two_device_strategy):
    x = _images(batch=4)

    @tf.function
    def step():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            seed = tf.random.experimental.stateless_fold_in(SEED, ctx.replica_id_in_sync_group)
            return data.pad_crop_flip(x, seed)

        return two_device_strategy.run(replica_fn)

    outs = [t.numpy() for t in two_device_strategy.experimental_local_results(step())]
    assert len(outs) == 2 and outs[0].shape == (4, 12, 12, 3)
    assert not np.array_equal(outs[0], outs[1])


def test_augment_fn_names():
    x = _images()
    np.testing.assert_array_equal(data.augment_fn("none")(x, SEED).numpy(), x.numpy())
    np.testing.assert_array_equal(data.augment_fn(None)(x, SEED).numpy(), x.numpy())
    np.testing.assert_array_equal(data.augment_fn("pad_crop", pad=0)(x, SEED).numpy(), x.numpy())  # no flip
    with pytest.raises(ValueError, match="Unknown augmentation"):
        data.augment_fn("mixup")
