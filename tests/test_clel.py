"""CLEL: spectral-norm conv, networks, NT-Xent with extra negatives, EMA, the two-optimizer trainer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    cifar_arrays,
    clel_sampler,
    digits_arrays,
    run_briefly,
    run_lifecycle,
    tiny_clel_encoder,
)
from keras_ebm.backbones.clel import build_clel_ebm, build_clel_projection
from keras_ebm.backbones.layers import SpectralNormConv2D
from keras_ebm.losses.contrastive import nt_xent_loss
from keras_ebm.optim import PlainGradients, SAMGradients
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers.clel import CLEL
from keras_ebm.trainers.clel.ema import ModelEMA


# ---------------------------------------------------------------- spectral norm
def test_spectral_norm_converges_to_unit_sigma():
    conv = SpectralNormConv2D(6, 3, padding="same")
    conv.build((None, 5, 5, 4))
    for _ in range(50):
        conv(tf.zeros((1, 5, 5, 4)), training=True)
    w = conv.normalized_kernel(training=False).numpy()
    sigma = np.linalg.svd(w.reshape(-1, 6), compute_uv=False)[0]
    np.testing.assert_allclose(sigma, 1.0, atol=1e-3)
    raw = np.linalg.svd(conv.kernel.numpy().reshape(-1, 6), compute_uv=False)[0]
    np.testing.assert_allclose(conv.spectral_norm().numpy(), raw, rtol=1e-3)


@pytest.mark.parametrize("iterations", [None, 15, 200])
def test_spectral_norm_is_valid_right_after_build(iterations):
    # Before any call, sigma-hat = u^T W v is the top singular value of the kernel matrix, in
    # inference mode too: exact (within 1%) by default (top singular pair at build), a few % low with
    # PyTorch's 15 power iterations at registration (near-square random kernels), within 1% at 200.
    # Without any (random unit u, v) sigma-hat is about 0 and often negative: a blown-up,
    # sign-flipped kernel.
    kwargs = {} if iterations is None else {"n_power_iterations_at_build": iterations}
    # 15 iterations in PyTorch's parametrizations order (u first): 5.4% low at worst here
    # ((3, 3, 16, 32), seed 0), 4% with the older v-first order.
    lowest = 0.93 if iterations == 15 else 0.99
    for shape in [(3, 3, 4, 6), (3, 3, 16, 32), (1, 1, 32, 8), (3, 3, 32, 32)]:
        kh, kw, cin, cout = shape
        for seed in range(5):
            keras.utils.set_random_seed(seed)
            conv = SpectralNormConv2D(cout, (kh, kw), **kwargs)
            conv.build((None, 8, 8, cin))
            w = conv.kernel.numpy().reshape(-1, cout)  # [kh * kw * in, out], the layer's W transposed
            top = np.linalg.svd(w, compute_uv=False)[0]
            u, v = conv.sn_u.numpy(), conv.sn_v.numpy()
            sigma_hat = float(u @ (w.T @ v))
            msg = f"{shape} seed {seed}: sigma_hat={sigma_hat}, top singular value={top}"
            assert lowest * top <= sigma_hat <= top * (1 + 1e-5), msg
            np.testing.assert_allclose(conv.spectral_norm(training=False).numpy(), sigma_hat, rtol=1e-5)
    if iterations is None:
        assert conv.get_config()["n_power_iterations_at_build"] is None
        assert SpectralNormConv2D.from_config(conv.get_config()).n_power_iterations_at_build is None
        with pytest.raises(ValueError, match="n_power_iterations_at_build"):
            SpectralNormConv2D(4, 3, n_power_iterations_at_build=-1)


def test_spectral_norm_build_iterations_are_seeded_and_mirrored(two_device_strategy):
    # Deterministic given the seed, and built under a strategy scope every mirror holds the
    # iterated vectors.
    def build(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(3)
            conv = SpectralNormConv2D(8, 3)
            conv.build((None, 6, 6, 5))
        return conv

    single = build(tf.distribute.get_strategy())
    again = build(tf.distribute.get_strategy())
    np.testing.assert_array_equal(single.sn_u.numpy(), again.sn_u.numpy())
    mirrored = build(two_device_strategy)
    np.testing.assert_array_equal(mirrored.kernel.numpy(), single.kernel.numpy())
    for variable, expected in ((mirrored.sn_u, single.sn_u), (mirrored.sn_v, single.sn_v)):
        for mirror in _mirrors(variable):
            np.testing.assert_allclose(mirror, expected.numpy(), rtol=1e-6, atol=1e-7)


def test_spectral_norm_u_changes_only_in_training():
    # Random u at build (the exact top pair would be a fixed point of the iteration).
    conv = SpectralNormConv2D(4, 3, n_power_iterations_at_build=0)
    conv.build((None, 5, 5, 2))
    u = conv.sn_u.numpy().copy()
    conv(tf.ones((1, 5, 5, 2)), training=False)
    np.testing.assert_array_equal(conv.sn_u.numpy(), u)
    conv(tf.ones((1, 5, 5, 2)), training=True)
    assert not np.allclose(conv.sn_u.numpy(), u)


def test_spectral_norm_gradient_flows_through_sigma():
    conv = SpectralNormConv2D(3, 2, use_bias=False)
    conv.build((None, 3, 3, 2))
    x = tf.random.stateless_normal((2, 3, 3, 2), seed=[1, 2])
    conv(x, training=True)  # settle u, v; further calls in inference mode keep them fixed

    def loss_fn():
        return tf.reduce_sum(tf.sin(conv(x, training=False)))

    with tf.GradientTape() as tape:
        loss = loss_fn()
    grad = tape.gradient(loss, conv.kernel).numpy()
    kernel = conv.kernel.numpy().astype(np.float64)
    eps, idx = 1e-3, (0, 1, 1, 2)
    for sign in (1, -1):
        k = kernel.copy()
        k[idx] += sign * eps
        conv.kernel.assign(k.astype(np.float32))
        if sign == 1:
            plus = float(loss_fn())
        else:
            minus = float(loss_fn())
    conv.kernel.assign(kernel.astype(np.float32))
    fd = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(grad[idx], fd, rtol=2e-2, atol=1e-3)
    # Without the sigma term the gradient would be (dL/dW_hat) / sigma: check it differs.
    with tf.GradientTape() as tape:
        w_hat = conv.kernel / tf.stop_gradient(conv.spectral_norm())
        naive = tf.reduce_sum(tf.sin(conv.convolution_op(x, w_hat)))
    naive_grad = tape.gradient(naive, conv.kernel).numpy()
    assert not np.allclose(naive_grad, grad, atol=1e-4)


# ---------------------------------------------------------------- networks
def tiny_ebm(size="small", image_shape=(16, 16, 3), blocks=1):
    return build_clel_ebm(
        size,
        input_shape=image_shape,
        widths=(4, 8),
        blocks_per_stage=blocks,
        head_units=16,
        feature_dim=8,
        input_mean=None,
    )


def test_ebm_sizes_shapes_and_sn_everywhere():
    large = build_clel_ebm("large", input_shape=(16, 16, 3), widths=(4, 4), head_units=8, feature_dim=6)
    assert large(tf.zeros((2, 16, 16, 3))).shape == (2, 6)
    convs = [l for l in large.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs and all(isinstance(l, SpectralNormConv2D) for l in convs)
    # three ResNets (one stem each)
    assert sum(l.name.endswith("_stem") for l in convs) == 3
    with pytest.raises(ValueError, match="divisible"):
        build_clel_ebm("large", input_shape=(12, 12, 3), widths=(4, 4))


def test_projection_is_positively_homogeneous():
    g = build_clel_projection(feature_dim=5, hidden_units=7, output_dim=3)
    u = tf.random.stateless_normal((4, 5), seed=[3, 4])
    np.testing.assert_allclose(g(3.5 * u).numpy(), 3.5 * g(u).numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(g(-u).numpy(), -g(u).numpy())  # LeakyReLU: not odd


def test_encoder_shape_and_zero_init_residual():
    enc = tiny_clel_encoder(output_dim=5, synchronized_bn=True)
    assert enc(tf.zeros((2, 8, 8, 3)), training=True).shape == (2, 5)
    bn2 = [l for l in enc.layers if l.name.endswith("_bn2")]
    assert bn2 and all(np.all(l.gamma.numpy() == 0) for l in bn2)


# ---------------------------------------------------------------- NT-Xent
def _nt_xent_reference(z1, z2, neg, tau):
    z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    q = np.concatenate([z1, z2])
    keys = q if neg is None else np.concatenate([q, neg / np.linalg.norm(neg, axis=1, keepdims=True)])
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = [q[i] @ keys[k] / tau for k in range(len(keys)) if k != i]
        total += -(q[i] @ keys[pos] / tau) + np.log(np.sum(np.exp(sims)))
    return total / (2 * n)


def test_nt_xent_hand_computed_and_extra_negatives():
    # Orthogonal matched views: positive cosine 1, negatives 0, so each row's loss is closed form.
    z = np.eye(4, dtype=np.float32)[:2]
    loss = float(nt_xent_loss(z, z, temperature=0.5))
    expected = -2.0 + np.log(np.exp(2.0) + 2.0)  # one positive exp(1/0.5), two orthogonal negatives
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # An extra negative aligned with every view adds exp(2) to each denominator.
    neg = np.ones((1, 4), np.float32)
    with_neg = float(nt_xent_loss(z, z, extra_negatives=neg, temperature=0.5))
    expected_neg = -2.0 + np.log(np.exp(2.0) + 2.0 + np.exp(2.0 / np.sqrt(4.0)))
    np.testing.assert_allclose(with_neg, expected_neg, rtol=1e-6)
    assert with_neg > loss
    rng = np.random.default_rng(0)
    a, b, n = (rng.normal(size=(3, 6)).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(
        float(nt_xent_loss(a, b, n, temperature=0.2)), _nt_xent_reference(a, b, n, 0.2), rtol=1e-5
    )


def test_nt_xent_two_replicas_match_one_device(two_device_strategy):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(8, 5)).astype(np.float32), rng.normal(size=(8, 5)).astype(np.float32)
    neg = rng.normal(size=(4, 5)).astype(np.float32)
    expected = float(nt_xent_loss(a, b, neg, temperature=0.2))
    strategy = two_device_strategy

    def per_replica():
        i = tf.distribute.get_replica_context().replica_id_in_sync_group
        start = tf.cast(i, tf.int32)
        rows = tf.range(4) + 4 * start
        return nt_xent_loss(
            tf.gather(a, rows), tf.gather(b, rows), tf.gather(neg, tf.range(2) + 2 * start), temperature=0.2
        )

    @tf.function
    def run():
        return strategy.run(per_replica)

    losses = strategy.experimental_local_results(run())
    np.testing.assert_allclose(np.mean([float(l) for l in losses]), expected, rtol=1e-5)


# ---------------------------------------------------------------- EMA
def test_model_ema_update_and_copy():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Dense(2)(inputs)))
    ema = ModelEMA(model)
    assert not ema.trainable_weights and len(ema.non_trainable_weights) == len(model.weights)
    dense = model.layers[1]
    old = dense.kernel.numpy().copy()
    dense.kernel.assign(old + 1.0)
    model.layers[2].moving_mean.assign([5.0, 6.0])
    ema.update(0.75)
    np.testing.assert_allclose(ema.model.layers[1].kernel.numpy(), old + 0.25, rtol=1e-6)
    np.testing.assert_allclose(ema.model.layers[2].moving_mean.numpy(), [5.0, 6.0])  # copied


def test_model_ema_zero_decay_copies_then_averages():
    # CLEL's burn-in: decay 0 (a tensor, as CLEL passes it) makes the shadow exactly the weights,
    # whatever it held before; then decay d averages from there.
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    ema = ModelEMA(model)
    kernel, shadow = model.layers[1].kernel, ema.model.layers[1].kernel
    shadow.assign(np.full((3, 2), 7.0, "float32"))
    kernel.assign(kernel.numpy() + 1.0)
    ema.update(tf.where(tf.constant(1) < 2, 0.0, 0.9))
    np.testing.assert_array_equal(shadow.numpy(), kernel.numpy())
    prev = shadow.numpy().copy()
    kernel.assign(kernel.numpy() - 3.0)
    ema.update(tf.where(tf.constant(2) < 2, 0.0, 0.9))
    np.testing.assert_allclose(shadow.numpy(), 0.9 * prev + 0.1 * kernel.numpy(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- trainer
def make_clel(image_shape=(8, 8, 3), compile=True, size="small", **kwargs):
    # Tiny widths; "base" and "large" keep their 2 blocks per stage, "large" its three scales.
    ebm = tiny_ebm(size, image_shape=image_shape, blocks=1 if size == "small" else 2)
    projection = build_clel_projection(feature_dim=8, hidden_units=16, output_dim=6)
    encoder = tiny_clel_encoder(image_shape)
    defaults = dict(
        sampler=clel_sampler(3),
        buffer_size=40,
        ema_decay=0.9,
        ema_start_step=0,
        seed=0,
    )
    defaults.update(kwargs)
    model = CLEL(ebm, projection, encoder, image_shape=image_shape, **defaults)
    if not compile:  # run_training compiles and builds the optimizers
        return model
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.999),
        encoder_optimizer=keras.optimizers.SGD(0.03, momentum=0.9),
    )
    model.build_optimizers()
    return model


def cifar_x(path, n=16):
    x, y = cifar_arrays(path, n, (0.0, 1.0))
    return tf.image.resize(x, (8, 8), method="area").numpy(), y  # 8x8 keeps the test fast


# "large" (about 35-50 s each on 2 cores) runs in the slow suite: the default one stays under 10 minutes.
@pytest.mark.parametrize("size", ["small", "base", pytest.param("large", marks=pytest.mark.slow)])
def test_clel_fit_on_real_cifar10_steps_both_optimizers(size, cifar10_npz, tmp_path):
    x, y = cifar_x(cifar10_npz)
    # large: the EBM sees a quarter of the batch, the encoder all of it (clel_large.gin)
    model = make_clel(size=size, ebm_batch_fraction=0.25 if size == "large" else 1.0)
    buffer_before = model.buffer.buffer.numpy().copy()
    ema_before = model.ema_network.model.weights[1].numpy().copy()
    ebm_before = [v.numpy().copy() for v in model.ebm_variables()]
    enc_before = [v.numpy().copy() for v in model.encoder_variables()]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    for name in ("loss", "ebm_loss", "contrastive_loss", "energy_data", "energy_sample", "cosine"):
        assert np.isfinite(history[name][-1]), name
    assert int(model.optimizers["ebm_optimizer"].iterations) == 2
    assert int(model.optimizers["encoder_optimizer"].iterations) == 2
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(ebm_before, model.ebm_variables()))
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(enc_before, model.encoder_variables()))
    assert not np.allclose(ema_before, model.ema_network.model.weights[1].numpy())
    chains = 8 if size != "large" else 2  # chains per step: the EBM's share of the batch of 8
    assert (np.abs(model.buffer.buffer.numpy() - buffer_before).max(axis=(1, 2, 3)) > 0).sum() >= chains

    # OOD score eq. 5 on the EMA networks, by hand, and through an exported SavedModel.
    scores = model.scores(tf.constant(x[:4]))["clel"].numpy()
    f = model.ema_network.model(x[:4]).numpy()
    z = model.ema_projection.model(f / np.linalg.norm(f, axis=1, keepdims=True)).numpy()
    h = model.ema_encoder.model(x[:4], training=False).numpy()
    cos = np.sum(z * h, 1) / np.linalg.norm(z, axis=1) / np.linalg.norm(h, axis=1)
    np.testing.assert_allclose(scores, -(0.5 * np.sum(f * f, 1) - 0.1 * cos), rtol=1e-4, atol=1e-5)

    import types

    from keras_ebm import actions

    # What a run exports (`ExportAction`: the model's image shape, pixel range and default OOD score).
    actions.ExportAction()(types.SimpleNamespace(model=model, model_dir=str(tmp_path)))
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    images = tf.cast(tf.round(tf.constant(x[:4]) * 255.0), tf.uint8)
    expected = model.scores(tf.cast(images, tf.float32) / 255.0)["clel"].numpy()
    np.testing.assert_allclose(loaded.ood_score(images)["ood_score"].numpy(), expected, rtol=1e-4, atol=1e-5)


def _mirrors(variable):
    return [np.asarray(v) for v in variable.value.values]


def _sync_bn_encoder(image_shape):
    """A tiny SimCLR encoder with synchronised BN, built after `set_random_seed(0)`."""
    keras.utils.set_random_seed(0)
    return tiny_clel_encoder(image_shape, synchronized_bn=True)


def _clel_one_step(strategy, x):
    """A CLEL whose step is deterministic given the global batch (chains from one constant image
    without noise or augmentation, a fixed SimCLR "augmentation", synchronised encoder BN, SGD for
    both networks), after one step under `strategy`: (history, [the update of every EBM and
    encoder variable, the EMA EBM's weights, a spectral-norm vector], model)."""
    with strategy.scope():
        image_shape = x.shape[1:]
        encoder = _sync_bn_encoder(image_shape)
        model = CLEL(
            tiny_ebm(image_shape=image_shape),
            build_clel_projection(feature_dim=8, hidden_units=16, output_dim=6),
            encoder,
            image_shape=image_shape,
            buffer_size=40,
            reinit_prob=0.0,
            augment_chain_starts=False,
            sampler=SGLDSampler(
                n_steps=2, step_size=100.0, noise_std=0.0, grad_clip=100.0, x_clip=(0.0, 1.0), energy_training=True
            ),
            ema_decay=0.9,
            ema_start_step=0,
            alpha=0.5,
            beta=0.3,
            weight_decay=1.0,
            seed=0,
        )
        model.buffer.buffer.assign(tf.fill(model.buffer.buffer.shape, 0.3))
        _scale_energies_to_order_one(model, x)
        # SGD: steps proportional to the gradients (Adam's first step is lr * sign(g)); a small
        # rate, since the scaled head makes the EBM's gradients large.
        model.compile(optimizer=keras.optimizers.SGD(1e-4), encoder_optimizer=keras.optimizers.SGD(0.03, momentum=0.9))
        model.build_optimizers()
    before = [v.numpy() for v in model.ebm_variables() + model.encoder_variables()]
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x), np.int32))).batch(8)
    history = model.fit(ds, epochs=1, verbose=0).history
    sn = [layer for layer in model.network.layers if isinstance(layer, SpectralNormConv2D)][0]
    after = [v.numpy() for v in model.ebm_variables() + model.encoder_variables()]
    n_ebm = len(model.ebm_variables())
    for lo, hi in ((0, n_ebm), (n_ebm, len(after))):  # both networks moved
        assert max(np.abs(a - b).max() for a, b in zip(before[lo:hi], after[lo:hi])) > 1e-3
    updates = [a - b for a, b in zip(after, before)]
    return history, updates + [v.numpy() for v in model.ema_network.model.weights + [sn.sn_u]], model


def test_clel_two_replicas_match_one_device(two_device_strategy, monkeypatch):
    """Two replicas with half the batch each take the one-device step on the whole batch: EBM
    terms averaged over replicas, NT-Xent over all-gathered views and sample latents,
    synchronised encoder BN, both optimizers, the EBM's weight decay, the EMA copies and the
    spectral-norm vectors. The SimCLR views are replaced by a fixed map of the images (the real
    ones draw per-replica seeds, which one device cannot reproduce)."""
    import keras_ebm.trainers.clel.trainer as clel_module

    monkeypatch.setattr(clel_module, "simclr_augment", lambda x, seed, pixel_range: 0.9 * x + 0.05)
    x, _ = digits_arrays(8, pixel_range=(0.0, 1.0), channels=3)
    h1, w1, _ = _clel_one_step(tf.distribute.get_strategy(), x)
    h2, w2, model = _clel_one_step(two_device_strategy, x)
    for key in ("loss", "ebm_loss", "contrastive_loss", "energy_data", "energy_sample", "cosine"):
        np.testing.assert_allclose(h2[key][-1], h1[key][-1], rtol=1e-4, atol=1e-5, err_msg=key)
    for i, (a, b) in enumerate(zip(w1, w2)):  # the updates of both networks, the EMA copies, SN
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3 * np.abs(a).max() + 1e-7, err_msg=f"variable {i}")
    # The mirrors of the two-replica run agree too (buffer writes, SN vectors in the SGLD loop).
    sn = [layer for layer in model.network.layers if isinstance(layer, SpectralNormConv2D)][0]
    for variable in (
        sn.sn_u,
        model.ema_network.model.weights[1],
        model.buffer.buffer,
        model.encoder.trainable_variables[0],
    ):
        first, second = _mirrors(variable)
        np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-7)


def _clel_state(model):
    """Every variable a resumed CLEL run needs, by owner: weights, EMA copies, SN vectors, buffer,
    both optimizers (iterations, Adam moments, SGD momentum), seed-generator states."""
    state = {
        "network": model.network.weights,
        "projection": model.projection.weights,
        "encoder": model.encoder.weights,
        "ema_network": model.ema_network.weights,
        "ema_projection": model.ema_projection.weights,
        "ema_encoder": model.ema_encoder.weights,
        "buffer": [model.buffer.buffer],
        "ebm_optimizer": model.optimizer.variables,
        "encoder_optimizer": model.encoder_optimizer.variables,
        "seeds": [model.seed_generator.state, model.sampler.seed_generator.state],
    }
    return {k: [np.asarray(v.numpy()) for v in vs] for k, vs in state.items()}


# "large" (about 35-50 s each on 2 cores) runs in the slow suite: the default one stays under 10 minutes.
@pytest.mark.parametrize("size", ["small", "base", pytest.param("large", marks=pytest.mark.slow)])
def test_clel_resume_continues_exactly_like_an_uninterrupted_run(size, cifar10_npz, tmp_path):
    # A run stopped after its step-2 checkpoint (as by a kill) and resumed to step 4 must end in the
    # same state, variable for variable, as a run that never stopped: both optimizers' slots, the
    # EMA copies, the spectral-norm vectors, the replay buffer and the RNG states are all restored.
    x, y = cifar_x(cifar10_npz, 8)

    def data_fn(input_context=None):  # every batch the same 8 images: the data order cannot differ
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8, drop_remainder=True)

    def run(model_dir, steps):
        trainer = lambda: make_clel(compile=False, size=size, ebm_batch_fraction=0.25 if size == "large" else 1.0)  # noqa: E731
        optimizer = lambda: keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.999)  # noqa: E731
        return run_briefly(model_dir, trainer, optimizer, data_fn, steps, 2, strategy=tf.distribute.get_strategy())

    straight = _clel_state(run(tmp_path / "straight", 4))
    first = run(tmp_path / "resumed", 2)
    assert int(first.optimizer.iterations) == 2 and int(first.encoder_optimizer.iterations) == 2
    resumed_model = run(tmp_path / "resumed", 4)
    assert int(resumed_model.encoder_optimizer.iterations) == 4
    resumed = _clel_state(resumed_model)
    assert straight.keys() == resumed.keys()
    for owner in straight:
        assert len(straight[owner]) == len(resumed[owner]) > 0, owner
        for a, b in zip(straight[owner], resumed[owner]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=owner)
    # and the run did move: step 4 differs from step 2
    assert not np.allclose(_clel_state(first)["encoder"][0], resumed["encoder"][0])


@pytest.mark.parametrize("timing", ["before_step", "after_step"])
def test_clel_ema_burn_in_copies_then_decays_variable_by_variable(cifar10_npz, timing):
    # CLEL's schedule: decay 0 (the EMA copies are the online weights) while the EBM optimizer's
    # step count is below ema_start_step, then ema_decay. "before_step" (hankook/CLEL's timing):
    # the update runs at the start of each step with the weights entering it; "after_step": with
    # the weights the step produced. Checked against the weights recorded around every step, for
    # every weight of the three EMA copies (non-trainable ones, BN statistics and spectral-norm
    # vectors, are always copied).
    x, y = cifar_x(cifar10_npz, 8)
    decay, start = 0.7, 3
    model = make_clel(ema_decay=decay, ema_start_step=start, ema_timing=timing)
    pairs = (
        (model.ema_network, model.network),
        (model.ema_projection, model.projection),
        (model.ema_encoder, model.encoder),
    )
    prev = None
    entering = [[w.numpy() for w in online.weights] for _, online in pairs]
    for step in range(1, start + 3):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        assert int(model.optimizer.iterations) == step
        shadows = [[w.numpy() for w in ema.model.weights] for ema, _ in pairs]
        onlines = [[w.numpy() for w in online.weights] for _, online in pairs]
        source, count = (entering, step - 1) if timing == "before_step" else (onlines, step)
        moved = False
        for k, (ema, online) in enumerate(pairs):
            trainable = {id(w) for w in online.trainable_weights}
            assert len(ema.model.weights) == len(online.weights) > 0
            for i, weight in enumerate(online.weights):
                shadow, value = shadows[k][i], source[k][i]
                if count < start or id(weight) not in trainable:
                    np.testing.assert_array_equal(shadow, value, err_msg=f"step {step} {weight.path}")
                else:
                    expected = decay * prev[k][i] + (1.0 - decay) * value
                    np.testing.assert_allclose(
                        shadow, expected, rtol=1e-6, atol=1e-7, err_msg=f"step {step} {weight.path}"
                    )
                    moved = moved or not np.allclose(shadow, value)
        assert moved == (count >= start)  # after the burn-in the averages lag the weights
        prev, entering = shadows, onlines


@tf.function
def _power_iterations(layer, n):
    for _ in tf.range(n):
        layer.spectral_norm(training=True)


def _weights_after_one_step(x, y, **kwargs):
    keras.utils.set_random_seed(0)  # same initial weights for every model
    model = make_clel(compile=False, **kwargs)
    # SGD for the EBM too: steps proportional to the gradients (Adam's first step is lr * sign(g),
    # which turns a 1e-7 gradient difference into a full step).
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.build_optimizers()
    # Converge the spectral-norm vectors: SAM's second pass runs one more power iteration from the
    # u the first pass stored (as a second PyTorch forward would), which must not be what differs.
    for layer in model.network.layers:
        if isinstance(layer, SpectralNormConv2D):
            _power_iterations(layer, 300)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert int(model.optimizer.iterations) == 1 and int(model.encoder_optimizer.iterations) == 1
    return [v.numpy() for v in model.ebm_variables() + model.encoder_variables()]


def test_clel_uses_its_gradient_function_for_both_optimizers(cifar10_npz, monkeypatch):
    # CLEL(gradients=SAMGradients(...)) must not be ignored: its two optimizers apply the groups
    # of the one gradient function (one SAM perturbation over the EBM and the encoder together).
    x, y = cifar_x(cifar10_npz, 8)
    calls = []
    real_call = SAMGradients.__call__

    def spy(self, loss_fn, variables):
        calls.append([len(group) for group in variables])
        return real_call(self, loss_fn, variables)

    monkeypatch.setattr(SAMGradients, "__call__", spy)
    plain = _weights_after_one_step(x, y, gradients=PlainGradients())
    sam0 = _weights_after_one_step(x, y, gradients=SAMGradients(rho=0.0))
    sam = _weights_after_one_step(x, y, gradients=SAMGradients(rho=0.5))
    model = make_clel(compile=False)
    assert calls and all(c == [len(model.ebm_variables()), len(model.encoder_variables())] for c in calls)
    n_ebm = len(model.ebm_variables())
    # rho = 0: the second pass is at w itself (same batch, same augmented views, same samples), so
    # the step is plain's: the runs are reproducible and differ below only by the gradient function.
    for a, b in zip(plain, sam0):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # rho > 0: both networks take a different step.
    assert any(not np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(plain[:n_ebm], sam[:n_ebm]))
    assert any(not np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(plain[n_ebm:], sam[n_ebm:]))


# ---------------------------------------------------------------- generation (Appendix C-E)
def test_conditional_energy_is_eq6_and_class_latents_are_normalised_sums(cifar10_npz):
    x, y = cifar_x(cifar10_npz, 16)
    model = make_clel()
    f = model.ema_network.model(x[:4]).numpy()
    z = model.ema_projection.model(f / np.linalg.norm(f, axis=1, keepdims=True)).numpy()
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    a, b = np.random.RandomState(0).normal(size=(2, 4, z.shape[1])).astype(np.float32)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    expected = 0.5 * np.sum(f * f, 1) - 0.3 * (np.sum(z * unit(a), 1) + np.sum(z * unit(b), 1))
    composed = model.conditional_energy(x[:4], np.stack([a, 3.0 * b], axis=1), beta=0.3).numpy()
    np.testing.assert_allclose(composed, expected, rtol=1e-5, atol=1e-5)  # eq. 6, latents normalised
    single = model.conditional_energy(x[:4], a).numpy()  # one latent per sample, the trainer's beta
    np.testing.assert_allclose(single, 0.5 * np.sum(f * f, 1) - 0.01 * np.sum(z * unit(a), 1), rtol=1e-5, atol=1e-5)

    labels = np.arange(16) % 3
    table = model.set_class_latents(x, labels).numpy()
    h = model.ema_encoder.model(x, training=False).numpy()
    h = unit(h)
    for c in range(3):
        np.testing.assert_allclose(table[c], unit(h[labels == c].sum(0)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.mean_latent(x[labels == 1]).numpy(), table[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="every class"):
        model.set_class_latents(x, labels, num_classes=4)

    # generate(y=...) runs the chains conditioned on each label's class latent: the same chains
    # (same seeds) as generate(latents=<those rows>), not the marginal ones.
    seeds = [model.seed_generator.state, model.sampler.seed_generator.state]
    start = [v.numpy() for v in seeds]

    def draw(**kwargs):
        for v, value in zip(seeds, start):
            v.assign(value)
        return model.generate(4, n_steps=2, beta=100.0, **kwargs).numpy()

    y = tf.constant([0, 1, 2, 1])
    by_label = draw(y=y)
    np.testing.assert_allclose(by_label, draw(latents=tf.gather(table, y)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(by_label, draw(), atol=1e-4)
    with pytest.raises(ValueError, match="either `y` or `latents`"):
        model.generate(2, y=y[:2], latents=table[:2])


def test_generate_unconditional_conditional_and_composed(cifar10_npz, tmp_path):
    x, y = cifar_x(cifar10_npz, 16)
    model = make_clel()
    with pytest.raises(ValueError, match="set_class_latents"):
        model.generate(2, y=tf.constant([0, 1]))
    for kwargs in (
        {},
        {"from_buffer": True},
        {"latents": model.encode(x[:3])},
        {"latents": tf.stack([model.encode(x[:3]), model.encode(x[3:6])], axis=1)},
    ):
        samples = model.generate(3, n_steps=2, **kwargs).numpy()
        assert samples.shape == (3, 8, 8, 3) and np.isfinite(samples).all()
        assert samples.min() >= 0.0 and samples.max() <= 1.0, kwargs

    # Conditioning pulls the chains' EBM latents towards the target direction: descending on
    # -beta * cos(z(x), t) ends more aligned with t than descending on -beta * cos(z(x), -t).
    model.sampler = SGLDSampler(n_steps=20, step_size=1.0, noise_std=0.0, x_clip=(0.0, 1.0), seed=0)
    target = model.encode(x[:8])

    def cos(s):
        return (
            tf.reduce_sum(
                tf.math.l2_normalize(model.latent(model.ema_network(s), model.ema_projection), -1) * target, -1
            )
            .numpy()
            .mean()
        )

    towards = cos(model.generate(8, latents=target, beta=100.0))
    away = cos(model.generate(8, latents=-target, beta=100.0))
    assert towards > away + 0.1, (towards, away)

    # FID-style batches through generation.generate_samples; class rows from labelled data.
    from keras_ebm import generation

    path = generation.generate_samples(
        model,
        str(tmp_path),
        num_samples=6,
        n_steps=1,
        conditional=True,
        batch_size=4,
        labelled_data=(x, np.arange(16) % 3),
    )
    saved = np.load(tmp_path / "conditional_1steps.npz")
    assert saved["images"].shape == (6, 8, 8, 3) and saved["images"].dtype == np.uint8
    np.testing.assert_array_equal(saved["labels"], [0, 0, 1, 1, 2, 2])
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="labelled_data"):
        generation.generate_samples(model, str(tmp_path), num_samples=3, conditional=True)


class _SpySampler:
    """Wraps a sampler and records every call's chain starts and results."""

    def __init__(self, inner):
        self.inner = inner
        self.n_steps = inner.n_steps
        self.calls = []

    def frozen(self):
        return self.inner.frozen()

    def __call__(self, energy_fn, x_init, y=None, n_steps=None):
        out = self.inner(energy_fn, x_init, y, n_steps=n_steps)
        self.calls.append((np.asarray(x_init), np.asarray(out)))
        return out


def test_generate_sweeps_is_the_official_fid_protocol(monkeypatch):
    # Appendix B / test_fid.py: K sampler calls in a row, each restarting the chains as training
    # does (reinit with the buffer's probability, strong augmentation) before its n_steps steps.
    import keras_ebm.trainers.clel.trainer as clel_lib

    quiet = dict(sampler=SGLDSampler(n_steps=2, step_size=1.0, noise_std=0.0, x_clip=(0.0, 1.0), seed=0))
    # Without reinit and augmentation, 3 sweeps of 2 steps are one chain of 6 steps.
    model = make_clel(compile=False, reinit_prob=0.0, augment_chain_starts=False, **quiet)
    state = model.seed_generator.state.numpy().copy()
    swept = model.generate(4, n_steps=2, sweeps=3).numpy()
    model.seed_generator.state.assign(state)
    plain = model.generate(4, n_steps=6).numpy()
    np.testing.assert_allclose(swept, plain, rtol=1e-5, atol=1e-6)
    assert not np.allclose(swept, model.generate(4, n_steps=2).numpy(), atol=1e-4)  # the steps moved x

    augmented = []
    real_augment = clel_lib.simclr_augment

    def spy_augment(x, seed, **kwargs):
        augmented.append(np.asarray(x))
        return real_augment(x, seed, **kwargs)

    monkeypatch.setattr(clel_lib, "simclr_augment", spy_augment)
    # Augmentation on, no reinit: every sweep augments the previous sweep's result.
    model = make_clel(compile=False, reinit_prob=0.0, **quiet)
    model.sampler = spy = _SpySampler(model.sampler)
    model.generate(4, n_steps=2, sweeps=3)
    assert len(spy.calls) == 3 and len(augmented) == 3
    for k in (1, 2):
        np.testing.assert_array_equal(augmented[k], spy.calls[k - 1][1])
        assert not np.allclose(spy.calls[k][0], spy.calls[k - 1][1], atol=1e-3)  # augmented start
    # Plain chains (the default) neither restart nor augment.
    spy.calls.clear(), augmented.clear()
    model.generate(4, n_steps=2)
    assert len(spy.calls) == 1 and not augmented
    # `sample_sweeps` (what eval.py --sample_sweeps sets) is the default of `sweeps`.
    model.sample_sweeps = 2
    model.generate(4, n_steps=1)
    assert len(spy.calls) == 3 and len(augmented) == 2

    # Reinit probability 1, no augmentation: every sweep starts from fresh U(0, 1) noise.
    model = make_clel(compile=False, reinit_prob=1.0, augment_chain_starts=False, **quiet)
    model.sampler = spy = _SpySampler(model.sampler)
    model.generate(4, n_steps=2, sweeps=2)
    assert not np.allclose(spy.calls[1][0], spy.calls[0][1], atol=1e-3)
    assert 0.0 <= spy.calls[1][0].min() and spy.calls[1][0].max() <= 1.0
    with pytest.raises(ValueError, match="sweeps"):
        model.generate(2, sweeps=0)
    with pytest.raises(ValueError, match="sample_sweeps"):
        make_clel(compile=False, sample_sweeps=-1)


def _compile_clel(model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.999),
        encoder_optimizer=keras.optimizers.SGD(0.03, momentum=0.9),
    )
    return model


@pytest.mark.parametrize("size", ["small", pytest.param("large", marks=pytest.mark.slow)])
def test_clel_smoke_checkpoint_and_keras_file_round_trips(size, tmp_path):
    # Digits in [0, 1], three channels. The .keras file holds both networks, the encoder, the EMA
    # copies, the spectral-norm vectors, the buffer, the RNG states and both optimizers (the
    # encoder's in the compile config), so the loaded trainer's next step is the saved one's.
    x, y = digits_arrays(64, pixel_range=(0.0, 1.0), channels=3)
    kwargs = dict(
        size=size,
        compile=False,
        ebm_batch_fraction=0.25 if size == "large" else 1.0,
        gradients=SAMGradients(rho=0.05) if size == "large" else None,
        sample_sweeps=2,
    )
    trainer = _compile_clel(make_clel(**kwargs))
    loaded = run_lifecycle(trainer, x, y, tmp_path, make=lambda: make_clel(**kwargs), compile_fn=_compile_clel)
    assert loaded.encoder_optimizer.get_config() == trainer.encoder_optimizer.get_config()
    assert int(loaded.encoder_optimizer.iterations.numpy()) == int(trainer.encoder_optimizer.iterations.numpy()) == 3
    for name in ("ebm_batch_fraction", "sample_sweeps", "ema_decay", "ood_beta", "encoder_weight_decay"):
        assert getattr(loaded, name) == getattr(trainer, name), name


def _uint8(x):
    return np.round(np.asarray(x) * 255.0).astype(np.uint8)


def test_clel_export_energy_and_scores_are_clels_not_jems(cifar10_npz, tmp_path):
    # The export asks CLEL for its energy (0.5 ||f||^2 of the EMA EBM) and its scores (eq. 5 and its
    # two parts); the JEM quantities of the latent (log_px, max_softmax, grad_norm, probabilities)
    # are not exported for a model that is not a classifier.
    from keras_ebm import export as export_lib
    from keras_ebm.evaluation.runner import run_eval

    x, y = cifar_x(cifar10_npz, 16)
    model = make_clel(ood_beta=0.1)
    images = _uint8(x)
    xf = images.astype(np.float32) / 255.0
    export_dir = str(tmp_path / "export")
    export_lib.export_model(model, export_dir, image_shape=model.image_shape, pixel_range=model.pixel_range)
    loaded = export_lib.load_export(export_dir)
    meta = export_lib.read_export_metadata(export_dir)
    assert meta["classifier"] is False and meta["ood_score"] == "clel"
    assert meta["score_names"] == ["clel", "neg_energy", "cosine"]
    assert meta["format_version"] == 3 and "0.5 ||f(x)||^2" in meta["conventions"]["energy"]

    f = model.ema_network.model(xf).numpy()
    z = model.ema_projection.model(f / np.linalg.norm(f, axis=1, keepdims=True)).numpy()
    h = model.ema_encoder.model(xf, training=False).numpy()
    cosine = np.sum(z * h, 1) / np.linalg.norm(z, axis=1) / np.linalg.norm(h, axis=1)
    energy = 0.5 * np.sum(f * f, 1)
    np.testing.assert_allclose(loaded.energy(images)["energy"].numpy(), energy, rtol=1e-4, atol=1e-5)
    scores = {k: v.numpy() for k, v in loaded.signatures["scores"](images=images).items()}
    assert sorted(scores) == ["clel", "cosine", "neg_energy"]
    np.testing.assert_allclose(scores["neg_energy"], -energy, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores["cosine"], cosine, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores["clel"], -energy + 0.1 * cosine, rtol=1e-4, atol=1e-5)
    serve = loaded.serving_default(images)
    assert sorted(serve) == ["energy", "logits", "ood_score"]  # no softmax of a latent
    np.testing.assert_allclose(serve["energy"].numpy(), energy, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(serve["ood_score"].numpy(), scores["clel"], rtol=1e-5, atol=1e-6)

    # No backward pass anywhere in the scores function (the classifier export's grad_norm has one).
    def backward_ops(module):  # the function's ops and those of the functions it calls (cond branches)
        graph_def = module.concrete_function("scores").graph.as_graph_def()
        ops = [n.op for n in graph_def.node] + [n.op for f in graph_def.library.function for n in f.node_def]
        return [op for op in ops if "Backprop" in op or op.endswith("Grad")]

    assert not backward_ops(export_lib.ServingModule(model, model.image_shape, pixel_range=(0.0, 1.0)))
    assert backward_ops(export_lib.ServingModule(model.network, model.image_shape, pixel_range=(0.0, 1.0)))

    # Evaluation reports eq. 5, its parts and any beta from the same export (no retraining).
    noise = np.random.RandomState(0).randint(0, 256, images.shape).astype(np.uint8)
    results = run_eval(
        saved_model=export_dir,
        in_dist=lambda: (images, y),
        ood_sets={"noise": lambda: (noise, y)},
        output_dir=str(tmp_path / "eval"),
        clel_betas=[0.0, 0.1],
    )
    assert results["accuracy"] is None
    by_score = results["ood"]["noise"]
    assert set(by_score) == {"clel", "neg_energy", "cosine", "clel_beta0", "clel_beta0.1"}
    assert by_score["clel_beta0"] == pytest.approx(by_score["neg_energy"], abs=1e-6)
    assert by_score["clel_beta0.1"] == pytest.approx(by_score["clel"], abs=1e-3)
    with pytest.raises(ValueError, match="neg_energy"):
        run_eval(
            saved_model=export_lib.export_model(model.network, str(tmp_path / "clf"), model.image_shape),
            in_dist=lambda: (images, y),
            output_dir=str(tmp_path / "eval2"),
            clel_betas=[0.1],
        )


@pytest.mark.slow
def test_eval_py_clel_betas_and_fid_protocol_sweeps(tmp_path):
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")

    def run(args):
        out = subprocess.run([sys.executable] + args, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + "\n" + out.stderr[-5000:]

    model_dir = tmp_path / "run"
    run(
        [
            "train.py",
            "--gin_file=gin_configs/clel_small.gin",
            "--gin_file=gin_configs/tiny.gin",
            f"--model_dir={model_dir}",
        ]
    )
    run(
        [
            "eval.py",
            f"--model_dir={model_dir}",
            "--clel_betas=0,0.01",
            "--samples=4",
            "--sample_sweeps=2",
            "--sample_steps=1",
        ]
    )
    results = json.loads((model_dir / "eval" / "results.json").read_text())
    for by_score in results["ood"].values():
        assert {"clel", "neg_energy", "cosine", "clel_beta0", "clel_beta0.01"} <= set(by_score)
        assert "log_px" not in by_score and "grad_norm" not in by_score
    samples = np.load(model_dir / "eval" / "samples" / "fresh_2x1steps.npz")
    assert samples["images"].shape == (4, 8, 8, 1) and samples["images"].dtype == np.uint8


def test_synchronized_bn_encoder_two_replicas_match_one_device_on_the_global_batch(two_device_strategy):
    # SimCLR's encoder needs BN statistics over the global batch (CLEL's configs set
    # synchronized_bn = True): two replicas with half the batch each must produce exactly the
    # one-device outputs of the whole batch in training mode.
    x = tf.random.stateless_uniform((8, 8, 8, 3), seed=[3, 4])

    def build(strategy):
        with strategy.scope():
            return _sync_bn_encoder((8, 8, 3))

    single = build(tf.distribute.get_strategy())(x, training=True).numpy()
    encoder = build(two_device_strategy)
    halves = iter(two_device_strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(8)))
    out = two_device_strategy.run(tf.function(lambda b: encoder(b, training=True)), args=(next(halves),))
    both = np.concatenate([np.asarray(v) for v in two_device_strategy.experimental_local_results(out)])
    np.testing.assert_allclose(both, single, rtol=1e-4, atol=1e-5)


def test_spectral_norm_vectors_are_saved_in_keras_files(tmp_path):
    # Conv2D's own saving keeps only kernel and bias; u and v decide sigma at inference.
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, SpectralNormConv2D(3, 3, padding="same")(inputs))
    sn = model.layers[-1]
    sn.sn_u.assign(np.linspace(-1.0, 1.0, 3).astype("float32"))
    path = str(tmp_path / "sn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x = np.random.RandomState(0).normal(size=(2, 6, 6, 2)).astype("float32")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


# ---------------------------------------------------------------- the objective as numbers
def _normalize(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _scale_energies_to_order_one(model, x):
    """CLEL's N(0, 0.01) head makes E ~ 1e-9 at initialisation, which would hide the E^2 term and
    blow up the cosine's gradient (~1 / |f|): scale the EBM's last layer so that |f| ~ 1."""
    head = [layer for layer in model.network.layers if layer.weights][-1]
    scale = 1.0 / np.mean(np.linalg.norm(model.network(x, training=False).numpy(), axis=-1))
    head.kernel.assign(head.kernel * scale)
    if head.use_bias:
        head.bias.assign(head.bias * scale)


@pytest.mark.parametrize("guidance", ["augmented", "first_view"])
def test_clel_losses_are_eq3_and_eq4_written_out_in_numpy(guidance):
    """Eq. 3 and eq. 4 (Lee et al. 2023; hankook/CLEL models/ebm.py) in NumPy on the networks'
    outputs for the same batch, samples and SimCLR views:
        L_EBM = mean E(x) - mean E(x~) + alpha mean(E(x)^2 + E(x~)^2) - beta mean cos(g(f/|f|), z),
        z = sg(h(t(x))) on the EBM's rows: t a view of its own (Algorithm 1 line 5, "augmented"; its
        seed is views_seed folded with 2) or the first SimCLR view ("first_view"), E = 0.5 |f|^2;
        L_LE = NT-Xent over the views (t1(x), t2(x)), the samples' latents g(f(x~)/|f(x~)|) as extra
        negatives.
    alpha, beta and the temperature are off their defaults and the EBM sees half the batch, so each
    term, its sign, the target view and the extra negatives show in the totals. The EBM's
    variables get no gradient from eq. 4, the encoder's none from eq. 3 (targets detached)."""
    from keras_ebm.data.augment import simclr_augment

    x, _ = digits_arrays(8, pixel_range=(0.0, 1.0), channels=3)
    x_s = np.random.RandomState(10).uniform(0, 1, (4,) + x.shape[1:]).astype("float32")  # the EBM's 4 rows
    alpha, beta, tau = 0.7, 0.3, 0.5
    model = make_clel(alpha=alpha, beta=beta, temperature=tau, ebm_batch_fraction=0.5, guidance_view=guidance)
    _scale_energies_to_order_one(model, x)
    seed = tf.constant([5, 11], tf.int64)
    batch = dict(model.unpack_batch((x, np.zeros(8, np.int32))), views_seed=seed)
    negatives = {"x": tf.constant(x_s), "sgld_grad_norm": tf.constant(0.0)}
    ebm_vars, enc_vars = model.ebm_variables(), model.encoder_variables()
    with tf.GradientTape(persistent=True) as tape:
        logs = model.compute_losses(batch, negatives, training=False)
    for grad in tape.gradient(logs["contrastive_loss"], ebm_vars):
        assert grad is None or not np.any(grad.numpy())
    for grad in tape.gradient(logs["ebm_loss"], enc_vars):
        assert grad is None or not np.any(grad.numpy())
    assert any(g is not None and np.any(g.numpy()) for g in tape.gradient(logs["contrastive_loss"], enc_vars))

    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    views = [simclr_augment(tf.constant(x), s, pixel_range=(0.0, 1.0)).numpy() for s in (s1, s2)]
    assert not np.allclose(views[0], views[1])
    h1, h2 = np.split(model.encoder(np.concatenate(views), training=False).numpy().astype(np.float64), 2)
    n = 4  # ebm_batch_fraction 0.5 of 8
    f = model.network(x[:n], training=False).numpy().astype(np.float64)
    f_s = model.network(x_s, training=False).numpy().astype(np.float64)
    e, e_s = 0.5 * np.sum(f**2, -1), 0.5 * np.sum(f_s**2, -1)
    g = model.projection(_normalize(f).astype("float32")).numpy().astype(np.float64)
    g_s = model.projection(_normalize(f_s).astype("float32")).numpy().astype(np.float64)
    if guidance == "augmented":
        t = simclr_augment(
            tf.constant(x[:n]), tf.random.experimental.stateless_fold_in(seed, 2), pixel_range=(0.0, 1.0)
        )
        z = model.encoder(t, training=False).numpy().astype(np.float64)
    else:
        z = h1[:n]
    cosine = np.mean(np.sum(_normalize(g) * _normalize(z), -1))
    ebm_loss = e.mean() - e_s.mean() + alpha * np.mean(e**2 + e_s**2) - beta * cosine
    contrastive = _nt_xent_reference(h1, h2, g_s, tau)
    expected = {
        "ebm_loss": ebm_loss,
        "contrastive_loss": contrastive,
        "loss": ebm_loss + contrastive,
        "cosine": cosine,
        "energy_data": e.mean(),
        "energy_sample": e_s.mean(),
        "energy_gap": e_s.mean() - e.mean(),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(float(logs[key]), value, rtol=1e-4, atol=1e-5, err_msg=key)
    # The terms a wrong implementation would drop or flip are visible at this tolerance.
    assert abs(beta * cosine) > 1e-3 and abs(alpha * np.mean(e**2 + e_s**2)) > 1e-3
    if guidance == "first_view":  # the other view would show (this encoder's views differ enough)
        assert abs(np.mean(np.sum(_normalize(g) * _normalize(h2[:n]), -1)) - cosine) > 1e-3
    # (The augmented guidance view's latent is within 1e-4 of the SimCLR views' here; that the
    # guidance view is its own is pinned by tests/test_parity_clel.py's "first_view" break.)
    assert abs(_nt_xent_reference(h1, h2, None, tau) - contrastive) > 1e-3  # without the samples


class _ZeroGradients(PlainGradients):
    """The plain gradient function with every gradient replaced by zeros: an update is then the
    weight decay alone."""

    def __call__(self, loss_fn, variables):
        grads, logs = super().__call__(loss_fn, variables)
        return [[tf.zeros_like(v) for v in group] for group in variables], logs


def test_clel_weight_decays_are_coupled_l2_on_their_own_network():
    """`weight_decay` is the EBM's coupled L2 (0 by default, as hankook/CLEL's Adam has none) and
    `encoder_weight_decay` the encoder's (PyTorch SGD's 5e-4): with the loss gradients zeroed, one
    SGD step moves every EBM weight by exactly -lr * weight_decay * w and every encoder weight by
    -lr_encoder * encoder_weight_decay * w (first step: the momentum buffer is empty)."""
    x, y = digits_arrays(8, pixel_range=(0.0, 1.0), channels=3)
    model = make_clel(
        compile=False,
        weight_decay=0.5,
        encoder_weight_decay=0.2,
        gradients=_ZeroGradients(),
        sampler=SGLDSampler(n_steps=1, step_size=100.0, noise_std=0.001, x_clip=(0.0, 1.0)),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), encoder_optimizer=keras.optimizers.SGD(0.03, momentum=0.9))
    model.build_optimizers()
    ebm_before = [v.numpy().copy() for v in model.ebm_variables()]
    enc_before = [v.numpy().copy() for v in model.encoder_variables()]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for w, v in zip(ebm_before, model.ebm_variables()):
        np.testing.assert_allclose(v.numpy(), w - 0.01 * 0.5 * w, rtol=1e-6, atol=1e-9, err_msg=v.path)
    for w, v in zip(enc_before, model.encoder_variables()):
        np.testing.assert_allclose(v.numpy(), w - 0.03 * 0.2 * w, rtol=1e-6, atol=1e-9, err_msg=v.path)
    assert CLEL(model.network, model.projection, model.encoder, image_shape=(8, 8, 3)).weight_decay == 0.0
