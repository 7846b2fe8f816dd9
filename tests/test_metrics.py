"""Metrics against hand-computed values; plots are valid PNGs."""

import numpy as np
import pytest

from keras_ebm.evaluation import metrics, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_ece_hand_computed():
    # 5 samples, 2 classes, 20 bins of width 0.05 (bin b covers (0.05 b, 0.05 (b + 1)]).
    #   max p 0.88 (right), 0.87 (wrong) -> bin 17 (0.85, 0.90]: acc 1/2, conf 0.875, gap 0.375
    #   max p 0.62 (right)               -> bin 12 (0.60, 0.65]: acc 1,   conf 0.62,  gap 0.38
    #   max p 0.73 (wrong), 0.71 (wrong) -> bin 14 (0.70, 0.75]: acc 0,   conf 0.72,  gap 0.72
    # ECE = 2/5 * 0.375 + 1/5 * 0.38 + 2/5 * 0.72 = 0.15 + 0.076 + 0.288 = 0.514
    probs = np.array([[0.88, 0.12], [0.13, 0.87], [0.38, 0.62], [0.73, 0.27], [0.29, 0.71]])
    labels = np.array([0, 0, 1, 1, 0])
    assert metrics.expected_calibration_error(probs, labels, 20) == pytest.approx(0.514)
    bins = metrics.calibration_bins(probs, labels, 20)
    assert np.flatnonzero(bins["count"]).tolist() == [12, 14, 17]
    assert bins["count"][[12, 14, 17]].tolist() == [1, 2, 2]
    assert bins["accuracy"][17] == pytest.approx(0.5) and bins["confidence"][14] == pytest.approx(0.72)
    assert bins["bin_edges"].shape == (21,) and bins["bin_edges"][1] == pytest.approx(0.05)
    # With 2 bins: (0, 0.5] is empty; (0.5, 1]: acc 2/5, mean conf (0.88+0.87+0.62+0.73+0.71)/5 = 0.762.
    assert metrics.expected_calibration_error(probs, labels, 2) == pytest.approx(0.762 - 0.4)


def test_ece_bins_are_right_closed():
    # A confidence exactly on an edge goes to the bin below it, as the reference's (lo, hi].
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]])
    bins = metrics.calibration_bins(probs, [0, 0, 0], 20)
    assert bins["count"][9] == 1 and bins["count"][17] == 1 and bins["count"][19] == 1


def test_ece_perfectly_calibrated_is_zero():
    # Confidence 1 and always right.
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert metrics.expected_calibration_error(probs, [0, 1, 2, 1]) == pytest.approx(0.0)
    # Confidence 0.75 in one bin, right on 3 of 4 samples.
    probs = np.tile([[0.75, 0.25]], (4, 1))
    assert metrics.expected_calibration_error(probs, [0, 0, 0, 1]) == pytest.approx(0.0)


def test_ece_matches_tensorflow_probability():
    tfp = pytest.importorskip("tensorflow_probability")
    rng = np.random.RandomState(0)
    logits = 3 * rng.randn(500, 10)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    labels = np.where(rng.rand(500) < 0.6, probs.argmax(-1), rng.randint(0, 10, 500))
    expected = tfp.stats.expected_calibration_error(20, logits=logits.astype("float32"), labels_true=labels)
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(float(expected), abs=1e-5)


def test_accuracy():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [5.0, 0.0, 9.0], [1.0, 0.0, 0.0]])
    assert metrics.accuracy(logits, [0, 1, 2, 2]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="labels.shape"):
        metrics.accuracy(logits, [0, 1])


def test_ood_metrics_hand_computed():
    perfect = metrics.ood_metrics([3.0, 4.0, 5.0], [0.0, 1.0])
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr_at_95_tpr": 0.0}
    reversed_ = metrics.ood_metrics([0.0, 1.0], [3.0, 4.0])
    assert reversed_["auroc"] == 0.0 and reversed_["fpr_at_95_tpr"] == 1.0
    # in = {1, 3}, out = {2}: pairs (1 vs 2) wrong, (3 vs 2) right -> AUROC 1/2.
    # 95% TPR needs both in-dist samples -> threshold 1 -> the OOD 2 >= 1 is a false positive.
    # AUPR-in: ranking 3(in) 2(out) 1(in): precision at the in-dist hits 1/1 and 2/3 -> (1 + 2/3) / 2.
    # AUPR-out (scores negated): ranking 1(in) 2(out) 3(in): the OOD hit at rank 2 -> 1/2.
    mixed = metrics.ood_metrics([1.0, 3.0], [2.0])
    assert mixed["auroc"] == pytest.approx(0.5) and mixed["fpr_at_95_tpr"] == 1.0
    assert mixed["aupr_in"] == pytest.approx(5 / 6) and mixed["aupr_out"] == pytest.approx(0.5)


def test_fpr_at_95_tpr_uses_the_highest_threshold_keeping_95_percent():
    # 20 in-dist scores 1..20: keeping 95% = 19 of them means threshold 2 (only score 1 rejected).
    # OOD scores 1.5 (rejected), 2 (accepted, ties count as accepted), 10 and 30 (accepted) -> 3/4.
    # AUROC = P(in > out) + P(tie) / 2 over the 80 pairs: OOD 1.5 is below 19 in-scores, OOD 2 below
    # 18 and tied with 1 (18.5), OOD 10 below 10 and tied with 1 (10.5), OOD 30 below none -> 48 / 80.
    scores_in = np.arange(1.0, 21.0)
    scores_out = np.array([1.5, 2.0, 10.0, 30.0])
    result = metrics.ood_metrics(scores_in, scores_out)
    assert result["fpr_at_95_tpr"] == pytest.approx(0.75)
    assert result["auroc"] == pytest.approx(48 / 80)


def test_ood_metrics_reject_nan_and_accept_inf():
    with pytest.raises(ValueError, match="NaN"):
        metrics.ood_metrics([1.0, np.nan], [0.0])
    with pytest.raises(ValueError, match="scores_out"):
        metrics.ood_metrics([1.0], [])
    # +inf ranks first, -inf last: still perfect separation.
    assert metrics.ood_metrics([np.inf, 2.0], [-np.inf, 1.0])["auroc"] == 1.0


def _assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC and len(data) > 500


def test_plots_write_pngs(tmp_path):
    rng = np.random.RandomState(0)
    probs = rng.dirichlet(np.ones(5), 200)
    labels = rng.randint(0, 5, 200)
    paths = [
        plots.reliability_diagram(probs, labels, str(tmp_path / "rel.png"), title="test"),
        plots.score_histograms(
            {"in": rng.randn(100) + 2, "ood": rng.randn(80), "ood2": rng.randn(30) - 1},
            str(tmp_path / "sub" / "h.png"),
            in_dist_name="in",
            score_name="log_px",
        ),
        plots.sample_grid(rng.randint(0, 255, (10, 8, 8, 1)).astype("uint8"), str(tmp_path / "g1.png")),
        plots.sample_grid(
            rng.randint(0, 255, (4, 32, 32, 3)).astype("uint8"), str(tmp_path / "g3.png"), nrow=2, title="samples"
        ),
    ]
    assert paths[1] == str(tmp_path / "sub" / "h.png")
    for p in paths:
        _assert_png(p)


def test_plots_reject_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        plots.sample_grid(np.zeros((2, 4, 4, 3), "float32"), str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="images.shape"):
        plots.sample_grid(np.zeros((2, 4, 4, 2), "uint8"), str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="in_dist_name"):
        plots.score_histograms({"a": [1.0]}, str(tmp_path / "bad.png"), in_dist_name="b", score_name="s")
    with pytest.raises(ValueError, match="NaN"):
        plots.score_histograms({"a": [1.0], "b": [np.nan]}, str(tmp_path / "bad.png"), "a", "s")
    assert not (tmp_path / "bad.png").exists()
