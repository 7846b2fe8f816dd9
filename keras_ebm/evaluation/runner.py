"""`run_eval`: evaluate an exported keras_ebm model (what `eval.py` calls).

Evaluation consumes the SavedModel in `<model_dir>/export` (or any `--saved_model`), never the
training code (compare_gan's EvalTask style): what is measured is what users deploy.

Reports, following the papers' conventions: accuracy; ECE with 20 equal-width bins and
a reliability diagram; for every OOD set and every score of the export (log p(x) = logsumexp of the
logits, max p(y|x), and model-specific ones), AUROC with in-distribution as the positive class (scores
are higher for in-distribution), AUPR and FPR at 95% TPR, with score histograms. Exports of models
that are not classifiers (CLEL) are run through their `scores` signature only: no accuracy/ECE, and
their scores are the model's own (CLEL: "clel" = eq. 5 at the trained `ood_beta`, "neg_energy",
"cosine", plus "clel_beta<b>" = neg_energy + b * cosine for each b of `clel_betas`). Output in
`<model_dir>/eval/`: results.json, results.md (rows: score, columns: OOD set, as in the papers'
OOD tables) and PNG plots.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import gin
import numpy as np
import tensorflow as tf

from keras_ebm.evaluation import metrics as metrics_lib
from keras_ebm.evaluation import plots
from keras_ebm.evaluation.adapters import signature_images

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any


def _log(msg):
    print(f"[keras_ebm.eval] {msg}", flush=True)


def load_set(
    spec: Mapping[str, Any] | Callable[[], tuple[np.ndarray, np.ndarray]], max_examples: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """A data spec is a callable returning (x, y) uint8 arrays, or kwargs of keras_ebm.data.load_arrays."""
    if callable(spec):
        x, y = spec()
    else:
        from keras_ebm.data import load_arrays

        spec = dict(spec)
        spec.setdefault("max_examples", max_examples)
        x, y = load_arrays(**spec)
    if max_examples:
        x, y = x[:max_examples], y[:max_examples]
    return np.asarray(x), np.asarray(y)


# JEM quantities of the logits: in exports of version 1 they were also written for non-classifiers.
_CLASSIFIER_SCORES = ("log_px", "max_softmax", "grad_norm")


def _run_export(module, images, batch_size, label, classifier=True):
    """All outputs of the export's `scores` signature (and `serving_default` for a classifier,
    for the probabilities), batched. Only the scores the export holds are computed: the
    `grad_norm` backward pass runs only for exports that have that score."""
    serve = module.signatures["serving_default"] if classifier else None
    scores_fn = module.signatures["scores"]
    outputs = {}
    n = len(images)
    for start in range(0, n, batch_size):
        batch = signature_images(scores_fn, images[start : start + batch_size])
        out = dict(serve(images=batch)) if classifier else {}
        out.update({f"score/{k}": v for k, v in scores_fn(images=batch).items()})
        for k, v in out.items():
            outputs.setdefault(k, []).append(v.numpy())
        done = min(start + batch_size, n)
        if done == n or (start // batch_size) % 20 == 0:
            _log(f"{label}: {done}/{n} images")
    return {k: np.concatenate(v) for k, v in outputs.items()}


def extra_keys() -> list[str]:
    """The results.json entries eval.py's other evaluations add (`merge_results`), which `run_eval`
    keeps: the keys of the registered evaluators ("robustness", "generative", ...), in report order."""
    from keras_ebm.evaluation import registry

    return registry.result_keys()


def __getattr__(name):
    if name == "EXTRA_KEYS":  # `extra_keys()`, as the constant of earlier releases
        return extra_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pct(v: float | None) -> str:
    """A rate of results.md: one decimal, in %; "-" when missing."""
    return "-" if v is None else f"{100 * v:.1f}%"


def _extras_markdown(results):
    """The lines of the registered evaluators' entries (robustness, generative, ...)."""
    from keras_ebm.evaluation import registry

    return [line for cls in registry.keyed() for line in cls.markdown(results.get(cls.key) or {})]


def merge_results(output_dir: str | os.PathLike, key: str, entries: Mapping[str, Any]) -> dict[str, Any]:
    """Adds `entries` (name -> result dict) under `key` of `<output_dir>/results.json` (created if
    missing) and rewrites results.md; returns the merged results.

    eval.py stores its robustness, generative and sample-quality results this way, beside what
    `run_eval` wrote; `keras_ebm.evaluation.report.compare_runs` reads them back.
    """
    keys = extra_keys()
    if key not in keys:
        raise ValueError(f"`key` must be one of {keys}. Received: key={key!r}")
    path = os.path.join(output_dir, "results.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    results.setdefault(key, {}).update(entries)
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(_markdown(results, results.get("in_dist", "test")))
    return results


def _markdown(results, in_dist_name):
    if "classifier" not in results:  # only eval.py's other evaluations ran (no run_eval)
        return "\n".join([f"# Evaluation: {in_dist_name}"] + _extras_markdown(results)) + "\n"
    summary = (
        f"Accuracy {100 * results['accuracy']:.2f}% · ECE {100 * results['ece']:.2f}% (20 bins) · "
        if results["classifier"]
        else "Not a classifier (no accuracy/ECE) · "
    )
    lines = [f"# Evaluation: {in_dist_name}", "", summary + f"{results['num_examples']} test images", ""]
    ood = results["ood"]
    if ood:
        sets = sorted(ood)
        score_names = list(next(iter(ood.values())))
        lines += ["OOD detection, AUROC (in-distribution positive, higher score = in-distribution)", ""]
        lines.append("| score | " + " | ".join(sets) + " |")
        lines.append("|---|" + "---|" * len(sets))
        for s in score_names:
            lines.append(f"| {s} | " + " | ".join(f"{ood[o][s]:.4f}" for o in sets) + " |")
        lines += ["", "AUPR-in / FPR at 95% TPR", ""]
        lines.append("| score | " + " | ".join(sets) + " |")
        lines.append("|---|" + "---|" * len(sets))
        for s in score_names:
            cells = [
                f"{results['ood_details'][o][s]['aupr_in']:.3f} / {results['ood_details'][o][s]['fpr_at_95_tpr']:.3f}"
                for o in sets
            ]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += _extras_markdown(results)
    if results.get("notes"):
        lines += ["", "Notes: " + results["notes"]]
    return "\n".join(lines) + "\n"


def _export_path(saved_model, model_dir):
    """The export to read, or a FileNotFoundError saying what is there instead and what to do. A
    train.py directory passed as `saved_model` means its `export`."""
    if os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
        return saved_model
    if os.path.isfile(os.path.join(saved_model, "export", "saved_model.pb")):
        return os.path.join(saved_model, "export")
    run_dir = model_dir if model_dir is not None else os.path.dirname(saved_model.rstrip(os.sep))
    if run_dir and os.path.isdir(os.path.join(run_dir, "checkpoints")):
        raise FileNotFoundError(
            f"No SavedModel at {saved_model}: the run in {run_dir} has checkpoints but no export "
            "(trained with run_training.export = False, or stopped before exporting). Rerun the "
            "same train.py command with --gin_param='run_training.export = True': a finished run "
            "only exports."
        )
    if os.path.isdir(saved_model):
        raise FileNotFoundError(
            f"{saved_model} holds no SavedModel (no saved_model.pb). Pass --model_dir=<a train.py "
            "directory> or --saved_model=<its export directory, <model_dir>/export>."
        )
    raise FileNotFoundError(
        f"No SavedModel at {saved_model}. Train with train.py (it exports to <model_dir>/export) "
        "or pass --saved_model=<path of an export>."
    )


def _score_names(outputs, metadata, classifier):
    """The export's OOD scores in table order: by name; for a non-classifier (CLEL: its "logits"
    are a latent, JEM scores of them mean nothing) its own score first and no JEM scores."""
    names = sorted(k[len("score/") :] for k in outputs if k.startswith("score/"))
    if classifier:
        return names
    first = [metadata["ood_score"]] + [s for s in ("neg_energy", "cosine") if s in names]
    return first + [s for s in names if s not in first and s not in _CLASSIFIER_SCORES]


def _ood_entry(scores_in, scores_out):
    """`({score: AUROC}, {score: every metric})` of one OOD set, in-distribution positive."""
    details = {
        s: {k: float(v) for k, v in metrics_lib.ood_metrics(scores_in[s], scores_out[s]).items()} for s in scores_in
    }
    return {s: d["auroc"] for s, d in details.items()}, details


def _write_results(results, output_dir, in_dist_name, keep_extras):
    """results.json (with the entries of the other evaluations unless not `keep_extras`), results.md, log."""
    path = os.path.join(output_dir, "results.json")
    if keep_extras and os.path.exists(path):  # eval.py's robustness / FID / sample-quality results
        with open(path) as f:
            previous = json.load(f)
        results.update({k: previous[k] for k in extra_keys() if k in previous})
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(_markdown(results, in_dist_name))
    if results["classifier"]:
        _log(f"accuracy {results['accuracy']:.4f}  ECE {results['ece']:.4f}")
    for ood_name, by_score in results["ood"].items():
        _log(f"OOD {ood_name}: " + "  ".join(f"AUROC[{s}]={v:.4f}" for s, v in by_score.items()))
    _log(f"wrote {output_dir}/results.json, results.md and plots")


@gin.configurable(module="keras_ebm.evaluation")
def run_eval(
    model_dir: str | os.PathLike | None = None,
    saved_model: str | os.PathLike | None = None,
    in_dist: Mapping[str, Any] | Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    ood_sets: Mapping[str, Any] | None = None,
    in_dist_name: str = "test",
    batch_size: int = 256,
    max_examples: int | None = None,
    output_dir: str | os.PathLike | None = None,
    notes: str = "",
    clel_betas: Sequence[float] | None = None,
    keep_extras: bool = True,
) -> dict[str, Any]:
    """Evaluate a SavedModel export on a labelled in-distribution set and OOD sets.

    Args:
        model_dir: experiment directory; the export is read from `model_dir/export` and results are
            written to `model_dir/eval` unless `output_dir` is given.
        saved_model: path of an export (instead of `model_dir`).
        in_dist: labelled test set: kwargs of `keras_ebm.data.load_arrays` (e.g.
            `{"name": "cifar10_jpeg", "split": "test"}`) or a callable returning `(x_uint8, y)`.
        ood_sets: dict name -> spec of the same form (labels ignored).
        in_dist_name: name of the in-distribution set in tables and plots.
        batch_size: evaluation batch size.
        max_examples: cap on images per set (quick checks).
        output_dir: where to write results (default `model_dir/eval`, else `./eval`).
        notes: free text stored with the results (e.g. the JPEG caveat of the local CIFAR-10).
        clel_betas: optional betas b; for each, the score "clel_beta<b>" = neg_energy + b * cosine
            (eq. 5 at beta = b) is also reported. Needs an export with "neg_energy" and "cosine"
            scores (CLEL).
        keep_extras: keep the "robustness", "generative" and "sample_quality" entries an earlier
            eval.py run merged into `output_dir/results.json` (each says which images it used);
            False drops them.

    Returns:
        The results dict that is also written to results.json.
    """
    if saved_model is None:
        if model_dir is None:
            raise ValueError("run_eval needs `model_dir` or `saved_model`. Received: neither.")
        saved_model = os.path.join(model_dir, "export")
    saved_model = _export_path(saved_model, model_dir)
    if in_dist is None:
        raise ValueError(
            "run_eval needs the in-distribution test set: bind run_eval.in_dist in gin, e.g. "
            "run_eval.in_dist = {'name': 'cifar10', 'split': 'test'} (a train.py run folder's "
            "config.gin binds it: pass --model_dir=<that folder>). Received: in_dist=None"
        )
    output_dir = output_dir or os.path.join(model_dir or ".", "eval")
    os.makedirs(output_dir, exist_ok=True)

    module = tf.saved_model.load(saved_model)
    from keras_ebm.export import read_export_metadata

    metadata = read_export_metadata(saved_model)
    classifier = metadata.get("classifier", True)
    x, y = load_set(in_dist, max_examples)
    _log(f"in-distribution '{in_dist_name}': {len(x)} images of shape {x.shape[1:]}")
    betas = [float(b) for b in (clel_betas or ())]
    if betas and not {"neg_energy", "cosine"} <= set(metadata.get("score_names", ())):
        raise ValueError(
            "clel_betas needs an export with the scores 'neg_energy' and 'cosine' (CLEL, exported "
            f"by this version). Received: score_names={metadata.get('score_names')}"
        )

    def with_betas(out):
        for b in betas:
            out[f"score/clel_beta{b:g}"] = out["score/neg_energy"] + b * out["score/cosine"]
        return out

    out_in = with_betas(_run_export(module, x, batch_size, in_dist_name, classifier))
    probs = out_in["probabilities"] if classifier else None
    score_names = _score_names(out_in, metadata, classifier)

    results = {
        "saved_model": os.path.abspath(saved_model),
        "in_dist": in_dist_name,
        "num_examples": int(len(x)),
        "classifier": bool(classifier),
        "accuracy": float(metrics_lib.accuracy(probs, y)) if classifier else None,
        "ece": float(metrics_lib.expected_calibration_error(probs, y, num_bins=20)) if classifier else None,
        "mean_confidence": float(np.mean(np.max(probs, axis=-1))) if classifier else None,
        "ood": {},
        "ood_details": {},
        "num_ood_examples": {},
        "notes": notes,
    }
    if classifier:
        plots.reliability_diagram(
            probs,
            y,
            os.path.join(output_dir, "reliability.png"),
            num_bins=20,
            title=f"{in_dist_name}: accuracy {100 * results['accuracy']:.1f}%",
        )

    scores_in = {s: out_in[f"score/{s}"] for s in score_names}
    scores_by_set = {s: {in_dist_name: scores_in[s]} for s in score_names}
    # In name order: results, tables and plots list the sets the same way whether the spec came
    # from the training call (file order) or from a saved config.gin (gin writes dicts sorted).
    for ood_name, spec in sorted((ood_sets or {}).items()):
        x_ood, _ = load_set(spec, max_examples)
        if tuple(x_ood.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"OOD set '{ood_name}' has images of shape {x_ood.shape[1:]} but the model takes "
                f"{x.shape[1:]}: pass image_size/channels in its spec. Received: {ood_name}.shape={x_ood.shape}"
            )
        out_ood = with_betas(_run_export(module, x_ood, batch_size, ood_name, classifier))
        scores_out = {s: out_ood[f"score/{s}"] for s in score_names}
        results["ood"][ood_name], results["ood_details"][ood_name] = _ood_entry(scores_in, scores_out)
        results["num_ood_examples"][ood_name] = int(len(x_ood))
        for s in score_names:
            scores_by_set[s][ood_name] = scores_out[s]
    for s in score_names:
        if len(scores_by_set[s]) > 1:
            plots.score_histograms(
                scores_by_set[s],
                os.path.join(output_dir, f"scores_{s}.png"),
                in_dist_name=in_dist_name,
                score_name=s,
            )
    _write_results(results, output_dir, in_dist_name, keep_extras)
    return results
