"""SGLD vs MALA vs HMC for SADA-JEM, at equal gradient evaluations, on digits or on CIFAR-10.

Every row is one SADA-JEM recipe trained for `--steps` steps with a different sampler, each spending
5 forward-and-backward passes of the energy per training step. `--recipe` picks the recipe:

* digits: the quickstart (gin_configs/quickstart.gin: real 8x8 digits, TinyCNN with BN, SAM,
  informative buffer); OOD sets: photo patches and interpolated digits.
* cifar10: the small CIFAR-10 recipe, gin_configs/sadajem.gin with gin_configs/data/cifar10_local.gin
  (the JPEG copies of CIFAR-10) and gin_configs/cpu_budget.gin (WRN-10-2 with BN, batch 64 + 64 p(x),
  warm-up 200), for a fixed number of steps instead of minutes; OOD sets: DTD, CelebA 32x32 and
  interpolated CIFAR-10. The softmax reference is gin_configs/softmax_cifar10.gin with the same
  overlays.

The samplers:

* sgld: the quickstart's proximal SGLD, K = 5 (step 1, noise 0, clamps).
* mala: MALASampler, 4 transitions + 1 pass to start the chain; proposal = SGLD step 1 with noise
  0.01 (step size 1e-4 at temperature 5e-5) and the clamp, Metropolis-corrected, adapted toward
  acceptance 0.574.
* hmc: HMCSampler, 1 transition of 4 leapfrog steps + 1 pass to start, temperature 5e-5, adapted
  toward acceptance 0.65.

plus a softmax classifier (same network, data, optimizer and steps) whose features score the
samples. Each run goes through train.py (which evaluates accuracy, ECE and OOD AUROC against real
photo patches and interpolated digits) and eval.py (`--samples` drawn with the run's own sampler,
scored by the classifier-feature FD / score of the softmax run; `--ais` test log-likelihood). Steps
per second are training steps over the training wall time, tracing included, on a shared machine.

    nice python benchmarks/sampler_comparison.py --steps=300 --output_dir=/tmp/sampler_comparison
    nice python benchmarks/sampler_comparison.py --recipe=cifar10 --steps=300 \
        --output_dir=/tmp/sampler_comparison_cifar10

`--collect_only` tabulates the runs of `--output_dir` as they stand, without training or evaluating: a
run that has not finished (stopped by hand, or still going) becomes a row of its divergence events,
the last logged step of each attempt and its logged rates. The runs checkpoint only at step 0
(`checkpoint_every` 100000), so a divergence recovery restarts a run from its first step.

Prints a markdown table and writes benchmarks/results/<device>_sampler_comparison[_cifar10].{json,md}.
A few hundred steps on a CPU: this shows how the samplers behave in the pipeline, not how they rank
at the papers' scale (WRN-28-10, 200 epochs).
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from _common import device_name  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_enum("recipe", "digits", ["digits", "cifar10"], "The SADA-JEM recipe the samplers train.")
flags.DEFINE_integer("steps", 300, "Training steps per run.")
flags.DEFINE_list("rows", ["sgld", "mala", "hmc"], "Samplers to compare.")
flags.DEFINE_string("output_dir", "/tmp/sampler_comparison", "Where the runs go.")
flags.DEFINE_integer("samples", 256, "Samples drawn per run for the classifier-feature scores.")
flags.DEFINE_integer("ais_chains", 32, "AIS chains.")
flags.DEFINE_integer("ais_temperatures", 500, "AIS temperatures.")
flags.DEFINE_integer("eval_examples", 200, "Test images for the AIS log-likelihood.")
flags.DEFINE_bool(
    "collect_only",
    False,
    "Train and evaluate nothing: tabulate what the runs in --output_dir hold; a run without a "
    "training summary (stopped by hand, or still going) is a row of its divergence events and logged rates.",
)
flags.DEFINE_string(
    "output", None, "JSON path (default benchmarks/results/<device>_sampler_comparison[_<recipe>].json)."
)
FLAGS = flags.FLAGS

COMMON = ["run_training.baseline = None", "run_training.checkpoint_every = 100000"]
# The gin files of each recipe: the SADA-JEM rows, then the softmax reference row.
RECIPES = {
    "digits": {
        "sadajem": ["gin_configs/quickstart.gin"],
        "softmax": ["gin_configs/quickstart.gin"],
        "description": "SADA-JEM on digits (quickstart)",
    },
    "cifar10": {
        "sadajem": ["gin_configs/sadajem.gin", "gin_configs/data/cifar10_local.gin", "gin_configs/cpu_budget.gin"],
        "softmax": [
            "gin_configs/softmax_cifar10.gin",
            "gin_configs/data/cifar10_local.gin",
            "gin_configs/cpu_budget.gin",
        ],
        "description": "SADA-JEM on CIFAR-10 (JPEG copies; sadajem.gin + cpu_budget.gin: WRN-10-2, batch 64 + 64)",
        # A fixed number of steps, not the overlay's minutes.
        "bindings": ["run_training.max_minutes = None"],
    },
}
ROWS = {
    "sgld": [],  # the quickstart's SGLDSampler
    "mala": [
        "MALASampler.n_steps = 4",
        "MALASampler.step_size = 1e-4",
        "MALASampler.temperature = 5e-5",
        "MALASampler.grad_clip = 1.0",
        "MALASampler.x_clip = %PIXEL_RANGE",
        "MALASampler.energy_training = True",
        "MALASampler.freeze_bn_stats = True",
        "SADAJEM.sampler = @MALASampler()",
    ],
    "hmc": [
        "HMCSampler.n_steps = 1",
        "HMCSampler.num_leapfrog_steps = 4",
        "HMCSampler.step_size = 1e-3",
        "HMCSampler.temperature = 5e-5",
        "HMCSampler.grad_clip = 1.0",
        "HMCSampler.x_clip = %PIXEL_RANGE",
        "HMCSampler.energy_training = True",
        "HMCSampler.freeze_bn_stats = True",
        "SADAJEM.sampler = @HMCSampler()",
    ],
    "softmax": ["run_training.trainer = @SoftmaxClassifier"],
}


def _run(args):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    print("$ " + " ".join(args), flush=True)
    out = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stdout[-3000:] + out.stderr[-5000:])
    return out.stdout + out.stderr


def _train(name, bindings):
    model_dir = os.path.join(FLAGS.output_dir, name)
    recipe = RECIPES[FLAGS.recipe]
    gin_files = recipe["softmax" if name == "softmax" else "sadajem"]
    params = COMMON + recipe.get("bindings", []) + [f"TRAIN_STEPS = {FLAGS.steps}"] + bindings
    if not os.path.exists(os.path.join(model_dir, "training_summary.json")):
        _run(
            ["train.py", f"--model_dir={model_dir}"]
            + [f"--gin_file={g}" for g in gin_files]
            + [f"--gin_param={p}" for p in params]
        )
    return model_dir


def _scalars(model_dir, tags):
    """[(wall_time, step, tag, value)] of the TensorBoard scalars `tags` the run logged, in file order
    (a restart after a divergence recovery writes a new file whose steps start again)."""
    import glob

    import tensorflow as tf

    out = []
    for path in sorted(glob.glob(os.path.join(model_dir, "tensorboard", "events.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag in tags:
                    number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                    out.append((event.wall_time, event.step, value.tag, number))
    return out


def _last_logged(model_dir, tags):
    """The last value of each TensorBoard scalar `tag` the run logged after a step (None when absent;
    the zeros a restart logs at step 0 are skipped)."""
    last = dict.fromkeys(tags)
    for _, step, tag, value in _scalars(model_dir, tags):
        if step > 0:
            last[tag] = value
    return last


def _logged_rate(model_dir):
    """Training steps per second between consecutive logged steps of one attempt (no tracing, no
    evaluation, no restart in it), and the last logged step of each attempt."""
    logged = [(t, step) for t, step, _, _ in _scalars(model_dir, ("loss",))]
    steps = seconds = 0.0
    reached = [0]
    for (t0, s0), (t1, s1) in zip(logged, logged[1:]):
        if s1 > s0 and s0 > 0:
            steps, seconds = steps + s1 - s0, seconds + t1 - t0
        if s1 > s0:
            reached[-1] = s1
        elif s1 < s0:
            reached.append(s1)
    return (steps / seconds if seconds else None), reached


def _incomplete_row(model_dir):
    events = []
    path = os.path.join(model_dir, "divergence_events.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                event = json.loads(line)
                values = event.get("values", {})
                events.append(
                    {
                        "at_step": event.get("at_step"),
                        "fired": event.get("fired"),
                        "restored": os.path.basename(event.get("restored") or ""),
                        "energy_gap": values.get("energy_gap"),
                        "loss": values.get("loss"),
                        "mcmc_accept_rate": values.get("mcmc_accept_rate"),
                        "mcmc_step_size": values.get("mcmc_step_size"),
                    }
                )
    rate, reached = _logged_rate(model_dir)
    return {
        "status": "incomplete",
        "divergence_events": events,
        "last_logged_step_per_attempt": reached,
        "logged_steps_per_second": rate,
        "last_logged": _last_logged(model_dir, ("mcmc_accept_rate", "mcmc_step_size", "energy_gap")),
    }


def main(argv):
    del argv
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    reference = os.path.join(FLAGS.output_dir, "softmax") if FLAGS.collect_only else _train("softmax", ROWS["softmax"])
    rows = {}
    for name in FLAGS.rows:
        start = time.time()
        if FLAGS.collect_only:
            model_dir = os.path.join(FLAGS.output_dir, name)
            if not os.path.exists(os.path.join(model_dir, "training_summary.json")):
                rows[name] = _incomplete_row(model_dir)
                continue
        else:
            model_dir = _train(name, ROWS[name])
        with open(os.path.join(model_dir, "training_summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(model_dir, "eval", "results.json")) as f:
            results = json.load(f)
        if "likelihood" not in results and not FLAGS.collect_only:  # not evaluated yet (a rerun only collects)
            _run(
                [
                    "eval.py",
                    f"--model_dir={model_dir}",
                    "--nostandard",
                    f"--samples={FLAGS.samples}",
                    "--generative",
                    "--inception_weights=none",
                    f"--feature_classifier={reference}",
                    "--ais",
                    f"--ais_chains={FLAGS.ais_chains}",
                    f"--ais_temperatures={FLAGS.ais_temperatures}",
                    f"--eval_examples={FLAGS.eval_examples}",
                ]
            )
            with open(os.path.join(model_dir, "eval", "results.json")) as f:
                results = json.load(f)
        logged = _last_logged(model_dir, ("mcmc_accept_rate", "mcmc_step_size", "energy_gap"))
        generative = next(iter(results.get("generative", {}).values()), {})
        likelihood = next(iter(results.get("likelihood", {}).values()), {})
        rows[name] = {
            "accuracy": results.get("accuracy"),
            "ece": results.get("ece"),
            "auroc_log_px": {o: s.get("log_px") for o, s in results.get("ood", {}).items()},
            "classifier_fd": generative.get("classifier_fd"),
            "classifier_score": generative.get("classifier_score"),
            "steps": summary["last_step"] - summary["first_step"],
            "train_seconds": summary.get("seconds"),
            "steps_per_second": (summary["last_step"] - summary["first_step"]) / summary["seconds"]
            if summary.get("seconds")
            else None,
            "ais_log_z": likelihood.get("log_z"),
            "ais_log_z_stderr": likelihood.get("log_z_stderr"),
            "ais_ess": likelihood.get("ess"),
            "test_ll_nats": likelihood.get("log_likelihood"),
            "bits_per_dim": likelihood.get("bits_per_dim"),
            "wall_seconds": round(time.time() - start, 1),
            "last_logged": logged,
            "status": "complete",
            "logged_steps_per_second": _logged_rate(model_dir)[0],
        }
    ood_names = sorted({o for r in rows.values() for o in r.get("auroc_log_px", {})})
    lines = [
        f"{RECIPES[FLAGS.recipe]['description']}, {FLAGS.steps} steps, 5 gradient evaluations of the energy per "
        f"step for every sampler; {FLAGS.samples} samples scored in the feature space of a softmax classifier "
        f"trained alike (not Inception); AIS with {FLAGS.ais_chains} chains x {FLAGS.ais_temperatures} "
        f"temperatures on {FLAGS.eval_examples} dequantised test images. Steps/s: over the training wall time "
        "(tracing included) / between logged steps (no tracing); shared CPU.",
        "",
        "| sampler | acc | ECE | "
        + "".join(f"AUROC {o} | " for o in ood_names)
        + "classifier FD | classifier score | steps/s | steps/s (logged) | "
        "log Z (s.e.) | test LL nats | bits/dim | accept (last log) | step size (last log) |",
        "|---|---|---|" + "---|" * len(ood_names) + "---|---|---|---|---|---|---|---|---|",
    ]

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    notes = []
    for name, r in rows.items():
        g = r.get
        lines.append(
            f"| {name} | {num(g('accuracy'), '.3f')} | {num(g('ece'), '.3f')} | "
            + "".join(f"{num(g('auroc_log_px', {}).get(o), '.3f')} | " for o in ood_names)
            + f"{num(g('classifier_fd'), '.3g')} | {num(g('classifier_score'), '.3g')} | "
            f"{num(g('steps_per_second'), '.2f')} | {num(g('logged_steps_per_second'), '.2f')} | "
            f"{num(g('ais_log_z'), '.1f')} ({num(g('ais_log_z_stderr'), '.2f')}) | "
            f"{num(g('test_ll_nats'), '.1f')} | {num(g('bits_per_dim'), '.3f')} | "
            f"{num(r['last_logged']['mcmc_accept_rate'], '.3f')} | {num(r['last_logged']['mcmc_step_size'], '.3g')} |"
        )
        if r["status"] == "incomplete":
            trips = "; ".join(
                f"step {e['at_step']}: {', '.join(e['fired'] or [])} (gap {num(e['energy_gap'], '.1f')}, "
                f"accept {num(e['mcmc_accept_rate'], '.3f')}, step size {num(e['mcmc_step_size'], '.2g')}) "
                f"-> restored {e['restored'] or '-'}"
                for e in r["divergence_events"]
            )
            notes.append(
                f"* {name}: no training summary (not finished); last logged step of each attempt "
                f"{r['last_logged_step_per_attempt']}; divergence events: {trips or 'none'}."
            )
    if notes:
        lines += ["", "Rows without numbers:", ""] + notes
    table = "\n".join(lines)
    print(table)
    suffix = "" if FLAGS.recipe == "digits" else f"_{FLAGS.recipe}"
    out = FLAGS.output or os.path.join(
        REPO, "benchmarks", "results", f"{device_name()}_sampler_comparison{suffix}.json"
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        record = {"recipe": FLAGS.recipe, "steps": FLAGS.steps, "rows": rows}
        record["settings"] = {k: ROWS[k] for k in FLAGS.rows}
        json.dump(record, f, indent=2)
    with open(out[: -len(".json")] + ".md", "w") as f:
        f.write(table + "\n")
    print(f"wrote {out} and {out[: -len('.json')]}.md")


if __name__ == "__main__":
    app.run(main)
