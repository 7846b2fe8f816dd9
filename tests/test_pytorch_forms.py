"""PyTorch-form pieces the parity tests found necessary, checked against by-hand NumPy:
`keras_ebm.backbones.layers.BatchNormalization(unbiased_moving_variance=True)`, `TorchSGD`,
`LinearWarmup(from_zero=True)` and `InformativeInitializer(factor_order="chw")`."""

import keras
import numpy as np
import tensorflow as tf

from keras_ebm.backbones.layers import BatchNormalization
from keras_ebm.optim import TorchSGD
from keras_ebm.optim.schedules import LinearWarmup
from keras_ebm.sampling import InformativeInitializer
from keras_ebm.stateless_scope import discard_updates


def test_unbiased_moving_variance_is_pytorchs_update():
    x = np.random.RandomState(0).normal(size=(4, 3, 3, 2)).astype("float32")
    n = 4 * 3 * 3
    var = x.reshape(-1, 2).var(axis=0)
    for unbiased, expected in ((True, 0.1 * 1.0 + 0.9 * var * n / (n - 1)), (False, 0.1 * 1.0 + 0.9 * var)):
        bn = BatchNormalization(momentum=0.1, epsilon=1e-5, unbiased_moving_variance=unbiased)
        out = bn(x, training=True)
        np.testing.assert_allclose(bn.moving_variance.numpy(), expected, rtol=1e-5)
        # Normalisation uses the biased batch variance either way (as PyTorch).
        np.testing.assert_allclose(
            out.numpy(), (x - x.reshape(-1, 2).mean(0)) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5
        )
    keras_bn = keras.layers.BatchNormalization(momentum=0.1, epsilon=1e-5)
    ours = BatchNormalization(momentum=0.1, epsilon=1e-5)
    np.testing.assert_array_equal(keras_bn(x, training=True).numpy(), ours(x, training=True).numpy())
    np.testing.assert_array_equal(keras_bn.moving_variance.numpy(), ours.moving_variance.numpy())
    frozen = BatchNormalization(momentum=0.1, unbiased_moving_variance=True)
    frozen.build(x.shape)
    with discard_updates():
        frozen(x, training=True)
    np.testing.assert_array_equal(frozen.moving_variance.numpy(), np.ones(2))
    assert BatchNormalization.from_config(frozen.get_config()).unbiased_moving_variance


def test_torch_sgd_keeps_pytorchs_momentum_buffer_through_a_warmup():
    lr = LinearWarmup(0.1, 2, from_zero=True)  # rates 0, 0.05, 0.1, 0.1
    np.testing.assert_allclose([float(lr(k)) for k in range(4)], [0.0, 0.05, 0.1, 0.1])
    np.testing.assert_allclose([float(LinearWarmup(0.1, 2)(k)) for k in range(3)], [0.05, 0.1, 0.1])
    w = tf.Variable([1.0, -2.0])
    opt = TorchSGD(learning_rate=lr, momentum=0.9)
    grads = [np.array([0.5, -1.0]), np.array([0.2, 0.3]), np.array([-0.4, 0.1]), np.array([1.0, 1.0])]
    w_ref, buf = np.array([1.0, -2.0]), np.zeros(2)
    for k, g in enumerate(grads):
        opt.apply([tf.constant(g, tf.float32)], [w])
        buf = 0.9 * buf + g  # torch.optim.SGD, dampening 0 (b_0 = g_0)
        w_ref = w_ref - [0.0, 0.05, 0.1, 0.1][k] * buf
        np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-6)
    keras_w = tf.Variable([1.0, -2.0])
    keras_opt = keras.optimizers.SGD(learning_rate=LinearWarmup(0.1, 2, from_zero=True), momentum=0.9)
    for g in grads:
        keras_opt.apply([tf.constant(g, tf.float32)], [keras_w])
    assert np.abs(keras_w.numpy() - w_ref).max() > 1e-3  # Keras forgets the rate-0 step's gradient


def test_chw_factor_order_samples_the_channels_first_gaussian():
    rng = np.random.RandomState(1)
    h, w, c = 2, 2, 3
    images = rng.uniform(-1, 1, (6, h, w, c))
    labels = np.array([0, 0, 0, 1, 1, 1])
    from keras_ebm.sampling.initializers import class_gaussian_statistics

    mean, cov = class_gaussian_statistics((images, labels), 2, (-1, 1), factor_order="chw")
    flat = np.transpose(images[:3], (0, 3, 1, 2)).reshape(3, -1)
    np.testing.assert_allclose(mean[0], flat.mean(0))
    np.testing.assert_allclose(cov[0], (flat - flat.mean(0)).T @ (flat - flat.mean(0)) / 3, atol=1e-12)
    init = InformativeInitializer(mean, cov, jitter=1e-2, pixel_range=(-10, 10), factor_order="chw", dtype="float64")
    z = rng.normal(size=(2, h * w * c))
    from keras_ebm import random_draws

    with random_draws.replay({"init_normal": [z]}):
        x = init.init([2, h, w, c], seed=tf.constant([0, 0]), y=tf.constant([0, 1]), dtype=tf.float64).numpy()
    for i, y in enumerate((0, 1)):
        sample_chw = mean[y] + np.linalg.cholesky(cov[y] + 1e-2 * np.eye(h * w * c)) @ z[i]
        np.testing.assert_allclose(x[i], sample_chw.reshape(c, h, w).transpose(1, 2, 0), atol=1e-12)
