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

A cell is "-" where a run lacks the evaluation (e.g. no FID for a classifier without a sampler).
"""

import json
import os

import numpy as np

from keras_ebm import report_tables
from keras_ebm.evaluation import plots
from keras_ebm.evaluation import robustness as robustness_lib

INCEPTION_METRICS = ("fid", "inception_score", "kid")
GENERATIVE_METRICS = INCEPTION_METRICS + ("classifier_fd", "classifier_score", "classifier_kd")


def _log(msg):
    print(f"[keras_ebm.report] {msg}", flush=True)


def results_path(path):
    """The results.json of a run directory, its eval directory, or the file itself."""
    candidates = [path, os.path.join(path, "results.json"), os.path.join(path, "eval", "results.json")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"No results.json for {path!r} (looked for {candidates[1]} and {candidates[2]}): run "
        f"`python eval.py --model_dir={path}` first."
    )


def run_folder(eval_dir):
    """The run directory of an eval directory (`<run>/eval`), relative to the working directory
    when it lies below it."""
    run_dir = os.path.dirname(eval_dir) if os.path.basename(eval_dir) == "eval" else eval_dir
    rel = os.path.relpath(run_dir)
    return run_dir if rel.startswith("..") else rel


def run_name(run_dir):
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


def load_runs(paths, names=None):
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


def _union(keys_per_run):
    out = []
    for keys in keys_per_run:
        for k in keys:
            if k not in out:
                out.append(k)
    return out


_FORMATS = {"pct": report_tables.percent, "num": report_tables.number}  # the quickstart's comparison table's formats


def _columns(results_list, scores=None):
    """[(column title, getter(results) -> cell text, getter -> value)]."""
    cols = [("accuracy", lambda r: r.get("accuracy")), ("ECE", lambda r: r.get("ece"))]
    kinds = {"accuracy": "pct", "ECE": "pct"}
    ood_sets = sorted(_union([r.get("ood", {}) for r in results_list]))  # by name, in every run's row
    for ood in ood_sets:
        for score in _union([r.get("ood", {}).get(ood, {}) for r in results_list]):
            if scores and score not in scores:
                continue
            title = f"AUROC {ood} [{score}]"
            cols.append((title, lambda r, o=ood, s=score: r.get("ood", {}).get(o, {}).get(s)))
            kinds[title] = "num"
    robust = [r.get("robustness") or {} for r in results_list]
    for name in _union(robust):
        entries = [rb[name] for rb in robust if name in rb]
        if "robust_accuracy" in entries[0]:
            title = f"{name} clean"  # the attacked subset before the attack (epsilon 0)
            cols.append((title, lambda r, n=name: (r.get("robustness") or {}).get(n, {}).get("clean_accuracy")))
            kinds[title] = "pct"
            for eps in _union([e["epsilons"] for e in entries]):
                title = f"{name} eps {eps:g}"
                cols.append((title, lambda r, n=name, e=eps: _robust_at(r, n, e)))
                kinds[title] = "pct"
        else:  # C&W: the noise it needs ([0, 1] units) and how often it succeeds
            for key in ("mean_l2", "median_l2", "success_rate"):
                title = f"{name} {key}"
                cols.append((title, lambda r, n=name, k=key: (r.get("robustness") or {}).get(n, {}).get(k)))
                kinds[title] = "pct" if key == "success_rate" else "num"
    gen = [r.get("generative") or {} for r in results_list]
    for name in _union(gen):
        sample_set = name.split("/")[0]
        network = next(g[name].get("feature_network") for g in gen if name in g) or name.partition("/")[2]
        for metric in GENERATIVE_METRICS:
            if any(metric in g.get(name, {}) for g in gen):
                if metric in INCEPTION_METRICS:  # always say which Inception: only fid_inception's match papers
                    title = f"{metric} [{sample_set}] ({network})"
                elif len(_union(gen)) > len({n.split('/')[0] for n in _union(gen)}):
                    title = f"{metric} [{name}]"  # the same sample set in two feature spaces
                else:
                    title = f"{metric} [{sample_set}]"
                cols.append((title, lambda r, n=name, m=metric: (r.get("generative") or {}).get(n, {}).get(m)))
                kinds[title] = "num"
    for name in _union([r.get("sample_quality") or {} for r in results_list]):
        title = f"sample accuracy [{name}]"
        cols.append((title, lambda r, n=name: (r.get("sample_quality") or {}).get(n, {}).get("accuracy")))
        kinds[title] = "pct"
    for name in _union([r.get("likelihood") or {} for r in results_list]):
        for key, label in (("log_z", "log Z"), ("log_z_stderr", "log Z s.e."), ("log_likelihood", "test LL nats"),
                           ("bits_per_dim", "bits/dim")):
            title = f"{label} [{name}]"
            cols.append((title, lambda r, n=name, k=key: (r.get("likelihood") or {}).get(n, {}).get(k)))
            kinds[title] = "num"
    return cols, kinds


def _robust_at(results, name, eps):
    entry = (results.get("robustness") or {}).get(name)
    if not entry or "robust_accuracy" not in entry:
        return None
    for e, acc in zip(entry["epsilons"], entry["robust_accuracy"]):
        if float(e) == float(eps):
            return acc
    return None


def image_counts(results):
    """How many images each number of a run used: `{what: count}`."""
    counts = {}
    if results.get("num_examples") is not None:
        counts["test images (accuracy, ECE, OOD in-distribution)"] = results["num_examples"]
    for ood, n in (results.get("num_ood_examples") or {}).items():
        counts[f"OOD {ood} images"] = n
    for name, r in (results.get("robustness") or {}).items():
        counts[f"{name} images"] = r.get("num_attacked", r.get("num_examples")) if "robust_accuracy" not in r \
            else r.get("num_examples")
    for name, r in (results.get("generative") or {}).items():
        counts[f"{name.split('/')[0]} samples"] = r.get("num_samples")
        ref = r.get("reference", {})
        counts[f"reference {ref.get('dataset')}/{ref.get('split')} ({r.get('feature_network')})"] = ref.get("num_examples")
    for name, r in (results.get("sample_quality") or {}).items():
        counts[f"{name} samples classified"] = r.get("num_samples")
    for name, r in (results.get("likelihood") or {}).items():
        counts[f"{name} test images (AIS chains: {r.get('num_chains')})"] = r.get("num_examples")
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
                kind = (f"samples_{file[:-4]}" if sub else file[:-4])
                found[kind] = os.path.join(folder, file)
    return found


def side_by_side(paths_by_run, path, title=None):
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


def compare_runs(paths, output_dir, names=None, scores=None, title="Comparison"):
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
    what = _union(counts.values())

    plot_files = {name: _plot_files(d) for name, (d, _) in runs.items()}
    written = []
    curves = [dict(e, name=f"{name}: {key}") for name, (_, r) in runs.items()
              for key, e in (r.get("robustness") or {}).items() if "robust_accuracy" in e]
    if curves:
        written.append(robustness_lib.robustness_curve(curves, os.path.join(output_dir, "report_robustness.png"),
                                                       title="robust accuracy, all runs"))
    for kind in _union(plot_files.values()):
        if scores and kind.startswith("scores_") and kind[len("scores_"):] not in scores:
            continue  # a score the table leaves out
        have = {name: files[kind] for name, files in plot_files.items() if kind in files}
        written.append(side_by_side(have, os.path.join(output_dir, f"report_{kind}.png"), title=kind))

    notes = _union([[r["notes"]] for r in results_list if r.get("notes")])
    lines = [f"# {title}", "", "Rows: models; robust accuracy in %, epsilons in [0, 255] pixel units; "
             "classifier_fd / classifier_score / classifier_kd are computed in the feature space of a "
             "classifier trained with keras_ebm (named in the JSON), not Inception: they rank runs measured "
             "with the same network and are not FID / IS / KID.", ""]
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
    _log(f"wrote {output_dir}/report.md, report.json and {len(written)} plots ({len(runs)} runs, "
         f"{len(cols)} columns)")
    return report
