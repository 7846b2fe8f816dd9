"""MALASampler / HMCSampler on energies with known answers: Gaussians and well-separated Gaussian
mixtures in 2 and 64 dimensions (means, covariances, mixture weights), acceptance after adaptation,
SGLD's bias where MALA has none, clamps, run-time settings, trainers, tf.distribute, serialization.

Tolerances are stated in standard errors of the estimate over independent chains: the chains start
from exact draws of the target (or far from it, with burn-in), so a correct kernel keeps the
marginal exact and only the Monte Carlo error of N chains remains.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    ConstantInitializer,
    digits_arrays,
    fit_one_device_and_two_replicas,
    tiny_clel,
    tiny_jem,
    tiny_network,
)
from keras_ebm import distribute
from keras_ebm.sampling import HMCSampler, MALASampler, SGLDSampler

SAMPLERS = {"mala": MALASampler, "hmc": HMCSampler}
N_CHAINS = 512


# ------------------------------------------------------------------ targets with known answers
class Gaussian:
    """N(mu, cov): E(x) = 0.5 (x - mu)^T P (x - mu) (P = cov^-1), per row of x [batch, dim]."""

    def __init__(self, mu, cov):
        self.mu = np.asarray(mu, np.float32)
        self.cov = np.asarray(cov, np.float64)
        self.precision = tf.constant(np.linalg.inv(self.cov), tf.float32)
        self.dim = len(self.mu)

    def energy(self, x, y=None, training=False):
        d = x - self.mu
        return 0.5 * tf.reduce_sum(d * tf.linalg.matvec(self.precision, d), axis=-1)

    def draw(self, n, seed):
        return np.random.RandomState(seed).multivariate_normal(self.mu, self.cov, n).astype(np.float32)


class Mixture:
    """sum_k w_k N(mu_k, diag(var_k)), components far apart (>= 8 standard deviations)."""

    def __init__(self, weights, mus, variances):
        self.weights = np.asarray(weights, np.float32)
        self.mus = np.asarray(mus, np.float32)
        self.vars = np.asarray(variances, np.float32)
        self.dim = self.mus.shape[1]

    def energy(self, x, y=None, training=False):
        d = x[:, None, :] - self.mus[None]
        log_n = -0.5 * tf.reduce_sum(d**2 / self.vars + np.log(2 * np.pi * self.vars), axis=-1)
        return -tf.reduce_logsumexp(np.log(self.weights) + log_n, axis=-1)

    def draw(self, n, seed):
        rng = np.random.RandomState(seed)
        k = rng.choice(len(self.weights), n, p=self.weights)
        return (self.mus[k] + rng.randn(n, self.dim) * np.sqrt(self.vars[k])).astype(np.float32)

    def component(self, x):
        return np.argmin(((x[:, None, :] - self.mus[None]) ** 2).sum(-1), axis=1)


def gaussian(dim):
    if dim == 2:
        return Gaussian([1.0, -2.0], [[1.0, 0.6], [0.6, 2.0]])
    return Gaussian(np.linspace(-1, 1, dim), np.diag(np.linspace(0.5, 2.0, dim)))


def mixture(dim):
    mus = np.stack([np.full(dim, -8.0 / np.sqrt(dim)), np.full(dim, 8.0 / np.sqrt(dim))])
    variances = np.stack([np.full(dim, 0.5), np.linspace(0.8, 1.5, dim)])
    return Mixture([0.3, 0.7], mus, variances)


def assert_gaussian_moments(x, mu, cov, what):
    """Sample mean within 5 standard errors per coordinate; per-coordinate variance ratio within
    5 standard errors (sqrt(2/N)), their mean over coordinates within 5 sqrt(2/(N d)); 2-d
    correlation within 5/sqrt(N)."""
    n, dim = x.shape
    var = np.diag(cov)
    err = np.abs(x.mean(0) - mu) / np.sqrt(var / n)
    assert err.max() < 5.0, f"{what}: mean off by {err.max():.1f} standard errors"
    ratio = x.var(0) / var
    assert np.abs(ratio - 1).max() < 5 * np.sqrt(2 / n), f"{what}: variance ratios {ratio.min():.3f}..{ratio.max():.3f}"
    assert abs(ratio.mean() - 1) < 5 * np.sqrt(2 / (n * dim)), f"{what}: mean variance ratio {ratio.mean():.3f}"
    if dim == 2:
        rho = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
        assert abs(np.corrcoef(x.T)[0, 1] - rho) < 5 / np.sqrt(n), what


def run(sampler, energy, x0, n_steps=None):
    x, stats = sampler.sample_with_stats(energy, tf.constant(x0), n_steps=n_steps)
    return x.numpy(), {k: v.numpy() for k, v in stats.items()}


# ------------------------------------------------------------------ moments
@pytest.mark.parametrize("dim", [2, 64])
@pytest.mark.parametrize("kind", ["mala", "hmc"])
def test_gaussian_stays_exact_from_exact_draws(kind, dim):
    target = gaussian(dim)
    # Near the adapted step size from the start (larger in 2 dimensions), where a missing
    # correction would show.
    sampler = SAMPLERS[kind](n_steps=60, step_size=1.0 if dim == 2 else 0.3, num_adaptation_steps=30, seed=0)
    x, stats = run(sampler, target.energy, target.draw(N_CHAINS, seed=1))
    assert stats["accept_rate"] > 0.3
    assert_gaussian_moments(x, target.mu, target.cov, f"{kind} {dim}-d")


@pytest.mark.parametrize("kind", ["mala", "hmc"])
def test_gaussian_from_a_far_start_converges(kind):
    target = gaussian(2)
    sampler = SAMPLERS[kind](n_steps=250, step_size=0.05, num_adaptation_steps=150, seed=0)
    x, _ = run(sampler, target.energy, np.full((N_CHAINS, 2), 6.0, np.float32))
    assert_gaussian_moments(x, target.mu, target.cov, f"{kind} from (6, 6)")


@pytest.mark.parametrize("dim", [2, 64])
@pytest.mark.parametrize("kind", ["mala", "hmc"])
def test_mixture_weights_means_and_variances(kind, dim):
    target = mixture(dim)
    sampler = SAMPLERS[kind](n_steps=60, step_size=0.3, num_adaptation_steps=30, seed=0)
    x, _ = run(sampler, target.energy, target.draw(N_CHAINS, seed=2))
    k = target.component(x)
    weight = np.mean(k == 1)
    assert abs(weight - 0.7) < 4 * np.sqrt(0.21 / N_CHAINS), weight  # the chains stay in their mode
    for c in (0, 1):
        assert_gaussian_moments(x[k == c], target.mus[c], np.diag(target.vars[c]), f"{kind} {dim}-d comp {c}")


# ------------------------------------------------------------------ adaptation
@pytest.mark.parametrize("adaptation", ["simple", "dual_averaging"])
@pytest.mark.parametrize("kind", ["mala", "hmc"])
def test_acceptance_after_adaptation_is_in_the_target_band(kind, adaptation):
    target = gaussian(64)
    cls = SAMPLERS[kind]
    # Dual averaging converges more slowly (its averaged iterate weighs the early steps).
    sampler = cls(n_steps=100 if adaptation == "simple" else 300, step_size=0.1, adaptation=adaptation, seed=0)
    x, stats = run(sampler, target.energy, target.draw(256, seed=3))
    assert sampler.step_size > 0.2  # adapted up from 0.1 and kept (persist_step_size)
    np.testing.assert_allclose(np.log(sampler.step_size), np.mean(np.log(stats["step_size_per_chain"])), rtol=1e-5)
    fixed = cls(n_steps=60, step_size=sampler.step_size, adaptation=None, seed=1)
    _, after = run(fixed, target.energy, x)
    assert abs(after["accept_rate"] - sampler.target_accept_prob) < 0.1, after["accept_rate"]
    assert after["accept_rate_per_chain"].shape == (256,)
    np.testing.assert_allclose(after["accept_rate"], after["accept_rate_per_chain"].mean(), rtol=1e-5)


def test_step_size_shrinks_when_too_large_and_is_per_chain():
    # Chains on two scales: a wide and a narrow coordinate block, one per half of the batch.
    scale = np.where(np.arange(64) < 32, 3.0, 0.1).astype(np.float32)[:, None]

    def energy(x, y=None, training=False):
        return 0.5 * tf.reduce_sum(x**2, axis=-1) / tf.constant(scale[:, 0]) ** 2

    sampler = MALASampler(n_steps=200, step_size=1.0, seed=0)
    x0 = (np.random.RandomState(0).randn(64, 16) * scale).astype(np.float32)
    _, stats = run(sampler, energy, x0)
    steps = stats["step_size_per_chain"]
    # A step size per chain, adapted to the chain's own scale (ratio of scales squared: 900).
    assert np.median(steps[:32]) > 50 * np.median(steps[32:]), steps


def test_mala_drift_follows_the_adapted_step_size():
    # With adaptation_rate 1 the step size doubles or halves at every step. tfp's MALA caches the
    # drift of the current state computed with the previous step size; MALASampler recomputes it, so
    # every proposal is a MALA proposal of its own step size: the acceptance stays near the target
    # (a stale drift gave 0.07) and the marginal stays N(0, I).
    target = Gaussian(np.zeros(64), np.eye(64))
    x0 = target.draw(1024, seed=9)
    sampler = MALASampler(n_steps=40, step_size=0.8, adaptation_rate=1.0, seed=0)
    x, stats = run(sampler, target.energy, x0)
    assert stats["accept_rate"] > 0.4, stats["accept_rate"]
    assert abs(x.var(0).mean() - 1.0) < 5 * np.sqrt(2 / (1024 * 64))


# ------------------------------------------------------------------ SGLD's bias, MALA's correction
def test_sgld_bias_at_a_large_step_is_visible_where_mala_has_none():
    # Unadjusted Langevin at step eps (SGLD: alpha = eps/2, noise sqrt(eps)) on N(0, I) has
    # stationary variance 1 / (1 - eps/4): 1.33 at eps = 1. MALA with the same proposal keeps 1.
    target = Gaussian(np.zeros(64), np.eye(64))
    x0 = target.draw(N_CHAINS, seed=4)
    eps = 1.0
    sgld = SGLDSampler(n_steps=60, step_size=eps / 2, noise_std=np.sqrt(eps), seed=0)
    x_sgld = sgld(target.energy, tf.constant(x0)).numpy()
    mala = MALASampler(n_steps=60, step_size=eps, adaptation=None, seed=0)
    x_mala, stats = run(mala, target.energy, x0)
    tol = 5 * np.sqrt(2 / (N_CHAINS * 64))  # 0.028
    assert x_sgld.var(0).mean() > 1.25, x_sgld.var(0).mean()
    assert abs(x_mala.var(0).mean() - 1.0) < tol, x_mala.var(0).mean()
    assert 0.2 < stats["accept_rate"] < 0.95


# ------------------------------------------------------------------ interface of SGLDSampler
def test_x_clip_restricts_the_target_to_the_box_and_clamps_the_starts():
    # N(0, 1) truncated to [0, 1]: mean (phi(0) - phi(1)) / (Phi(1) - Phi(0)) = 0.4599.
    target = Gaussian(np.zeros(2), np.eye(2))
    sampler = MALASampler(n_steps=200, step_size=0.2, x_clip=(0.0, 1.0), seed=0)
    x0 = np.random.RandomState(5).uniform(-1, 2, (N_CHAINS, 2)).astype(np.float32)
    x, _ = run(sampler, target.energy, x0)
    assert x.min() >= 0.0 and x.max() <= 1.0
    sd = np.sqrt(0.0768 / N_CHAINS)  # variance of N(0,1) truncated to [0, 1]
    assert np.abs(x.mean(0) - 0.4599).max() < 5 * sd, x.mean(0)


@pytest.mark.parametrize("kind", ["mala", "hmc"])
def test_gradient_clamp_keeps_the_chain_exact(kind):
    # The clamped gradient is the drift / force of the proposal and enters MALA's proposal density,
    # so the target is still sampled exactly (a far-off mean makes the clamp bite at the start).
    target = Gaussian([4.0, -4.0], [[1.0, 0.6], [0.6, 2.0]])
    sampler = SAMPLERS[kind](n_steps=300, step_size=0.2, grad_clip=0.5, num_adaptation_steps=150, seed=0)
    x, stats = run(sampler, target.energy, np.zeros((N_CHAINS, 2), np.float32))
    assert stats["grad_norm"] <= np.sqrt(2) * 0.5 + 1e-6
    assert_gaussian_moments(x, target.mu, target.cov, f"{kind} clamped")


def test_temperature_and_mean_reduction_scale_the_target():
    # exp(-E / T) of N(0, I) is N(0, T I); "mean" divides E by the batch size as well.
    target = Gaussian(np.zeros(8), np.eye(8))
    x0 = target.draw(N_CHAINS, seed=6) * np.float32(0.5)
    x, _ = run(MALASampler(n_steps=150, step_size=0.1, temperature=0.25, seed=0), target.energy, x0)
    assert abs(x.var(0).mean() / 0.25 - 1) < 5 * np.sqrt(2 / (N_CHAINS * 8))
    sampler = MALASampler(n_steps=150, step_size=0.1, energy_reduction="mean", seed=0)
    x, _ = run(sampler, target.energy, (x0[:16] * 8).astype(np.float32))  # variance 16 for batch 16
    assert 8 < x.var(0).mean() < 32


def test_same_seed_same_chain_and_zero_steps():
    target = gaussian(2)
    x0 = target.draw(32, seed=7)
    a = run(MALASampler(n_steps=10, seed=3), target.energy, x0)[0]
    b = run(MALASampler(n_steps=10, seed=3), target.energy, x0)[0]
    np.testing.assert_array_equal(a, b)
    sampler = MALASampler(n_steps=10, seed=3)
    x, stats = run(sampler, target.energy, x0, n_steps=0)
    np.testing.assert_array_equal(x, x0)
    assert stats["accept_rate"] == 1.0 and sampler.gradient_evaluations(0) == 0


def test_n_steps_and_step_size_are_read_by_a_traced_step():
    # The divergence guard sets `sampler.n_steps`; the compiled step must see it without a retrace.
    calls = tf.Variable(0)

    def energy(x, y=None, training=False):
        calls.assign_add(1)
        return 0.5 * tf.reduce_sum(x**2, axis=-1)

    sampler = HMCSampler(n_steps=2, num_leapfrog_steps=3, adaptation=None, seed=0)
    step = tf.function(lambda x: sampler.sample_with_stats(energy, x)[1]["step_size"])
    x = tf.zeros([4, 2])
    step(x)
    first = int(calls.numpy())
    sampler.n_steps = 5
    sampler.step_size = 0.5
    calls.assign(0)
    size = step(x)
    assert step.experimental_get_tracing_count() == 1
    # One evaluation to start, then L per transition (leapfrog reuses the start's gradient).
    assert first == sampler.gradient_evaluations(2) and int(calls.numpy()) == sampler.gradient_evaluations(5)
    np.testing.assert_allclose(size, 0.5, rtol=1e-6)


def test_frozen_changes_no_variable_and_bn_training_flag_is_passed():
    net = tiny_network((8, 8, 1), norm=True)
    seen = []

    def energy(x, y=None, training=False):
        seen.append(training)
        return -tf.reduce_logsumexp(net(x, training=training), axis=-1)

    sampler = MALASampler(n_steps=3, step_size=1e-3, energy_training=True, seed=0)
    before = [v.numpy().copy() for v in net.non_trainable_variables]
    step_before = sampler.step_size
    with sampler.frozen():
        sampler(energy, tf.zeros([4, 8, 8, 1]))
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, net.non_trainable_variables))
    assert sampler.step_size == step_before and seen and all(seen)
    sampler(energy, tf.zeros([4, 8, 8, 1]))  # unfrozen: BN moving statistics move
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, net.non_trainable_variables))


def test_validation_and_config_round_trip():
    with pytest.raises(ValueError, match="target_accept_prob"):
        MALASampler(target_accept_prob=1.5)
    with pytest.raises(ValueError, match="adaptation"):
        MALASampler(adaptation="nuts")
    with pytest.raises(ValueError, match="num_leapfrog_steps"):
        HMCSampler(num_leapfrog_steps=0)
    with pytest.raises(ValueError, match="x_clip"):
        MALASampler(x_clip=(1, -1))
    with pytest.raises(ValueError, match="n_steps"):
        MALASampler().n_steps = -1
    with pytest.raises(ValueError, match="one energy per sample"):
        MALASampler(n_steps=1)(lambda x, y, training: tf.zeros([2, 2]), tf.zeros([2, 3]))
    sampler = HMCSampler(
        n_steps=3,
        step_size=0.1,
        num_leapfrog_steps=4,
        x_clip=(-1, 1),
        grad_clip=1.0,
        temperature=0.5,
        adaptation="dual_averaging",
        seed=2,
    )
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sampler))
    assert type(clone) is HMCSampler and clone.get_config() == sampler.get_config()


# ------------------------------------------------------------------ trainers and tf.distribute
def _mala_jem(step_size=1e-3, seed=0, initializer=None):
    return tiny_jem(
        tiny_network((8, 8, 1), seed=3),
        reinit_prob=0.0,
        initializer=initializer,
        sampler=MALASampler(n_steps=2, step_size=step_size, x_clip=(-1, 1), seed=seed),
    )


def test_jem_trains_with_mala_logs_acceptance_and_saves_the_step_size(tmp_path):
    x, y = digits_arrays(64)
    model = _mala_jem()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    for name in ("mcmc_accept_rate", "mcmc_accept_min", "mcmc_step_size"):
        assert np.isfinite(history[name][-1]), history
    assert 0.0 < history["mcmc_accept_rate"][-1] <= 1.0
    # The last step's step size is the sampler's variable (its mean over the epoch is logged).
    assert history["mcmc_step_size"][-1] > 0 and model.sampler.step_size != 1e-3
    path = str(tmp_path / "jem_mala.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.sampler) is MALASampler
    np.testing.assert_allclose(loaded.sampler.step_size, model.sampler.step_size, rtol=1e-6)


def test_checkpoint_restores_the_step_size_and_the_chains_continue_alike(tmp_path):
    from helpers import run_checkpoint_roundtrip

    x, y = digits_arrays(32)
    restored = run_checkpoint_roundtrip(lambda: _mala_jem(seed=1), x, y, tmp_path)
    assert restored.sampler.step_size != 1e-3  # the adapted value came back, not the initial one


def test_two_replicas_run_each_half_as_one_device_does_and_pool_the_step_size(two_device_strategy, monkeypatch):
    target = gaussian(64)
    x0 = target.draw(32, seed=8)
    with two_device_strategy.scope():
        # Near the adapted step size, so that the chains' step sizes go up and down and the
        # replicas' means differ (from 0.1 every chain's would only grow, alike).
        sampler = MALASampler(n_steps=20, step_size=0.8, seed=5)

    @tf.function
    def step(x):
        return two_device_strategy.run(lambda x: sampler.sample_with_stats(target.energy, x), args=(x,))

    ds = two_device_strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(x0), tf.distribute.InputOptions(experimental_fetch_to_device=False)
    )
    per_replica_x, per_replica_stats = step(next(iter(ds)))
    xs = [v.numpy() for v in two_device_strategy.experimental_local_results(per_replica_x)]
    steps = [
        v.numpy() for v in two_device_strategy.experimental_local_results(per_replica_stats["step_size_per_chain"])
    ]
    pooled = np.exp(np.mean(np.log(np.concatenate(steps))))
    assert abs(np.log(np.mean(steps[0]) / np.mean(steps[1]))) > 0.01  # the pooling is visible
    for value in sampler.log_step_size.value.values:  # every replica's copy: the pooled geometric mean
        np.testing.assert_allclose(np.exp(value.numpy()), pooled, rtol=1e-5)
    # One device, replica id r: the same chains as replica r of the strategy.
    for r in (0, 1):
        single = MALASampler(n_steps=20, step_size=0.8, seed=5)
        monkeypatch.setattr(distribute, "replica_id", lambda r=r: tf.constant(r, tf.int32))
        x, stats = single.sample_with_stats(target.energy, tf.constant(x0[16 * r : 16 * (r + 1)]))
        np.testing.assert_allclose(x.numpy(), xs[r], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats["step_size_per_chain"].numpy(), steps[r], rtol=1e-5)


@pytest.mark.slow  # ~15 s on 2 busy cores
def test_jem_with_mala_one_device_and_two_replicas_agree(two_device_strategy):
    # A tiny step (noise 1e-5): the chains barely move, so one device and two replicas (whose noise
    # differs) must give the same losses, acceptance and adapted step size to float precision.
    rng = np.random.RandomState(1)
    x = rng.uniform(-1, 1, (64, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 64).astype("int32")

    def build():
        model = _mala_jem(step_size=1e-10, initializer=ConstantInitializer())
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        return model

    agree = ("loss", "px_loss", "mcmc_accept_rate", "mcmc_step_size")
    results = fit_one_device_and_two_replicas(two_device_strategy, build, x, y, agree=agree, weights=False)
    (h1, m1, _), (_, m2, _) = results
    np.testing.assert_allclose(m1.sampler.step_size, m2.sampler.step_size, rtol=1e-5)
    assert h1["mcmc_accept_rate"][-1] > 0.99  # acceptance -> 1 as the step -> 0


@pytest.mark.slow  # three trainers built and fitted: ~30 s
@pytest.mark.parametrize("kind", ["mala", "hmc"])
def test_every_sampling_trainer_trains_with_an_mcmc_sampler(kind):
    # The sampler slots into GMMC (both chain modes) and CLEL as into JEM: finite logs with the
    # acceptance and step size reported, weights moved.
    from helpers import run_trainer_smoke_test
    from keras_ebm.trainers import GMMC
    from keras_ebm.trainers.gmmc.head import build_mmc_classifier

    def sampler(x_clip=(-1.0, 1.0), **kw):
        return SAMPLERS[kind](n_steps=2, step_size=1e-3, x_clip=x_clip, seed=0, **kw)

    x, y = digits_arrays(32)
    for mode in ("staged", "noise_injected"):
        backbone = tiny_network((8, 8, 1), None, seed=3, widths=(8, 16), pool="average")
        gmmc = GMMC(
            build_mmc_classifier(backbone, num_classes=10),
            image_shape=(8, 8, 1),
            num_classes=10,
            buffer_size=20,
            mode="generative",
            sampling=mode,
            sampler=sampler(energy_reduction="mean"),
        )
        history = run_trainer_smoke_test(gmmc, x, y)
        assert 0 < history["mcmc_accept_rate"][-1] <= 1 and history["mcmc_step_size"][-1] > 0
    clel = tiny_clel(sampler=sampler(x_clip=(0.0, 1.0)))
    x3, y3 = digits_arrays(32, pixel_range=(0.0, 1.0), channels=3)
    history = run_trainer_smoke_test(clel, x3, y3)
    assert 0 < history["mcmc_accept_rate"][-1] <= 1
