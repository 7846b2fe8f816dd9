"""AIS log Z (keras_ebm.evaluation.ais) against closed forms, and the test log-likelihood."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm.evaluation import ais
from keras_ebm.sampling import HMCSampler, MALASampler, SGLDSampler

DIM = 64
VAR = np.linspace(0.5, 2.0, DIM).astype(np.float32)
MU = np.linspace(-1.0, 1.0, DIM).astype(np.float32)
# log Z of exp(-0.5 (x - mu)^T diag(1/var) (x - mu)): (d/2) log 2 pi + 0.5 sum log var.
TRUE_LOG_Z = 0.5 * DIM * math.log(2 * math.pi) + 0.5 * float(np.sum(np.log(VAR)))


def gaussian_energy(x):
    return 0.5 * tf.reduce_sum((x - MU) ** 2 / VAR, axis=-1)


BASE = ais.GaussianBase(np.zeros(DIM), np.full(DIM, 1.5))  # deliberately unlike the target


def test_log_z_of_a_64d_gaussian_within_0p1_nats():
    r = ais.ais_log_partition(
        gaussian_energy, BASE, (DIM,), num_chains=256, num_temperatures=1000, sampler=MALASampler(step_size=0.5), seed=0
    )
    assert abs(r["log_z"] - TRUE_LOG_Z) < 0.1, (r["log_z"], TRUE_LOG_Z, r["log_z_stderr"])
    assert 0 < r["log_z_stderr"] < 0.1 and r["ess"] > 50
    assert abs(r["mean_accept_rate"] - 0.574) < 0.1  # the pilot's step sizes hit the target
    assert len(r["step_sizes"]) == 1000 and "lower bound" in r["variance_note"]


def test_estimate_improves_as_temperatures_increase():
    # E[log w] <= log Z (Jensen): the gap (the bias of one chain's estimate) shrinks with K, and so
    # does the error of log-mean-exp.
    gaps, errors = [], []
    for k in (10, 100, 400):
        r = ais.ais_log_partition(
            gaussian_energy,
            BASE,
            (DIM,),
            num_chains=128,
            num_temperatures=k,
            sampler=MALASampler(step_size=0.5),
            seed=1,
        )
        gaps.append(TRUE_LOG_Z - np.mean(r["log_weights"]))
        errors.append(abs(r["log_z"] - TRUE_LOG_Z))
    assert gaps[0] > gaps[1] > gaps[2] > 0, gaps
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.3


def test_hmc_transitions_and_a_uniform_base_on_a_box():
    # exp(-E) on the box [-1, 1]^8 with E = 0.5 |x|^2 / 0.25: Z = prod of truncated Gaussian masses.
    d, var = 8, 0.25
    true = d * (0.5 * math.log(2 * math.pi * var) + math.log(math.erf(1 / math.sqrt(2 * var))))
    energy = lambda x: 0.5 * tf.reduce_sum(x**2, axis=-1) / var  # noqa: E731
    r = ais.ais_log_partition(
        energy,
        ais.UniformBase((-1.0, 1.0)),
        (d,),
        num_chains=128,
        num_temperatures=200,
        sampler=HMCSampler(step_size=0.2, num_leapfrog_steps=3),
        seed=2,
    )
    assert abs(r["log_z"] - true) < max(0.1, 4 * r["log_z_stderr"]), (r["log_z"], true)
    assert r["gradient_evaluations"] == 200 * (1 + 3)


def test_truncated_gaussian_base_is_normalised_on_its_box():
    base = ais.GaussianBase(np.zeros(2), np.ones(2), box=(-1, 1))
    g = np.linspace(-1, 1, 401)
    xx = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2).astype(np.float32)
    mass = np.exp(base.log_prob(tf.constant(xx)).numpy()).sum() * (g[1] - g[0]) ** 2
    assert abs(mass - 1) < 0.01
    x = base.sample((1000, 2), tf.constant([0, 1], tf.int64)).numpy()
    assert x.min() >= -1 and x.max() <= 1


def test_log_likelihood_in_nats_and_bits_per_dim():
    # A model that is uniform on [-1, 1]^d: log p = -d log 2, i.e. on the 0..256 scale exactly
    # 8 bits per dimension (-log2 (1/256)).
    d = 12
    energy = lambda x: tf.zeros(tf.shape(x)[:1])  # noqa: E731
    images = np.random.RandomState(0).randint(0, 256, (50, 2, 2, 3)).astype(np.uint8)
    r = ais.test_log_likelihood(energy, images, log_z=d * math.log(2.0), box=(-1.0, 1.0))
    np.testing.assert_allclose(r["log_likelihood"], -d * math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(r["bits_per_dim"], 8.0, rtol=1e-6)
    assert r["dequantized"] and r["num_examples"] == 50
    # A Gaussian model: log p(x) = log N(x; mu, var) for dequantised images.
    x = np.random.RandomState(1).randint(0, 256, (20, DIM)).astype(np.uint8)
    r = ais.test_log_likelihood(gaussian_energy, x, log_z=TRUE_LOG_Z, dequantize=False)
    xf = -1 + x.astype(np.float64) * 2 / 255
    expected = np.mean(-0.5 * np.sum((xf - MU) ** 2 / VAR + np.log(2 * np.pi * VAR), axis=-1))
    np.testing.assert_allclose(r["log_likelihood"], expected, rtol=1e-5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="MALASampler or HMCSampler"):
        ais.ais_log_partition(gaussian_energy, BASE, (DIM,), sampler=SGLDSampler())
    with pytest.raises(ValueError, match="num_temperatures"):
        ais.annealing_schedule(0)
    with pytest.raises(ValueError, match="schedule"):
        ais.annealing_schedule(10, "cosine")
    betas = ais.annealing_schedule(50)
    assert betas[0] == 0 and betas[-1] == 1 and np.all(np.diff(betas) > 0)


def test_eval_suite_runs_ais_on_a_trainer_and_the_report_shows_it(tmp_path):
    import json

    from helpers import tiny_network
    from keras_ebm.evaluation import report, runner, suite
    from keras_ebm.trainers.jem import JEM

    model = JEM(tiny_network((8, 8, 1), seed=3), image_shape=(8, 8, 1), num_classes=10, buffer_size=16, seed=0)
    images = np.random.RandomState(0).randint(0, 256, (16, 8, 8, 1)).astype(np.uint8)
    entries = suite.run_ais(
        model, images, num_chains=8, num_temperatures=20, sampler="hmc", base="gaussian", dequantize=False
    )
    ((name, r),) = entries.items()
    assert name == "ais_hmc_gaussian" and r["num_chains"] == 8 and r["num_examples"] == 16
    x = -1 + images.astype(np.float32) * 2 / 255
    energies = model.energy(tf.constant(x)).numpy()
    np.testing.assert_allclose(r["log_likelihood"], np.mean(-energies) - r["log_z"], rtol=1e-5)
    np.testing.assert_allclose(
        r["bits_per_dim"], -(r["log_likelihood"] + 64 * math.log(2 / 256)) / (64 * math.log(2)), rtol=1e-6
    )
    out = tmp_path / "run" / "eval"
    runner.merge_results(str(out), "likelihood", entries)
    saved = json.loads((out / "results.json").read_text())["likelihood"][name]
    assert saved["log_z"] == r["log_z"] and "AIS ais_hmc_gaussian: log Z" in (out / "results.md").read_text()
    rep = report.compare_runs([str(tmp_path / "run")], str(tmp_path / "report"))
    assert rep["rows"]["run"][f"bits/dim [{name}]"] == r["bits_per_dim"]
    with pytest.raises(ValueError, match="sampler"):
        suite.run_ais(model, images, sampler="sgld")
