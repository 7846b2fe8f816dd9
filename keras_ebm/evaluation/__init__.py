"""Evaluation: metrics (accuracy, ECE, OOD AUROC/AUPR/FPR95), PNG plots, `run_eval` (runner.py),
adversarial robustness (robustness.py), FID / IS / KID (generative.py; the papers' Inception network
in fid_inception.py, imported on use), sample quality by classification (sample_quality.py), the
model adapters (adapters.py: pixel range, logits functions), the library functions eval.py's
evaluations call (suite.py), the evaluators registered by name and configured from gin
(registry.py, `evaluate`; one file each in evaluators/) and the report across runs (report.py,
`compare_runs`)."""

from keras_ebm.evaluation import (
    adapters,
    generative,
    metrics,
    plots,
    registry,
    report,
    robustness,
    sample_quality,
    suite,
)

# Registers the built-in evaluators with gin, after the modules they use (not sorted into the block above).
from keras_ebm.evaluation import evaluators  # noqa: F401  isort: skip
from keras_ebm.evaluation.generative import (
    ClassifierFeatures,
    InceptionV3Features,
    evaluate_generative,
    frechet_distance,
    inception_features,
    inception_score,
    kernel_inception_distance,
    reference_statistics,
)
from keras_ebm.evaluation.metrics import (
    accuracy,
    calibration_bins,
    expected_calibration_error,
    ood_metrics,
    validate_scores,
)
from keras_ebm.evaluation.plots import reliability_diagram, sample_grid, score_histograms
from keras_ebm.evaluation.registry import evaluate
from keras_ebm.evaluation.report import compare_runs
from keras_ebm.evaluation.robustness import (
    RefinementDefense,
    carlini_wagner_l2,
    evaluate_cw,
    evaluate_robustness,
    pgd_attack,
    robustness_curve,
    sgld_refinement,
)
from keras_ebm.evaluation.sample_quality import classify_samples

__all__ = [
    "ClassifierFeatures",
    "InceptionV3Features",
    "RefinementDefense",
    "accuracy",
    "adapters",
    "calibration_bins",
    "carlini_wagner_l2",
    "classify_samples",
    "compare_runs",
    "evaluate",
    "evaluate_cw",
    "evaluate_generative",
    "evaluate_robustness",
    "expected_calibration_error",
    "frechet_distance",
    "generative",
    "inception_features",
    "inception_score",
    "kernel_inception_distance",
    "metrics",
    "ood_metrics",
    "pgd_attack",
    "plots",
    "reference_statistics",
    "registry",
    "reliability_diagram",
    "report",
    "robustness",
    "robustness_curve",
    "sample_grid",
    "sample_quality",
    "score_histograms",
    "sgld_refinement",
    "suite",
    "validate_scores",
]
