"""Evaluation: metrics (accuracy, ECE, OOD AUROC/AUPR/FPR95), PNG plots, and `run_eval` (runner.py)."""

from keras_ebm.evaluation import metrics, plots
from keras_ebm.evaluation.metrics import (
    accuracy,
    calibration_bins,
    expected_calibration_error,
    ood_metrics,
    validate_scores,
)
from keras_ebm.evaluation.plots import reliability_diagram, sample_grid, score_histograms

__all__ = [
    "accuracy",
    "calibration_bins",
    "expected_calibration_error",
    "metrics",
    "ood_metrics",
    "plots",
    "reliability_diagram",
    "sample_grid",
    "score_histograms",
    "validate_scores",
]
