"""Classification, calibration and OOD metrics with the papers' conventions. Numpy in, floats out.

* Calibration (ECE): 20 equal-width bins on the max probability; |accuracy - confidence| of each bin
  weighted by its share of the samples (Guo et al. 2017, arXiv:1706.04599, eq. 3; SADA-JEM's
  `ECELoss(20)`, HDGE's 20 bins).
* OOD detection: a score is HIGHER for in-distribution inputs (log p(x) = logsumexp of the logits,
  max softmax, ...; `keras_ebm.energy`). In-distribution is the POSITIVE class (label 1) of
  AUROC/AUPR, as in every reference's `roc_auc_score(in=1, out=0)` call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn import metrics as skm

if TYPE_CHECKING:
    from tensorflow.types.experimental import TensorLike


def _as_labels(labels, n, name="labels"):
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(
            f"`{name}` must hold one integer label per row of the predictions ({n} rows). "
            f"Received: {name}.shape={labels.shape}"
        )
    return labels


def _as_predictions(values, name):
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty [N, num_classes] array. Received: {name}.shape={values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"`{name}` contains {int(np.sum(~np.isfinite(values)))} non-finite values (NaN/Inf); the model "
            f"output diverged or the inputs are broken. Received: {name} with non-finite entries"
        )
    return values


def accuracy(logits_or_probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (argmax over the last axis) of `[N, C]` logits or probabilities vs int labels `[N]`."""
    predictions = _as_predictions(logits_or_probs, "logits_or_probs")
    labels = _as_labels(labels, predictions.shape[0])
    return float(np.mean(np.argmax(predictions, axis=-1) == labels))


def calibration_bins(probs: np.ndarray, labels: np.ndarray, num_bins: int = 20) -> dict[str, np.ndarray]:
    """Per-bin accuracy, mean confidence and count over equal-width bins of the max probability.

    Bin b covers (b / num_bins, (b + 1) / num_bins], right-closed like the reference `ECELoss`;
    a confidence of exactly 0 falls in the first bin.

    Args:
        probs: `[N, num_classes]` probabilities (softmax outputs, not logits).
        labels: `[N]` integer labels.
        num_bins: number of equal-width bins on [0, 1] (the papers use 20).

    Returns:
        dict of numpy arrays: `bin_edges` `[num_bins + 1]`, and `accuracy`, `confidence`
        (mean max probability), `count` `[num_bins]`. Empty bins have accuracy and confidence 0.
    """
    probs = _as_predictions(probs, "probs")
    labels = _as_labels(labels, probs.shape[0])
    if int(num_bins) < 1:
        raise ValueError(f"`num_bins` must be a positive integer (papers: 20). Received: num_bins={num_bins}")
    if probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
        raise ValueError(
            "`probs` must be probabilities in [0, 1]; pass softmax(logits), not logits. "
            f"Received: probs in [{probs.min():.4g}, {probs.max():.4g}]"
        )
    num_bins = int(num_bins)
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    # Edges i / num_bins, each the double nearest the decimal (linspace rounds some up by an ulp),
    # so a confidence written as 0.85 sits exactly on an edge and falls in the bin below, (lo, hi].
    edges = np.arange(num_bins + 1, dtype=np.float64) / num_bins
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins).astype(np.float64)
    safe = np.maximum(count, 1.0)
    return {
        "bin_edges": edges,
        "accuracy": np.bincount(index, weights=correct, minlength=num_bins) / safe,
        "confidence": np.bincount(index, weights=confidence, minlength=num_bins) / safe,
        "count": count,
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 20) -> float:
    """ECE = sum_b (n_b / N) * |accuracy_b - confidence_b| over equal-width max-probability bins.

    `tfp.stats.expected_calibration_error` computes the same statistic (equal-width bins on the
    max probability, weighted by bin count; tests/test_metrics.py checks the two agree), but it is
    not used here: it takes logits, runs in float32, bins [lo, hi) where the references bin (lo, hi],
    and does not return the per-bin values the reliability diagram needs. Computing both from
    `calibration_bins` keeps the plotted bars and the reported number consistent.

    Args:
        probs: `[N, num_classes]` probabilities.
        labels: `[N]` integer labels.
        num_bins: number of equal-width bins (papers: 20).

    Returns:
        The ECE as a float in [0, 1].
    """
    bins = calibration_bins(probs, labels, num_bins)
    weights = bins["count"] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"] - bins["confidence"])))


def validate_scores(scores: TensorLike, name: str = "scores") -> np.ndarray:
    """Scores as a flat float64 array; raises on an empty array or NaN (infinities are kept)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError(f"`{name}` must hold at least one score. Received: {name}.shape={scores.shape}")
    if np.isnan(scores).any():
        raise ValueError(
            f"`{name}` contains {int(np.isnan(scores).sum())} NaN scores of {scores.size}: the model "
            "produced NaN (diverged weights or broken inputs); AUROC would be meaningless. "
            f"Received: {name} with NaN entries"
        )
    return scores


def ood_metrics(scores_in: TensorLike, scores_out: TensorLike) -> dict[str, float]:
    """AUROC, AUPR (in- and out-positive) and FPR at 95% TPR of an OOD score.

    In-distribution is the positive class and higher scores mean "more in-distribution", so an
    AUROC of 1 is perfect separation and 0.5 is chance. Infinite scores are allowed (they rank
    first/last); NaN scores raise.

    Args:
        scores_in: scores of in-distribution samples `[N_in]`.
        scores_out: scores of out-of-distribution samples `[N_out]`.

    Returns:
        dict of floats:
        - `auroc`: area under the ROC curve (sklearn `roc_auc_score`).
        - `aupr_in`: average precision with in-distribution positive.
        - `aupr_out`: average precision with OOD positive (scores negated).
        - `fpr_at_95_tpr`: the fraction of OOD samples scored at or above the highest threshold
          that still accepts at least 95% of the in-distribution samples (from `roc_curve`).
    """
    scores_in = validate_scores(scores_in, "scores_in")
    scores_out = validate_scores(scores_out, "scores_out")
    is_in = np.concatenate([np.ones(scores_in.size), np.zeros(scores_out.size)])
    scores = np.concatenate([scores_in, scores_out])
    # roc_curve cannot threshold at +-inf scores; a rank-preserving map to finite values keeps
    # every metric (all rank-based) unchanged.
    finite = scores[np.isfinite(scores)]
    if finite.size < scores.size:
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        scores = np.where(scores == np.inf, np.nextafter(hi, np.inf), scores)
        scores = np.where(scores == -np.inf, np.nextafter(lo, -np.inf), scores)
    fpr, tpr, _ = skm.roc_curve(is_in, scores, drop_intermediate=False)
    # tpr is non-decreasing as the threshold decreases: the first point reaching 95% is the
    # highest threshold that keeps 95% of the in-distribution samples.
    fpr_at_95 = fpr[np.searchsorted(tpr, 0.95, side="left")]
    return {
        "auroc": float(skm.roc_auc_score(is_in, scores)),
        "aupr_in": float(skm.average_precision_score(is_in, scores)),
        "aupr_out": float(skm.average_precision_score(1 - is_in, -scores)),
        "fpr_at_95_tpr": float(fpr_at_95),
    }
