"""Metrics against hand-computed values; plots are valid PNGs."""

import numpy as np
import pytest

from keras_ebm.evaluation import metrics, plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_ece_hand_computed():
    # 4 samples, 2 classes, 20 bins of width 0.05.
    # confidences 0.9 (correct), 0.9 (wrong) -> bin (0.85, 0.9]: acc 0.5, conf 0.9, |gap| 0.4, share 2/4
    # 0.6 (correct) -> bin (0.55, 0.6]: |1 - 0.6| = 0.4, share 1/4; 0.7 (wrong) -> |0 - 0.7| = 0.7, share 1/4
    # ECE = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.7 = 0.475
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    labels = np.array([0, 1, 1, 1])
    assert metrics.expected_calibration_error(probs, labels, 20) == pytest.approx(0.475)
    bins = metrics.calibration_bins(probs, labels, 20)
    assert bins["count"].sum() == 4 and bins["count"][17] == 2  # (0.85, 0.9] is bin 17


def test_ece_perfectly_calibrated_is_zero():
    # Confidence 1 and always right.
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert metrics.expected_calibration_error(probs, [0, 1, 2, 1]) == pytest.approx(0.0)
    assert metrics.accuracy(probs, [0, 1, 2, 0]) == pytest.approx(0.75)


def test_ood_metrics_hand_computed():
    perfect = metrics.ood_metrics([3.0, 4.0, 5.0], [0.0, 1.0])
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr_at_95_tpr": 0.0}
    reversed_ = metrics.ood_metrics([0.0, 1.0], [3.0, 4.0])
    assert reversed_["auroc"] == 0.0 and reversed_["fpr_at_95_tpr"] == 1.0
    # in = {1, 3}, out = {2}: pairs (1 vs 2) wrong, (3 vs 2) right -> AUROC 0.5.
    # 95% TPR keeps both in-dist samples -> threshold 1 -> the OOD sample (2 >= 1) is a false positive.
    mixed = metrics.ood_metrics([1.0, 3.0], [2.0])
    assert mixed["auroc"] == pytest.approx(0.5) and mixed["fpr_at_95_tpr"] == 1.0


def test_ood_metrics_reject_nan():
    with pytest.raises(ValueError, match="non-finite"):
        metrics.ood_metrics([1.0, np.nan], [0.0])


def test_plots_write_pngs(tmp_path):
    rng = np.random.RandomState(0)
    probs = rng.dirichlet(np.ones(5), 200)
    labels = rng.randint(0, 5, 200)
    paths = [
        plots.reliability_diagram(probs, labels, str(tmp_path / "rel.png"), title="test"),
        plots.score_histograms({"in": rng.randn(100) + 2, "ood": rng.randn(80)}, str(tmp_path / "h.png"),
                               in_dist_name="in", score_name="log_px"),
        plots.sample_grid(rng.randint(0, 255, (10, 8, 8, 1)).astype("uint8"), str(tmp_path / "g1.png")),
        plots.sample_grid(rng.randint(0, 255, (4, 8, 8, 3)).astype("uint8"), str(tmp_path / "g3.png"), nrow=2),
    ]
    for p in paths:
        data = open(p, "rb").read()
        assert data[:8] == PNG and len(data) > 500
    with pytest.raises(ValueError, match="uint8"):
        plots.sample_grid(np.zeros((2, 4, 4, 3), "float32"), str(tmp_path / "bad.png"))
