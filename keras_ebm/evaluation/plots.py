"""PNG plots written beside evaluation results: reliability diagram, OOD score histograms, sample grids.

Every figure is drawn on matplotlib's Agg canvas (`FigureCanvasAgg`) chosen here, per figure, rather
than through `pyplot`: no display is needed (servers, TPU VMs, CI), importing this module does not
switch the backend of a user's notebook, and figures are not kept alive in pyplot's global registry.
Every function returns the path it wrote; parent directories are created.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_ebm.evaluation import metrics as metrics_lib

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


def _figure(**kwargs):
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return path


def _sparse_threshold(total, num_bins):
    """Bins with fewer images than this are drawn hollow: max(5, 10% of an even share)."""
    return max(5, int(np.ceil(0.1 * total / num_bins)))


def reliability_diagram(
    probs: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    num_bins: int = 20,
    title: str | None = None,
    min_count: int | None = None,
) -> str:
    """Writes a reliability diagram: per-bin accuracy against confidence, with the bin counts.

    Top panel: accuracy bars of the equal-width confidence bins, shaded by how many images each
    holds (darker = more); bins with fewer than `min_count` images are drawn hollow (outline
    only, hatched), so a bin of one or two images does not read as a full-height bar. A red
    marker shows each bin's mean confidence (the gap to the bar is the bin's calibration error);
    the dashed diagonal is perfect calibration; the ECE is in the title. Bottom panel: images per
    bin on a log scale, the count written above each bar. The legend sits below the figure,
    off the data.

    Args:
        probs: `[N, num_classes]` probabilities.
        labels: `[N]` integer labels.
        path: output PNG path.
        num_bins: equal-width bins on the max probability (papers: 20, width 0.05).
        title: optional first title line.
        min_count: bins with fewer images are hollow (default max(5, 10% of N / num_bins)).

    Returns:
        `path`.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    bins = metrics_lib.calibration_bins(probs, labels, num_bins)
    ece = metrics_lib.expected_calibration_error(probs, labels, num_bins)
    edges, count = bins["bin_edges"], bins["count"]
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    total = int(count.sum())
    min_count = _sparse_threshold(total, num_bins) if min_count is None else int(min_count)
    dense = count >= min_count
    sparse = (count > 0) & ~dense
    # Shade by share of the images: sqrt keeps a bin of 1% visible next to one of 50%.
    share = np.sqrt(count / max(count.max(), 1.0))
    colors = [(0.12, 0.47, 0.71, 0.25 + 0.75 * s) for s in share]

    fig = _figure(figsize=(4.8, 5.6))
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2], "hspace": 0.08})
    ax.plot([0, 1], [0, 1], color="black", ls="--", lw=1)
    for i in np.flatnonzero(dense):
        ax.bar(centers[i], bins["accuracy"][i], width=width, color=colors[i], edgecolor="black", lw=0.6)
    for i in np.flatnonzero(sparse):
        ax.bar(centers[i], bins["accuracy"][i], width=width, fill=False, edgecolor="gray", lw=0.8, hatch="///", ls="--")
    filled = count > 0
    ax.plot(centers[filled], bins["confidence"][filled], ls="none", marker="_", ms=9, mew=2, color="tab:red")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, 1)
    ax.set_title(
        (f"{title}\n" if title else "") + f"ECE = {100 * ece:.2f}% ({num_bins} bins, {total} images)", fontsize=9
    )

    ax_count.bar(centers[dense], count[dense], width=width, color="gray", edgecolor="black", lw=0.6)
    ax_count.bar(centers[sparse], count[sparse], width=width, fill=False, edgecolor="gray", hatch="///", ls="--")
    ax_count.set_yscale("log")
    top = max(count.max(), 1.0)
    ax_count.set_ylim(0.5, top * 8)
    for i in np.flatnonzero(filled):
        ax_count.text(
            centers[i], count[i] * 1.15, f"{int(count[i])}", ha="center", va="bottom", fontsize=5.5, rotation=90
        )
    ax_count.set_xlabel("confidence (max p(y|x))")
    ax_count.set_ylabel("images (log)")
    ax_count.set_xlim(0, 1)

    handles = [
        Patch(facecolor=(0.12, 0.47, 0.71, 0.8), edgecolor="black", label="accuracy (darker = more images)"),
        Patch(fill=False, edgecolor="gray", hatch="///", ls="--", label=f"bin with < {min_count} images"),
        Line2D([], [], ls="none", marker="_", ms=9, mew=2, color="tab:red", label="mean confidence"),
        Line2D([], [], color="black", ls="--", lw=1, label="perfect calibration"),
    ]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=2, fontsize=7, frameon=False)
    return _save(fig, path)


PALETTE = (
    "tab:orange",
    "tab:green",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "tab:blue",
    "tab:red",
    "tab:gray",
)


def colors_by_name(names: Iterable[str]) -> dict[str, str]:
    """`{name: colour}` chosen from the name itself (a CRC of it), so that a set (or a run) has the
    same colour in every panel and plot that shows it, whatever order its results list it in; two
    names that would share a colour get the next free one, in sorted order."""
    import zlib

    out, taken = {}, set()
    for name in sorted(set(names)):
        k = zlib.crc32(str(name).encode()) % len(PALETTE)
        for _ in range(len(PALETTE)):
            if PALETTE[k] not in taken:
                break
            k = (k + 1) % len(PALETTE)
        out[name] = PALETTE[k]
        taken.add(PALETTE[k])
        if len(taken) == len(PALETTE):
            taken.clear()
    return out


def score_histograms(
    scores_by_set: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    in_dist_name: str,
    score_name: str,
    title: str | None = None,
) -> str:
    """Writes OOD score distributions as small multiples: one panel per OOD set.

    Each panel draws the in-distribution scores as a filled grey histogram and the OOD set's as a
    coloured outline (step), on a shared x-axis and common bins, with the AUROC in the panel's
    title. No two translucent fills overlap, and no legend covers the data. Panels are in the order
    of the OOD sets' names and each set's colour comes from its name (`colors_by_name`), so plots
    of several runs side by side match panel for panel.

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
    edges = np.linspace(lo, hi, 51)

    scores_in = scores_by_set[in_dist_name]
    others = sorted(name for name in scores_by_set if name != in_dist_name) or [None]
    fig = _figure(figsize=(6, 0.6 + 1.7 * len(others)))
    axes = np.atleast_1d(fig.subplots(len(others), 1, sharex=True, squeeze=False)[:, 0])
    colors = colors_by_name([name for name in others if name is not None])
    for ax, name in zip(axes, others):
        ax.hist(
            np.clip(scores_in, lo, hi),
            bins=edges,
            density=True,
            histtype="stepfilled",
            color="0.75",
            edgecolor="0.45",
            lw=0.8,
        )
        if name is None:
            ax.set_title(f"{in_dist_name} (in-distribution, n={scores_in.size})", fontsize=8, loc="left")
        else:
            scores = scores_by_set[name]
            auroc = metrics_lib.ood_metrics(scores_in, scores)["auroc"]
            color = colors[name]
            ax.hist(np.clip(scores, lo, hi), bins=edges, density=True, histtype="step", color=color, lw=1.6)
            ax.set_title(
                f"{name} (n={scores.size}, line) vs {in_dist_name} (n={scores_in.size}, grey): AUROC {auroc:.3f}",
                fontsize=8,
                loc="left",
                color=color,
            )
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel(f"{score_name} (higher = more in-distribution)")
    fig.suptitle(title or f"OOD scores: {score_name}", fontsize=9)
    fig.subplots_adjust(hspace=0.45)
    return _save(fig, path)


def sample_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None, title: str | None = None) -> str:
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
        raise ValueError(f"`images` must be a non-empty [N, H, W, 1 or 3] array. Received: images.shape={images.shape}")
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
        grid[top : top + h, left : left + w] = images[i]

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
