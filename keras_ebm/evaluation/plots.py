"""PNG plots written beside evaluation results: reliability diagram, OOD score histograms, sample grids.

matplotlib with the Agg backend (no display needed). Every function returns the path it wrote.
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_ebm.evaluation import metrics as metrics_lib  # noqa: E402


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def reliability_diagram(probs, labels, path, num_bins=20, title=None):
    """Accuracy per confidence bin against the diagonal, with the ECE, and the bins' sample counts."""
    bins = metrics_lib.calibration_bins(probs, labels, num_bins)
    ece = metrics_lib.expected_calibration_error(probs, labels, num_bins)
    edges = bins["bin_edges"]
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = bins["count"] > 0
    ax.bar(centers[filled], bins["accuracy"][filled], width=width, edgecolor="black",
           color="tab:blue", label="accuracy")
    ax.bar(centers[filled], (bins["confidence"] - bins["accuracy"])[filled], bottom=bins["accuracy"][filled],
           width=width, color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title((title + "\n" if title else "") + f"ECE = {100 * ece:.2f}% ({num_bins} bins)")
    ax_count.bar(centers, bins["count"], width=width, color="gray", edgecolor="black")
    ax_count.set_xlabel("confidence (max p(y|x))")
    ax_count.set_ylabel("count")
    ax_count.set_xlim(0, 1)
    return _save(fig, path)


def score_histograms(scores_by_set, path, in_dist_name, score_name, title=None):
    """Overlaid density histograms of an OOD score per data set, AUROC vs `in_dist_name` in the legend."""
    if in_dist_name not in scores_by_set:
        raise ValueError(
            f"`in_dist_name` must be a key of `scores_by_set`. Received: in_dist_name={in_dist_name!r}, "
            f"keys={list(scores_by_set)}"
        )
    all_scores = np.concatenate([np.asarray(s, np.float64).reshape(-1) for s in scores_by_set.values()])
    lo, hi = np.percentile(all_scores, [0.5, 99.5])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, 60)
    fig, ax = plt.subplots(figsize=(6, 4))
    scores_in = scores_by_set[in_dist_name]
    for name, scores in scores_by_set.items():
        label = f"{name} (in-distribution)" if name == in_dist_name else (
            f"{name} (AUROC {metrics_lib.ood_metrics(scores_in, scores)['auroc']:.3f})")
        ax.hist(np.clip(scores, lo, hi), bins=edges, density=True, alpha=0.45, label=label)
    ax.set_xlabel(f"{score_name} (higher = more in-distribution)")
    ax.set_ylabel("density")
    ax.set_title(title or f"OOD scores: {score_name}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def sample_grid(images, path, nrow=None, title=None):
    """A grid of uint8 images `[N, H, W, C]` (C = 1 or 3); `nrow` images per row (default ~sqrt(N))."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"`images` must be [N, H, W, 1 or 3]. Received: images.shape={images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(
            "`images` must be uint8 (use keras_ebm.data.from_pixel_range). "
            f"Received: images.dtype={images.dtype}"
        )
    n, h, w, c = images.shape
    ncol = int(nrow or max(1, int(np.ceil(np.sqrt(n)))))
    rows = int(np.ceil(n / ncol))
    grid = np.full((rows * (h + 2) + 2, ncol * (w + 2) + 2, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + col * (w + 2): 2 + col * (w + 2) + w] = images[i]
    scale = max(1.0, 256.0 / max(grid.shape[:2]))
    fig = plt.figure(figsize=(grid.shape[1] * scale / 100 + 0.2, grid.shape[0] * scale / 100 + (0.4 if title else 0.2)))
    ax = fig.add_axes([0, 0, 1, 0.92 if title else 1])
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, interpolation="nearest",
              vmin=0, vmax=255)
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
