"""run_eval in the default suite: a tiny trained export scored on real digits against an OOD set."""

import json
import os

import keras
import numpy as np
import pytest

from helpers import run_briefly
from keras_ebm.evaluation.runner import run_eval
from test_experiment import data_fn, trainer_fn


def digits_uint8():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images[:, :, :, None] * (255.0 / 16.0)).astype("uint8")
    return x[-200:], d.target[-200:].astype("int32")  # the trainer saw only the first 256


def noise_uint8():
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, (100, 8, 8, 1)).astype("uint8"), np.zeros(100, "int32")


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    run_briefly(model_dir, trainer_fn, lambda: keras.optimizers.Adam(0.01), data_fn, 30, 30, export=True)
    return model_dir


def test_run_eval_writes_results_tables_and_plots(trained_dir):
    results = run_eval(
        model_dir=str(trained_dir), in_dist=digits_uint8, in_dist_name="digits", ood_sets={"noise": noise_uint8}
    )
    out = trained_dir / "eval"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["accuracy"] == pytest.approx(results["accuracy"])
    assert 0.5 < results["accuracy"] <= 1.0  # 30 steps on digits: far above chance (0.1)
    assert 0.0 <= results["ece"] <= 1.0 and results["num_examples"] == 200
    assert set(results["ood"]["noise"]) >= {"log_px", "max_softmax", "grad_norm"}
    for score, auroc in results["ood"]["noise"].items():
        assert 0.0 <= auroc <= 1.0, (score, auroc)
    # Uniform noise is far from digits: the density score must separate it (in-distribution positive).
    assert results["ood"]["noise"]["log_px"] > 0.8
    details = results["ood_details"]["noise"]["log_px"]
    assert {"aupr_in", "fpr_at_95_tpr"} <= set(details), details
    assert 0.0 <= details["fpr_at_95_tpr"] <= 1.0 and 0.0 <= details["aupr_in"] <= 1.0
    table = (out / "results.md").read_text()
    assert "noise" in table and "log_px" in table
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert "reliability.png" in pngs and any(p.startswith("scores_") for p in pngs), pngs


def test_run_eval_errors_are_clear(tmp_path, trained_dir):
    with pytest.raises(FileNotFoundError, match="train.py"):
        run_eval(model_dir=str(tmp_path), in_dist=digits_uint8)
    # A run trained without an export: say so and how to get one.
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="has checkpoints but no export.*run_training.export = True"):
        run_eval(model_dir=str(tmp_path), in_dist=digits_uint8)
    # A directory that is no export.
    (tmp_path / "a" / "other").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no SavedModel"):
        run_eval(saved_model=str(tmp_path / "a" / "other"), in_dist=digits_uint8)
    # A train.py directory passed as the export means its export.
    from keras_ebm.evaluation.runner import _export_path

    assert _export_path(str(trained_dir), None) == os.path.join(str(trained_dir), "export")
    with pytest.raises(ValueError, match="run_eval.in_dist"):
        run_eval(model_dir=str(trained_dir))
