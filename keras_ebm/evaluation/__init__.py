"""Evaluation: metrics (accuracy, ECE, OOD AUROC/AUPR/FPR95), plots, and `run_eval` (runner.py)."""

from keras_ebm.evaluation import metrics, plots
from keras_ebm.evaluation.metrics import (
    accuracy,
    calibration_bins,
    expected_calibration_error,
    ood_metrics,
)

__all__ = ["accuracy", "calibration_bins", "expected_calibration_error", "metrics", "ood_metrics", "plots"]
