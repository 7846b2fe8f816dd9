"""Sample quality by classification: class-conditional samples judged by a reference classifier.

* CLEL (Lee et al. 2023) Appendix D, Figure 3c: class-conditionally generated samples are
  classified by an external classifier c; entry (i, j) of the confusion matrix is
  P(c(x_i) = j) over the samples generated for class i (rows sum to 1). The accuracy is the
  fraction classified as the class they were generated for.
* SADA-JEM (Yang, Su and Ji 2023) Appendix E, Figures 8-17: per class, the samples with the
  highest and lowest p(x) and the highest and lowest p(y|x). The official code ranks with the
  generating model itself (log p(x) = logsumexp f(x) up to log Z, `keras_ebm.energy`); pass it as
  `ranking_model` to reproduce that, otherwise the reference classifier ranks.

The reference classifier and the ranking model may be exports (their `logits` signature, fed uint8 pixel values),
keras models / trainers, or float `logits_fn`s with a `pixel_range`.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np
from scipy import special
from sklearn import metrics as skm

from keras_ebm.evaluation import adapters, plots

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

CIFAR10_CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _log(msg):
    print(f"[keras_ebm.sample_quality] {msg}", flush=True)


def confusion_matrix_plot(
    matrix: np.ndarray, path: str | os.PathLike, class_names: Sequence[str] | None = None, title: str | None = None
) -> str:
    """Writes a row-normalised confusion matrix (rows: intended class, columns: predicted) as PNG."""
    matrix = np.asarray(matrix, np.float64)
    k = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    fig = plots._figure(figsize=(1.0 + 0.5 * k, 0.8 + 0.5 * k))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if matrix[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(k), names, rotation=90 if k > 10 or max(map(len, names)) > 4 else 0, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted by the reference classifier")
    ax.set_ylabel("class generated for")
    ax.set_title(title or "class-conditional samples", fontsize=9)
    return plots._save(fig, path)


def _grid_by_class(images, index_by_class, top_k, path, title):
    """One row per class (top_k images, white where a class has fewer samples)."""
    blank = np.full(images.shape[1:], 255, np.uint8)
    rows = []
    for idx in index_by_class:
        row = [images[i] for i in idx[:top_k]]
        rows.extend(row + [blank] * (top_k - len(row)))
    return plots.sample_grid(np.stack(rows), path, nrow=top_k, title=title)


def classify_samples(
    samples: np.ndarray,
    intended_labels: np.ndarray | None,
    classifier: Any,
    pixel_range: tuple[float, float] | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ranking_model: Any = None,
    ranking_pixel_range: tuple[float, float] | None = None,
    top_k: int = 10,
    batch_size: int = 256,
    max_examples: int | None = None,
    output_dir: str | os.PathLike | None = None,
    name: str = "samples",
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy and confusion matrix of class-conditional samples under a reference classifier, and
    their best / worst samples per class by p(x) and p(y|x).

    Args:
        samples: uint8 samples `[N, H, W, C]` (`keras_ebm.data.from_pixel_range` of the chains).
        intended_labels: int `[N]`, the class each sample was generated for; None for
            unconditional samples (then they are grouped by the classifier's prediction and no
            accuracy is reported).
        classifier: the reference classifier (export, keras model / trainer, or float logits_fn).
        pixel_range: its float range if it is not an export or a trainer.
        num_classes: number of classes (default: the classifier's logits).
        class_names: optional names for the plots (`CIFAR10_CLASSES`).
        ranking_model: the model whose p(x) = logsumexp(logits) and p(y|x) rank the samples
            (SADA-JEM: the generating model); default the reference classifier.
        ranking_pixel_range: its float range, as `pixel_range`.
        top_k: samples per class in each best / worst grid.
        batch_size: images per forward pass.
        max_examples: use only the first `max_examples` samples.
        output_dir: if given, writes `sample_quality_<name>.json`, `<name>_confusion.png` and
            the grids `<name>_px_highest.png`, `_px_lowest`, `_pyx_highest`, `_pyx_lowest`.
        name: prefix of the files.
        progress: progress bars over the samples.

    Returns:
        dict: `accuracy`, `per_class_accuracy`, `confusion_matrix` (counts),
        `confusion_matrix_normalized` (rows sum to 1 for every class with samples), `num_samples`,
        `samples_per_class`, `ranked` (sample indices per criterion and class), and the written
        `files`.
    """
    samples = adapters.uint8_images(samples, "samples", max_examples)
    n = len(samples)
    fn = adapters.uint8_logits_fn(classifier, pixel_range)
    logits = adapters.predict_logits(fn, samples, batch_size, progress, label=f"{name}: reference classifier")
    k = int(num_classes or logits.shape[-1])
    predicted = np.argmax(logits, -1)
    conditional = intended_labels is not None
    if conditional:
        intended = np.asarray(intended_labels).astype(np.int64).reshape(-1)
        if max_examples:
            intended = intended[: int(max_examples)]
        if intended.shape[0] != n:
            raise ValueError(f"`intended_labels` must hold one label per sample ({n}). Received: {intended.shape}")
    else:
        intended = predicted
    if ranking_model is None:
        rank_logits = logits
    else:
        rank_fn = adapters.uint8_logits_fn(ranking_model, ranking_pixel_range)
        rank_logits = adapters.predict_logits(rank_fn, samples, batch_size, progress, label=f"{name}: ranking model")
    log_px = special.logsumexp(rank_logits.astype(np.float64), axis=-1)
    p_y = special.softmax(rank_logits.astype(np.float64), axis=-1)
    p_intended = p_y[np.arange(n), np.clip(intended, 0, p_y.shape[-1] - 1)]

    counts = skm.confusion_matrix(intended, predicted, labels=np.arange(k))
    per_class_n = counts.sum(axis=1)
    normalized = counts / np.maximum(per_class_n, 1)[:, None]
    results = {
        "name": name,
        "num_samples": int(n),
        "num_classes": k,
        "conditional": bool(conditional),
        "accuracy": float(np.mean(predicted == intended)) if conditional else None,
        "per_class_accuracy": [float(normalized[c, c]) if per_class_n[c] else None for c in range(k)]
        if conditional
        else None,
        "samples_per_class": per_class_n.tolist(),
        "confusion_matrix": counts.tolist(),
        "confusion_matrix_normalized": normalized.tolist(),
        "ranking": "reference classifier" if ranking_model is None else "ranking_model",
        "ranked": {},
        "files": {},
    }
    criteria = {
        "px_highest": (log_px, True),
        "px_lowest": (log_px, False),
        "pyx_highest": (p_intended, True),
        "pyx_lowest": (p_intended, False),
    }
    for key, (score, highest) in criteria.items():
        by_class = []
        for c in range(k):
            idx = np.flatnonzero(intended == c)
            order = np.argsort(-score[idx] if highest else score[idx], kind="stable")
            by_class.append(idx[order][:top_k])
        results["ranked"][key] = {str(c): by_class[c].tolist() for c in range(k)}
        if output_dir:
            label = {"px": "p(x)", "pyx": "p(y|x)"}[key.split("_")[0]]
            title = f"{name}: {'highest' if highest else 'lowest'} {label} per class (rows)"
            results["files"][key] = _grid_by_class(
                samples, by_class, top_k, os.path.join(output_dir, f"{name}_{key}.png"), title
            )
    if output_dir:
        title = f"{name}: accuracy {100 * results['accuracy']:.1f}% ({n} samples)" if conditional else None
        results["files"]["confusion"] = confusion_matrix_plot(
            normalized, os.path.join(output_dir, f"{name}_confusion.png"), class_names, title
        )
        with open(os.path.join(output_dir, f"sample_quality_{name}.json"), "w") as f:
            json.dump(results, f, indent=2)
    if conditional:
        _log(f"{name}: {n} samples, accuracy under the reference classifier {results['accuracy']:.4f}")
    return results
