"""eval.py end to end: exact accuracy / ECE / AUROC of a fixed model against values computed by hand,
the robustness / generative / sample-quality entries of results.json, and the compare report."""

import json

import keras
import numpy as np
import pytest
from scipy import special

from helpers import run_briefly
from keras_ebm.evaluation import report, runner, suite
from keras_ebm.evaluation.generative import ClassifierFeatures
from keras_ebm.export import export_model
from test_configs import _run
from test_evaluation import digits_uint8, noise_uint8
from test_experiment import data_fn

SHAPE = (4, 4, 1)
RANGE = (-1.0, 1.0)
PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- exact values
def fixed_problem(seed=3):
    """A linear 3-class model with fixed weights, 80 test images, 50 OOD images, and the logits
    computed here in float64 (the export runs the same map in float32)."""
    rng = np.random.RandomState(seed)
    w = rng.normal(0, 0.6, (16, 3))
    b = np.array([0.2, -0.1, 0.0])
    x_in = rng.randint(0, 256, (80,) + SHAPE).astype("uint8")
    x_out = np.clip(rng.normal(200, 30, (50,) + SHAPE), 0, 255).astype("uint8")  # brighter images

    def logits(images):
        x = images.reshape(len(images), -1).astype(np.float64) / 255.0 * (RANGE[1] - RANGE[0]) + RANGE[0]
        return x @ w + b

    logits_in = logits(x_in)
    # Labels: the model's prediction for 60% of the images, another class for the rest.
    y = np.argmax(logits_in, -1)
    flip = rng.rand(len(y)) < 0.4
    y[flip] = (y[flip] + rng.randint(1, 3, flip.sum())) % 3
    return w, b, x_in, y.astype("int64"), x_out, logits_in, logits(x_out)


def hand_ece(probs, labels, num_bins):
    conf = probs.max(-1)
    correct = probs.argmax(-1) == labels
    ece = 0.0
    for k in range(num_bins):
        lo, hi = k / num_bins, (k + 1) / num_bins
        member = (conf > lo) & (conf <= hi) if k else (conf <= hi)
        if member.any():
            ece += member.mean() * abs(correct[member].mean() - conf[member].mean())
    return ece


def hand_auroc(scores_in, scores_out):
    """P(score_in > score_out) + 0.5 P(tie) over every pair (Mann-Whitney)."""
    diff = scores_in[:, None] - scores_out[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


@pytest.fixture(scope="module")
def fixed_export(tmp_path_factory):
    w, b, x_in, y, x_out, logits_in, logits_out = fixed_problem()
    root = tmp_path_factory.mktemp("fixed")
    inputs = keras.Input(SHAPE)
    dense = keras.layers.Dense(3)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([w.astype("float32"), b.astype("float32")])
    export_model(model, str(root / "export"), SHAPE, pixel_range=RANGE)
    np.savez(root / "test.npz", x=x_in, y=y)
    np.savez(root / "ood.npz", x=x_out)
    probs = special.softmax(logits_in, -1)
    conf = probs.max(-1)
    # The hand values are exact only away from ties: no confidence within 1e-5 of a bin edge (20 or
    # 10 bins), no near-tie of the top two logits, no near-tie between in- and out-scores.
    for bins in (20, 10):
        assert np.min(np.abs(conf * bins - np.round(conf * bins))) > 1e-4
    top2 = np.sort(logits_in, -1)[:, -2:]
    assert np.min(top2[:, 1] - top2[:, 0]) > 1e-4
    expected = {
        "accuracy": float(np.mean(probs.argmax(-1) == y)),
        "ece": hand_ece(probs, y, 20),
        "ece10": hand_ece(probs, y, 10),
        "log_px": hand_auroc(special.logsumexp(logits_in, -1), special.logsumexp(logits_out, -1)),
        "max_softmax": hand_auroc(conf, special.softmax(logits_out, -1).max(-1)),
    }
    for s_in, s_out in (
        (special.logsumexp(logits_in, -1), special.logsumexp(logits_out, -1)),
        (conf, special.softmax(logits_out, -1).max(-1)),
    ):
        assert np.min(np.abs(s_in[:, None] - s_out[None, :])) > 1e-5
    return root, expected


def _check_exact(results, expected):
    assert results["num_examples"] == 80 and results["num_ood_examples"] == {"ood": 50}
    assert results["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert results["ece"] == pytest.approx(expected["ece"], abs=1e-6)
    # Ten bins give another number: a run_eval that binned differently would fail here.
    assert abs(expected["ece10"] - expected["ece"]) > 100 * 1e-6
    for score in ("log_px", "max_softmax"):
        assert results["ood"]["ood"][score] == pytest.approx(expected[score], abs=1e-6), score


def test_run_eval_matches_hand_computed_accuracy_ece_auroc(fixed_export, tmp_path):
    root, expected = fixed_export
    results = runner.run_eval(
        saved_model=str(root / "export"),
        output_dir=str(tmp_path),
        in_dist={"name": "npz", "split": "test", "local_path": str(root / "test.npz")},
        ood_sets={"ood": {"name": "npz", "split": "test", "local_path": str(root / "ood.npz")}},
    )
    _check_exact(results, expected)
    assert 0.3 < expected["accuracy"] < 0.9 and expected["ece"] > 0.01  # a non-trivial case
    for png in ("reliability.png", "scores_log_px.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG


def test_eval_py_matches_hand_computed_values(fixed_export, tmp_path):
    root, expected = fixed_export
    spec = lambda f: f"{{'name': 'npz', 'split': 'test', 'local_path': '{root / f}'}}"  # noqa: E731
    _run(
        [
            "eval.py",
            f"--saved_model={root / 'export'}",
            f"--output_dir={tmp_path}",
            f"--gin_param=run_eval.in_dist = {spec('test.npz')}",
            f"--gin_param=run_eval.ood_sets = {{'ood': {spec('ood.npz')}}}",
        ]
    )
    _check_exact(json.loads((tmp_path / "results.json").read_text()), expected)


# ---------------------------------------------------------------------------------- settings
def test_pgd_settings_presets_overrides_and_custom_attack():
    s = suite.pgd_settings(["sadajem_fig5_linf"], "pgd_l2", epsilons=["1", "2"], steps=5)
    assert list(s) == ["sadajem_fig5_linf", "pgd_l2"]
    assert s["sadajem_fig5_linf"].epsilons == (1.0, 2.0) and s["sadajem_fig5_linf"].steps == 5
    assert s["sadajem_fig5_linf"].step_for(2.0) == 2.0  # the preset's absolute step survives
    assert s["pgd_l2"].norm == "l2" and s["pgd_l2"].step_for(2.0) == pytest.approx(2.5 * 2.0 / 5)
    with pytest.raises(ValueError, match="Unknown robustness preset"):
        suite.pgd_settings(["nope"])
    with pytest.raises(ValueError, match="needs `epsilons`"):
        suite.pgd_settings(attack="pgd_linf")


# ---------------------------------------------------------------------------------- compare report
def trainer_fn():
    from keras_ebm.backbones import TinyCNN, build_classifier
    from keras_ebm.trainers import SoftmaxClassifier

    network = build_classifier(TinyCNN((8, 16), input_shape=(8, 8, 1)), num_classes=10, input_shape=(8, 8, 1))
    return SoftmaxClassifier(network, image_shape=(8, 8, 1), num_classes=10)


def _tiny_run(root, name, steps):
    model_dir = root / name
    keras.utils.set_random_seed(steps)
    model = run_briefly(model_dir, trainer_fn, lambda: keras.optimizers.Adam(0.01), data_fn, steps, steps, export=True)
    return model_dir, model


def _digits_eval(model_dir):
    """`run_eval` of the run in `model_dir`: digits in distribution, noise images as OOD."""
    return runner.run_eval(
        model_dir=str(model_dir),
        in_dist=digits_uint8,
        in_dist_name="digits",
        ood_sets={"noise": noise_uint8},
        max_examples=100,
    )


def _full_eval(model_dir, model, feature_net, samples):
    out = str(model_dir / "eval")
    _digits_eval(model_dir)
    x, y = digits_uint8()
    settings = suite.pgd_settings(["sadajem_fig5_linf"], epsilons=[4, 16], steps=3)
    runner.merge_results(
        out,
        "robustness",
        suite.run_robustness(model, x, y, settings, batch_size=50, max_examples=60, output_dir=out, progress=False),
    )
    if samples is not None:
        runner.merge_results(
            out,
            "generative",
            suite.run_generative(
                {"fresh": samples[0]},
                [feature_net],
                digits_uint8,
                reference_split="test",
                output_dir=out,
                progress=False,
            ),
        )
        runner.merge_results(
            out,
            "sample_quality",
            suite.run_sample_quality(
                {"fresh": samples}, feature_net.classifier, ranking_model=model, output_dir=out, progress=False
            ),
        )
        runner.merge_results(
            out, "likelihood", suite.run_ais(model, x, num_chains=4, num_temperatures=5, max_examples=20)
        )


def test_compare_report_of_two_tiny_runs_has_every_column_and_plot(tmp_path):
    dir_a, model_a = _tiny_run(tmp_path, "softmax_a", 30)
    dir_b, model_b = _tiny_run(tmp_path, "model_b", 10)
    feature_net = ClassifierFeatures(model_a, "softmax_a")
    feature_net.classifier = model_a  # the reference classifier of the sample-quality check
    x, _ = digits_uint8()
    rng = np.random.RandomState(0)
    noisy = np.clip(x[:60].astype(int) + rng.randint(-40, 41, x[:60].shape), 0, 255).astype("uint8")
    _full_eval(dir_a, model_a, feature_net, None)  # a classifier without samples: "-" in those columns
    _full_eval(dir_b, model_b, feature_net, (noisy, np.repeat(np.arange(10), 6)))

    results_b = json.loads((dir_b / "eval" / "results.json").read_text())
    assert set(runner.EXTRA_KEYS) <= set(results_b)
    assert results_b["robustness"]["sadajem_fig5_linf"]["num_examples"] == 60
    assert results_b["generative"]["fresh/classifier_softmax_a"]["num_samples"] == 60
    assert results_b["sample_quality"]["fresh"]["num_samples"] == 60
    # run_eval again keeps what eval.py's other evaluations merged in.
    _digits_eval(dir_b)
    assert set(runner.EXTRA_KEYS) <= set(json.loads((dir_b / "eval" / "results.json").read_text()))
    assert "Robust accuracy" in (dir_b / "eval" / "results.md").read_text()

    out = tmp_path / "report"
    rep = report.compare_runs([str(dir_a), str(dir_b)], str(out))
    columns = (
        ["accuracy", "ECE"]
        + [f"AUROC noise [{s}]" for s in ("grad_norm", "log_px", "max_softmax")]
        + [
            "sadajem_fig5_linf clean",
            "sadajem_fig5_linf eps 4",
            "sadajem_fig5_linf eps 16",
            "classifier_fd [fresh]",
            "classifier_score [fresh]",
            "classifier_kd [fresh]",
            "sample accuracy [fresh]",
        ]
        + [f"{c} [ais_mala_uniform]" for c in ("log Z", "log Z s.e.", "test LL nats", "bits/dim")]
    )
    assert rep["columns"] == columns
    assert list(rep["rows"]) == ["softmax_a", "model_b"]
    assert rep["rows"]["softmax_a"]["classifier_fd [fresh]"] is None
    assert rep["rows"]["model_b"]["classifier_fd [fresh]"] == pytest.approx(
        results_b["generative"]["fresh/classifier_softmax_a"]["classifier_fd"]
    )
    assert (
        rep["rows"]["model_b"]["sadajem_fig5_linf eps 16"]
        == results_b["robustness"]["sadajem_fig5_linf"]["robust_accuracy"][1]
    )
    for name in rep["rows"]:
        assert rep["rows"][name]["accuracy"] is not None and rep["rows"][name]["sadajem_fig5_linf eps 4"] is not None
    assert rep["counts"]["model_b"]["test images (accuracy, ECE, OOD in-distribution)"] == 100
    assert rep["counts"]["model_b"]["sadajem_fig5_linf images"] == 60
    assert rep["counts"]["model_b"]["fresh samples"] == 60
    assert rep["counts"]["model_b"]["ais_mala_uniform test images (AIS chains: 4)"] == 20
    assert rep["rows"]["softmax_a"]["bits/dim [ais_mala_uniform]"] is None
    md = (out / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model | run folder | accuracy"))
    assert header == "| model | run folder | " + " | ".join(columns) + " |"
    assert (
        f"| softmax_a | {report.run_folder(str(dir_a / 'eval'))} |" in md
        and "Images behind each number" in md
        and "not FID" in md
    )
    plots = set(rep["plots"])
    assert {
        "report_robustness.png",
        "report_reliability.png",
        "report_scores_log_px.png",
        "report_robustness_sadajem_fig5_linf.png",
        "report_fresh_confusion.png",
    } <= plots, plots
    for png in plots:
        assert (out / png).read_bytes()[:8] == PNG
        assert f"]({png})" in md
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["columns"] == columns and set(on_disk["runs"]) == {"softmax_a", "model_b"}


def test_compare_needs_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.py --model_dir"):
        report.compare_runs([str(tmp_path)], str(tmp_path / "out"))


# ---------------------------------------------------------------------------------- eval.py, every flag
@pytest.mark.slow
def test_eval_py_robustness_generative_sample_quality_and_compare(tmp_path):
    softmax, sadajem = tmp_path / "softmax", tmp_path / "sadajem"
    for config, model_dir in (("softmax_cifar10", softmax), ("sadajem", sadajem)):
        _run(
            [
                "train.py",
                f"--gin_file=gin_configs/{config}.gin",
                "--gin_file=gin_configs/tiny.gin",
                f"--model_dir={model_dir}",
            ]
        )
    common = ["--robustness=sadajem_fig5_linf", "--epsilons=2,8", "--attack_steps=2", "--eval_examples=40"]
    log = _run(["eval.py", f"--model_dir={softmax}"] + common)
    assert "robust accuracy" in log
    _run(
        [
            "eval.py",
            f"--model_dir={sadajem}",
            "--samples=20",
            "--sample_from_buffer",
            "--generative",
            f"--feature_classifier={softmax}",
            "--inception_weights=none",
            "--sample_quality",
            f"--reference_classifier={softmax}",
        ]
        + common
    )
    results = json.loads((sadajem / "eval" / "results.json").read_text())
    assert results["num_examples"] == 40 and results["robustness"]["sadajem_fig5_linf"]["num_examples"] == 40
    ((key, gen),) = results["generative"].items()
    assert key.startswith("buffer/classifier_softmax_step") and gen["num_samples"] == 20
    assert "fid" not in gen and np.isfinite(gen["classifier_fd"])
    assert results["sample_quality"]["buffer"]["num_samples"] == 20
    # Attacks without the standard evaluation keep results.json's other entries.
    _run(
        [
            "eval.py",
            f"--model_dir={sadajem}",
            "--nostandard",
            "--attack=pgd_l2",
            "--epsilons=50",
            "--attack_steps=2",
            "--eval_examples=20",
        ]
    )
    results = json.loads((sadajem / "eval" / "results.json").read_text())
    assert {"sadajem_fig5_linf", "pgd_l2"} <= set(results["robustness"]) and "generative" in results
    # Rows named explicitly (the default names are "<trainer> (<config>)", tested elsewhere).
    _run(
        [
            "eval.py",
            "--compare",
            str(softmax),
            str(sadajem),
            "--compare_names=softmax,sadajem",
            f"--output_dir={tmp_path / 'report'}",
        ]
    )
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    assert rep["rows"]["softmax"]["classifier_fd [buffer]"] is None
    assert rep["rows"]["sadajem"]["classifier_fd [buffer]"] == pytest.approx(gen["classifier_fd"])
    assert rep["rows"]["sadajem"]["pgd_l2 eps 50"] is not None and rep["rows"]["softmax"]["pgd_l2 eps 50"] is None
    assert (tmp_path / "report" / "report_robustness.png").exists()
