"""Kill-and-resume fuzzing of `train.py`: SIGKILL at random moments, rerun, compare with a clean run.

For every trainer config (softmax, JEM, SADA-JEM, HDGE, GMMC generative, CLEL small; tiny networks
from gin_configs/tiny.gin on real CIFAR-10 images, the local JPEG archive), this script

1. runs `train.py` twice uninterrupted with the same seed (reference; the two must agree bit for
   bit, which says whether training is deterministic on this CPU);
2. runs kill trials in fresh model directories: start `train.py`, send SIGKILL at a chosen moment,
   check what the kill left on disk, rerun the same command (sometimes killed again), and let the
   last run finish;
3. compares the finished trial with the reference: every variable of the final checkpoint (weights,
   BN statistics, optimizer iterations and slots, replay buffer, HDGE's queue, CLEL's EMA copies,
   RNG states, divergence recovery state; the checkpoint's own `save_counter` is bookkeeping and
   is not compared) and every variable of the exported SavedModel, bit-exact.

Kill moments (`KINDS`): `random` (a uniform delay within the reference run's wall time),
`checkpoint` (the moment a checkpoint write is in progress: TensorFlow's `ckpt-N_temp` staging
directory exists), `final_checkpoint` (the same for the last step's checkpoint), `export` (during
the SavedModel export: its `.export.tmp-*` staging directory exists, plus a random delay) and
`export_replace` (a finished run is rerun, which exports again over the existing export, and is
killed during that export).

After every kill: each checkpoint that the `checkpoint` state file lists must be readable in full
(`tf.train.load_checkpoint`, every tensor read, so CRCs are checked), and `<model_dir>/export` must
be either absent or a complete export (saved_model.pb, variables, metadata, all readable). Either
failure counts as `corrupt`. Staging directories left beside the export (`.export.tmp-*`,
`.export.old-*`) and checkpoint files that no state file lists are counted as litter (not visible
at the export path, never read by a resume), reported separately.

    python benchmarks/fault_injection.py                          # all six trainers, 9 kills each
    python benchmarks/fault_injection.py --trainers=softmax,jem --kills=3

Writes benchmarks/results/<device>_fault_injection.{json,md} and prints the table.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

TRAIN_STEPS = 12
CHECKPOINT_EVERY = 2
MAX_EXAMPLES = 512  # a 512-image slice of CIFAR-10 train: quick to load, a full shuffle buffer

COMMON = [
    "DATASET = 'cifar10_jpeg'",
    "IMAGE_SHAPE = (32, 32, 3)",
    f"TRAIN_STEPS = {TRAIN_STEPS}",
    f"run_training.checkpoint_every = {CHECKPOINT_EVERY}",
    "run_training.progress = False",
]
ONE_LOADER = [f"train/make_dataset_fn.max_examples = {MAX_EXAMPLES}"]
TWO_LOADERS = [f"train/make_two_branch_dataset_fn.max_examples = {MAX_EXAMPLES}"]

# name -> (config, extra bindings); gin_configs/tiny.gin is applied after the config.
TRAINERS = {
    "softmax": ("softmax_cifar10.gin", ONE_LOADER),
    "jem": ("jem.gin", TWO_LOADERS),
    "sadajem": ("sadajem.gin", TWO_LOADERS),
    "hdge": ("hdge.gin", ONE_LOADER),
    "gmmc_gen": (
        "gmmc_gen.gin",
        ONE_LOADER + [f"sigma/make_dataset_fn.max_examples = {MAX_EXAMPLES}", "GMMC.sigma_batches = 4"],
    ),
    "clel_small": ("clel_small.gin", ONE_LOADER + ["CLEL.ema_start_step = 2"]),  # EMA from step 2
}

KINDS = ("random", "checkpoint", "export", "final_checkpoint", "checkpoint", "export_replace", "random")
POLL = 0.0005  # seconds between looks at the model directory


def train_command(trainer, model_dir):
    config, extra = TRAINERS[trainer]
    cmd = [
        sys.executable,
        os.path.join(REPO, "train.py"),
        f"--gin_file={os.path.join(REPO, 'gin_configs', config)}",
        f"--gin_file={os.path.join(REPO, 'gin_configs', 'tiny.gin')}",
        f"--model_dir={model_dir}",
    ]
    return cmd + [f"--gin_param={b}" for b in COMMON + list(extra)]


def _env():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def launch(trainer, model_dir, log):
    return subprocess.Popen(
        train_command(trainer, model_dir), cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT
    )


def run_to_end(trainer, model_dir, log_path, timeout=600):
    """Run train.py to completion; returns (exit code, seconds, output)."""
    t0 = time.time()
    start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    with open(log_path, "ab") as log:
        proc = launch(trainer, model_dir, log)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
    with open(log_path, "rb") as f:
        f.seek(start)
        return rc, time.time() - t0, f.read().decode(errors="replace")


# ------------------------------------------------------------------------------- kill moments
def _staging(model_dir, pattern):
    return glob.glob(os.path.join(model_dir, pattern))


def _checkpoint_temp(model_dir, step=None, since=0.0):
    """Is a checkpoint (of `step`) being written, i.e. is there a `ckpt-N_temp` staging folder
    touched at or after `since`? (A kill leaves its staging folder behind: an old one is no sign.)"""
    ckpt = os.path.join(model_dir, "checkpoints")
    try:
        names = os.listdir(ckpt)
    except FileNotFoundError:
        return False
    want = None if step is None else f"ckpt-{step}_temp"
    for n in names:
        if n.endswith("_temp") and (want is None or n == want):
            try:
                if os.stat(os.path.join(ckpt, n)).st_mtime >= since:
                    return True
            except FileNotFoundError:
                pass
    return False


def kill_at(proc, model_dir, kind, rng, ref_seconds):
    """Wait for the moment `kind` (see the module docstring) and SIGKILL `proc` then.

    Returns a dict describing the kill, or None when the process ended before the moment came."""
    t0 = time.time()
    if kind == "random":
        # (the first ~40% of a run is Python, TensorFlow and gin start-up)
        deadline = t0 + rng.uniform(0.35, 1.05) * ref_seconds
        trigger = lambda: time.time() >= deadline  # noqa: E731
    elif kind == "checkpoint":
        # The write of a checkpoint not yet on disk, chosen at random.
        _, latest = listed_checkpoints(model_dir)
        done = int(latest.rsplit("-", 1)[1]) if latest else 0
        steps = [s for s in range(CHECKPOINT_EVERY, TRAIN_STEPS + 1, CHECKPOINT_EVERY) if s > done]
        target = int(rng.choice(steps)) if steps else TRAIN_STEPS
        trigger = lambda: _checkpoint_temp(model_dir, target, since=t0)  # noqa: E731
    elif kind == "final_checkpoint":
        trigger = lambda: _checkpoint_temp(model_dir, TRAIN_STEPS, since=t0)  # noqa: E731
    elif kind == "checkpoint_rewrite":
        # A checkpoint written again over itself (the state file already lists it). Never happens
        # since run_training writes each step once; kept to show what it did before.
        def trigger():
            ckpt = os.path.join(model_dir, "checkpoints")
            temps = [n[:-5] for n in (os.listdir(ckpt) if os.path.isdir(ckpt) else []) if n.endswith("_temp")]
            if not temps:
                return False
            try:
                with open(os.path.join(ckpt, "checkpoint")) as f:
                    state = f.read()
            except FileNotFoundError:
                return False
            return any(f'"{t}"' in state for t in temps)
    elif kind in ("export", "export_replace"):
        extra = rng.uniform(0.0, 1.5)
        seen = []
        # Staging folders of earlier kills stay behind: only a new one means this run exports.
        before = set(_staging(model_dir, ".export.*"))

        def trigger():
            if not seen and set(_staging(model_dir, ".export.tmp-*")) - before:
                seen.append(time.time())
            return bool(seen) and (
                time.time() - seen[0] >= extra or bool(set(_staging(model_dir, ".export.old-*")) - before)
            )
    else:
        raise ValueError(f"unknown kill kind {kind!r}")
    while proc.poll() is None:
        if trigger():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            out = {"kind": kind, "after_s": round(time.time() - t0, 3)}
            if kind == "checkpoint":
                out["step"] = target
            return out
        time.sleep(POLL)
    return None


# ------------------------------------------------------------------------------- checks
def read_checkpoint(prefix):
    """{variable key: array} of a TF checkpoint, every tensor read (checksums verified)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    return {
        k: reader.get_tensor(k)
        for k in sorted(reader.get_variable_to_shape_map())
        if k != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


def listed_checkpoints(model_dir):
    """The checkpoint prefixes the `checkpoint` state file lists (what a resume may read)."""
    import tensorflow as tf

    directory = os.path.join(model_dir, "checkpoints")
    state = tf.train.get_checkpoint_state(directory) if os.path.isdir(directory) else None
    if state is None:
        return [], None
    paths = [p if os.path.isabs(p) else os.path.join(directory, p) for p in state.all_model_checkpoint_paths]
    latest = state.model_checkpoint_path
    return paths, (latest if os.path.isabs(latest) else os.path.join(directory, latest))


def checkpoint_health(model_dir):
    """Every listed checkpoint readable? Plus the unlisted checkpoint files and staging leftovers."""
    try:
        paths, latest = listed_checkpoints(model_dir)
    except Exception as e:  # an unparsable state file is corruption too
        return {
            "listed": [],
            "unreadable": [f"checkpoint state file: {type(e).__name__}: {e}"],
            "stale": [],
            "unlisted": [],
            "latest": None,
        }
    unreadable, stale = [], []
    for p in sorted(set(paths) | ({latest} if latest else set())):
        if p != latest and not os.path.exists(p + ".index"):
            # TensorFlow's CheckpointManager lists the new checkpoint, deletes the rotated-out ones,
            # then lists again: a kill in between leaves an older entry whose files are gone.
            stale.append(os.path.basename(p))
            continue
        try:
            read_checkpoint(p)
        except Exception as e:
            unreadable.append(f"{os.path.basename(p)}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    directory = os.path.join(model_dir, "checkpoints")
    listed = {os.path.basename(p) for p in paths}
    unlisted = sorted(
        n
        for n in (os.listdir(directory) if os.path.isdir(directory) else [])
        if n != "checkpoint" and n.split(".")[0] not in listed
    )
    return {
        "listed": sorted(listed),
        "unreadable": unreadable,
        "stale": stale,
        "unlisted": unlisted,
        "latest": os.path.basename(latest) if latest else None,
    }


def export_health(model_dir):
    """Is `<model_dir>/export` absent or complete? Plus the staging folders beside it."""
    export = os.path.join(model_dir, "export")
    litter = sorted(os.path.basename(p) for p in _staging(model_dir, ".export.*"))
    if not os.path.exists(export):
        return {"visible": False, "complete": None, "problem": None, "litter": litter}
    problem = None
    try:
        for f in ("saved_model.pb", os.path.join("assets", "keras_ebm_export.json")):
            if not os.path.isfile(os.path.join(export, f)):
                raise FileNotFoundError(f)
        with open(os.path.join(export, "assets", "keras_ebm_export.json")) as f:
            json.load(f)
        read_checkpoint(os.path.join(export, "variables", "variables"))
    except Exception as e:
        problem = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return {"visible": True, "complete": problem is None, "problem": problem, "litter": litter}


def final_state(model_dir):
    """(checkpoint variables of the final step, export variables); `save_counter` left out."""
    prefix = os.path.join(model_dir, "checkpoints", f"ckpt-{TRAIN_STEPS}")
    state = {k: v for k, v in read_checkpoint(prefix).items() if not k.startswith("save_counter")}
    export = read_checkpoint(os.path.join(model_dir, "export", "variables", "variables"))
    return state, export


def compare(a, b):
    """(equal bit for bit, max |a - b| over float variables, keys that differ)."""
    differ, max_diff = [], 0.0
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            differ.append(k)
            continue
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape or x.dtype != y.dtype:
            differ.append(k)
            continue
        if x.dtype.kind == "f":
            eq = np.array_equal(x, y, equal_nan=True)
            if x.size:
                max_diff = max(max_diff, float(np.nanmax(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
        else:
            eq = np.array_equal(x, y)
        if not eq:
            differ.append(k)
    return not differ, max_diff, differ


def export_key(export):
    """An export's variables as a sorted list of (dtype, shape, bytes): the SavedModel numbers its
    `network_variables` in an order that is not the same from one process to the next."""
    out = []
    for v in export.values():
        a = np.asarray(v)
        out.append((str(a.dtype), tuple(a.shape), a.tobytes() if a.dtype != object else repr(a.tolist()).encode()))
    return sorted(out)


def compare_runs(ref, other):
    """Final checkpoint bit for bit (key by key) and export variables as a set of values."""
    equal, diff, differ = compare(ref[0], other[0])
    if export_key(ref[1]) != export_key(other[1]):
        equal = False
        differ = differ + ["export variables"]
    return equal, diff, differ


def other_files(model_dir, ref_dir):
    """Small files a kill could truncate: config.gin (must equal the reference run's, a rerun
    reads it back), samples/buffer.png (a whole PNG), training_summary.json (parses)."""
    problems = []
    config = os.path.join(model_dir, "config.gin")
    if os.path.exists(config):
        with open(config) as f, open(os.path.join(ref_dir, "config.gin")) as g:
            if f.read() != g.read():
                problems.append("config.gin differs from the reference run's")
    png = os.path.join(model_dir, "samples", "buffer.png")
    if os.path.exists(png):
        with open(png, "rb") as f:
            if not f.read().endswith(b"IEND\xaeB`\x82"):
                problems.append("samples/buffer.png truncated")
    summary = os.path.join(model_dir, "training_summary.json")
    if os.path.exists(summary):
        try:
            with open(summary) as f:
                json.load(f)
        except ValueError:
            problems.append("training_summary.json truncated")
    return problems


def state_summary(state):
    """How many checkpoint variables of each kind were compared."""
    kinds = {"step": 0, "optimizer": 0, "buffer": 0, "queue": 0, "ema": 0, "rng": 0, "recovery": 0, "model": 0}
    for k in state:
        if "iterations" in k:
            kinds["step"] += 1
        elif k.startswith(("optimizer", "encoder_optimizer")):
            kinds["optimizer"] += 1
        elif "buffer" in k:
            kinds["buffer"] += 1
        elif "queue" in k:
            kinds["queue"] += 1
        elif "ema" in k:
            kinds["ema"] += 1
        elif k.startswith("rng_states"):
            kinds["rng"] += 1
        elif k.startswith("recovery"):
            kinds["recovery"] += 1
        else:
            kinds["model"] += 1
    return kinds


# ------------------------------------------------------------------------------- trials
def reference(trainer, workdir, runs=2):
    """`runs` uninterrupted runs: ((state, export), seconds, determinism record); with one run,
    determinism is not checked (None)."""
    states, seconds = [], []
    for i in range(runs):
        model_dir = os.path.join(workdir, f"{trainer}_ref{i}")
        rc, secs, out = run_to_end(trainer, model_dir, model_dir + ".log")
        if rc != 0:
            raise RuntimeError(f"{trainer}: the reference run failed (exit {rc}):\n{out[-3000:]}")
        states.append(final_state(model_dir))
        seconds.append(secs)
    if runs < 2:
        return states[0], seconds[0], {"deterministic": None, "max_abs_diff": None, "differ": []}
    equal, diff, differ = compare_runs(states[0], states[1])
    det = {"deterministic": equal, "max_abs_diff": diff, "differ": differ[:10]}
    return states[0], min(seconds), det


def trial(trainer, model_dir, kinds, rng, ref_seconds, log, ref_dir):
    """One trial: a kill for each kind in `kinds` (one run each), then a run to the end.

    Returns {"kills": [...], "final_rc", "resumed_from"}."""
    kills = []
    log_path = model_dir + ".log"
    for kind in kinds:
        if kind == "export_replace" and not os.path.exists(os.path.join(model_dir, "export")):
            rc, _, out = run_to_end(trainer, model_dir, log_path)  # finish first, then re-export
            if rc != 0:
                return {"kills": kills, "final_rc": rc, "error": out[-2000:]}
        with open(log_path, "ab") as f:
            proc = launch(trainer, model_dir, f)
            k = kill_at(proc, model_dir, kind, rng, ref_seconds)
            if k is None:
                proc.wait()
                log(f"    {kind}: the run ended (exit {proc.returncode}) before the moment came; no kill")
                continue
        k["checkpoints"] = checkpoint_health(model_dir)
        k["export"] = export_health(model_dir)
        k["files"] = other_files(model_dir, ref_dir)
        k["corrupt"] = bool(k["checkpoints"]["unreadable"]) or k["export"]["complete"] is False
        export_state = (
            "complete" if k["export"]["complete"] else ("absent" if not k["export"]["visible"] else "HALF-WRITTEN")
        )
        log(
            f"    killed ({kind}) after {k['after_s']} s: latest={k['checkpoints']['latest']} "
            f"unreadable={k['checkpoints']['unreadable']} "
            f"export={export_state}"
            f"{' litter=' + str(k['export']['litter']) if k['export']['litter'] else ''}"
            f"{' unlisted=' + str(k['checkpoints']['unlisted']) if k['checkpoints']['unlisted'] else ''}"
            f"{' stale=' + str(k['checkpoints']['stale']) if k['checkpoints']['stale'] else ''}"
            f"{' FILES: ' + str(k['files']) if k['files'] else ''}"
        )
        kills.append(k)
    rc, _, out = run_to_end(trainer, model_dir, log_path)
    resumed = [
        line.split("[keras_ebm] ")[-1] for line in out.splitlines() if "resumed from" in line or "nothing to do" in line
    ]
    result = {"kills": kills, "final_rc": rc, "resumes": resumed}
    if rc != 0:
        result["error"] = out[-2000:]
    return result


def run_trainer(
    trainer, n_kills, rng, workdir, log=print, max_kills_per_trial=2, kinds=KINDS, reference_runs=2, schedule=None
):
    """Reference runs plus kill trials until `n_kills` kills were sent; the row of the table.

    Each trial kills 1 to `max_kills_per_trial` runs in a row, its moments taken in turn from a
    shuffled `kinds`; `schedule` (a list of lists of kinds, one per trial) fixes the trials instead."""
    log(f"[fault_injection] {trainer}: reference runs")
    (ref_state, ref_export), ref_seconds, det = reference(trainer, workdir, reference_runs)
    log(
        f"[fault_injection] {trainer}: uninterrupted run {ref_seconds:.1f} s; two runs bit-identical: "
        f"{det['deterministic']} (max |diff| {det['max_abs_diff']})"
    )
    row = {
        "trainer": trainer,
        "reference_seconds": round(ref_seconds, 1),
        **det,
        "compared": state_summary(ref_state),
        "export_variables": len(ref_export),
        "kills": 0,
        "trials": 0,
        "resumed": 0,
        "equal": 0,
        "corrupt": 0,
        "max_abs_diff_vs_reference": 0.0,
        "kill_kinds": {},
        "litter": [],
        "unlisted_checkpoint_files": 0,
        "stale_checkpoint_entries": 0,
        "damaged_files": [],
        "failures": [],
        "details": [],
    }
    kind_cycle = list(kinds)
    rng.shuffle(kind_cycle)
    i = attempts = 0
    schedule = None if schedule is None else [list(k) for k in schedule]
    while (row["kills"] < n_kills) if schedule is None else schedule:
        if schedule is not None:
            kinds = schedule.pop(0)
        else:
            n = min(int(rng.integers(1, max_kills_per_trial + 1)), n_kills - row["kills"])
            kinds = [kind_cycle[(i + j) % len(kind_cycle)] for j in range(n)]
            i += n
        # export_replace needs a finished run first: only as the first kill of a trial.
        kinds = sorted(kinds, key=lambda k: k != "export_replace")
        attempts += 1
        model_dir = os.path.join(workdir, f"{trainer}_trial{attempts}")
        log(f"[fault_injection] {trainer} trial {attempts}: {', '.join(kinds)}")
        t = trial(trainer, model_dir, kinds, rng, ref_seconds, log, os.path.join(workdir, f"{trainer}_ref0"))
        if not t["kills"]:
            if attempts > 4 * n_kills:  # every moment kept being missed
                break
            continue
        row["trials"] += 1
        row["kills"] += len(t["kills"])
        for k in t["kills"]:
            row["kill_kinds"][k["kind"]] = row["kill_kinds"].get(k["kind"], 0) + 1
            row["corrupt"] += int(k["corrupt"])
            row["litter"] += k["export"]["litter"]
            row["unlisted_checkpoint_files"] += len(k["checkpoints"]["unlisted"])
            row["stale_checkpoint_entries"] += len(k["checkpoints"]["stale"])
            row["damaged_files"] += k["files"]
        detail = {"trial": attempts, "kills": t["kills"], "final_rc": t["final_rc"], "resumes": t.get("resumes")}
        if t["final_rc"] == 0:
            row["resumed"] += 1
            state, export = final_state(model_dir)
            eq, diff, differ = compare_runs((ref_state, ref_export), (state, export))
            row["equal"] += int(eq)
            row["max_abs_diff_vs_reference"] = max(row["max_abs_diff_vs_reference"], diff)
            detail.update(equal=eq, max_abs_diff=diff, differ=differ[:10])
            log(
                f"    resumed to the end: {'EQUAL' if eq else 'DIFFERENT'} (max |diff| {diff:.3g})"
                f"{'' if eq else ' ' + str(differ[:5])}"
            )
            if not eq:
                row["failures"].append(f"trial {detail['trial']}: differs from the reference in {differ[:5]}")
            files = other_files(model_dir, os.path.join(workdir, f"{trainer}_ref0"))
            if files:
                row["failures"].append(f"trial {detail['trial']}: after the last run: {files}")
        else:
            detail["error"] = t.get("error")
            row["failures"].append(f"trial {detail['trial']}: the rerun failed (exit {t['final_rc']})")
            log(f"    the rerun FAILED (exit {t['final_rc']}):\n{(t.get('error') or '')[-1500:]}")
        for k in t["kills"]:
            if k["corrupt"]:
                row["failures"].append(
                    f"trial {detail['trial']}: corrupt after a {k['kind']} kill: "
                    f"{k['checkpoints']['unreadable']} {k['export']['problem']}"
                )
        row["details"].append(detail)
        if attempts > 4 * n_kills:
            break
    row["litter"] = sorted({n.split("-")[0] for n in row["litter"]})
    return row


def markdown_table(rows):
    lines = [
        "| trainer | kills | trials | resumed | equal | corrupt | max abs diff | two clean runs identical | "
        "kill moments |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        moments = ", ".join(f"{k} {v}" for k, v in sorted(r["kill_kinds"].items()))
        lines.append(
            f"| {r['trainer']} | {r['kills']} | {r['trials']} | {r['resumed']}/{r['trials']} | "
            f"{r['equal']}/{r['trials']} | {r['corrupt']} | {r['max_abs_diff_vs_reference']:.3g} | "
            f"{ {True: 'yes', None: 'not checked'}.get(r['deterministic'], 'no ({})'.format(r['max_abs_diff'])) } | "
            f"{moments} |"
        )
    total = {k: sum(r[k] for r in rows) for k in ("kills", "trials", "resumed", "equal", "corrupt")}
    lines.append(
        f"| **all** | **{total['kills']}** | {total['trials']} | {total['resumed']}/{total['trials']} | "
        f"{total['equal']}/{total['trials']} | {total['corrupt']} | "
        f"{max((r['max_abs_diff_vs_reference'] for r in rows), default=0.0):.3g} | | |"
    )
    return "\n".join(lines)


def run(trainers, kills_per_trainer, seed=0, workdir=None, keep=False, log=print, kinds=KINDS):
    """Run the fuzzing for `trainers`; returns the rows."""
    rng = np.random.default_rng(seed)
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="keras_ebm_fault_injection_")
    rows = []
    try:
        for trainer in trainers:
            rows.append(run_trainer(trainer, kills_per_trainer, rng, workdir, log=log, kinds=kinds))
    finally:
        if own and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main(argv):
    from absl import flags

    FLAGS = flags.FLAGS
    del argv
    import tensorflow as tf

    from _common import device_name

    trainers = FLAGS.trainers or list(TRAINERS)
    unknown = sorted(set(trainers) - set(TRAINERS))
    if unknown:
        raise ValueError(f"unknown trainers {unknown}; known: {sorted(TRAINERS)}")
    t0 = time.time()
    rows = run(
        trainers,
        FLAGS.kills,
        seed=FLAGS.seed,
        workdir=FLAGS.workdir,
        keep=FLAGS.workdir is not None,
        kinds=FLAGS.kinds or KINDS,
    )
    table = markdown_table(rows)
    device = device_name()
    print(
        f"\nDevice: {device}  TF {tf.__version__}  {TRAIN_STEPS} steps, checkpoint every {CHECKPOINT_EVERY}, "
        f"seed {FLAGS.seed}, {time.time() - t0:.0f} s\n"
    )
    print(table)
    out = FLAGS.output or os.path.join(HERE, "results", f"{device}_fault_injection.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(
            {
                "device": device,
                "tensorflow": tf.__version__,
                "train_steps": TRAIN_STEPS,
                "checkpoint_every": CHECKPOINT_EVERY,
                "max_examples": MAX_EXAMPLES,
                "seed": FLAGS.seed,
                "kills_per_trainer": FLAGS.kills,
                "seconds": round(time.time() - t0),
                "rows": rows,
            },
            f,
            indent=2,
            default=str,
        )
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(
            f"Kill-and-resume fuzzing of train.py (`benchmarks/fault_injection.py --kills={FLAGS.kills} "
            f"--seed={FLAGS.seed}`), {device}, TF {tf.__version__}: tiny networks (gin_configs/tiny.gin) on "
            f"{MAX_EXAMPLES} real CIFAR-10 training images (JPEG copy), {TRAIN_STEPS} steps, a checkpoint "
            f"every {CHECKPOINT_EVERY}. `equal`: every variable of the final checkpoint and of the export "
            f"bit-identical to an uninterrupted run's.\n\n{table}\n"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_list("trainers", [], f"Trainers to fuzz (default all: {', '.join(TRAINERS)}).")
    flags.DEFINE_integer("kills", 9, "SIGKILLs per trainer.")
    flags.DEFINE_list(
        "kinds", [], f"Kill moments to cycle through (default {','.join(KINDS)}; also checkpoint_rewrite)."
    )
    flags.DEFINE_integer("seed", 0, "Seed of the kill schedule.")
    flags.DEFINE_string("workdir", None, "Keep the runs here (default: a temporary directory, deleted).")
    flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/<device>_fault_injection.json).")
    app.run(main)
