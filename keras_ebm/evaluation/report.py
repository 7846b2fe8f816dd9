"""One report across runs: `python eval.py --compare runs/a runs/b ...`.

Reads each run's `<run>/eval/results.json` (written by `run_eval` and extended by eval.py's
robustness, generative and sample-quality evaluations) and writes, in the layout of the papers'
tables (rows = models):

* `report.md`: one table with accuracy, ECE, OOD AUROC per set and score, robust accuracy per
  attack and epsilon, C&W noise norms, FID / IS / KID (or the classifier-feature stand-ins
  `classifier_fd` / `classifier_score` / `classifier_kd`, never called FID) per sample set, and
  the sample-quality accuracy (each FID / IS / KID column names its Inception network,
  `fid [fresh] (fid_inception)`: only fid_inception's numbers compare with the papers'), the AIS
  log Z (with its standard error) and test log-likelihood (nats, bits/dim); a second table with
  the number of images behind every number; the plots side by side.
* `report.json`: every run's full results, the table's columns and cells, and the counts.
* `report_<plot>.png`: each plot kind of every run side by side (one panel per run), and
  `report_robustness.png`, the robust-accuracy curves of all runs on the same axes.

The columns, image counts and plots after the OOD AUROCs come from the registered evaluators
(`registry.Evaluator.columns`, `counts`, `compare_plots`, in registration order), so a new
evaluation brings its own. A cell is "-" where a run lacks the
evaluation (e.g. no FID for a classifier without a sampler).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np

from keras_ebm import report_tables
from keras_ebm.evaluation import plots

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any


def _log(msg):
    print(f"[keras_ebm.report] {msg}", flush=True)


def results_path(path: str | os.PathLike) -> str:
    """The results.json of a run directory, its eval directory, or the file itself."""
    candidates = [path, os.path.join(path, "results.json"), os.path.join(path, "eval", "results.json")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"No results.json for {path!r} (looked for {candidates[1]} and {candidates[2]}): run "
        f"`python eval.py --model_dir={path}` first."
    )


def run_folder(eval_dir: str | os.PathLike) -> str:
    """The run directory of an eval directory (`<run>/eval`), relative to the working directory
    when it lies below it."""
    run_dir = os.path.dirname(eval_dir) if os.path.basename(eval_dir) == "eval" else eval_dir
    rel = os.path.relpath(run_dir)
    return run_dir if rel.startswith("..") else rel


def run_name(run_dir: str | os.PathLike) -> str | None:
    """A run's row name, by what it is: `<trainer> (<config>)`, e.g. "SADAJEM (quickstart)",
    "SoftmaxClassifier (quickstart, baseline)". The trainer comes from training_summary.json or
    the run's config.gin (`run_training.trainer`), the config from the gin files config.gin
    records (`run_config.config_files`); None when the folder does not tell both (a run not written by
    train.py: the folder's name is used)."""
    import re

    trainer = None
    summary = os.path.join(run_dir, "training_summary.json")
    if os.path.isfile(summary):
        with open(summary) as f:
            trainer = json.load(f).get("trainer")
    config = os.path.join(run_dir, "config.gin")
    text = open(config).read() if os.path.isfile(config) else ""
    if trainer is None:
        found = re.findall(r"^run_training\.trainer = @(?:\S+/)?([\w.]+)", text, re.M)
        trainer = found[-1].rsplit(".", 1)[-1] if found else None
    if trainer is None:
        return None
    from keras_ebm import run_config

    stems = [os.path.splitext(os.path.basename(f))[0] for f in run_config.config_files(run_dir)]
    if re.search(r"^run_training\.baseline = None$", text, re.M) and "\n# The baseline trained" in text:
        stems.append("baseline")
    return f"{trainer} ({', '.join(stems)})" if stems else None  # config unknown: the folder names it


def load_runs(
    paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None
) -> dict[str, tuple[str, dict[str, Any]]]:
    """`{name: (eval_dir, results)}`; names default to each run's trainer and config (`run_name`,
    e.g. "SADAJEM (quickstart)"), else the run directory's name, made unique."""
    if not paths:
        raise ValueError("Pass at least one run directory to compare. Received: none")
    if names is not None and len(names) != len(paths):
        raise ValueError(f"Pass one name per run. Received: {len(names)} names for {len(paths)} runs")
    runs = {}
    for i, path in enumerate(paths):
        file = results_path(path)
        eval_dir = os.path.dirname(os.path.abspath(file))
        if names is not None:
            name = names[i]
        else:
            run_dir = os.path.dirname(eval_dir) if os.path.basename(eval_dir) == "eval" else eval_dir
            name = run_name(run_dir) or os.path.basename(os.path.normpath(run_dir)) or f"run{i}"
        base, k = name, 2
        while name in runs:
            name, k = f"{base}_{k}", k + 1
        with open(file) as f:
            runs[name] = (eval_dir, json.load(f))
    return runs


def union(keys_per_run: Iterable[Iterable[str]]) -> list[str]:
    """The keys of every run, each once, in the order they first appear."""
    out = []
    for keys in keys_per_run:
        for k in keys:
            if k not in out:
                out.append(k)
    return out


_FORMATS = {"pct": report_tables.percent, "num": report_tables.number}  # the quickstart's comparison table's formats


def _columns(results_list, scores=None):
    """[(column title, getter(results) -> value)] and {title: "pct" or "num"}: accuracy, ECE, the
    OOD AUROCs, then the columns of every registered evaluator (`Evaluator.columns`)."""
    from keras_ebm.evaluation import registry

    cols = [("accuracy", lambda r: r.get("accuracy")), ("ECE", lambda r: r.get("ece"))]
    kinds = {"accuracy": "pct", "ECE": "pct"}
    ood_sets = sorted(union([r.get("ood", {}) for r in results_list]))  # by name, in every run's row
    for ood in ood_sets:
        for score in union([r.get("ood", {}).get(ood, {}) for r in results_list]):
            if scores and score not in scores:
                continue
            title = f"AUROC {ood} [{score}]"
            cols.append((title, lambda r, o=ood, s=score: r.get("ood", {}).get(o, {}).get(s)))
            kinds[title] = "num"
    for cls in registry.keyed():
        for title, get, kind in cls.columns(results_list):
            cols.append((title, get))
            kinds[title] = kind
    return cols, kinds


def image_counts(results: Mapping[str, Any]) -> dict[str, int]:
    """How many images each number of a run used: `{what: count}`."""
    from keras_ebm.evaluation import registry

    counts = {}
    if results.get("num_examples") is not None:
        counts["test images (accuracy, ECE, OOD in-distribution)"] = results["num_examples"]
    for ood, n in (results.get("num_ood_examples") or {}).items():
        counts[f"OOD {ood} images"] = n
    for cls in registry.keyed():
        counts.update(cls.counts(results.get(cls.key) or {}))
    return counts


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _plot_files(eval_dir):
    """{plot kind: path} of a run's eval directory (sample grids under samples/)."""
    found = {}
    for sub in ("", "samples"):
        folder = os.path.join(eval_dir, sub)
        if not os.path.isdir(folder):
            continue
        for file in sorted(os.listdir(folder)):
            if file.endswith(".png"):
                kind = f"samples_{file[:-4]}" if sub else file[:-4]
                found[kind] = os.path.join(folder, file)
    return found


def side_by_side(paths_by_run: Mapping[str, str], path: str | os.PathLike, title: str | None = None) -> str:
    """One figure, one panel per run, each showing that run's PNG (`{run name: png path}`)."""
    from matplotlib.image import imread

    names = list(paths_by_run)
    images = [imread(paths_by_run[n]) for n in names]
    widths = [im.shape[1] for im in images]
    height = max(im.shape[0] for im in images)
    scale = 1.0 / 110  # plots are saved at 110 dpi
    fig = plots._figure(figsize=(max(sum(widths) * scale, 3), height * scale + 0.5), dpi=110)
    axes = np.atleast_1d(fig.subplots(1, len(names), gridspec_kw={"width_ratios": widths}))
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=0.9 if title else 0.95, wspace=0.03)
    for ax, name, image in zip(axes, names, images):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(name, fontsize=10, fontweight="bold")
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return plots._save(fig, path)


def compare_runs(
    paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    names: Sequence[str] | None = None,
    scores: Sequence[str] | None = None,
    title: str = "Comparison",
) -> dict[str, Any]:
    """Writes report.md, report.json and the side-by-side plots for the runs at `paths`.

    Args:
        paths: run directories (`<run>/eval/results.json`), eval directories or results.json files.
        output_dir: where the report goes.
        names: row names (default each run's trainer and config, `run_name`; the run folders
            are the table's second column).
        scores: optional OOD score names to keep as AUROC columns and histogram plots (default every
            score).
        title: the report's heading.

    Returns:
        dict: `columns`, `rows` ({model: {column: value}}), `counts` ({model: {what: images}}),
        `plots` (file names), `runs` (each run's results) — also written to report.json.
    """
    runs = load_runs(list(paths), names)
    folders = {name: run_folder(d) for name, (d, _) in runs.items()}
    os.makedirs(output_dir, exist_ok=True)
    results_list = [r for _, r in runs.values()]
    cols, kinds = _columns(results_list, scores)
    rows, cells = {}, []
    for name, (_, r) in runs.items():
        rows[name] = {title_: get(r) for title_, get in cols}
        cells.append([name, folders[name]] + [_FORMATS[kinds[t]](rows[name][t]) for t, _ in cols])
    counts = {name: image_counts(r) for name, (_, r) in runs.items()}
    what = union(counts.values())

    plot_files = {name: _plot_files(d) for name, (d, _) in runs.items()}
    from keras_ebm.evaluation import registry

    written = [path for cls in registry.keyed() for path in cls.compare_plots(runs, output_dir)]
    for kind in union(plot_files.values()):
        if scores and kind.startswith("scores_") and kind[len("scores_") :] not in scores:
            continue  # a score the table leaves out
        have = {name: files[kind] for name, files in plot_files.items() if kind in files}
        written.append(side_by_side(have, os.path.join(output_dir, f"report_{kind}.png"), title=kind))

    notes = union([[r["notes"]] for r in results_list if r.get("notes")])
    lines = [
        f"# {title}",
        "",
        "Rows: models; robust accuracy in %, epsilons in [0, 255] pixel units; "
        "classifier_fd / classifier_score / classifier_kd are computed in the feature space of a "
        "classifier trained with keras_ebm (named in the JSON), not Inception: they rank runs measured "
        "with the same network and are not FID / IS / KID.",
        "",
    ]
    lines += _table(["model", "run folder"] + [t for t, _ in cols], cells)
    lines += ["", "Images behind each number", ""]
    lines += _table(["model"] + what, [[n] + [counts[n].get(w, "-") for w in what] for n in runs])
    if notes:
        lines += [""] + [f"Notes: {n}" for n in notes]
    lines += ["", "## Plots", ""]
    for path in written:
        lines += [f"![{os.path.basename(path)[:-4]}]({os.path.basename(path)})", ""]
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    report = {
        "columns": [t for t, _ in cols],
        "rows": rows,
        "counts": counts,
        "plots": [os.path.basename(p) for p in written],
        "runs": {name: {"run_folder": folders[name], "eval_dir": d, "results": r} for name, (d, r) in runs.items()},
    }
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    _log(f"wrote {output_dir}/report.md, report.json and {len(written)} plots ({len(runs)} runs, {len(cols)} columns)")
    return report
