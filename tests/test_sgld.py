"""SGLDSampler: closed-form steps on E(x) = 0.5||x||^2, clamps, noise statistics, BN handling."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm.sampling import SGLDSampler


def quadratic_energy(x, y, training):
    """E(x) = 0.5 ||x||^2 per sample, so dE/dx = x."""
    return 0.5 * tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1]) ** 2, axis=-1)


def zero_energy(x, y, training):
    return 0.0 * tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1]), axis=-1)


def _x(batch=4, shape=(3, 3, 2), seed=0):
    return tf.constant(np.random.RandomState(seed).randn(batch, *shape).astype("float32"))


def test_one_step_is_exact_contraction():
    x = _x()
    sampler = SGLDSampler(n_steps=1, step_size=0.3, noise_std=0.0)
    np.testing.assert_allclose(sampler(quadratic_energy, x).numpy(), 0.7 * x.numpy(), rtol=1e-6)


@pytest.mark.parametrize("n_steps", [0, 1, 5])
def test_n_steps_give_geometric_contraction(n_steps):
    x = _x()
    sampler = SGLDSampler(n_steps=7, step_size=0.2, noise_std=0.0)
    out = sampler(quadratic_energy, x, n_steps=n_steps)
    np.testing.assert_allclose(out.numpy(), 0.8**n_steps * x.numpy(), rtol=1e-5)


def test_mean_reduction_divides_the_step_by_the_batch_size():
    batch = 4
    x = _x(batch)
    sampler = SGLDSampler(n_steps=2, step_size=0.5, noise_std=0.0, energy_reduction="mean")
    expected = (1.0 - 0.5 / batch) ** 2 * x.numpy()
    np.testing.assert_allclose(sampler(quadratic_energy, x).numpy(), expected, rtol=1e-6)


def test_gradient_clamp_is_elementwise():
    x = tf.constant([[3.0, -0.05, -2.0, 0.5]])
    sampler = SGLDSampler(n_steps=1, step_size=1.0, noise_std=0.0, grad_clip=0.1)
    # dE/dx = x, clamped to [-0.1, 0.1].
    np.testing.assert_allclose(sampler(quadratic_energy, x).numpy(), [[2.9, 0.0, -1.9, 0.4]], rtol=1e-6, atol=1e-7)


def test_x_clamp_after_every_step():
    x = tf.constant([[3.0, -3.0, 0.2]])

    # The step pushes x away from 0 (step_size < 0 is not allowed, so use E = -0.5||x||^2).
    def expanding_energy(x, y, training):
        return -quadratic_energy(x, y, training)

    sampler = SGLDSampler(n_steps=3, step_size=0.5, noise_std=0.0, x_clip=(-1.0, 1.0))
    out = sampler(expanding_energy, x).numpy()
    np.testing.assert_allclose(out, [[1.0, -1.0, 0.2 * 1.5**3]], rtol=1e-6)


@pytest.mark.parametrize("flag", [True, False])
def test_training_flag_is_passed_through(flag):
    seen = []

    def energy_fn(x, y, training):
        seen.append((training, y))
        return quadratic_energy(x, y, training)

    sampler = SGLDSampler(n_steps=3, step_size=0.1, noise_std=0.0, energy_training=flag)
    y = tf.constant([0, 1])
    sampler(energy_fn, _x(2), y=y)
    # Called eagerly, the chain runs as one tf.function: the energy function is traced once
    # (its while_loop body), with the labels as the function's input.
    assert len(seen) == 1
    assert all(training is flag for training, _ in seen)
    assert all(seen_y.dtype == y.dtype and seen_y.shape == y.shape for _, seen_y in seen)


def test_noise_statistics_match_noise_std():
    x = tf.zeros([4000, 8])
    sampler = SGLDSampler(n_steps=4, step_size=1.0, noise_std=0.1, seed=3)
    out = sampler(zero_energy, x).numpy()
    # Four independent N(0, 0.1^2) increments: std 0.1 * sqrt(4). 32000 values -> ~0.4% error.
    assert abs(out.std() - 0.2) < 0.2 * 0.03
    assert abs(out.mean()) < 0.005
    # Fresh noise on the next call (the seed generator advances).
    assert not np.allclose(out, sampler(zero_energy, x).numpy())


def test_same_seed_same_chain():
    x = _x()
    a = SGLDSampler(n_steps=2, noise_std=0.1, seed=11)(quadratic_energy, x)
    b = SGLDSampler(n_steps=2, noise_std=0.1, seed=11)(quadratic_energy, x)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_inside_tf_function_with_tensor_steps_and_stats():
    x = _x()
    sampler = SGLDSampler(n_steps=3, step_size=0.25, noise_std=0.0)

    @tf.function
    def run(x, n_steps):
        return sampler.sample_with_stats(quadratic_energy, x, n_steps=n_steps)

    out, stats = run(x, tf.constant(3))
    np.testing.assert_allclose(out.numpy(), 0.75**3 * x.numpy(), rtol=1e-5)
    x_np = x.numpy().reshape(x.shape[0], -1)
    # grad_norm: at the last step's input x_2 = 0.75^2 x, where the gradient is x_2 itself.
    np.testing.assert_allclose(stats["grad_norm"].numpy(), np.mean(np.linalg.norm(0.75**2 * x_np, axis=1)), rtol=1e-5)
    np.testing.assert_allclose(stats["energy_start"].numpy(), np.mean(0.5 * (x_np**2).sum(1)), rtol=1e-5)
    np.testing.assert_allclose(stats["energy_end"].numpy(), np.mean(0.5 * ((0.75**2 * x_np) ** 2).sum(1)), rtol=1e-5)
    # Same trace, other step count.
    out, _ = run(x, tf.constant(1))
    np.testing.assert_allclose(out.numpy(), 0.75 * x.numpy(), rtol=1e-5)


def test_output_has_no_gradient_to_the_start():
    x = tf.Variable(_x())
    sampler = SGLDSampler(n_steps=2, step_size=0.1, noise_std=0.0)
    with tf.GradientTape() as tape:
        out = sampler(quadratic_energy, x)
        loss = tf.reduce_sum(out)
    assert tape.gradient(loss, x) is None


def quartic_energy(x, y, training):
    """A non-quadratic energy (its gradient is not linear in x), so chains differ if steps do."""
    flat = tf.reshape(x, [tf.shape(x)[0], -1])
    return tf.reduce_sum(0.25 * flat**4 - flat, axis=-1)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("clamps", [False, True])
def test_statistics_off_gives_the_same_chain_as_statistics_on(graph, clamps):
    """`__call__` (no statistics) and `sample_with_stats` (statistics reduced after the loop from
    the carried last gradient and energies) run the same chain, bit for bit."""
    settings = dict(n_steps=6, step_size=0.2, noise_std=0.05, seed=5)
    if clamps:
        settings.update(grad_clip=0.5, x_clip=(-1.5, 1.5))
    off, on = SGLDSampler(**settings), SGLDSampler(**settings)
    x = _x()
    call_off = lambda x: off(quartic_energy, x)  # noqa: E731
    call_on = lambda x: on.sample_with_stats(quartic_energy, x)  # noqa: E731
    if graph:
        call_off, call_on = tf.function(call_off), tf.function(call_on)
    for _ in range(2):  # and again with the advanced seed generators
        out_off = call_off(x)
        out_on, stats = call_on(x)
        np.testing.assert_array_equal(out_off.numpy(), out_on.numpy())
        assert not np.allclose(out_on.numpy(), x.numpy())
        assert set(stats) == {"grad_norm", "energy_start", "energy_end"}
        assert all(np.isfinite(v.numpy()) and v.dtype == tf.float32 for v in stats.values())
    np.testing.assert_allclose(
        stats["energy_start"].numpy(), np.mean(quartic_energy(x, None, False).numpy()), rtol=1e-6
    )


def test_statistics_of_zero_steps_are_zero():
    x = _x()
    out, stats = SGLDSampler(n_steps=3).sample_with_stats(quadratic_energy, x, n_steps=0)
    np.testing.assert_array_equal(out.numpy(), x.numpy())
    assert {k: float(v) for k, v in stats.items()} == {"grad_norm": 0.0, "energy_start": 0.0, "energy_end": 0.0}


def test_eager_chain_is_one_function_invisible_to_an_outer_tape():
    """Eagerly, the chain runs as one cached tf.function: an outer tape that watches the energy's
    variables records no SGLD step (it would keep every step's activations alive)."""
    w = tf.Variable(1.5)
    traces = []

    def energy_fn(x, y, training):
        traces.append(1)
        return w * quadratic_energy(x, y, training)

    sampler = SGLDSampler(n_steps=4, step_size=0.1, noise_std=0.0)
    x = _x()
    with tf.GradientTape(persistent=True) as tape:
        out = sampler(energy_fn, x)
        out_again = sampler(energy_fn, x)
        loss = w * tf.reduce_sum(out)
    np.testing.assert_allclose(out.numpy(), 0.85**4 * x.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(out.numpy(), out_again.numpy())
    assert len(traces) == 1  # traced once, reused on the second call
    # The loss depends on w only through the explicit factor: the chain carries no gradient.
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), np.sum(out.numpy()), rtol=1e-6)
    assert tape.gradient(out, w) is None


def test_jit_compiled_chain_matches():
    # Noise-free: XLA draws another Gaussian stream from the same seeds.
    settings = dict(n_steps=5, step_size=0.2, noise_std=0.0, grad_clip=0.5, seed=2)
    x = _x()
    plain = SGLDSampler(**settings).sample_with_stats(quartic_energy, x)
    xla_sampler = SGLDSampler(jit_compile=True, **settings)
    xla = xla_sampler.sample_with_stats(quartic_energy, x)
    np.testing.assert_allclose(xla[0].numpy(), plain[0].numpy(), rtol=1e-5, atol=1e-6)
    for key in plain[1]:
        np.testing.assert_allclose(xla[1][key].numpy(), plain[1][key].numpy(), rtol=1e-5)
    # Inside a tf.function too (the XLA loop is compiled alone, inside the step).
    in_step = SGLDSampler(jit_compile=True, **settings)
    out = tf.function(lambda x: in_step(quartic_energy, x))(x)
    np.testing.assert_allclose(out.numpy(), plain[0].numpy(), rtol=1e-5, atol=1e-6)
    assert xla_sampler.get_config()["jit_compile"] is True
    noisy = SGLDSampler(n_steps=4, step_size=1.0, noise_std=0.1, seed=3, jit_compile=True)
    out = noisy(zero_energy, tf.zeros([4000, 8])).numpy()
    assert abs(out.std() - 0.2) < 0.2 * 0.03


def _bn_energy_model():
    inputs = keras.Input((2, 2, 1))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(4)(h)
    h = keras.layers.BatchNormalization(momentum=0.5)(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_stats_in_graph_mode(freeze):
    model = _bn_energy_model()
    bn = model.layers[3]
    moving_mean = bn.moving_mean.numpy().copy()

    def energy_fn(x, y, training):
        return -tf.reduce_logsumexp(model(x, training=training), axis=-1)

    sampler = SGLDSampler(n_steps=3, step_size=0.1, noise_std=0.0, energy_training=True, freeze_bn_stats=freeze)
    x = tf.random.normal([6, 2, 2, 1], seed=1)
    out = tf.function(lambda x: sampler(energy_fn, x))(x)
    assert not np.allclose(out.numpy(), x.numpy())  # gradients flowed through the BN model
    changed = not np.allclose(bn.moving_mean.numpy(), moving_mean)
    assert changed is (not freeze)


def test_frozen_is_honoured_eagerly_after_an_unfrozen_call():
    """The eager chain's cached trace depends on `freeze_bn_stats`: `frozen()` after a plain call
    must not reuse the trace that updates BatchNorm's moving statistics."""
    model = _bn_energy_model()
    bn = model.layers[3]

    def energy_fn(x, y, training):
        return -tf.reduce_logsumexp(model(x, training=training), axis=-1)

    sampler = SGLDSampler(n_steps=2, step_size=0.1, noise_std=0.0, energy_training=True)
    x = tf.random.normal([6, 2, 2, 1], seed=1)
    before = bn.moving_mean.numpy().copy()
    sampler(energy_fn, x)
    updated = bn.moving_mean.numpy().copy()
    assert not np.allclose(updated, before)
    with sampler.frozen():
        sampler(energy_fn, x)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), updated)
    sampler(energy_fn, x)
    assert not np.allclose(bn.moving_mean.numpy(), updated)


def test_replicas_draw_different_noise(two_device_strategy):
    with two_device_strategy.scope():
        sampler = SGLDSampler(n_steps=1, step_size=1.0, noise_std=1.0, seed=0)

    @tf.function
    def run():
        return two_device_strategy.run(lambda: sampler(zero_energy, tf.zeros([2, 5])))

    first, second = two_device_strategy.experimental_local_results(run())
    assert not np.allclose(first.numpy(), second.numpy())


def test_config_round_trip_and_validation():
    sampler = SGLDSampler(n_steps=5, grad_clip=1.0, x_clip=(-1, 1), energy_reduction="mean")
    config = sampler.get_config()
    assert SGLDSampler.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="energy_reduction"):
        SGLDSampler(energy_reduction="max")
    with pytest.raises(ValueError, match="x_clip"):
        SGLDSampler(x_clip=(1.0, -1.0))
    with pytest.raises(ValueError, match="float tensor"):
        SGLDSampler()(quadratic_energy, tf.zeros([2, 2], tf.int32))
