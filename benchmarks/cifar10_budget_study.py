"""Same-time study on real CIFAR-10: each method trained for the same wall-clock minutes, side by side.

Each row runs train.py in its own process, one after the other on the same machine, with the
method's gin config, the offline CIFAR-10 overlay (gin_configs/data/cifar10_local.gin: the local
JPEG archive, DTD / interp / CelebA-subset OOD sets) and gin_configs/cpu_budget.gin (WRN-10-2,
batch 64, `run_training.max_minutes`). Training stops on the clock, exports, and eval.py's
`run_eval` scores the export; the script then prints a markdown table and writes JSON with every
row's steps reached, accuracy, ECE and OOD AUROCs.

    python benchmarks/cifar10_budget_study.py --minutes=10
    python benchmarks/cifar10_budget_study.py --methods=softmax,hdge --minutes=2 --output_dir=runs/study

The issues ask for this on a GPU ("train <method> side by side with the softmax baseline for the
same time"); this script is that protocol on whatever device it runs on. Rows run sequentially, so
keep the machine otherwise idle: a row that shares the cores trains fewer steps.
"""

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # keras_ebm from this checkout when it is not installed

from absl import app, flags  # noqa: E402

from _common import device_name  # noqa: E402  (benchmarks/ is on sys.path as the script's folder)

# name -> method config (paper settings; the overlay changes only network, batch, warmup, budget)
METHODS = {
    "softmax": "gin_configs/softmax_cifar10.gin",
    "hdge": "gin_configs/hdge_nobn.gin",  # the no-BN Adam recipe (HDGE Tables 2-4) the recorded study ran
    "hdge_bn": "gin_configs/hdge.gin",  # Table 1's WRN + BN, SGD recipe
    "gmmc_dis": "gin_configs/gmmc_dis.gin",
    "gmmc_gen": "gin_configs/gmmc_gen.gin",
    "sadajem": "gin_configs/sadajem.gin",
    "jempp": "gin_configs/jempp.gin",
    "jem": "gin_configs/jem.gin",
    "hdge_jem": "gin_configs/hdge_jem.gin",
}

flags.DEFINE_list(
    "methods", ["softmax", "hdge", "gmmc_dis", "gmmc_gen", "sadajem"], f"Rows to run, from {sorted(METHODS)}."
)
flags.DEFINE_float("minutes", 10.0, "Training budget per method (export and evaluation not counted).")
flags.DEFINE_string("output_dir", "runs/cifar10_budget_study", "Where each method's model_dir goes.")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/<device>_cifar10_budget.json).")
flags.DEFINE_multi_string("gin_param", [], "Extra bindings for every row, e.g. 'run_eval.max_examples = 1000'.")
flags.DEFINE_bool("resume", False, "Keep finished rows (a model_dir with eval/results.json) instead of retraining.")
FLAGS = flags.FLAGS


def run_method(name, model_dir):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        f"--model_dir={model_dir}",
        f"--gin_file={METHODS[name]}",
        "--gin_file=gin_configs/data/cifar10_local.gin",
        "--gin_file=gin_configs/cpu_budget.gin",
        f"--gin_param=BUDGET_MINUTES = {FLAGS.minutes}",
    ]
    cmd += [f"--gin_param={p}" for p in FLAGS.gin_param]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return collect(name, model_dir, wall_seconds=round(time.time() - t0, 1))


def collect(name, model_dir, wall_seconds=None):
    with open(os.path.join(model_dir, "training_summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(model_dir, "eval", "results.json")) as f:
        results = json.load(f)
    return {
        "method": name,
        "config": METHODS[name],
        "trainer": summary["trainer"],
        "steps": summary["last_step"],
        "train_seconds": summary["seconds"],
        "s_per_step": round(summary["seconds"] / max(summary["last_step"] - summary["first_step"], 1), 4),
        "recoveries": summary["recoveries"],
        "accuracy": results["accuracy"],
        "ece": results["ece"],
        "auroc": results["ood"],
        "details": results["ood_details"],
        "wall_seconds_with_eval": wall_seconds,
        "model_dir": model_dir,
    }


def table(rows):
    from keras_ebm.report_tables import comparison_table

    return comparison_table(
        {r["method"]: {"accuracy": r["accuracy"], "ece": r["ece"], "ood": r["auroc"]} for r in rows},
        extra_columns={
            "steps": {r["method"]: str(r["steps"]) for r in rows},
            "s/step": {r["method"]: f"{r['s_per_step']:.3f}" for r in rows},
        },
    )


def main(argv):
    del argv
    unknown = [m for m in FLAGS.methods if m not in METHODS]
    if unknown:
        raise app.UsageError(f"Unknown methods {unknown}; choose from {sorted(METHODS)}.")
    rows = []
    for name in FLAGS.methods:
        model_dir = os.path.join(FLAGS.output_dir, name)
        done = os.path.join(model_dir, "eval", "results.json")
        if not FLAGS.resume and os.path.isdir(model_dir):
            raise app.UsageError(
                f"{model_dir} exists: pass --resume to keep its result, or remove it "
                "(train.py would resume its checkpoint with a fresh budget)."
            )
        rows.append(collect(name, model_dir) if os.path.exists(done) else run_method(name, model_dir))
    out = {
        "device": device_name(),
        "minutes_per_method": FLAGS.minutes,
        "overlay": "gin_configs/data/cifar10_local.gin + gin_configs/cpu_budget.gin",
        "extra_bindings": FLAGS.gin_param,
        "data_caveat": "CIFAR-10 from JPEG (quality 75) copies, not the canonical binaries; DTD is a "
        "10-category, 1,200-image subset; celeba32 is a small CelebA subset.",
        "rows": rows,
    }
    print("\n" + table(rows), flush=True)
    path = FLAGS.output or os.path.join(ROOT, "benchmarks", "results", f"{out['device']}_cifar10_budget.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(table(rows))
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    app.run(main)
