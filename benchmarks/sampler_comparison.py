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
        --rows=sgld,sgld@150,mala,hmc --output_dir=/tmp/sampler_comparison_cifar10

A row `<sampler>@<step>` (e.g. `--rows=sgld,sgld@150,mala,hmc`) is that sampler's run of the same
recipe stopped at `step` (`run_training.train_steps`; the schedules stay those of `--steps`), to
compare with a run evaluated at that step.

`--collect_only` tabulates the runs of `--output_dir` as they stand, without training or
evaluating: a run that has not finished (stopped by hand, or still going) becomes a row of its
divergence events, the last logged step of each attempt and its logged rates. The digits runs checkpoint only at step 0
(`checkpoint_every` 100000), so a divergence recovery restarts a run from its first step; the
CIFAR-10 runs checkpoint every 50 steps and recover from the newest good checkpoint, with the
remedies that keep the gradient evaluations per step (new seeds, energy L2, lower learning rate; not
more sampler steps). When the divergence guard gives up, the row is evaluated at the run's newest
good checkpoint (a copy, `<row>_last_good`, resumed there for no step) and says so.

Prints a markdown table and writes benchmarks/results/<device>_sampler_comparison[_cifar10].{json,md}.
A few hundred steps on a CPU: this shows how the samplers behave in the pipeline, not how they rank
at the papers' scale (WRN-28-10, 200 epochs).
"""

import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from _common import device_name  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_enum("recipe", "digits", ["digits", "cifar10"], "The SADA-JEM recipe the samplers train.")
flags.DEFINE_integer("steps", 300, "Training steps per run.")
flags.DEFINE_list(
    "rows",
    ["sgld", "mala", "hmc"],
    "Samplers to compare; `<sampler>@<step>`: that sampler's run stopped at `step` (same schedules).",
)
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
        # A fixed number of steps, not the overlay's minutes. A checkpoint every 50 steps, so that a
        # divergence recovery resumes from the newest good one (confirmed 100 steps later) instead
        # of step 0; recoveries change seeds, energy L2 and learning rate but never the number of
        # sampler steps, so every row keeps its 5 gradient evaluations per step.
        "bindings": [
            "run_training.max_minutes = None",
            "run_training.checkpoint_every = 50",
            "DivergenceGuard.remedies = ('energy_l2', 'lower_lr')",
        ],
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


def _row_bindings(name):
    """The bindings of row `name`: a sampler of ROWS, or `<sampler>@<step>`, that sampler's run of the
    same recipe (schedules of `--steps`) stopped at `step` (to compare with a run that ended there)."""
    sampler, _, step = name.partition("@")
    return ROWS[sampler] + ([f"run_training.train_steps = {int(step)}"] if step else [])


def _train(name, bindings):
    model_dir = os.path.join(FLAGS.output_dir, name)
    recipe = RECIPES[FLAGS.recipe]
    gin_files = recipe["softmax" if name == "softmax" else "sadajem"]
    params = COMMON + recipe.get("bindings", []) + [f"TRAIN_STEPS = {FLAGS.steps}"] + bindings
    failed = os.path.join(model_dir, "training_failed.txt")
    if not os.path.exists(os.path.join(model_dir, "training_summary.json")) and not os.path.exists(failed):
        try:
            _run(
                ["train.py", f"--model_dir={model_dir}"]
                + [f"--gin_file={g}" for g in gin_files]
                + [f"--gin_param={p}" for p in params]
            )
        except RuntimeError as error:  # e.g. the divergence guard gave up: the row says so
            if name == "softmax":
                raise
            with open(failed, "w") as f:
                f.write(str(error))
    return model_dir


def _final_trip(name):
    """(step, signals) of the last divergence in the failure text of a run the guard gave up on."""
    with open(os.path.join(FLAGS.output_dir, name, "training_failed.txt")) as f:
        trips = re.findall(r"training diverged at step (\d+): ([a-z_, ]+) in", f.read())
    return (int(trips[-1][0]), trips[-1][1].split(", ")) if trips else None


def _last_good(name, trip):
    """A run the divergence guard gave up on (`trip`: its `_final_trip`), evaluated at its newest
    confirmed-good checkpoint: the newest one at least `DivergenceGuard.confirm_steps` before the
    step of the final trip (the guard's own definition of good). Copied with its checkpoints up to that one into
    `<name>_last_good`, then resumed there for no step (`run_training.train_steps` = that step), so
    train.py exports and evaluates it as it does a finished run. None when no checkpoint qualifies."""
    import shutil

    import tensorflow as tf

    from keras_ebm.callbacks import listed_checkpoints

    source = os.path.join(FLAGS.output_dir, name)
    with open(os.path.join(source, "operative_config.gin")) as f:
        confirm = re.search(r"DivergenceGuard\.confirm_steps = (\d+)", f.read())
    limit = trip[0] - (int(confirm.group(1)) if confirm else 100)
    listed = listed_checkpoints(os.path.join(source, "checkpoints"))
    paths = [os.path.join(source, "checkpoints", p) for p in set(listed) if int(p.rsplit("-", 1)[1]) <= limit]
    if not paths:
        return None
    good = max(paths, key=lambda p: int(p.rsplit("-", 1)[1]))
    step = int(good.rsplit("-", 1)[1])
    target = os.path.join(FLAGS.output_dir, f"{name}_last_good")
    if not os.path.exists(os.path.join(target, "last_good.json")):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", "training_failed.txt"))
        checkpoints = os.path.join(target, "checkpoints")
        os.makedirs(checkpoints)
        for path in tf.io.gfile.glob(good + ".*"):
            shutil.copy(path, checkpoints)
        kept = os.path.basename(good)
        tf.compat.v1.train.update_checkpoint_state(checkpoints, kept, all_model_checkpoint_paths=[kept])
        if not tf.io.gfile.exists(os.path.join(checkpoints, kept + ".index")):
            raise FileNotFoundError(f"{good} was not copied to {checkpoints}")
        # A finished run only exports and evaluates (no training summary: it trained no step).
        _run(
            ["train.py", f"--model_dir={target}", f"--gin_file={os.path.join(target, 'config.gin')}"]
            + [f"--gin_param=run_training.{k}" for k in (f"train_steps = {step}", "export = True", "evaluate = True")]
        )
        with open(os.path.join(target, "last_good.json"), "w") as f:
            json.dump({"checkpoint": good, "step": step, "final_trip_step": trip[0]}, f)
    return target


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
        model_dir = os.path.join(FLAGS.output_dir, name) if FLAGS.collect_only else _train(name, _row_bindings(name))
        incomplete = None
        if not os.path.exists(os.path.join(model_dir, "training_summary.json")):
            incomplete = _incomplete_row(model_dir)
            given_up = os.path.exists(os.path.join(model_dir, "training_failed.txt"))
            trip = _final_trip(name) if given_up else None
            last_good = os.path.join(FLAGS.output_dir, f"{name}_last_good")
            if trip is not None and not FLAGS.collect_only:
                last_good = _last_good(name, trip) or last_good
            if not (trip is not None and os.path.exists(os.path.join(last_good, "last_good.json"))):
                rows[name] = incomplete
                continue
            incomplete["status"] = "gave up"
            incomplete["final_trip"] = {"at_step": trip[0], "fired": trip[1]}
            model_dir = last_good  # the numbers below are those of its newest good checkpoint
            with open(os.path.join(last_good, "last_good.json")) as f:
                step = json.load(f)["step"]
            summary = {"first_step": 0, "last_step": step, "seconds": None}
        else:
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
        if incomplete is not None:  # the run's own events and rates; the evaluated step is its last good one
            rows[name].update(incomplete)
    ood_names = sorted({o for r in rows.values() for o in r.get("auroc_log_px", {})})
    lines = [
        f"{RECIPES[FLAGS.recipe]['description']}, {FLAGS.steps} steps, 5 gradient evaluations of the energy per "
        f"step for every sampler; {FLAGS.samples} samples scored in the feature space of a softmax classifier "
        f"trained alike (not Inception); AIS with {FLAGS.ais_chains} chains x {FLAGS.ais_temperatures} "
        f"temperatures on {FLAGS.eval_examples} dequantised test images. Steps/s: over the training wall time "
        "(tracing included) / between logged steps (no tracing); shared CPU.",
        "",
        "| sampler | steps | acc | ECE | "
        + "".join(f"AUROC {o} | " for o in ood_names)
        + "classifier FD | classifier score | steps/s | steps/s (logged) | "
        "log Z (s.e.) | test LL nats | bits/dim | accept (last log) | step size (last log) |",
        "|---|---|---|---|" + "---|" * len(ood_names) + "---|---|---|---|---|---|---|---|---|",
    ]

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    notes = []
    for name, r in rows.items():
        g = r.get
        lines.append(
            f"| {name} | {num(g('steps'), 'd')} | {num(g('accuracy'), '.3f')} | {num(g('ece'), '.3f')} | "
            + "".join(f"{num(g('auroc_log_px', {}).get(o), '.3f')} | " for o in ood_names)
            + f"{num(g('classifier_fd'), '.3g')} | {num(g('classifier_score'), '.3g')} | "
            f"{num(g('steps_per_second'), '.2f')} | {num(g('logged_steps_per_second'), '.2f')} | "
            f"{num(g('ais_log_z'), '.1f')} ({num(g('ais_log_z_stderr'), '.2f')}) | "
            f"{num(g('test_ll_nats'), '.1f')} | {num(g('bits_per_dim'), '.3f')} | "
            f"{num(r['last_logged']['mcmc_accept_rate'], '.3f')} | {num(r['last_logged']['mcmc_step_size'], '.3g')} |"
        )
        if r["status"] != "complete":
            trips = "; ".join(
                f"step {e['at_step']}: {', '.join(e['fired'] or [])} (gap {num(e['energy_gap'], '.1f')}, "
                f"accept {num(e['mcmc_accept_rate'], '.3f')}, step size {num(e['mcmc_step_size'], '.2g')}) "
                f"-> restored {e['restored'] or '-'}"
                for e in r["divergence_events"]
            )
            what = (
                f"the divergence guard gave up at step {r['final_trip']['at_step']} "
                f"({', '.join(r['final_trip']['fired'])}, after its last recovery); its numbers are those of "
                f"its newest good checkpoint, step {r['steps']}"
                if r["status"] == "gave up"
                else "no training summary (not finished)"
            )
            notes.append(
                f"* {name}: {what}; last logged step of each attempt {r['last_logged_step_per_attempt']}; "
                f"divergence events: {trips or 'none'}."
            )
    if notes:
        lines += ["", "Rows that did not finish:", ""] + notes
    table = "\n".join(lines)
    print(table)
    suffix = "" if FLAGS.recipe == "digits" else f"_{FLAGS.recipe}"
    out = FLAGS.output or os.path.join(
        REPO, "benchmarks", "results", f"{device_name()}_sampler_comparison{suffix}.json"
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        record = {"recipe": FLAGS.recipe, "steps": FLAGS.steps, "rows": rows}
        record["settings"] = {k: _row_bindings(k) for k in FLAGS.rows}
        json.dump(record, f, indent=2)
    with open(out[: -len(".json")] + ".md", "w") as f:
        f.write(table + "\n")
    print(f"wrote {out} and {out[: -len('.json')]}.md")


if __name__ == "__main__":
    app.run(main)
