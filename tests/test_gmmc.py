"""GMMC: max-Mahalanobis centres, the MMC head, the three training modes, sampling, sigma, export,
and the per-dataset gin configs."""

import glob
import os

import gin
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
from keras_ebm import export
from keras_ebm.backbones import TinyCNN, feature_extractor
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers.gmmc import GMMC
from keras_ebm.trainers.gmmc.head import MaxMahalanobisHead, build_mmc_classifier, max_mahalanobis_centers, mmc_head


def tiny_backbone(image_shape, dim=16, seed=3):
    """Two strided convolutions and global average pooling to `dim` features (no logits)."""
    return tiny_network(image_shape, None, seed=seed, widths=(8, dim), pool="average")


def tiny_gmmc(image_shape=(8, 8, 1), mode="generative", n_steps=2, buffer_size=20, **kwargs):
    network = build_mmc_classifier(tiny_backbone(image_shape), num_classes=10)
    sampler = kwargs.pop("sampler", None) or SGLDSampler(
        n_steps=n_steps, step_size=1.0, noise_std=0.0, x_clip=(-1.0, 1.0), energy_reduction="mean"
    )
    return GMMC(
        network, image_shape=image_shape, num_classes=10, mode=mode, sampler=sampler, buffer_size=buffer_size, **kwargs
    )


def _gram(mu):
    mu = mu.astype(np.float64)
    return mu @ mu.T


# ---------------------------------------------------------------------- centres
@pytest.mark.parametrize("num_classes,dim", [(10, 640), (10, 9), (100, 99), (100, 640)])
def test_centers_form_a_regular_simplex(num_classes, dim):
    mu = max_mahalanobis_centers(num_classes, dim, scale=10.0)
    assert mu.shape == (num_classes, dim) and mu.dtype == np.float32
    gram = _gram(mu)
    off = gram[~np.eye(num_classes, dtype=bool)]
    np.testing.assert_allclose(np.diag(gram), 100.0, rtol=1e-5)
    np.testing.assert_allclose(off, -100.0 / (num_classes - 1), atol=2e-4)
    # The centres of a regular simplex sum to zero.
    np.testing.assert_allclose(mu.sum(axis=0), 0.0, atol=1e-3)


def test_centers_scale_and_errors():
    mu = max_mahalanobis_centers(3, 5, scale=2.0)
    np.testing.assert_allclose(np.linalg.norm(mu, axis=1), 2.0, rtol=1e-6)
    np.testing.assert_allclose(_gram(mu)[0, 1], -4.0 / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="num_classes=11, dim=9"):
        max_mahalanobis_centers(11, 9)
    with pytest.raises(ValueError, match="num_classes=1"):
        max_mahalanobis_centers(1, 9)
    with pytest.raises(ValueError, match="num_classes=101, dim=64"):
        build_mmc_classifier(tiny_backbone((8, 8, 1), dim=64), num_classes=101)


# ---------------------------------------------------------------------- head
def test_head_logits_and_log_px_match_hand_computation():
    head = MaxMahalanobisHead(4, scale=3.0, sigma=2.0)
    features = np.random.RandomState(0).normal(0.0, 2.0, (5, 6)).astype("float32")
    logits = head(features).numpy()
    mu = max_mahalanobis_centers(4, 6, 3.0).astype(np.float64)
    sq = ((features[:, None, :].astype(np.float64) - mu[None]) ** 2).sum(-1)
    expected = -0.5 * sq / 4.0
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.log_px(features).numpy(), np.log(np.exp(expected).sum(-1)), rtol=1e-5)
    y = np.array([0, 1, 2, 3, 0])
    np.testing.assert_allclose(head.center_loss(features, y).numpy(), 0.5 * sq[np.arange(5), y], rtol=1e-5)
    # Inference (eq. 11): argmax of the logits is the nearest centre, whatever sigma.
    head.set_sigma(0.3)
    np.testing.assert_array_equal(np.argmax(head(features).numpy(), -1), np.argmin(sq, -1))
    assert not head.centers.trainable and not head.sigma.trainable
    assert head.trainable_weights == []


def test_head_is_finite_far_from_every_centre():
    head = MaxMahalanobisHead(10)
    features = np.full((3, 16), 1e4 / 4.0, "float32")  # ||phi|| = 1e4, ~1e4 from every centre
    features[1] *= -1.0
    logits = head(features)
    log_px = head.log_px(features).numpy()
    assert np.all(np.isfinite(logits.numpy())) and np.all(np.isfinite(log_px))
    # logsumexp ~ the largest logit ~ -0.5 * 1e8; exp-then-log (the reference) underflows to -inf.
    np.testing.assert_allclose(log_px, np.max(logits.numpy(), -1), rtol=1e-6)
    assert log_px.max() < -1e7
    with np.errstate(divide="ignore"):
        assert np.all(np.isneginf(np.log(np.exp(logits.numpy()).sum(-1))))
    assert np.all(np.isfinite(tf.nn.softmax(logits).numpy()))


@pytest.fixture
def mixed_float16_policy():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_head_computes_in_float32_under_mixed_float16(mixed_float16_policy):
    head = MaxMahalanobisHead(10)
    assert head.compute_dtype == "float32" and head.variable_dtype == "float32"
    # ||phi||^2 = 16 * 100^2 = 160,000 > float16's max 65504: the expansion overflows in float16.
    features = tf.constant(np.full((3, 16), 100.0) * np.array([[1.0], [-1.0], [0.5]]), tf.float16)
    assert np.isinf(tf.reduce_sum(tf.square(features), axis=-1).numpy()).any()
    logits = head(features)
    assert logits.dtype == tf.float32 and np.all(np.isfinite(logits.numpy()))
    mu = head.centers.numpy().astype(np.float64)
    sq = ((features.numpy().astype(np.float64)[:, None] - mu[None]) ** 2).sum(-1)
    np.testing.assert_allclose(logits.numpy(), -0.5 * sq, rtol=1e-5)
    for out in (
        head.squared_distances(features),
        head.center_loss(features, tf.constant([0, 1, 2])),
        head.log_px(features),
    ):
        assert out.dtype == tf.float32 and np.all(np.isfinite(out.numpy()))
    # In a network: the backbone computes in float16, the head (and so the logits) in float32.
    network = build_mmc_classifier(tiny_backbone((8, 8, 1)), num_classes=10)
    x = np.random.RandomState(0).uniform(-1, 1, (2, 8, 8, 1)).astype("float32")
    assert feature_extractor(network)(x).dtype == tf.float16
    assert mmc_head(network).compute_dtype == "float32" and network(x).dtype == tf.float32
    model = GMMC(network, image_shape=(8, 8, 1), num_classes=10, buffer_size=20)
    z = model.draw_latents(tf.constant([0, 1]), seed=tf.constant([1, 2], tf.int64))
    assert model.latent_energy(x, z).dtype == tf.float32


def test_estimate_sigma_on_known_features():
    head = MaxMahalanobisHead(10, sigma=1.0)
    head.build((None, 32))
    rng = np.random.RandomState(0)
    y = rng.randint(0, 10, 4000)
    features = head.centers.numpy()[y] + 0.25 * rng.normal(size=(4000, 32)).astype("float32")
    estimate = float(head.estimate_sigma(features, y))
    hand = np.sqrt(((features - head.centers.numpy()[y]) ** 2).sum(-1).mean() / 32)
    np.testing.assert_allclose(estimate, hand, rtol=1e-5)
    assert abs(estimate - 0.25) < 0.005
    assert float(head.sigma.numpy()) == 1.0  # estimating does not assign
    head.set_sigma(estimate)
    np.testing.assert_allclose(head.sigma.numpy(), estimate)


def test_trainer_estimate_sigma_assigns_the_dataset_estimate():
    model = tiny_gmmc(mode="discriminative")
    rng = np.random.RandomState(1)
    x = rng.uniform(-1, 1, (40, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 40)
    features = feature_extractor(model.network)(x)
    expected = float(model.head.estimate_sigma(features, y))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    assert abs(model.estimate_sigma(ds) - expected) < 1e-4
    np.testing.assert_allclose(model.head.sigma.numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="max_batches"):
        model.estimate_sigma(ds.repeat())
    assert abs(model.estimate_sigma(ds.repeat(), max_batches=3, assign=False) - expected) < 1e-4


def test_after_training_hook_estimates_sigma_from_the_training_data_fn():
    rng = np.random.RandomState(5)
    x = rng.uniform(-1, 1, (32, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 32)

    def data(ctx=None):
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)

    model = tiny_gmmc(mode="discriminative", sigma_batches=4)
    expected = float(model.head.estimate_sigma(feature_extractor(model.network)(x), y))
    np.testing.assert_allclose(model.after_training(data), expected, rtol=1e-5)
    np.testing.assert_allclose(model.head.sigma.numpy(), expected, rtol=1e-5)
    assert tiny_gmmc(mode="discriminative").after_training(data) is None


@pytest.mark.parametrize("as_dataset", [False, True])
def test_after_training_reads_sigma_data_instead_of_the_training_loader(as_dataset):
    rng = np.random.RandomState(7)
    x = rng.uniform(-1, 1, (32, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 32)

    def clean(ctx=None):
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)

    def augmented(ctx=None):  # stands in for run_training's augmented + noisy loader
        return clean().map(lambda a, b: (a + 0.5 * tf.random.normal(tf.shape(a), seed=1), b))

    model = tiny_gmmc(mode="discriminative", sigma_batches=4, sigma_data=clean() if as_dataset else clean)
    expected = float(model.head.estimate_sigma(feature_extractor(model.network)(x), y))
    np.testing.assert_allclose(model.after_training(augmented), expected, rtol=1e-5)
    np.testing.assert_allclose(model.head.sigma.numpy(), expected, rtol=1e-5)
    # Without sigma_data the (noisier) training loader is read and gives another estimate.
    other = tiny_gmmc(mode="discriminative", sigma_batches=4).after_training(augmented)
    assert abs(other - expected) > 1e-3
    with pytest.raises(ValueError, match="sigma_data"):
        tiny_gmmc(sigma_data="train")


def test_run_training_estimates_sigma_and_the_export_carries_it(tmp_path, monkeypatch):
    from keras_ebm import restore, run_config, training

    # The spy keeps the batches the estimate reads, so that sigma can be computed here
    # independently: sqrt(mean ||phi(x) - mu_y||^2 / dim) in NumPy on the trained features.
    seen = []
    original = GMMC.estimate_sigma

    def spy(self, data, max_batches=None, assign=True):
        batches = [(np.asarray(x), np.asarray(y)) for i, (x, y) in zip(range(max_batches), data)]
        seen.append((batches, max_batches))
        return original(self, batches, max_batches=max_batches, assign=assign)

    monkeypatch.setattr(GMMC, "estimate_sigma", spy)
    run_config.parse_gin(
        ["gin_configs/gmmc_gen.gin", "gin_configs/tiny.gin"], ["GMMC.sigma_batches = 3", "run_training.train_steps = 2"]
    )
    model = training.run_training(model_dir=str(tmp_path), progress=False)
    assert len(seen) == 1 and seen[0][1] == 3 and len(seen[0][0]) == 3
    x = np.concatenate([b[0] for b in seen[0][0]])
    y = np.concatenate([b[1] for b in seen[0][0]])
    phi = feature_extractor(model.network)(x).numpy().astype(np.float64)
    centers = model.head.centers.numpy().astype(np.float64)
    expected = np.sqrt(np.mean(np.sum((phi - centers[y]) ** 2, axis=-1)) / phi.shape[-1])
    sigma = float(model.head.sigma.numpy())
    np.testing.assert_allclose(sigma, expected, rtol=1e-5)
    assert abs(sigma - 1.0) > 1e-3  # estimated, not the initial 1.0
    loaded = export.load_export(str(tmp_path / "export"))
    names = {v.name.split(":")[0].split("/")[-1]: v for v in loaded.network_variables}
    assert float(names["sigma"].numpy()) == sigma
    # The exported logits use it: -0.5 ||phi - mu||^2 / sigma^2.
    images = np.random.RandomState(8).randint(0, 256, (4, 8, 8, 1)).astype("uint8")
    x = images.astype("float32") / 255.0 * 2.0 - 1.0
    np.testing.assert_allclose(
        loaded.logits(tf.constant(images))["logits"], model.network(x).numpy(), rtol=1e-4, atol=1e-4
    )
    # The final checkpoint holds it too (eval.py --samples and resumes restore it).
    restored = restore.restore_trainer(str(tmp_path))
    assert float(restored.head.sigma.numpy()) == sigma


# ---------------------------------------------------------------------- sampling
def test_staged_sampling_lowers_the_target_energy_step_by_step():
    model = tiny_gmmc(latent_std=0.5)
    x0 = tf.random.stateless_uniform((6, 8, 8, 1), seed=[1, 2], minval=-1, maxval=1)
    y = tf.constant([0, 1, 2, 3, 4, 5])
    z = model.draw_latents(y, seed=tf.constant([3, 4], tf.int64))
    energies = []
    for k in range(6):
        x = model.sampler(model._sampler_energy, x0, z, n_steps=k)
        energies.append(float(tf.reduce_mean(model.latent_energy(x, z))))
    assert all(b < a for a, b in zip(energies, energies[1:])), energies


def _recorded_latents(model, n_steps=3):
    recorded = []
    energy = model.latent_energy

    def record(z):
        recorded.append(z.numpy())
        return z

    def spy(x, z, training=False):
        # The sampler runs its chain as a tf.function even when called eagerly: record the latents
        # at run time, once per SGLD step (the energy uses the recorded tensor, so it runs).
        z = tf.ensure_shape(tf.py_function(record, [z], z.dtype), z.shape)
        return energy(x, z, training=training)

    model.latent_energy = spy
    y = tf.constant([0, 3, 7])
    x0 = tf.zeros((3, 8, 8, 1))
    model.sample_chains(x0, y, n_steps=n_steps)
    return recorded, model.head.class_centers(y).numpy()


def test_noise_injected_sampling_redraws_z_every_step_and_staged_keeps_it():
    noisy, mu = _recorded_latents(tiny_gmmc(sampling="noise_injected", latent_std=0.5))
    assert len(noisy) == 3
    assert not np.allclose(noisy[0], noisy[1]) and not np.allclose(noisy[1], noisy[2])
    for z in noisy:  # every draw is N(mu_y, 0.5^2): within a few std of the centres
        assert np.abs(z - mu).max() < 0.5 * 6 and np.abs(z - mu).std() > 0.2
    staged, _ = _recorded_latents(tiny_gmmc(sampling="staged", latent_std=0.5))
    assert len(staged) == 3
    np.testing.assert_array_equal(staged[0], staged[1])
    np.testing.assert_array_equal(staged[1], staged[2])


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("mode", ["discriminative", "generative", "joint"])
def test_each_mode_fits_real_cifar10(cifar10_arrays, mode):
    x, y = cifar10_arrays()
    network = build_mmc_classifier(TinyCNN((8, 16), input_shape=(32, 32, 3)), num_classes=10)
    model = GMMC(
        network,
        image_shape=(32, 32, 3),
        num_classes=10,
        mode=mode,
        buffer_size=100,
        switch_step=2,
        seed=0,
        sampler=SGLDSampler(n_steps=2, noise_std=0.0, x_clip=(-1, 1), energy_reduction="mean"),
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    per_step = _PerStepLogs()
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False, callbacks=[per_step]).history
    for key, values in history.items():
        assert np.all(np.isfinite(values)), (key, values)
    steps = per_step.values()
    assert len(steps) == 8  # 128 images / 32, two epochs
    # The centre regression loss (the data term of every mode) goes down on the same images.
    assert history["center_loss"][-1] < history["center_loss"][0], history["center_loss"]
    if mode == "discriminative":
        assert model.buffer is None and history["sample_loss"][-1] == 0.0
    else:
        assert history["sample_loss"][-1] > 0.0
        buf = model.buffer.buffer.numpy()
        assert buf.min() >= -1.0 and buf.max() <= 1.0  # x clamped to the pixel range
    if mode == "generative":
        np.testing.assert_allclose(
            history["loss"][-1], history["center_loss"][-1] - 0.5 * history["sample_loss"][-1], rtol=1e-5
        )
    if mode == "joint":
        # Optimizer steps 0 and 1 (< switch_step=2) are discriminative, steps 2..7 generative.
        for i, entry in enumerate(steps):
            if i < model.switch_step:
                assert entry["balance"] == 0.0 and entry["sample_loss"] == 0.0, (i, entry)
                assert entry["sgld_grad_norm"] == 0.0 and entry["energy_gap"] == 0.0, (i, entry)
                assert entry["loss"] == pytest.approx(entry["center_loss"], rel=1e-5), (i, entry)
            else:
                assert entry["balance"] == pytest.approx(0.5, rel=1e-5), (i, entry)
                assert entry["sample_loss"] > 0.0 and entry["sgld_grad_norm"] > 0.0, (i, entry)
                assert entry["loss"] == pytest.approx(
                    entry["center_loss"] - 0.5 * entry["sample_loss"], rel=1e-3, abs=1e-3
                ), (i, entry)


class _PerStepLogs(keras.callbacks.Callback):
    """Per-step values from Keras' per-batch logs, which are running means since the epoch start:
    value_k = k * mean_k - (k - 1) * mean_{k-1} (k = 1, 2, ... within an epoch)."""

    def __init__(self):
        super().__init__()
        self.means = []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append((batch, {k: float(v) for k, v in (logs or {}).items()}))

    def values(self):
        out, previous = [], None
        for batch, means in self.means:
            if batch == 0:
                out.append(dict(means))
            else:
                out.append({k: (batch + 1) * v - batch * previous[k] for k, v in means.items()})
            previous = means
        return out


def _per_step_logs(model, x, y, steps):
    model(x[:1])
    model.optimizer.build(model.trainable_variables)
    step_fn = tf.function(model.train_step)
    logs = []
    for _ in range(steps):
        for metric in model.metrics:
            metric.reset_state()
        logs.append({k: float(v) for k, v in step_fn((x, y)).items()})
    return logs, step_fn


def test_joint_switches_at_switch_step_and_ramps_without_retracing():
    rng = np.random.RandomState(2)
    x = rng.uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    y = np.arange(8).astype("int32")
    model = tiny_gmmc(mode="joint", switch_step=2, ramp_steps=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    buffer_before = model.buffer.buffer.numpy().copy()
    logs, step_fn = _per_step_logs(model, x, y, 5)
    assert [entry["balance"] for entry in logs] == [0.0, 0.0, 0.25, 0.5, 0.5]
    for entry in logs[:2]:  # discriminative phase: loss = centre loss, no sample term, no SGLD
        assert entry["sample_loss"] == 0.0 and entry["sgld_grad_norm"] == 0.0
        assert entry["loss"] == pytest.approx(entry["center_loss"], rel=1e-6)
    for entry in logs[2:]:
        assert entry["sample_loss"] > 0.0 and entry["sgld_grad_norm"] > 0.0
        assert entry["loss"] == pytest.approx(entry["center_loss"] - entry["balance"] * entry["sample_loss"], rel=1e-5)
    assert step_fn.experimental_get_tracing_count() == 1
    assert int(model.optimizer.iterations.numpy()) == 5
    assert not np.allclose(buffer_before, model.buffer.buffer.numpy())
    # Abrupt switch (the reference code) with ramp_steps=0.
    model.ramp_steps = 0
    assert [float(model.balance(s)) for s in (0, 1, 2, 3)] == [0.0, 0.0, 0.5, 0.5]


def test_joint_schedule_survives_checkpoint_resume(tmp_path):
    rng = np.random.RandomState(6)
    x = rng.uniform(-1, 1, (32, 8, 8, 1)).astype("float32")
    y = (np.arange(32) % 10).astype("int32")

    def data(ctx=None):
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8, drop_remainder=True)

    def run(steps):
        trainer = lambda: tiny_gmmc(mode="joint", switch_step=3, seed=1)  # noqa: E731
        return run_briefly(tmp_path, trainer, lambda: keras.optimizers.Adam(1e-3), data, steps, 1)

    first = run(2)
    assert float(first.balance()) == 0.0
    resumed = run(4)
    # The step counter (optimizer.iterations) came back from the checkpoint: 2 restored + 2 new,
    # and the last step (index 3) ran generatively.
    assert int(resumed.optimizer.iterations.numpy()) == 4
    assert float(resumed.balance()) == 0.5 and float(resumed.balance(2)) == 0.0


def test_discriminative_loss_is_the_centre_regression_loss():
    rng = np.random.RandomState(3)
    x = rng.uniform(-1, 1, (6, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2, 3, 4, 5])
    model = tiny_gmmc(mode="discriminative")
    logs = model.compute_losses(model.unpack_batch((x, y)), {}, training=False)
    phi = feature_extractor(model.network)(x).numpy().astype(np.float64)
    mu = model.head.centers.numpy()[y]
    np.testing.assert_allclose(logs["loss"], (0.5 * ((phi - mu) ** 2).sum(-1)).mean(), rtol=1e-5)
    # No softmax cross-entropy: the loss does not move when sigma (the logits' scale) changes.
    model.head.set_sigma(0.1)
    np.testing.assert_allclose(
        model.compute_losses(model.unpack_batch((x, y)), {}, training=False)["loss"], logs["loss"], rtol=1e-6
    )


def test_invalid_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="mode='adversarial'"):
        tiny_gmmc(mode="adversarial")
    with pytest.raises(ValueError, match="buffer_size=25"):
        tiny_gmmc(buffer_size=25)
    with pytest.raises(ValueError, match="MaxMahalanobisHead"):
        net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        GMMC(net, image_shape=(8, 8, 1), num_classes=10)


@pytest.mark.parametrize(
    "mode,sampling",
    [("discriminative", "staged"), ("generative", "staged"), ("joint", "staged"), ("generative", "noise_injected")],
)
def test_smoke_checkpoint_and_keras_file_round_trips(mode, sampling, tmp_path):
    x, y = digits_arrays(64)

    def make():
        return tiny_gmmc(
            mode=mode, sampling=sampling, switch_step=1, ramp_steps=2, latent_std=0.01, sigma_batches=2, seed=0
        )

    trainer, sigmas = make(), []
    # section 3.1: the estimate, made after training, is a weight of the head
    loaded = run_lifecycle(
        trainer, x, y, tmp_path, make=make, before_save=lambda: sigmas.append(trainer.estimate_sigma((x, y)))
    )
    assert loaded.head.sigma.numpy() == pytest.approx(sigmas[0], rel=1e-6)
    assert (loaded.mode, loaded.sampling, loaded.switch_step, loaded.ramp_steps) == (mode, sampling, 1, 2)
    assert (loaded.buffer is None) == (mode == "discriminative")


def test_keras_file_round_trip_with_a_library_backbone(tmp_path):
    x, y = digits_arrays(32)
    network = build_mmc_classifier(TinyCNN((8, 16), input_shape=(8, 8, 1)), num_classes=10)
    trainer = GMMC(
        network,
        image_shape=(8, 8, 1),
        num_classes=10,
        buffer_size=20,
        seed=0,
        sampler=SGLDSampler(n_steps=2, noise_std=0.0, x_clip=(-1, 1), energy_reduction="mean"),
    )
    run_lifecycle(trainer, x, y, tmp_path, steps=1)


@pytest.mark.parametrize("mode", ["discriminative", "generative", "joint"])
def test_one_device_and_two_replicas_agree(two_device_strategy, mode):
    rng = np.random.RandomState(1)
    x = rng.uniform(-1, 1, (64, 8, 8, 1)).astype("float32")
    y = (np.arange(64) % 10).astype("int32")

    def build():
        # One buffer row per class and a constant fill: every chain start is a function of its
        # label only, so it cannot depend on which replica drew which row; latent_std 0 and
        # reinit 0 remove the remaining randomness.
        model = tiny_gmmc(
            mode=mode,
            buffer_size=10,
            reinit_prob=0.0,
            latent_std=0.0,
            initializer=ConstantInitializer(),
            switch_step=1,
            seed=0,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        return model

    agree = ("loss", "center_loss", "sample_loss", "balance")
    results = fit_one_device_and_two_replicas(two_device_strategy, build, x, y, agree=agree)
    (_, m1, _), (_, m2, _) = results
    if m1.buffer is not None:
        np.testing.assert_allclose(m1.buffer.buffer.numpy(), m2.buffer.buffer.numpy(), atol=1e-5)


# ---------------------------------------------------------------------- export and generation
def test_export_and_reload_with_sigma_and_scores(tmp_path):
    model = tiny_gmmc(mode="generative")
    model.head.set_sigma(2.0)
    images = np.random.RandomState(4).randint(0, 256, (5, 8, 8, 1)).astype("uint8")
    x = images.astype("float32") / 255.0 * 2.0 - 1.0
    export_dir = export.export_model(
        model,
        str(tmp_path / "export"),
        image_shape=(8, 8, 1),
        pixel_range=(-1.0, 1.0),
        ood_score=model.default_ood_score,
    )
    loaded = export.load_export(export_dir)
    scores = loaded.scores(tf.constant(images))
    assert {"log_px", "max_softmax", "grad_norm"} <= set(scores)
    # Hand computation from the features: logits = -0.5 ||phi - mu||^2 / sigma^2 with sigma = 2.
    phi = feature_extractor(model.network)(x).numpy().astype(np.float64)
    mu = model.head.centers.numpy().astype(np.float64)
    logits = -0.5 * ((phi[:, None] - mu[None]) ** 2).sum(-1) / 4.0
    np.testing.assert_allclose(loaded.logits(tf.constant(images))["logits"], logits, rtol=1e-4, atol=1e-4)
    log_px = logits.max(-1) + np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
    np.testing.assert_allclose(scores["log_px"], log_px, rtol=1e-4, atol=1e-4)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(scores["max_softmax"], (probs / probs.sum(-1, keepdims=True)).max(-1), atol=1e-5)
    # Approximate mass: -||d log p(x) / dx||, the same through the export and in eager mode.
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        lp = tf.reduce_logsumexp(model(xt), axis=-1)
    grad = tape.gradient(lp, xt).numpy().reshape(5, -1)
    np.testing.assert_allclose(scores["grad_norm"], -np.linalg.norm(grad, axis=1), rtol=1e-3, atol=1e-5)
    # sigma and the centres travel with the export; the replay buffer does not.
    names = {v.name.split(":")[0].split("/")[-1]: v for v in loaded.network_variables}
    assert float(names["sigma"].numpy()) == 2.0
    assert names["centers"].shape == (10, 16)
    assert all(v.shape != model.buffer.buffer.shape for v in loaded.network_variables)


def test_generate_class_conditional_in_pixel_range():
    model = tiny_gmmc(mode="generative", sampling="noise_injected")
    fresh = model.generate(4, y=tf.constant([0, 1, 2, 3]), n_steps=2)
    buffered = model.generate(3, from_buffer=True, n_steps=1)
    for s, n in ((fresh, 4), (buffered, 3)):
        assert s.shape == (n, 8, 8, 1)
        assert float(tf.reduce_min(s)) >= -1.0 and float(tf.reduce_max(s)) <= 1.0
    with pytest.raises(ValueError, match="from_buffer=True"):
        tiny_gmmc(mode="discriminative").generate(2, from_buffer=True)
    assert mmc_head(model.network) is model.head


# ---------------------------------------------------------------------- per-dataset configs
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Training images of each set (paper Appendix 0.A; the whole train split, no validation hold-out)
# and Appendix 0.B's decay epochs (150 epochs, x0.3).
TRAIN_IMAGES = {"cifar10": 50000, "cifar100": 50000, "svhn_cropped": 73257}
DECAY_EPOCHS = {"cifar10": (30, 50, 80), "cifar100": (120, 140), "svhn_cropped": (30, 50, 80)}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn_cropped": 10}
AUGMENT = {"cifar10": "pad_crop_flip", "cifar100": "pad_crop_flip", "svhn_cropped": "pad_crop"}
EVAL_NAME = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn_cropped": "svhn"}
# The numbers written in the configs' comments: (steps per epoch, 150 epochs, epoch 50).
SCHEDULE = {"cifar10": (781, 117150, 39050), "cifar100": (781, 117150, 39050), "svhn_cropped": (1144, 171600, 57200)}
# config -> (mode, data set); every gin_configs/gmmc_*.gin must be listed (checked below).
GMMC_CONFIGS = {
    "gmmc_dis.gin": ("discriminative", "cifar10"),
    "gmmc_gen.gin": ("generative", "cifar10"),
    "gmmc_joint.gin": ("joint", "cifar10"),
    "gmmc_dis_cifar100.gin": ("discriminative", "cifar100"),
    "gmmc_gen_cifar100.gin": ("generative", "cifar100"),
    "gmmc_joint_cifar100.gin": ("joint", "cifar100"),
    "gmmc_dis_svhn.gin": ("discriminative", "svhn_cropped"),
    "gmmc_gen_svhn.gin": ("generative", "svhn_cropped"),
    "gmmc_joint_svhn.gin": ("joint", "svhn_cropped"),
    "gmmc_cifar100.gin": ("generative", "cifar100"),  # old name of gmmc_gen_cifar100.gin
    "gmmc_svhn.gin": ("generative", "svhn_cropped"),  # old name of gmmc_gen_svhn.gin
}


def test_every_gmmc_config_is_checked():
    found = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "gin_configs", "gmmc_*.gin"))}
    assert found == set(GMMC_CONFIGS)


@pytest.mark.parametrize("config", sorted(GMMC_CONFIGS))
def test_gmmc_config_binds_the_papers_schedule_for_its_mode_and_data_set(config):
    from keras_ebm import run_config

    mode, dataset = GMMC_CONFIGS[config]
    run_config.parse_gin([f"gin_configs/{config}"], [])
    q = run_config.resolve_parameter
    steps_per_epoch = TRAIN_IMAGES[dataset] // 64
    assert (steps_per_epoch, 150 * steps_per_epoch, 50 * steps_per_epoch) == SCHEDULE[dataset]
    assert q("train/make_dataset_fn.global_batch_size") == 64
    assert q("train/make_dataset_fn.name") == dataset
    assert q("train/make_dataset_fn.augment") == AUGMENT[dataset]
    assert q("train/make_dataset_fn.dequantize_noise") == 0.03
    # sigma's loader: the same training images, un-augmented.
    assert q("sigma/make_dataset_fn.name") == dataset and q("sigma/make_dataset_fn.split") == "train"
    assert q("sigma/make_dataset_fn.augment") is None
    assert "sigma/make_dataset_fn.dequantize_noise" not in gin.config_str()
    assert q("GMMC.sigma_batches") == 200
    assert q("GMMC.num_classes") == q("build_mmc_classifier.num_classes") == NUM_CLASSES[dataset]
    assert q("GMMC.buffer_size") == 100000 and 100000 % NUM_CLASSES[dataset] == 0
    assert q("GMMC.mode") == mode
    assert q("epoch_step_decay.steps_per_epoch") == steps_per_epoch
    assert q("epoch_step_decay.decay_epochs") == DECAY_EPOCHS[dataset]
    assert q("epoch_step_decay.decay_factor") == 0.3
    assert q("epoch_step_decay.initial_learning_rate") == 1e-4
    assert q("run_training.train_steps") == 150 * steps_per_epoch
    if mode == "joint":
        assert q("GMMC.switch_step") == 50 * steps_per_epoch  # Appendix 0.E: epoch 50
        assert q("GMMC.ramp_steps") == 0
    else:
        assert "GMMC.switch_step" not in gin.config_str()
    assert q("run_eval.in_dist")["name"] == dataset and q("run_eval.in_dist_name") == EVAL_NAME[dataset]
    assert dataset not in {spec["name"] for spec in q("run_eval.ood_sets").values()}


@pytest.mark.parametrize(
    "old,new", [("gmmc_cifar100.gin", "gmmc_gen_cifar100.gin"), ("gmmc_svhn.gin", "gmmc_gen_svhn.gin")]
)
def test_old_config_names_bind_the_same_as_the_generative_configs(old, new):
    from keras_ebm import run_config

    run_config.parse_gin([f"gin_configs/{old}"], [])
    old_config = gin.config_str()
    gin.clear_config()
    run_config.parse_gin([f"gin_configs/{new}"], [])
    assert old_config == gin.config_str()
