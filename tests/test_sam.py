"""PlainGradients / SAMGradients: closed-form perturbation and second-pass gradient, no state leaks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm.distribute import replica_id
from keras_ebm.optim import PlainGradients, SAMGradients

RNG = np.random.RandomState(0)
X = RNG.randn(8, 3).astype("float32")
T = RNG.randn(8, 1).astype("float32")


def _linear(seed=0):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)], name=f"linear_{seed}")
    model.layers[0].kernel.assign(np.array([[0.5], [-1.0], [2.0]], "float32"))
    return model


def _mse_grad(x, t, w):
    """d/dw mean((x w - t)^2) = 2 x^T (x w - t) / n."""
    return 2.0 * x.T @ (x @ w - t) / len(x)


def _loss_fn(model, x, t, key="total"):
    return lambda: {key: tf.reduce_mean((model(x) - t) ** 2), "other": tf.constant(1.0)}


def test_plain_gradients_match_closed_form():
    model = _linear()
    w = model.layers[0].kernel.numpy()
    grads, losses = PlainGradients()(_loss_fn(model, X, T, key="loss"), model.trainable_variables)
    np.testing.assert_allclose(grads[0].numpy(), _mse_grad(X, T, w), rtol=1e-5)
    np.testing.assert_allclose(losses["loss"].numpy(), np.mean((X @ w - T) ** 2), rtol=1e-6)


def test_sam_perturbation_and_second_pass_are_closed_form():
    model = _linear()
    w = model.layers[0].kernel.numpy().copy()
    rho = 0.3
    sam = SAMGradients(rho=rho)
    g = _mse_grad(X, T, w)
    e = rho * g / np.linalg.norm(g)
    np.testing.assert_allclose(sam.perturbation([tf.constant(g)], model.trainable_variables)[0].numpy(), e, rtol=1e-6)

    grads, losses = tf.function(lambda: sam(_loss_fn(model, X, T), model.trainable_variables))()
    np.testing.assert_allclose(grads[0].numpy(), _mse_grad(X, T, w + e), rtol=1e-5)
    assert not np.allclose(grads[0].numpy(), g, rtol=1e-3)
    # Losses are the first pass (at w), weights are untouched.
    np.testing.assert_allclose(losses["total"].numpy(), np.mean((X @ w - T) ** 2), rtol=1e-6)
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), w)


def test_asam_perturbation_hand_example():
    w = keras.Variable(np.array([1.0, -2.0], "float32"))
    g = tf.constant([3.0, 4.0])
    sam = SAMGradients(rho=1.0, adaptive=True, eta=0.5)
    # T = |w| + 0.5 = [1.5, 2.5]; T g = [4.5, 10]; ||T g|| = sqrt(120.25); e = T^2 g / ||T g||.
    expected = np.array([2.25 * 3.0, 6.25 * 4.0]) / np.sqrt(120.25)
    np.testing.assert_allclose(sam.perturbation([g], [w])[0].numpy(), expected, rtol=1e-6)
    # eta = 0: davda54/sam's w^2 g / ||w g||.
    sam0 = SAMGradients(rho=1.0, adaptive=True, eta=0.0)
    expected0 = np.array([1.0 * 3.0, 4.0 * 4.0]) / np.sqrt(9.0 + 64.0)
    np.testing.assert_allclose(sam0.perturbation([g], [w])[0].numpy(), expected0, rtol=1e-6)


def _bn_model():
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4)(inputs)
    h = keras.layers.BatchNormalization(momentum=0.5)(h)
    return keras.Model(inputs, keras.layers.Dense(1)(h))


def test_second_pass_does_not_touch_bn_moving_stats():
    model = _bn_model()
    reference = _bn_model()
    reference.set_weights(model.get_weights())
    bn, bn_ref = model.layers[2], reference.layers[2]

    def loss_fn():
        return {"total": tf.reduce_mean((model(X, training=True) - T) ** 2)}

    trainable = [v.numpy().copy() for v in model.trainable_variables]
    grads, _ = tf.function(lambda: SAMGradients(rho=0.5)(loss_fn, model.trainable_variables))()
    reference(X, training=True)  # one plain training forward
    np.testing.assert_allclose(bn.moving_mean.numpy(), bn_ref.moving_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), bn_ref.moving_variance.numpy(), rtol=1e-6)
    assert not np.allclose(bn.moving_mean.numpy(), 0.0)  # the first pass did update them
    for before, v in zip(trainable, model.trainable_variables):
        np.testing.assert_array_equal(v.numpy(), before)
    plain, _ = PlainGradients()(loss_fn, model.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    assert not all(np.allclose(a.numpy(), b.numpy()) for a, b in zip(grads, plain))


def test_missing_total_key_and_config():
    model = _linear()
    with pytest.raises(ValueError, match="total"):
        SAMGradients()(lambda: {"clf": tf.constant(0.0)}, model.trainable_variables)
    sam = SAMGradients(rho=2.0, adaptive=True, eta=0.0, sync_perturbation=True)
    assert SAMGradients.from_config(sam.get_config()).get_config() == sam.get_config()
    assert PlainGradients.from_config(PlainGradients().get_config()).get_config() == {}


@pytest.mark.parametrize("sync", [False, True])
def test_sam_under_two_replicas(two_device_strategy, sync):
    strategy = two_device_strategy
    rho, lr = 0.3, 0.1
    with strategy.scope():
        model = _linear()
        optimizer = keras.optimizers.SGD(lr)
        optimizer.build(model.trainable_variables)
    sam = SAMGradients(rho=rho, sync_perturbation=sync)
    w = model.layers[0].kernel.numpy().copy()
    xs = tf.constant(X.reshape(2, 4, 3))
    ts = tf.constant(T.reshape(2, 4, 1))

    @tf.function
    def step():
        def replica_fn():
            r = replica_id()
            grads, _ = sam(_loss_fn(model, xs[r], ts[r]), model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)

        strategy.run(replica_fn)

    step()
    mirrors = [v.numpy() for v in model.layers[0].kernel.value.values]
    np.testing.assert_array_equal(mirrors[0], mirrors[1])

    halves = [(X[:4], T[:4]), (X[4:], T[4:])]
    if sync:
        # One global perturbation from the full-batch gradient.
        g = sum(_mse_grad(x, t, w) for x, t in halves) / 2
        eps = [rho * g / np.linalg.norm(g)] * 2
    else:
        # m-sharpness: each replica perturbs with its own gradient.
        eps = [rho * _mse_grad(x, t, w) / np.linalg.norm(_mse_grad(x, t, w)) for x, t in halves]
    grad = sum(_mse_grad(x, t, w + e) for (x, t), e in zip(halves, eps)) / 2
    np.testing.assert_allclose(mirrors[0], w - lr * grad, rtol=1e-5, atol=1e-6)


def test_unused_variable_gets_no_gradient_like_plain():
    model = _linear()
    unused = keras.Variable(np.ones([2], "float32"))
    variables = model.trainable_variables + [unused]
    sam_grads, _ = SAMGradients(rho=0.1)(_loss_fn(model, X, T), variables)
    plain_grads, _ = PlainGradients()(_loss_fn(model, X, T), variables)
    assert sam_grads[-1] is None and plain_grads[-1] is None
    w = model.layers[0].kernel.numpy()
    g = _mse_grad(X, T, w)
    np.testing.assert_allclose(sam_grads[0].numpy(), _mse_grad(X, T, w + 0.1 * g / np.linalg.norm(g)), rtol=1e-5)


def _two_layer():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)], name="two_layer"
    )
    return model


@pytest.mark.parametrize(
    "gradients",
    [PlainGradients(), SAMGradients(rho=0.3), SAMGradients(rho=0.5, adaptive=True)],
    ids=["plain", "sam", "asam"],
)
def test_grouped_variables_give_the_flat_result_re_nested(gradients):
    # Groups (one per optimizer, as CLEL's EBM / encoder) only re-nest the result: the same single
    # backward pass for plain gradients and, for SAM, one perturbation over all groups together.
    model = _two_layer()
    unused = keras.Variable(np.ones([2], "float32"))
    flat_vars = model.trainable_variables + [unused]
    groups = [model.trainable_variables[:2], [], model.trainable_variables[2:] + [unused]]
    loss_fn = _loss_fn(model, X, T)
    flat, flat_losses = gradients(loss_fn, flat_vars)
    nested, losses = gradients(loss_fn, groups)
    assert [len(g) for g in nested] == [2, 0, 3]
    regrouped = [g for group in nested for g in group]
    assert len(regrouped) == len(flat)
    for a, b in zip(flat, regrouped):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert nested[2][-1] is None  # unused variable: no gradient, as with a flat list
    np.testing.assert_array_equal(losses["total"].numpy(), flat_losses["total"].numpy())
    if isinstance(gradients, SAMGradients) and not gradients.adaptive:
        # One joint ball: the perturbation norm is rho over both groups, not rho per group.
        w = [v.numpy() for v in model.trainable_variables]
        g, _ = PlainGradients()(loss_fn, model.trainable_variables)
        norm = np.sqrt(sum(np.sum(x.numpy() ** 2) for x in g))
        perturbed = [wi + gradients.rho * gi.numpy() / norm for wi, gi in zip(w, g)]
        for v, p in zip(model.trainable_variables, perturbed):
            v.assign(p)
        expected, _ = PlainGradients()(loss_fn, model.trainable_variables)
        for v, wi in zip(model.trainable_variables, w):
            v.assign(wi)
        for a, b in zip(regrouped, expected):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="mix"):
        gradients(loss_fn, [model.trainable_variables[0], [model.trainable_variables[1]]])
