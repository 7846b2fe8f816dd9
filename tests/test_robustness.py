"""Robustness attacks against closed forms: a linear classifier's optimal L-inf / L2 perturbations,
an input-blind classifier, projection invariants, BPDA + EOT on a non-differentiable refinement,
C&W's minimal L2 distortion."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm.data.pixel_range import to_pixel_range
from keras_ebm.evaluation import robustness as rob
from keras_ebm.evaluation.adapters import ExportLogits

SHAPE = (4, 4, 3)
RANGE = (-1.0, 1.0)


def linear_problem(n=200, seed=0):
    """Binary linear classifier d(x) = <w, x> + b, logits [-d/2, d/2], labels = its own predictions.

    The smallest perturbation flipping image i has L-inf norm |d_i| / ||w||_1 and L2 norm
    |d_i| / ||w||_2 (model units), reached by -eps * sign(w) * sign(d) and -eps * w / ||w||_2 * sign(d).
    Images sit in [64, 192] so the pixel range never binds at these epsilons.
    """
    rng = np.random.RandomState(seed)
    w = (rng.uniform(0.5, 1.5, SHAPE) * rng.choice([-1.0, 1.0], SHAPE)).astype("float32")
    images = rng.randint(64, 193, (n,) + SHAPE).astype("uint8")
    x = np.asarray(to_pixel_range(images, RANGE))
    b = np.float32(0.1)
    d = (x * w).reshape(n, -1).sum(-1) + b
    labels = (d > 0).astype("int32")
    wt = tf.constant(w)

    def logits_fn(x):
        dd = tf.reduce_sum(tf.reshape(x * wt, [tf.shape(x)[0], -1]), -1) + b
        return tf.stack([-dd / 2, dd / 2], -1)

    to255 = 255.0 / (RANGE[1] - RANGE[0])
    margins = {
        "linf": np.abs(d) / np.abs(w).sum() * to255,
        "l2": np.abs(d) / np.sqrt((w**2).sum()) * to255,
    }
    return images, labels, x, logits_fn, margins


@pytest.mark.parametrize("norm,settings", [("linf", rob.JEM_LINF), ("l2", rob.JEM_L2)])
def test_pgd_linear_reaches_closed_form_epsilon(norm, settings):
    images, labels, x, logits_fn, margins = linear_problem()
    m = margins[norm]
    epsilons = [float(np.percentile(m, q)) for q in (20, 50, 80)]
    # JEM's L-inf rule (40 steps of eps / 30) travels 1.33 eps, less than the 2 eps a coordinate
    # started at the far face of the ball needs; a step of eps / 10 reaches every corner.
    res = rob.evaluate_robustness(
        logits_fn,
        images,
        labels,
        settings,
        pixel_range=RANGE,
        batch_size=64,
        epsilons=epsilons,
        restarts=1,
        relative_step_size=0.1,
        progress=False,
    )
    assert res["clean_accuracy"] == 1.0 and res["num_examples"] == len(images)
    for eps, acc in zip(epsilons, res["robust_accuracy"]):
        predicted = np.mean(m >= eps)  # the optimal attack flips exactly the images with margin < eps
        assert acc == pytest.approx(predicted, abs=1.5 / len(images)), (norm, eps, acc, predicted)

    # Image by image, away from the boundary: broken iff the closed-form epsilon is below the attack's.
    eps = epsilons[1]
    x_adv, broken = rob.pgd_attack(
        logits_fn, x, labels, eps, norm=norm, steps=settings.steps, step_size=eps / 10, pixel_range=RANGE
    )
    clear = np.abs(m / eps - 1) > 0.02
    np.testing.assert_array_equal(broken[clear], (m < eps)[clear])
    flipped = np.argmax(np.asarray(logits_fn(tf.constant(x_adv))), -1) != labels
    np.testing.assert_array_equal(flipped[broken], True)
    # No attack can beat the optimum: nothing with margin above eps (plus float slack) is broken.
    assert not np.any(broken & (m > eps * 1.0001))


def test_pgd_too_small_epsilon_unit_error_would_fail():
    """The epsilon is in [0, 255] units: the same number read as model units would flip everything."""
    images, labels, x, logits_fn, margins = linear_problem(n=64)
    eps = float(np.median(margins["linf"]))
    _, broken = rob.pgd_attack(logits_fn, x, labels, eps, norm="linf", steps=20, step_size=eps / 5, pixel_range=RANGE)
    assert 0.3 < broken.mean() < 0.7


def test_input_blind_classifier_keeps_clean_accuracy():
    rng = np.random.RandomState(1)
    images = rng.randint(0, 256, (50,) + SHAPE).astype("uint8")
    labels = np.array([0] * 20 + [1] * 30)

    def blind(x):
        return tf.tile(tf.constant([[2.0, 0.0, -1.0]]), [tf.shape(x)[0], 1])

    res = rob.evaluate_robustness(
        blind,
        images,
        labels,
        rob.SADAJEM_FIG5_LINF,
        pixel_range=RANGE,
        batch_size=25,
        epsilons=(4, 30, 255),
        progress=False,
    )
    assert res["clean_accuracy"] == pytest.approx(0.4)
    assert res["robust_accuracy"] == pytest.approx([0.4, 0.4, 0.4])
    res2 = rob.evaluate_robustness(
        blind, images, labels, rob.JEM_L2, pixel_range=RANGE, epsilons=(500,), restarts=2, progress=False
    )
    assert res2["robust_accuracy"] == pytest.approx([0.4])


@pytest.mark.parametrize(
    "norm,eps,pixel_range",
    [("linf", 8, (-1.0, 1.0)), ("linf", 16, (0.0, 1.0)), ("l2", 100, (-1.0, 1.0)), ("l2", 300, (0.0, 1.0))],
)
def test_perturbation_stays_in_ball_and_pixel_range(norm, eps, pixel_range):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Conv2D(8, 3, activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(5),
        ]
    )
    rng = np.random.RandomState(2)
    images = rng.randint(0, 256, (16,) + SHAPE).astype("uint8")
    images[:4] = 0  # at the pixel range's edges, where the box binds
    images[4:8] = 255
    x = np.asarray(to_pixel_range(images, pixel_range))
    y = rng.randint(0, 5, 16)
    lo, hi = pixel_range
    eps_model = eps / 255 * (hi - lo)
    x_adv, _ = rob.pgd_attack(
        model,
        x,
        y,
        eps,
        norm=norm,
        steps=10,
        step_size=eps / 2,
        pixel_range=pixel_range,
        clean_correct=np.ones(16, bool),
    )
    delta = (x_adv - x).reshape(16, -1)
    assert x_adv.min() >= lo and x_adv.max() <= hi
    if norm == "linf":
        assert np.abs(delta).max() <= eps_model + 1e-6
    else:
        assert np.linalg.norm(delta, axis=1).max() <= eps_model * (1 + 1e-5)

    # A classifier whose decision cannot change but whose loss has a gradient: the attack runs all
    # its steps and ends on the ball's boundary, which checks the /255 units of epsilon.
    w = tf.constant(np.random.RandomState(3).choice([-1.0, 1.0], SHAPE).astype("float32"))

    def unbreakable(x):
        s = 0.01 * tf.reduce_sum(tf.reshape(x * w, [tf.shape(x)[0], -1]), -1)
        return tf.stack([15.0 + s, -s], -1)

    interior = np.asarray(to_pixel_range(rng.randint(100, 156, (4,) + SHAPE).astype("uint8"), pixel_range))
    x_adv, broken = rob.pgd_attack(
        unbreakable, interior, np.zeros(4), eps, norm=norm, steps=5, step_size=eps / 2, pixel_range=pixel_range
    )
    assert not broken.any()
    delta = (x_adv - interior).reshape(4, -1)
    if norm == "linf":
        np.testing.assert_allclose(np.abs(delta), eps_model, rtol=1e-4)
    else:
        np.testing.assert_allclose(np.linalg.norm(delta, axis=1), eps_model, rtol=1e-4)


def bpda_problem():
    """Images breakable at eps by the optimal attack (margin <= eps / 1.2) but far beyond the reach
    of the random start alone (margin >= eps / 2.4, five standard deviations of its logit change)."""
    images, labels, x, logits_fn, margins = linear_problem(n=80, seed=3)
    m = margins["linf"]
    keep = m >= np.median(m)
    eps = float(m.max() * 1.2)
    return images[keep], labels[keep], x[keep], logits_fn, eps


def test_bpda_breaks_a_non_differentiable_refinement_that_defeats_plain_pgd():
    images, labels, x, logits_fn, eps = bpda_problem()
    # SGLD on the classifier's own energy; SGLDSampler stops the gradient at its output.
    refine = rob.sgld_refinement(logits_fn, n_steps=2, step_size=1e-3, noise_std=1e-3, x_clip=RANGE, seed=0)
    plain = rob.RefinementDefense(logits_fn, refine, gradient_mode="through", eot_reps=2, defense_reps=4)
    bpda = rob.RefinementDefense(logits_fn, refine, gradient_mode="bpda", eot_reps=2, defense_reps=4)
    settings = rob.SADAJEM_FIG5_LINF
    res_plain = rob.evaluate_robustness(
        plain, images, labels, settings, pixel_range=RANGE, epsilons=(eps,), steps=10, step_size=eps / 4, progress=False
    )
    res_bpda = rob.evaluate_robustness(
        bpda, images, labels, settings, pixel_range=RANGE, epsilons=(eps,), steps=10, step_size=eps / 4, progress=False
    )
    assert res_plain["clean_accuracy"] == 1.0 and res_bpda["clean_accuracy"] == 1.0
    assert res_plain["robust_accuracy"] == [1.0]  # zero gradient: the random start alone breaks nothing
    assert res_bpda["robust_accuracy"] == [0.0]
    assert res_bpda["attack"] == "bpda_eot" and res_bpda["eot_reps"] == 2


def test_bpda_with_a_quantising_refinement():
    images, labels, x, logits_fn, eps = bpda_problem()

    def quantise(x):  # tf.round has no gradient
        return tf.round(x * 127.5) / 127.5

    plain = rob.RefinementDefense(logits_fn, quantise, gradient_mode="through", eot_reps=1, defense_reps=1)
    bpda = rob.RefinementDefense(logits_fn, quantise, gradient_mode="bpda", eot_reps=1, defense_reps=1)
    _, broken_plain = rob.pgd_attack(plain, x, labels, eps, steps=10, step_size=eps / 4, pixel_range=RANGE)
    _, broken_bpda = rob.pgd_attack(bpda, x, labels, eps, steps=10, step_size=eps / 4, pixel_range=RANGE)
    assert not broken_plain.any()
    assert broken_bpda.mean() > 0.9


def test_eot_averages_the_stated_number_of_refinements():
    n, reps, defense_reps = 6, 5, 7
    _, labels, x, logits_fn, _ = linear_problem(n=n, seed=4)
    seen = tf.Variable(0)
    offset = 0.01

    def refine(xt):  # copy r of every image is shifted by r * offset (rows r * n + i)
        seen.assign_add(tf.shape(xt)[0])
        r = tf.cast(tf.range(tf.shape(xt)[0]) // n, tf.float32)
        return xt + offset * tf.reshape(r, [-1, 1, 1, 1])

    defense = rob.RefinementDefense(
        logits_fn, refine, gradient_mode="bpda", eot_reps=reps, defense_reps=defense_reps, chunk_size=2 * n
    )
    grad, logits = defense.gradient(tf.constant(x), tf.constant(labels))
    assert int(seen.numpy()) == reps * n
    d0 = np.asarray(logits_fn(tf.constant(x)))[:, 1] * 2
    w_sum = float(np.asarray(logits_fn(tf.ones((1,) + SHAPE)))[0, 1] * 2 - 0.1)  # <w, 1>
    expected = d0 + offset * np.mean(np.arange(reps)) * w_sum
    np.testing.assert_allclose(np.asarray(logits)[:, 1] * 2, expected, rtol=1e-4, atol=1e-4)
    # BPDA: identity backward through the refinement, so the gradient is that of the averaged logits.
    assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).max() > 0

    seen.assign(0)
    defense.logits(tf.constant(x))  # chunks of 2 copies: 7 copies in 4 calls
    assert int(seen.numpy()) == defense_reps * n


def test_export_is_refused_with_a_clear_message():
    class FakeExport(tf.Module):
        def __init__(self):
            super().__init__()
            self.pixel_range = tf.Variable([-1.0, 1.0])
            self.signatures = {
                "logits": lambda images: {"logits": tf.one_hot(tf.cast(images[:, 0, 0, 0] > 127, tf.int32), 2)}
            }

    fake = FakeExport()
    images = np.full((2,) + SHAPE, 200, np.uint8)
    x = np.asarray(to_pixel_range(images, RANGE))
    with pytest.raises(ValueError, match="uint8 images, which have no gradient"):
        rob.pgd_attack(fake, x, [1, 1], 8, pixel_range=RANGE)
    with pytest.raises(ValueError, match="in-memory model"):
        rob.WhiteBox(ExportLogits(fake))
    np.testing.assert_array_equal(np.argmax(ExportLogits(fake)(x), -1), [1, 1])  # quantised forward works


def test_results_json_and_curve(tmp_path):
    images, labels, _, logits_fn, margins = linear_problem(n=20)
    res = rob.evaluate_robustness(
        logits_fn,
        images,
        labels,
        rob.GMMC_TABLE5,
        pixel_range=RANGE,
        max_examples=10,
        steps=5,
        output_dir=str(tmp_path),
        name="lin",
        progress=False,
    )
    on_disk = json.loads((tmp_path / "robustness_lin.json").read_text())
    assert on_disk["num_examples"] == 10 and on_disk["epsilons"] == [1.0, 2.0, 4.0, 8.0]
    assert on_disk["step_sizes"] == pytest.approx([e / 30 for e in (1, 2, 4, 8)])
    assert os.path.getsize(tmp_path / "robustness_lin.png") > 1000
    l2 = dict(res, norm="l2", name="lin_l2")
    rob.robustness_curve([res, l2], str(tmp_path / "both.png"))


def test_cw_l2_finds_the_minimal_linear_distortion():
    images, labels, x, logits_fn, margins = linear_problem(n=12, seed=5)
    x_adv, success, l2 = rob.carlini_wagner_l2(
        logits_fn, x, labels, RANGE, steps=100, binary_search_steps=8, learning_rate=0.01, initial_const=1.0
    )
    assert success.all()
    optimum = margins["l2"] / 255.0  # [0, 1] pixel units
    ratio = l2 / optimum
    # Never below the optimum; at it up to Adam's resolution (steps of lr = 0.01 in tanh space are
    # coarse for the one image whose optimum is 0.003).
    assert ratio.min() >= 0.999 and np.median(ratio) < 1.002 and ratio.max() < 1.2, ratio
    np.testing.assert_allclose(np.linalg.norm((x_adv - x).reshape(12, -1), axis=1) / 2, l2, rtol=1e-4)
    flipped = np.argmax(np.asarray(logits_fn(tf.constant(x_adv))), -1) != labels
    assert flipped.all()

    res = rob.evaluate_cw(
        logits_fn,
        images,
        labels,
        targeted=True,
        steps=50,
        pixel_range=RANGE,
        binary_search_steps=4,
        initial_const=1.0,
        progress=False,
    )
    assert res["success_rate"] == 1.0 and res["num_attacked"] == 12 and res["steps"] == 50
    assert res["median_l2"] >= np.median(optimum) * 0.999  # binary targets: targeted == untargeted


# ---------------------------------------------------------------- random start, restarts, confirmation
def _pixel_threshold_classifier(threshold):
    """Two classes; class 1 wins iff the first pixel exceeds `threshold` (label 0 everywhere)."""

    def fn(x):
        d = 1000.0 * (x[:, 0, 0, 0] - threshold)
        return tf.stack([-d, d], -1)

    return fn


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_random_start_moves_inside_the_ball_with_zero_steps(norm):
    # steps = 0: the result is the random start itself (a classifier that is never fooled), which
    # must lie inside the ball and the pixel range, and not at x.
    x = np.zeros((20,) + SHAPE, np.float32)
    y = np.zeros(20, np.int32)
    eps = 8.0
    x_adv, broken = rob.pgd_attack(
        _pixel_threshold_classifier(10.0), x, y, eps, norm=norm, steps=0, pixel_range=RANGE, random_start=True, seed=3
    )
    assert not broken.any()
    delta = (x_adv - x).reshape(20, -1)
    radius = eps * 2.0 / 255.0
    size = np.abs(delta).max(-1) if norm == "linf" else np.linalg.norm(delta, axis=-1)
    assert np.all(size <= radius + 1e-6) and np.all(size > 0)
    if norm == "linf":
        assert np.abs(delta).max() > 0.9 * radius  # uniform in the ball, not a tiny jitter
    same, _ = rob.pgd_attack(
        _pixel_threshold_classifier(10.0), x, y, eps, norm=norm, steps=0, pixel_range=RANGE, random_start=False
    )
    np.testing.assert_array_equal(same, x)


def test_pgd_more_restarts_break_more():
    # With no steps only the random starts can fool the classifier: the first pixel must land
    # above 0.4 eps, which a uniform L-inf start does 30% of the time. Each restart is a new start
    # for the images still unbroken, so 1 - 0.7^k of them break after k restarts.
    n, eps = 200, 8.0
    radius = eps * 2.0 / 255.0
    x = np.zeros((n,) + SHAPE, np.float32)
    y = np.zeros(n, np.int32)
    fn = _pixel_threshold_classifier(0.4 * radius)
    rates = []
    for restarts in (1, 5):
        _, broken = rob.pgd_attack(fn, x, y, eps, steps=0, pixel_range=RANGE, restarts=restarts, seed=1)
        rates.append(broken.mean())
    assert abs(rates[0] - 0.3) < 0.1 and abs(rates[1] - (1 - 0.7**5)) < 0.1, rates


class _FlakyDefense:
    """A stochastic target whose attack-time (EOT) logits always say "fooled" but whose defended
    prediction (`logits`, the one that judges a break) stays correct."""

    stochastic = True

    def __init__(self):
        self.confirmations = 0

    def logits(self, x):
        self.confirmations += 1
        return tf.tile(tf.constant([[5.0, 0.0]]), [tf.shape(x)[0], 1])

    def gradient(self, x, y):
        return tf.zeros_like(x), tf.tile(tf.constant([[0.0, 5.0]]), [tf.shape(x)[0], 1])


def test_a_stochastic_defense_break_counts_only_when_the_defended_prediction_confirms_it():
    x = np.zeros((6,) + SHAPE, np.float32)
    y = np.zeros(6, np.int32)
    target = _FlakyDefense()
    x_adv, broken = rob.pgd_attack(target, x, y, 8.0, steps=3, pixel_range=RANGE, clean_correct=np.ones(6, bool))
    assert not broken.any()
    assert target.confirmations == 4  # one confirmation per step that proposed a break
