"""Classification, calibration and OOD metrics with the papers' conventions (PAPERS.md).

* ECE: 20 equal-width bins on the max probability, |accuracy - confidence| weighted by the bin's
  share of samples (Guo et al. 2017; SADA-JEM's `ECELoss(20)`).
* OOD: scores are higher for in-distribution inputs; in-distribution is the positive class of
  AUROC/AUPR (sklearn), as in every paper's `roc_auc_score` call.
"""

import numpy as np
from sklearn import metrics as skm


def accuracy(logits_or_probs, labels):
    """Top-1 accuracy of `[N, C]` logits or probabilities against int labels `[N]`."""
    pred = np.argmax(np.asarray(logits_or_probs), axis=-1)
    return float(np.mean(pred == np.asarray(labels).reshape(-1)))


def calibration_bins(probs, labels, num_bins=20):
    """Per-bin accuracy, mean confidence and count for equal-width confidence bins.

    Bins are (lo, hi] (a confidence of exactly 0 falls in the first bin), as the reference code.
    Returns a dict of numpy arrays: bin_edges [num_bins + 1], accuracy, confidence, count [num_bins]
    (accuracy/confidence are 0 for empty bins).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            "`probs` must be [N, num_classes] with one label per row. "
            f"Received: probs.shape={probs.shape}, labels.shape={labels.shape}"
        )
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins).astype(np.float64)
    acc_sum = np.bincount(index, weights=correct, minlength=num_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=num_bins)
    safe = np.maximum(count, 1.0)
    return {"bin_edges": edges, "accuracy": acc_sum / safe, "confidence": conf_sum / safe, "count": count}


def expected_calibration_error(probs, labels, num_bins=20):
    """ECE = sum_b (n_b / N) |acc_b - conf_b| over `num_bins` equal-width bins (papers: 20).

    Written with numpy rather than `tfp.stats.expected_calibration_error` so that the bin edges
    ((lo, hi], the reference's convention) and the returned per-bin values used by the
    reliability diagram come from the same computation.
    """
    bins = calibration_bins(probs, labels, num_bins)
    n = bins["count"].sum()
    return float(np.sum(bins["count"] / n * np.abs(bins["accuracy"] - bins["confidence"])))


def ood_metrics(scores_in, scores_out):
    """AUROC, AUPR (in- and out-positive) and FPR at 95% TPR of an OOD score.

    Args:
        scores_in: scores of in-distribution samples `[N_in]` (higher = more in-distribution).
        scores_out: scores of OOD samples `[N_out]`.

    Returns:
        dict: auroc, aupr_in (in-distribution positive), aupr_out (OOD positive, scores negated),
        fpr_at_95_tpr (fraction of OOD samples scored at or above the threshold that keeps 95% of
        the in-distribution samples).
    """
    scores_in = np.asarray(scores_in, dtype=np.float64).reshape(-1)
    scores_out = np.asarray(scores_out, dtype=np.float64).reshape(-1)
    for name, s in (("scores_in", scores_in), ("scores_out", scores_out)):
        if s.size == 0:
            raise ValueError(f"`{name}` is empty. Received: {name}.shape={s.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError(
                f"`{name}` contains {int(np.sum(~np.isfinite(s)))} non-finite values (NaN/Inf): the "
                "model produced non-finite scores; check the model (divergence?) and the inputs."
            )
    y_true = np.concatenate([np.ones_like(scores_in), np.zeros_like(scores_out)])
    scores = np.concatenate([scores_in, scores_out])
    threshold = np.percentile(scores_in, 5.0, method="lower")  # keeps >= 95% of in-distribution
    return {
        "auroc": float(skm.roc_auc_score(y_true, scores)),
        "aupr_in": float(skm.average_precision_score(y_true, scores)),
        "aupr_out": float(skm.average_precision_score(1 - y_true, -scores)),
        "fpr_at_95_tpr": float(np.mean(scores_out >= threshold)),
    }
