"""Config rot: every gin config parses with the tiny overlay and builds; each runs train.py -> eval.py."""

import glob
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import divergence, run_config, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "gin_configs", "*.gin"))
    if os.path.basename(p) not in ("tiny.gin", "cpu_budget.gin")  # overlays, not method configs
)
OVERLAYS = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "gin_configs", "*", "*.gin")))
OVERLAYS.append("gin_configs/cpu_budget.gin")


def test_there_are_configs():
    assert "gin_configs/quickstart.gin" in TRAIN_CONFIGS
    assert "gin_configs/softmax_cifar10.gin" in TRAIN_CONFIGS


@pytest.mark.parametrize("config", TRAIN_CONFIGS)
def test_config_parses_and_builds_with_tiny_overlay(config):
    run_config.parse_gin([config, "gin_configs/tiny.gin"], [])
    objs = run_config.resolve_run_training()
    model = training.build_trainer(
        objs["trainer"],
        objs["optimizer"],
        tf.distribute.get_strategy(),
        encoder_optimizer=objs.get("encoder_optimizer"),
    )
    assert model.image_shape == (8, 8, 1)
    assert objs["train_steps"] == 4
    # The real (non-tiny) config also parses on its own.
    gin.clear_config()
    run_config.parse_gin([config], [])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_parse(overlay):
    run_config.parse_gin(["gin_configs/softmax_cifar10.gin", overlay], [])


@pytest.mark.parametrize("config", [c for c in TRAIN_CONFIGS if "clel" not in c and c != "gin_configs/quickstart.gin"])
def test_cpu_budget_overlay_shrinks_the_network_and_sets_the_clock(config):
    # Every CIFAR classifier config takes the same-time overlay: WRN-10-2, batch 64, max_minutes.
    run_config.parse_gin(
        [config, "gin_configs/data/cifar10_local.gin", "gin_configs/cpu_budget.gin"], ["BUDGET_MINUTES = 3"]
    )
    assert run_config.resolve_parameter("run_training.max_minutes") == 3
    assert gin.query_parameter("WideResNet.depth") == 10 and gin.query_parameter("WideResNet.width") == 2
    assert gin.query_parameter("%GLOBAL_BATCH_SIZE") == 64


def test_config_typo_is_a_clear_error():
    with pytest.raises(ValueError, match="Invalid gin configuration"):
        run_config.parse_gin(["gin_configs/quickstart.gin"], ["run_training.trian_steps = 3"])
    gin.clear_config()
    with pytest.raises(FileNotFoundError, match="gin config file not found"):
        run_config.parse_gin(["gin_configs/no_such_config.gin"], [])


def _run(args, timeout=300):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + "\n" + out.stderr[-5000:]
    return out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("config", TRAIN_CONFIGS)
def test_train_export_eval_end_to_end(config, tmp_path):
    model_dir = tmp_path / "run"
    _run(["train.py", f"--gin_file={config}", "--gin_file=gin_configs/tiny.gin", f"--model_dir={model_dir}"])
    assert (model_dir / "export" / "saved_model.pb").exists()
    assert (model_dir / "config.gin").exists() and (model_dir / "operative_config.gin").exists()
    _run(["eval.py", f"--model_dir={model_dir}"])
    results = json.loads((model_dir / "eval" / "results.json").read_text())
    assert set(results["ood"]) == {"photos", "interp"}
    if results["classifier"]:
        assert 0.0 <= results["accuracy"] <= 1.0 and 0.0 <= results["ece"] <= 1.0
        # grad_norm: the approximate-mass score -||d log p(x)/dx|| (JEM; GMMC Table 3 bottom).
        expected_scores = {"log_px", "max_softmax", "grad_norm"}
        pngs = ("reliability.png", "scores_log_px.png", "scores_grad_norm.png")
    else:  # CLEL: only its own score (eq. 5)
        assert results["accuracy"] is None
        expected_scores, pngs = {"clel"}, ("scores_clel.png",)
    for by_score in results["ood"].values():
        assert expected_scores <= set(by_score), sorted(by_score)
        assert all(0.0 <= v <= 1.0 for v in by_score.values())
    for png in pngs:
        assert (model_dir / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (model_dir / "eval" / "results.md").read_text().startswith("# Evaluation")


@pytest.mark.slow
def test_eval_py_draws_samples_from_a_sadajem_run(tmp_path):
    model_dir = tmp_path / "run"
    _run(
        [
            "train.py",
            "--gin_file=gin_configs/sadajem.gin",
            "--gin_file=gin_configs/tiny.gin",
            f"--model_dir={model_dir}",
        ]
    )
    assert (model_dir / "samples" / "buffer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _run(["eval.py", f"--model_dir={model_dir}", "--samples=20", "--conditional", "--sample_steps=2"])
    samples = np.load(model_dir / "eval" / "samples" / "conditional_2steps.npz")
    assert samples["images"].shape == (20, 8, 8, 1) and samples["images"].dtype == np.uint8
    np.testing.assert_array_equal(samples["labels"], np.repeat(np.arange(10), 2))
    assert (model_dir / "eval" / "samples" / "conditional_2steps.png").exists()


@pytest.mark.slow
def test_eval_py_draws_class_conditional_clel_samples(tmp_path):
    # CLEL is unsupervised: --conditional builds each class's latent from labelled in-distribution
    # images (Appendix D), then samples in batches (--sample_batch_size) as for an FID set.
    model_dir = tmp_path / "run"
    _run(
        [
            "train.py",
            "--gin_file=gin_configs/clel_large.gin",
            "--gin_file=gin_configs/tiny.gin",
            f"--model_dir={model_dir}",
        ]
    )
    _run(
        [
            "eval.py",
            f"--model_dir={model_dir}",
            "--samples=10",
            "--conditional",
            "--sample_steps=2",
            "--sample_batch_size=4",
            "--class_latent_examples=200",
        ]
    )
    samples = np.load(model_dir / "eval" / "samples" / "conditional_2steps.npz")
    assert samples["images"].shape == (10, 8, 8, 1) and samples["images"].dtype == np.uint8
    np.testing.assert_array_equal(samples["labels"], np.arange(10))
    assert (model_dir / "eval" / "samples" / "conditional_2steps.png").exists()


def test_imagenet32_overlay_resolves_its_path_macro_in_the_eval_spec():
    run_config.parse_gin(
        ["gin_configs/clel_base.gin", "gin_configs/data/imagenet32_local.gin"], ["IMAGENET32_NPZ = '/data/in32.npz'"]
    )
    assert run_config.resolve_parameter("run_eval.in_dist") == {
        "name": "npz",
        "split": "test",
        "local_path": "/data/in32.npz",
    }
    assert run_config.resolve_run_training()["train_steps"] == 100000


@pytest.mark.slow
def test_same_time_study_script_on_real_cifar10(shared_data_dir, tmp_path, monkeypatch):
    # benchmarks/cifar10_budget_study.py: each method for the same minutes on the local CIFAR-10,
    # then one table and one JSON with steps reached, accuracy, ECE and AUROCs against DTD
    # (on the stand-ins of tests/standins.py where ../shared/data is missing).
    monkeypatch.setenv("KERAS_EBM_DATA_DIR", str(shared_data_dir))
    out = tmp_path / "study.json"
    _run(
        [
            "benchmarks/cifar10_budget_study.py",
            "--methods=softmax,hdge",
            "--minutes=0.05",
            f"--output_dir={tmp_path / 'runs'}",
            f"--output={out}",
            "--gin_param=run_eval.max_examples = 128",
            "--gin_param=run_training.train_steps = 300",
        ],
        timeout=600,
    )
    study = json.loads(out.read_text())
    assert [r["method"] for r in study["rows"]] == ["softmax", "hdge"]
    for row in study["rows"]:
        assert 1 <= row["steps"] < 300  # stopped on the clock (3 s), before train_steps
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["ece"] <= 1.0
        assert set(row["auroc"]) == {"dtd", "interp", "celeba32"}
        assert {"log_px", "max_softmax", "grad_norm"} <= set(row["auroc"]["dtd"])
        summary = json.loads((tmp_path / "runs" / row["method"] / "training_summary.json").read_text())
        assert summary["stopped_by"] == "max_minutes"
    assert "| softmax |" in (tmp_path / "study.md").read_text()


GUARDED = [
    "gin_configs/jem.gin",
    "gin_configs/jempp.gin",
    "gin_configs/sadajem.gin",
    "gin_configs/sadajem_k10.gin",
    "gin_configs/sadajem_k20.gin",
    "gin_configs/sadajem_asam.gin",
    "gin_configs/sadajem_cifar100.gin",
    "gin_configs/hdge_jem.gin",
]


@pytest.mark.parametrize("config", GUARDED)
def test_sgld_classifier_configs_guard_the_onset_of_divergence(config):
    # JEM-style configs watch the energy gap and the classifier loss, not only |loss| > threshold
    # (which fires hundreds of steps after the failure began), with the official crash threshold.
    run_config.parse_gin([config], [])
    guard = run_config.resolve_parameter("run_training.divergence_guard")
    assert isinstance(guard, divergence.DivergenceGuard)
    assert guard.max_energy_gap == 10.0 and guard.clf_rise_factor == 2.0 and guard.confirm_steps == 100
    assert guard.threshold == (1e5 if "sadajem" in config else 1e8)
    assert guard.remedies == ("energy_l2", "sgld_steps", "lower_lr")
