"""PNG plots written beside evaluation results: reliability diagram, OOD score histograms, sample grids.

Every figure is drawn on matplotlib's Agg canvas (`FigureCanvasAgg`) chosen here, per figure, rather
than through `pyplot`: no display is needed (servers, TPU VMs, CI), importing this module does not
switch the backend of a user's notebook, and figures are not kept alive in pyplot's global registry.
Every function returns the path it wrote; parent directories are created.
"""

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_ebm.evaluation import metrics as metrics_lib


def _figure(**kwargs):
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return path


def reliability_diagram(probs, labels, path, num_bins=20, title=None):
    """Writes a reliability diagram: per-bin accuracy against confidence, with the ECE.

    Top panel: accuracy bars of the equal-width confidence bins, the gap to each bin's mean
    confidence, and the diagonal of perfect calibration; the ECE is in the title. Bottom panel:
    samples per bin (calibration of nearly empty bins means little).

    Args:
        probs: `[N, num_classes]` probabilities.
        labels: `[N]` integer labels.
        path: output PNG path.
        num_bins: equal-width bins on the max probability (papers: 20, width 0.05).
        title: optional first title line.

    Returns:
        `path`.
    """
    bins = metrics_lib.calibration_bins(probs, labels, num_bins)
    ece = metrics_lib.expected_calibration_error(probs, labels, num_bins)
    edges = bins["bin_edges"]
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = bins["count"] > 0

    fig = _figure(figsize=(4.5, 5.5))
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers[filled], bins["accuracy"][filled], width=width, color="tab:blue",
           edgecolor="black", label="accuracy")
    ax.bar(centers[filled], (bins["confidence"] - bins["accuracy"])[filled], bottom=bins["accuracy"][filled],
           width=width, color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title((f"{title}\n" if title else "") + f"ECE = {100 * ece:.2f}% ({num_bins} bins)")
    ax_count.bar(centers, bins["count"], width=width, color="gray", edgecolor="black")
    ax_count.set_xlabel("confidence (max p(y|x))")
    ax_count.set_ylabel("count")
    ax_count.set_xlim(0, 1)
    return _save(fig, path)


def score_histograms(scores_by_set, path, in_dist_name, score_name, title=None):
    """Writes overlaid density histograms of an OOD score, one per data set, AUROC in the legend.

    Args:
        scores_by_set: dict `name -> [N]` scores (higher = more in-distribution), including the
            in-distribution set.
        path: output PNG path.
        in_dist_name: key of the in-distribution set; every other set is scored against it with
            `metrics.ood_metrics` (in-distribution positive).
        score_name: name of the score for the axis label (e.g. "log_px").
        title: optional title; default "OOD scores: <score_name>".

    Returns:
        `path`.
    """
    if in_dist_name not in scores_by_set:
        raise ValueError(
            "`in_dist_name` must be a key of `scores_by_set`. "
            f"Received: in_dist_name={in_dist_name!r}, keys={list(scores_by_set)}"
        )
    scores_by_set = {
        name: metrics_lib.validate_scores(scores, f"scores_by_set[{name!r}]") for name, scores in scores_by_set.items()
    }
    all_scores = np.concatenate(list(scores_by_set.values()))
    all_scores = all_scores[np.isfinite(all_scores)]
    # Clip the 0.5% tails so one diverged sample does not squash every histogram into one bar.
    lo, hi = np.percentile(all_scores, [0.5, 99.5]) if all_scores.size else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, 61)

    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    scores_in = scores_by_set[in_dist_name]
    ordered = [in_dist_name] + [name for name in scores_by_set if name != in_dist_name]
    for name in ordered:
        if name == in_dist_name:
            label = f"{name} (in-distribution)"
        else:
            auroc = metrics_lib.ood_metrics(scores_in, scores_by_set[name])["auroc"]
            label = f"{name} (AUROC {auroc:.3f})"
        ax.hist(np.clip(scores_by_set[name], lo, hi), bins=edges, density=True, alpha=0.45, label=label)
    ax.set_xlabel(f"{score_name} (higher = more in-distribution)")
    ax.set_ylabel("density")
    ax.set_title(title or f"OOD scores: {score_name}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def sample_grid(images, path, nrow=None, title=None):
    """Writes a grid of uint8 images `[N, H, W, C]` (C = 1 or 3) with 2-pixel white borders.

    Args:
        images: uint8 images `[N, height, width, 1 or 3]` (convert model pixels first, e.g. with
            `keras_ebm.data.from_pixel_range`).
        path: output PNG path.
        nrow: images per row, as torchvision's `make_grid`; default ceil(sqrt(N)).
        title: optional title.

    Returns:
        `path`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"`images` must be a non-empty [N, H, W, 1 or 3] array. Received: images.shape={images.shape}"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            "`images` must be uint8 in [0, 255] (use keras_ebm.data.from_pixel_range). "
            f"Received: images.dtype={images.dtype}"
        )
    if nrow is not None and int(nrow) < 1:
        raise ValueError(f"`nrow` must be a positive integer or None. Received: nrow={nrow}")
    n, h, w, c = images.shape
    ncol = int(nrow) if nrow else int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / ncol))
    pad = 2
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = images[i]

    # Upscale small grids (8x8 or 32x32 images) so the PNG is viewable; nearest keeps pixels sharp.
    scale = max(1.0, 256.0 / max(grid.shape[:2]))
    dpi = 100
    fig = _figure(figsize=(grid.shape[1] * scale / dpi, grid.shape[0] * scale / dpi), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    if c == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
