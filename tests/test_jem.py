"""JEM / JEM++ / SADA-JEM trainers: real CIFAR-10 steps, energy gap, distribution, SAM, generation,
checkpoints and .keras files."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    ConstantInitializer,
    digits_arrays,
    fit_one_device_and_two_replicas,
    run_briefly,
    run_lifecycle,
    tiny_network,
)
from keras_ebm import energy
from keras_ebm.optim import PlainGradients, SAMGradients
from keras_ebm.sampling import InformativeInitializer, SGLDSampler
from keras_ebm.trainers.jem import JEM, JEMPP, SADAJEM

# The JEM tests' network: two strided convolutions, global average pooling, kernels of seed 3.
tiny_net = functools.partial(tiny_network, seed=3, widths=(16, 16), pool="average")


def tiny_trainer(cls, image_shape=(8, 8, 1), norm=False, **kwargs):
    """A `cls` (JEM, JEMPP or SADAJEM) over `tiny_net(image_shape, norm=norm)`, 10 classes;
    `kwargs` go to the trainer."""
    return cls(tiny_net(image_shape, norm=norm), image_shape=image_shape, num_classes=10, **kwargs)


@pytest.mark.parametrize("method", ["jem", "sadajem"])
def test_fit_on_real_cifar10_widens_the_energy_gap(cifar10_arrays, method):
    x, y = cifar10_arrays(256)
    if method == "jem":
        model = tiny_trainer(
            JEM,
            (32, 32, 3),
            buffer_size=256,
            sampler=SGLDSampler(n_steps=5, step_size=1.0, noise_std=0.01, seed=0),
            seed=0,
        )
    else:  # BN, proximal SGLD in train mode, SAM (the class defaults), uniform chain starts.
        # With informative init the Gaussian chain starts are already close to the data and the gap
        # stays flat (about -0.015) over these 24 steps (measured), so it cannot show a direction.
        model = tiny_trainer(SADAJEM, (32, 32, 3), norm=True, buffer_size=250, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    buffer_before = model.buffer.buffer.numpy().copy()
    gaps = []
    for _ in range(6):
        logs = model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False).history
        gaps.append(logs["energy_gap"][-1])
        assert all(np.isfinite(v[-1]) for v in logs.values()), logs
    # Contrastive divergence lowers data energy relative to sample energy: E(x~) - E(x) grows.
    assert gaps[-1] > gaps[0], gaps
    assert not np.allclose(buffer_before, model.buffer.buffer.numpy())  # chains were written back
    assert any(w is model.buffer.buffer for w in model.non_trainable_weights) or any(
        w.path == model.buffer.buffer.path for w in model.non_trainable_weights
    )


def test_px_loss_is_data_minus_sample_energy():
    x = np.random.RandomState(0).uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    y = np.arange(8) % 10
    model = tiny_trainer(
        JEM,
        buffer_size=16,
        sampler=SGLDSampler(n_steps=1, noise_std=0.0),
    )
    batch = model.unpack_batch((x, y))
    negatives = model.sample_negatives(batch)
    logs = model.compute_losses(batch, negatives, training=False)
    e_data = energy.energy_from_logits(model(x)).numpy().mean()
    e_sample = energy.energy_from_logits(model(negatives["x"])).numpy().mean()
    np.testing.assert_allclose(logs["px_loss"], e_data - e_sample, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["loss"], logs["clf_loss"] + logs["px_loss"], rtol=1e-5)
    # px_weight=0 and no pxy term is exactly the softmax cross-entropy.
    model.px_weight = 0.0
    logs = model.compute_losses(batch, {}, training=False)
    np.testing.assert_allclose(logs["loss"], logs["clf_loss"])


def _jem_for_equivalence():
    sampler = SGLDSampler(n_steps=2, step_size=1.0, noise_std=0.0)
    return tiny_trainer(
        JEM,
        sampler=sampler,
        buffer_size=64,
        reinit_prob=0.0,
        initializer=ConstantInitializer(),
        seed=0,
    )


@pytest.mark.parametrize("gradients", ["plain", "sam"])
def test_one_device_and_two_replicas_agree(two_device_strategy, gradients):
    rng = np.random.RandomState(1)
    x = rng.uniform(-1, 1, (64, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 64).astype("int32")

    def build():
        model = _jem_for_equivalence()
        if gradients == "sam":
            model.gradients = SAMGradients(rho=0.05, sync_perturbation=True)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        return model

    fit_one_device_and_two_replicas(two_device_strategy, build, x, y, agree=("loss", "px_loss", "energy_gap"))


def test_sadajem_two_loaders_bn_sam_step():
    rng = np.random.RandomState(2)
    x = rng.uniform(-1, 1, (32, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 32).astype("int32")
    init = InformativeInitializer.from_dataset((x, y), num_classes=10, pixel_range=(-1, 1))
    model = tiny_trainer(SADAJEM, norm=True, buffer_size=40, initializer=init, seed=0)
    assert isinstance(model.gradients, SAMGradients) and model.sampler.grad_clip == 1.0
    assert model.sampler.energy_training and model.sampler.n_steps == 5
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    clf = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    px = tf.data.Dataset.from_tensor_slices((x[::-1].copy(), y[::-1].copy())).batch(4)
    before = [w.numpy() for w in model.network.trainable_weights]
    history = model.fit(tf.data.Dataset.zip((clf, px)), epochs=1, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, model.network.trainable_weights))
    # Proximal SGLD keeps the buffer inside the pixel range.
    buf = model.buffer.buffer.numpy()
    assert buf.min() >= -1.0 and buf.max() <= 1.0


def _class_conditional_jem(sampler, **kwargs):
    """A JEM with the p(x, y) term only: its buffer holds class-conditional chains."""
    return tiny_trainer(
        JEM,
        buffer_size=20,
        pxy_weight=1.0,
        sampler=sampler,
        **kwargs,
    )


def test_pxy_term_uses_class_conditional_chains():
    x = np.random.RandomState(3).uniform(-1, 1, (10, 8, 8, 1)).astype("float32")
    y = np.arange(10).astype("int32")
    model = _class_conditional_jem(SGLDSampler(n_steps=1, noise_std=0.0))
    assert model.buffer.class_conditional
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, y, batch_size=10, epochs=1, verbose=0).history
    assert np.isfinite(history["pxy_loss"][-1]) and history["pxy_loss"][-1] != 0.0


def test_generate_fresh_and_from_buffer_in_range():
    model = tiny_trainer(JEMPP, buffer_size=20)
    fresh = model.generate(6, n_steps=3)
    cond = model.generate(4, y=tf.constant([0, 1, 2, 3]), n_steps=2)
    buffered = model.generate(5, from_buffer=True, n_steps=1)
    for s, n in ((fresh, 6), (cond, 4), (buffered, 5)):
        assert s.shape == (n, 8, 8, 1)
        assert float(tf.reduce_min(s)) >= -1.0 and float(tf.reduce_max(s)) <= 1.0


def test_generate_leaves_bn_statistics_and_the_buffer_alone():
    # JEM++/SADA-JEM sample with BN in train mode; drawing samples from a trained model must not
    # change it (its moving statistics are what the classifier and the export use).
    model = tiny_trainer(SADAJEM, norm=True, buffer_size=20)
    model(tf.zeros((1, 8, 8, 1)))
    before = [v.numpy().copy() for v in model.non_trainable_variables if "seed_generator" not in v.path]
    assert not model.sampler.freeze_bn_stats
    model.generate(6, n_steps=3)
    model.generate(4, y=tf.constant([0, 1, 2, 3]), n_steps=2)
    model.generate(5, from_buffer=True, n_steps=2)
    after = [v.numpy() for v in model.non_trainable_variables if "seed_generator" not in v.path]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert not model.sampler.freeze_bn_stats  # the training setting is back


@pytest.mark.parametrize("use_sam", [False, True])
def test_bn_stats_stay_data_only_when_samples_are_frozen(use_sam):
    """With freeze options, BN moving stats after a step equal those of the data forward alone."""
    rng = np.random.RandomState(4)
    x = rng.uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 8).astype("int32")
    model = tiny_trainer(
        JEM,
        norm=True,
        buffer_size=16,
        sampler=SGLDSampler(n_steps=2, noise_std=0.0, energy_training=True, freeze_bn_stats=True),
        gradients=SAMGradients(rho=0.05) if use_sam else PlainGradients(),
        bn_stats_from_samples=False,
        initializer=ConstantInitializer(3.0),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # lr 0: only BN statistics can move
    reference = keras.models.clone_model(model.network)
    reference.set_weights(model.network.get_weights())
    reference(x, training=True)  # one data forward in training mode
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    bn = [l for l in model.network.layers if isinstance(l, keras.layers.BatchNormalization)][0]
    bn_ref = [l for l in reference.layers if isinstance(l, keras.layers.BatchNormalization)][0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), bn_ref.moving_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), bn_ref.moving_variance.numpy(), atol=1e-6)
    # The reference behaviour (samples update the statistics) gives different statistics.
    model.bn_stats_from_samples = True
    model.make_train_function(force=True)
    before = bn.moving_mean.numpy().copy()
    reference(x, training=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(bn.moving_mean.numpy(), bn_ref.moving_mean.numpy(), atol=1e-4)
    assert not np.allclose(before, bn.moving_mean.numpy())


def test_checkpoint_resume_restores_buffer_sampler_state_and_weights(tmp_path):
    rng = np.random.RandomState(5)
    x = rng.uniform(-1, 1, (64, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 64).astype("int32")

    def data(ctx=None):
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16, drop_remainder=True)

    def trainer():
        return tiny_trainer(
            JEM,
            buffer_size=32,
            sampler=SGLDSampler(n_steps=2, seed=1),
            seed=2,
        )

    first = run_briefly(tmp_path, trainer, lambda: keras.optimizers.Adam(1e-3), data, 4, 2)
    resumed = run_briefly(tmp_path, trainer, lambda: keras.optimizers.Adam(1e-3), data, 4, 2)
    assert len(first.variables) == len(resumed.variables)
    paths = [v.path for v in resumed.variables]
    assert any("buffer" in p for p in paths), paths
    # Trainer, buffer and sampler RNG states are all checkpointed.
    assert sum("seed_generator_state" in p for p in paths) == 3, paths
    for a, b in zip(first.variables, resumed.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)
    assert not np.array_equal(
        first.sampler.seed_generator.state.numpy(), trainer().sampler.seed_generator.state.numpy()
    )


def _official_bn_order(momentum, sequence, mean=0.0, var=1.0):
    """Keras-semantics moving statistics (m <- mu m + (1 - mu) b) after batches `(mean, var)` in order."""
    for b_mean, b_var in sequence:
        mean = momentum * mean + (1 - momentum) * b_mean
        var = momentum * var + (1 - momentum) * b_var
    return mean, var


@pytest.mark.parametrize("use_sam", [False, True])
@pytest.mark.parametrize("replicas", [1, 2])
def test_bn_moving_statistics_follow_the_official_order(two_device_strategy, replicas, use_sam):
    """JEM++ / SADA-JEM loops: p(x) data forward, K SGLD forwards, samples, classifier batch last.

    Toy BN network: the classifier batch has mean 5 / variance 1, the p(x) batch 3 / 4, the SGLD
    samples 0 / 0 (constant chains, step 0). With Keras momentum 0.1 (PyTorch's 0.9) the official
    order leaves the moving mean near 4.5; classifier-first orders end near 0.3 or 4.53.
    Every image is a +-1 checkerboard around its mean, so each replica's half batch has the
    whole batch's statistics.
    """
    k, momentum = 2, 0.1
    checker = np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32)[None, :, :, None]
    x = np.repeat(5.0 + checker, 4, axis=0)
    x_px = np.repeat(3.0 + 2.0 * checker, 4, axis=0)
    y = np.arange(4, dtype=np.int32)
    strategy = two_device_strategy if replicas == 2 else tf.distribute.get_strategy()
    with strategy.scope():
        inputs = keras.Input((2, 2, 1))
        h = keras.layers.BatchNormalization(momentum=momentum, epsilon=1e-5, name="bn")(inputs)
        logits = keras.layers.Dense(10)(keras.layers.Flatten()(h))
        model = JEM(
            keras.Model(inputs, logits),
            image_shape=(2, 2, 1),
            num_classes=10,
            buffer_size=8,
            sampler=SGLDSampler(n_steps=k, step_size=0.0, noise_std=0.0, energy_training=True),
            reinit_prob=0.0,
            initializer=ConstantInitializer(0.0),
            gradients=SAMGradients(rho=0.05) if use_sam else PlainGradients(),
        )
        model.compile(optimizer=keras.optimizers.SGD(0.0))
        model(tf.zeros((1, 2, 2, 1)))  # built before fit: a two-loader batch is not a model input
    data = tf.data.Dataset.zip(
        (tf.data.Dataset.from_tensor_slices((x, y)).batch(4), tf.data.Dataset.from_tensor_slices((x_px, y)).batch(4))
    )
    model.fit(data, epochs=1, verbose=0)
    bn = model.network.get_layer("bn")
    expected = _official_bn_order(momentum, [(3.0, 4.0)] + [(0.0, 0.0)] * (k + 1) + [(5.0, 1.0)])
    np.testing.assert_allclose(bn.moving_mean.numpy(), [expected[0]], rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), [expected[1]], rtol=1e-5)
    assert abs(expected[0] - 4.5) < 1e-3


def _jem_family(method, x, y):
    """A tiny trainer of each configuration the round trips cover (digits, 8x8x1)."""
    if method == "jem":
        return tiny_trainer(
            JEM,
            buffer_size=32,
            seed=0,
            sampler=SGLDSampler(n_steps=2, step_size=1.0, noise_std=0.01, seed=0),
        )
    if method == "jem_pxy":  # class-conditional buffer, energy penalty on the means, frozen BN samples
        return tiny_trainer(
            JEM,
            norm=True,
            buffer_size=30,
            pxy_weight=0.5,
            energy_l2=0.1,
            energy_l2_mode="means",
            bn_stats_from_samples=False,
            sampler=SGLDSampler(n_steps=2, noise_std=0.0, energy_training=True, freeze_bn_stats=True),
            weight_decay=1e-4,
            seed=1,
        )
    if method == "jempp":  # informative initialisation: the fitted statistics travel in the .keras file
        init = InformativeInitializer.from_dataset((x, y), num_classes=10, pixel_range=(-1, 1))
        return tiny_trainer(
            JEMPP,
            norm=True,
            buffer_size=30,
            initializer=init,
            seed=2,
        )
    return tiny_trainer(
        SADAJEM,
        norm=True,
        buffer_size=32,
        gradients=SAMGradients(rho=2.0, adaptive=True, eta=0.0),
        seed=3,
    )


@pytest.mark.parametrize("method", ["jem", "jem_pxy", "jempp", "sadajem"])
def test_smoke_checkpoint_and_keras_file_round_trips(method, tmp_path):
    x, y = digits_arrays(64)
    trainer = _jem_family(method, x, y)
    loaded = run_lifecycle(trainer, x, y, tmp_path, make=lambda: _jem_family(method, x, y))
    assert loaded.sampler.get_config() == trainer.sampler.get_config()
    assert loaded.gradients.get_config() == trainer.gradients.get_config()
    assert loaded.buffer.get_config() == trainer.buffer.get_config()
    if method == "jempp":
        assert isinstance(loaded.buffer.initializer, InformativeInitializer)
        for name, value in trainer.buffer.initializer.get_statistics().items():
            np.testing.assert_array_equal(loaded.buffer.initializer.get_statistics()[name], value)


def test_keras_file_round_trip_with_a_library_backbone(tmp_path):
    from keras_ebm.backbones import WideResNet, build_classifier

    x, y = digits_arrays(32)
    network = build_classifier(WideResNet(depth=10, width=1, norm="batch", input_shape=(8, 8, 1)), 10)
    trainer = SADAJEM(network, image_shape=(8, 8, 1), num_classes=10, buffer_size=20, seed=0)
    run_lifecycle(trainer, x, y, tmp_path, steps=1)


# ---------------------------------------------------------------- the loss as numbers
def _logsumexp(a):
    m = a.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=-1, keepdims=True)))[..., 0]


def _jem_loss_by_hand(
    logits,
    y,
    logits_s=None,
    logits_sy=None,
    clf_weight=1.0,
    px_weight=0.0,
    pxy_weight=0.0,
    energy_l2=0.0,
    mode="samples",
):
    """JEM's total (eq. 7-8 with weights, optional energy L2) from logits, in float64 NumPy:
    logits of the batch `[n, C]`, of the marginal samples and of the class-conditional samples."""
    logits = logits.astype(np.float64)
    rows = np.arange(len(y))
    clf = np.mean(_logsumexp(logits) - logits[rows, y])

    def l2(e_data, e_sample):
        if mode == "means":
            return energy_l2 * (e_data.mean() ** 2 + e_sample.mean() ** 2)
        return energy_l2 * (np.mean(e_data**2) + np.mean(e_sample**2))

    terms = {"clf_loss": clf, "loss": clf_weight * clf}
    if px_weight:
        e_data, e_sample = -_logsumexp(logits), -_logsumexp(logits_s.astype(np.float64))
        terms["px_loss"] = e_data.mean() - e_sample.mean()
        terms["loss"] += px_weight * terms["px_loss"] + l2(e_data, e_sample)
    if pxy_weight:
        e_data_y, e_sample_y = -logits[rows, y], -logits_sy.astype(np.float64)[rows, y]
        terms["pxy_loss"] = e_data_y.mean() - e_sample_y.mean()
        terms["loss"] += pxy_weight * terms["pxy_loss"] + l2(e_data_y, e_sample_y)
    return terms


@pytest.mark.parametrize("energy_l2,mode", [(0.0, "samples"), (0.3, "samples"), (0.3, "means")])
def test_loss_is_the_weighted_sum_of_terms_computed_by_hand(energy_l2, mode):
    """Every coefficient as a number: clf_weight 1.3, px_weight 0.5 (hdge_jem.gin's), pxy_weight 0.7
    and the energy L2 penalty in both of its modes, against the terms written out in NumPy on the
    same batch and samples (the samples far from the data, so every term is large)."""
    rng = np.random.RandomState(6)
    x = rng.uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    y = np.arange(8).astype("int32") % 10
    x_s = (3.0 * rng.randn(8, 8, 8, 1)).astype("float32")
    x_sy = (3.0 * rng.randn(8, 8, 8, 1)).astype("float32")
    weights = dict(clf_weight=1.3, px_weight=0.5, pxy_weight=0.7)
    model = tiny_trainer(
        JEM,
        buffer_size=20,
        energy_l2=energy_l2,
        energy_l2_mode=mode,
        **weights,
    )
    batch = model.unpack_batch((x, y))
    negatives = {"x": tf.constant(x_s), "x_y": tf.constant(x_sy), "sgld_grad_norm": tf.constant(0.0)}
    logs = model.compute_losses(batch, negatives, training=True)
    expected = _jem_loss_by_hand(
        model.network(x).numpy(),
        y,
        model.network(x_s).numpy(),
        model.network(x_sy).numpy(),
        energy_l2=energy_l2,
        mode=mode,
        **weights,
    )
    for key, value in expected.items():
        np.testing.assert_allclose(float(logs[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)
    # The penalty is a visible part of the total (so a dropped or mis-moded penalty fails above).
    if energy_l2:
        without = _jem_loss_by_hand(
            model.network(x).numpy(), y, model.network(x_s).numpy(), model.network(x_sy).numpy(), **weights
        )
        other = _jem_loss_by_hand(
            model.network(x).numpy(),
            y,
            model.network(x_s).numpy(),
            model.network(x_sy).numpy(),
            energy_l2=energy_l2,
            mode="means" if mode == "samples" else "samples",
            **weights,
        )
        assert abs(expected["loss"] - without["loss"]) > 1e-3
        assert abs(expected["loss"] - other["loss"]) > 1e-3


def _deterministic_jem(**kwargs):
    """Chains that start at one constant image and run without noise: the samples of a step are a
    function of the weights alone, so a test can draw them by hand."""
    network = tiny_net((8, 8, 1))
    head = network.layers[-1]
    head.kernel.assign(10.0 * head.kernel)  # large logits: energies that differ from image to image
    return JEM(
        network,
        image_shape=(8, 8, 1),
        num_classes=10,
        buffer_size=30,
        reinit_prob=0.0,
        initializer=ConstantInitializer(0.2),
        sampler=SGLDSampler(n_steps=3, step_size=0.5, noise_std=0.0),
        seed=0,
        **kwargs,
    )


@pytest.mark.parametrize("case", ["px_l2_samples", "px_l2_means", "pxy"])
def test_fit_step_reports_the_loss_computed_by_hand(case):
    """The compiled step (`fit`) computes the by-hand total: chains drawn here with the sampler on
    E(x) = -logsumexp f(x) (p(x) term) or on E(x, y) = -f(x)[y] (p(x, y) term: chains that
    ignore y give another pxy_loss), then the weighted terms in NumPy."""
    rng = np.random.RandomState(7)
    # Images of different brightness: energies that differ from image to image.
    x = np.clip(np.linspace(-0.9, 0.9, 10)[:, None, None, None] + 0.2 * rng.randn(10, 8, 8, 1), -1, 1)
    x = x.astype("float32")
    y = np.arange(10).astype("int32")
    if case == "pxy":
        weights = dict(clf_weight=1.0, px_weight=0.0, pxy_weight=0.7, energy_l2=0.2)
    else:
        weights = dict(
            clf_weight=1.0, px_weight=0.5, pxy_weight=0.0, energy_l2=0.2, energy_l2_mode=case.rsplit("_", 1)[-1]
        )
    model = _deterministic_jem(**weights)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    network = model.network
    x0 = tf.fill(x.shape, 0.2)
    sampler = SGLDSampler(n_steps=3, step_size=0.5, noise_std=0.0)
    logits = network(x).numpy()
    by_hand = dict(weights)
    mode = by_hand.pop("energy_l2_mode", "samples")
    if case == "pxy":
        x_sy = sampler(lambda v, labels, training: energy.class_energy(network(v), labels), x0, tf.constant(y))
        # The class-conditional chains moved, and differently from marginal chains.
        x_s = sampler(lambda v, labels, training: energy.energy_from_logits(network(v)), x0)
        assert not np.allclose(x_sy.numpy(), x_s.numpy(), atol=1e-3)
        expected = _jem_loss_by_hand(logits, y, logits_sy=network(x_sy).numpy(), mode=mode, **by_hand)
    else:
        x_s = sampler(lambda v, labels, training: energy.energy_from_logits(network(v)), x0)
        expected = _jem_loss_by_hand(logits, y, logits_s=network(x_s).numpy(), mode=mode, **by_hand)
    other_mode = dict(by_hand, energy_l2=0.0)
    if case == "pxy":
        other = _jem_loss_by_hand(logits, y, logits_sy=network(x_sy).numpy(), mode=mode, **other_mode)
    else:
        other = _jem_loss_by_hand(
            logits, y, logits_s=network(x_s).numpy(), mode="means" if mode == "samples" else "samples", **by_hand
        )
    assert abs(other["loss"] - expected["loss"]) > 1e-2  # the penalty (mode) is visible
    history = model.fit(x, y, batch_size=10, epochs=1, verbose=0, shuffle=False).history
    for key, value in expected.items():
        np.testing.assert_allclose(history[key][-1], value, rtol=1e-4, atol=1e-5, err_msg=key)


# ---------------------------------------------------------------- the class-conditional path
def test_class_energy_is_minus_the_logit_of_each_rows_label():
    logits = np.random.RandomState(8).randn(5, 4).astype("float32")
    y = np.array([3, 0, 2, 3, 1], "int32")
    np.testing.assert_array_equal(
        energy.class_energy(tf.constant(logits), tf.constant(y)).numpy(), -logits[np.arange(5), y]
    )
    np.testing.assert_allclose(energy.energy_from_logits(tf.constant(logits)).numpy(), -_logsumexp(logits), rtol=1e-6)


def test_generate_with_labels_runs_chains_on_the_class_energy():
    """`generate(y=...)` descends E(x, y) = -f(x)[y]: the samples equal a chain run here on that
    energy from the same (constant) start, each sample's own class logit rises more than the
    others, and most samples are classified as their label (chains that ignore y cannot)."""
    sampler = SGLDSampler(n_steps=20, step_size=1.0, noise_std=0.0, x_clip=(-1.0, 1.0))
    model = _class_conditional_jem(sampler, initializer=ConstantInitializer(0.0), reinit_prob=0.0)
    y = np.arange(10).astype("int32")
    samples = model.generate(10, y=tf.constant(y), n_steps=10).numpy()
    x0 = tf.zeros((10, 8, 8, 1))
    by_hand = SGLDSampler(n_steps=10, step_size=1.0, noise_std=0.0, x_clip=(-1.0, 1.0))(
        lambda v, labels, training: energy.class_energy(model.network(v), labels), x0, tf.constant(y)
    )
    np.testing.assert_allclose(samples, by_hand.numpy(), atol=1e-6)
    rise = model.network(samples).numpy() - model.network(x0).numpy()
    own = rise[np.arange(10), y]
    others = (rise.sum(axis=1) - own) / 9
    assert np.all(own > others), (own, others)
    assert np.mean(np.argmax(model.network(samples).numpy(), axis=1) == y) >= 0.8
    # From the replay buffer too (class-conditional buffer rows of the label's block).
    buffered = model.generate(10, y=tf.constant(y), n_steps=10, from_buffer=True).numpy()
    np.testing.assert_allclose(buffered, by_hand.numpy(), atol=1e-6)


# ---------------------------------------------------------------- SAM reuses one set of samples
def _count_chain_runs(model, runs):
    """Wrap the trainer's sampler so that every chain *executed* (not traced) appends to `runs`:
    a `tf.py_function` the samples depend on runs once per executed sampler call, also inside
    SAM's second pass, whose variable updates are discarded."""
    sample_with_stats = model.sampler.sample_with_stats  # the p(x) term's chains

    def counted(*args, **kwargs):
        x, stats = sample_with_stats(*args, **kwargs)
        tick = tf.py_function(lambda: runs.append(1) or 0, [], tf.int32)
        with tf.control_dependencies([tick]):
            return tf.identity(x), stats

    model.sampler.sample_with_stats = counted


def _sadajem_two_steps(gradients, x, y):
    """(executed chains, every network variable and the buffer) after two SADA-JEM steps."""
    keras.utils.set_random_seed(0)
    model = tiny_trainer(
        SADAJEM,
        norm=True,
        buffer_size=40,
        sampler=SGLDSampler(
            n_steps=3, step_size=1.0, noise_std=0.01, grad_clip=1.0, x_clip=(-1.0, 1.0), energy_training=True, seed=0
        ),
        gradients=gradients,
        seed=0,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    runs = []
    _count_chain_runs(model, runs)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return len(runs), [v.numpy() for v in model.network.variables] + [model.buffer.buffer.numpy()]


def test_sadajem_sam_at_rho_zero_is_the_plain_step_bit_for_bit_with_one_chain_per_step():
    """SADA-JEM's two SAM passes share one set of SGLD samples (sndnyang/SADAJEM train_sadajem.py):
    with rho = 0 the second pass is at w itself, so a SAM step must equal a plain step bit for bit
    (weights, BN statistics, buffer), and the sampler runs once per step (counted as executed)."""
    rng = np.random.RandomState(9)
    x = rng.uniform(-1, 1, (16, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 16).astype("int32")
    plain_runs, plain = _sadajem_two_steps(PlainGradients(), x, y)
    sam_runs, sam = _sadajem_two_steps(SAMGradients(rho=0.0), x, y)
    assert (plain_runs, sam_runs) == (2, 2)  # one chain per step, SAM or not
    for a, b in zip(plain, sam):
        np.testing.assert_array_equal(a, b)
    # The comparison can fail: SAM at rho > 0 takes another step from the same samples.
    _, other = _sadajem_two_steps(SAMGradients(rho=0.05), x, y)
    assert any(not np.array_equal(a, b) for a, b in zip(plain, other))
