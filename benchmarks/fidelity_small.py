"""The official small recipes, run with keras_ebm on real CIFAR-10, beside the official runs' figures.

The official PyTorch code was run on this kind of machine (2-core CPU) at a small scale: WRN-10-2,
a few hundred to 1,200 iterations on the real CIFAR-10 (JEM: wgrathwohl/JEM train_wrn_ebm.py;
SADA-JEM: sndnyang/SADAJEM train_sadajem.py). This script runs the same recipes with this library
and writes one table (markdown + JSON) beside those figures:

| row | recipe | official run (same machine kind) |
|---|---|---|
| `ce` | cross-entropy: WRN-10-2 without BN, Adam 1e-4, warm-up 200, batch 64, pad-crop-flip + N(0, 0.03^2), 1,200 iterations | 34% test accuracy, ECE 0.05 |
| `jem_noguard` | JEM: the same plus p(x) with SGLD K=5 (step 1, noise 0.01, buffer 10k, reinit 5%, p(x) batch 64), no guard | unstable from ~iteration 100-150; abs(L) > 1e8 at ~265 (seeds 1, 2: crash at 267 / 264) |
| `jem_guard` | the same JEM run with jem.gin's DivergenceGuard, 1,200 iterations | (the official code stops) |
| `sadajem` | SADA-JEM short recipe: WRN-10-2 with BN, SAM rho 0.2 over SGD 0.1 / momentum 0.9 / wd 5e-4, warm-up 200, classifier batch 128 augmented + p(x) batch 64 plain, informative init, K=5, 591 iterations | 42.5% test accuracy, ECE 0.113, no divergence |
| `sadajem_ce` | its matched cross-entropy run: same network and optimizer without p(x) and SAM, 600 iterations | 54.0%, ECE 0.041 |

Each row is `train.py` with the method's config, `gin_configs/data/cifar10_local.gin` and
`gin_configs/cpu_budget.gin` (WRN-10-2, batch 64, warm-up 200), `log_every = 1` so every step's
scalars reach TensorBoard, and the row's own bindings below. The unguarded JEM run keeps going past
abs(L) > 1e8 (it stops only on a non-finite value); its trajectory is replayed through each of the
divergence guard's detectors to report the step at which each signal fires. Per row: steps, s/step,
test accuracy and ECE (20 bins) on the 10,000 test images, training accuracy per 50-step window,
recoveries of the guard and what each changed.

    python benchmarks/fidelity_small.py                           # every row, ~1.5 h on 2 cores
    python benchmarks/fidelity_small.py --rows=ce,jem_noguard     # some rows
    python benchmarks/fidelity_small.py --resume                  # keep finished rows, run the rest

Caveat to state with every number: the local CIFAR-10 is JPEG (quality 75) copies of the images,
not the canonical binaries; these are 1-2 epoch CPU runs, which check stability and fidelity to the
official code's behaviour, not the papers' headline numbers.
"""  # noqa: E501  (Markdown table rows: a table row cannot wrap)

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from _common import device_name  # noqa: E402

_OVERLAY = ["gin_configs/data/cifar10_local.gin", "gin_configs/cpu_budget.gin"]
_COMMON = [
    "run_training.max_minutes = None",
    "run_training.log_every = 1",
    "run_training.checkpoint_every = 50",
]
_JEM_SMALL = ["SGLD_STEPS = 5"]
ROWS = {
    "ce": dict(
        config="gin_configs/jem.gin",
        steps=1200,
        params=_JEM_SMALL + ["JEM.px_weight = 0.0", "run_training.divergence_guard = None"],
        official={"accuracy": 0.34, "ece": 0.05, "note": "1,200 iterations, 0.25 s/iteration"},
    ),
    "jem_noguard": dict(
        config="gin_configs/jem.gin",
        steps=1200,
        params=_JEM_SMALL + ["run_training.divergence_guard = None"],
        official={
            "note": "unstable from ~100-150; abs(L) > 1e3 at ~204, > 1e8 at ~265 "
            "(crash at 267 / 264, seeds 1 / 2); 11% accuracy, ECE 0.89; "
            "1.37 s/iteration"
        },
    ),
    "jem_guard": dict(
        config="gin_configs/jem.gin",
        steps=1200,
        params=_JEM_SMALL,
        official={"note": "the official code has no recovery: it stops at abs(L) > 1e8"},
    ),
    "sadajem": dict(
        config="gin_configs/sadajem.gin",
        steps=591,
        params=["GLOBAL_BATCH_SIZE = 128", "PX_BATCH_SIZE = 64"],
        official={"accuracy": 0.425, "ece": 0.113, "note": "591 iterations, 2.9 s/iteration, largest p(x) loss 1.37"},
    ),
    "sadajem_ce": dict(
        config="gin_configs/sadajem.gin",
        steps=600,
        params=[
            "GLOBAL_BATCH_SIZE = 128",
            "PX_BATCH_SIZE = 64",
            "SADAJEM.px_weight = 0.0",
            "SADAJEM.gradients = @PlainGradients()",
            "run_training.divergence_guard = None",
        ],
        official={"accuracy": 0.54, "ece": 0.041, "note": "600 iterations, 0.49 s/iteration"},
    ),
}

flags.DEFINE_list("rows", list(ROWS), f"Rows to run, from {list(ROWS)}.")
flags.DEFINE_string("output_dir", "runs/fidelity_small", "Where each row's model_dir goes.")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/<device>_fidelity_small.json).")
flags.DEFINE_bool("resume", False, "Keep finished rows instead of retraining them.")
flags.DEFINE_integer("seed", 0, "run_training.seed of every row.")
flags.DEFINE_string(
    "mixed_precision",
    None,
    "run_training.mixed_precision of every row (e.g. mixed_bfloat16); "
    "record such runs with --output and --output_dir of their own.",
)
FLAGS = flags.FLAGS


def read_scalars(model_dir):
    """{tag: {step: value}} from the run's TensorBoard event files (every step: log_every = 1)."""
    import tensorflow as tf

    out = {}
    logdir = os.path.join(model_dir, "tensorboard")
    for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []:
        for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.ndim:  # image summaries (sample grids), not scalars
                    continue
                out.setdefault(value.tag, {})[int(event.step)] = float(array)
    return out


def trajectory(scalars, keys=("loss", "clf_loss", "clf_acc", "px_loss", "energy_data", "energy_sample", "energy_gap")):
    """Per-step logs `[{key: value}]` in step order (the last write of a step wins: after a
    divergence recovery the restored steps are trained again)."""
    steps = sorted(set().union(*(scalars.get(k, {}).keys() for k in keys)))
    return steps, [{k: scalars[k][s] for k in keys if s in scalars.get(k, {})} for s in steps]


def signal_onsets(steps, logs):
    """Replay a trajectory through the divergence guard's detectors (jem.gin's settings) and return
    the first step at which each signal fires, plus the official code's abs(L) > 1e3 / 1e8 marks."""
    import gin

    from keras_ebm import run_config
    from keras_ebm.divergence import DivergenceGuard

    with gin.unlock_config():  # collect() runs once per row in one process
        gin.clear_config()
        run_config.parse_gin(["gin_configs/jem.gin"], [])
    guard = run_config.resolve_parameter("run_training.divergence_guard")  # jem.gin's bound guard
    assert isinstance(guard, DivergenceGuard)
    first = {}
    monitor = guard.monitor()
    for step, log in zip(steps, logs):
        for signal in monitor.update(step, log):
            first.setdefault(signal, step)
        for mark in (1e3, 1e8):
            if abs(log.get("loss", 0.0)) > mark or not np.isfinite(log.get("loss", 0.0)):
                first.setdefault(f"abs(loss) > {mark:g}", step)
    return first


def windows(steps, logs, key="clf_acc", width=50):
    out = []
    for lo in range(0, (steps[-1] if steps else 0), width):
        vals = [log[key] for s, log in zip(steps, logs) if lo < s <= lo + width and key in log]
        if vals:
            out.append({"steps": f"{lo + 1}-{lo + width}", key: round(float(np.mean(vals)), 4)})
    return out


def run_row(name, model_dir):
    row = ROWS[name]
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        f"--model_dir={model_dir}",
        f"--gin_file={row['config']}",
    ] + [f"--gin_file={f}" for f in _OVERLAY]
    params = (
        _COMMON + row["params"] + [f"run_training.train_steps = {row['steps']}", f"run_training.seed = {FLAGS.seed}"]
    )
    if FLAGS.mixed_precision:
        params.append(f"run_training.mixed_precision = '{FLAGS.mixed_precision}'")
    cmd += [f"--gin_param={p}" for p in params]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    with open(os.path.join(model_dir, "row_status.json"), "w") as f:
        json.dump({"returncode": code, "wall_seconds": round(time.time() - t0, 1)}, f)
    return collect(name, model_dir)


def collect(name, model_dir):
    row = ROWS[name]
    with open(os.path.join(model_dir, "row_status.json")) as f:
        status = json.load(f)
    scalars = read_scalars(model_dir)
    steps, logs = trajectory(scalars)
    out = {
        "row": name,
        "config": row["config"],
        "bindings": row["params"],
        "train_steps": row["steps"],
        "official": row["official"],
        "returncode": status["returncode"],
        "wall_seconds": status["wall_seconds"],
        "last_logged_step": steps[-1] if steps else 0,
    }
    summary_path = os.path.join(model_dir, "training_summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        out.update(
            steps=summary["last_step"],
            train_seconds=summary["seconds"],
            s_per_step=round(summary["seconds"] / max(summary["last_step"] - summary["first_step"], 1), 3),
            recoveries=summary["recoveries"],
        )
    results_path = os.path.join(model_dir, "eval", "results.json")
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
        out.update(accuracy=results["accuracy"], ece=results["ece"], auroc=results["ood"])
    events_path = os.path.join(model_dir, "divergence_events.jsonl")
    if os.path.exists(events_path):
        with open(events_path) as f:
            out["divergence_events"] = [json.loads(line) for line in f if line.strip()]
    # Unguarded rows: replay the trajectory through jem.gin's detectors. Guarded rows ran them live
    # (their recoveries are the divergence events; replaying a trajectory stitched across
    # recoveries, with the remedies' penalty on, would not be what the guard saw).
    guarded = "run_training.divergence_guard = None" not in row["params"]
    out["signal_onsets"] = {} if guarded else signal_onsets(steps, logs)
    out["guarded"] = guarded
    out["train_accuracy_per_50_steps"] = windows(steps, logs)
    finite = [log for log in logs if all(np.isfinite(v) for v in log.values())]
    out["max_abs_loss"] = max((abs(log["loss"]) for log in finite if "loss" in log), default=None)
    out["max_px_loss"] = max((log["px_loss"] for log in finite if "px_loss" in log), default=None)
    with open(os.path.join(model_dir, "trajectory.json"), "w") as f:
        json.dump({"steps": steps, "logs": logs}, f)
    return out


def fmt(v, pct=False):
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3g}"


def table(rows):
    lines = [
        "| row | steps | s/step | test acc. | ECE | official acc. / ECE | signals (first step) | recoveries |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        off = r["official"]
        official = f"{fmt(off.get('accuracy'), True)} / {fmt(off.get('ece'))}" if "accuracy" in off else off["note"]
        signals = ", ".join(f"{k} @ {v}" for k, v in sorted(r["signal_onsets"].items(), key=lambda kv: kv[1])) or (
            "live guard (see recoveries)" if r.get("guarded") else "none"
        )
        events = r.get("divergence_events", [])
        rec = (
            "; ".join(
                f"{e.get('fired')} at step {e.get('at_step')}, restored step {e['step']}: {e['change']}" for e in events
            )
            or "0"
        )
        lines.append(
            f"| {r['row']} | {r.get('steps', r['last_logged_step'])} | {fmt(r.get('s_per_step'))} | "
            f"{fmt(r.get('accuracy'), True)} | {fmt(r.get('ece'))} | {official} | {signals} | {rec} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    unknown = [r for r in FLAGS.rows if r not in ROWS]
    if unknown:
        raise app.UsageError(f"Unknown rows {unknown}; choose from {list(ROWS)}.")
    path = FLAGS.output or os.path.join(ROOT, "benchmarks", "results", f"{device_name()}_fidelity_small.json")
    previous = {}
    if os.path.exists(path):
        with open(path) as f:
            previous = {r["row"]: r for r in json.load(f)["rows"]}
    rows = dict(previous)
    for name in FLAGS.rows:
        model_dir = os.path.join(FLAGS.output_dir, name)
        done = os.path.exists(os.path.join(model_dir, "row_status.json"))
        if os.path.isdir(model_dir) and not FLAGS.resume:
            raise app.UsageError(f"{model_dir} exists: pass --resume to keep its result, or remove it.")
        rows[name] = collect(name, model_dir) if done else run_row(name, model_dir)
        ordered = [rows[n] for n in ROWS if n in rows]
        out = {
            "device": device_name(),
            "overlay": _OVERLAY,
            "common_bindings": _COMMON,
            "seed": FLAGS.seed,
            "mixed_precision": FLAGS.mixed_precision,
            "data_caveat": "CIFAR-10 from JPEG (quality 75) copies, not the canonical binaries; test "
            "accuracy and ECE (20 bins) on the 10,000 test images.",
            "rows": ordered,
        }
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
        with open(os.path.splitext(path)[0] + ".md", "w") as f:
            f.write(table(ordered))
    print("\n" + table([rows[n] for n in ROWS if n in rows]), flush=True)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    app.run(main)
