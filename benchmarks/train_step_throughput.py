"""Train-step throughput (images/s) and peak memory of keras_ebm trainer configs on this device.

Each row is a gin config plus bindings, built exactly as train.py builds it, timed over `--steps`
steps after `--warmup` steps (tracing excluded), all rows in one process so ratios compare like with
like. Prints a markdown table and writes JSON (default benchmarks/results/<device>.json).

    python benchmarks/train_step_throughput.py                    # every row
    python benchmarks/train_step_throughput.py --rows=softmax_wrn16_4_b64 --steps=5
    python benchmarks/train_step_throughput.py --isolate --rows=softmax_adam_wrn16_4_b64,jem_k5_wrn16_4_b64

--isolate runs each row in its own process and, by default (--interleave), times the rows in
turns: every row's process is built and warmed up, then step i of every row runs before step i + 1
of any, so load from other work on a shared machine falls on all rows alike and the ratios stay
meaningful. (All rows' processes are alive at once: pick rows that fit in memory together.)
"CPU s/step" is the process's CPU time per step (all threads); when other work shares the cores it
moves much less than wall time, so its ratios are the steadier ones there.

Memory, two columns:
* "step peak MB": on CPU the peak resident memory (RSS) of the process *during the timed steps*
  (the kernel's high-water mark is reset after the warm-up, /proc/self/clear_refs), so it is the
  step's own peak on top of what the process holds (Python, TensorFlow, weights, buffer, the
  allocator's cache); it excludes tracing and graph optimisation. Rows in one process also carry
  the memory earlier rows left. On a GPU, TensorFlow's allocator peak over the timed steps.
* "process peak MB": the process's peak RSS so far, tracing included (monotone across rows in one
  process; with --isolate the row's own process).
"""

import json
import os
import resource
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from _common import device_name  # noqa: E402  (benchmarks/ is on sys.path as the script's folder)

flags.DEFINE_list("rows", [], "Row names to run (default: all).")
flags.DEFINE_integer("steps", 10, "Timed steps per row.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per row (tracing).")
flags.DEFINE_bool("jit_compile", False, "Compile train steps with XLA.")
flags.DEFINE_string("mixed_precision", None, "Keras dtype policy, e.g. mixed_float16 or mixed_bfloat16.")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/<device>.json).")
flags.DEFINE_bool("isolate", False, "Run each row in its own process, so that on CPU the peak RSS is the row's own.")
flags.DEFINE_bool(
    "interleave",
    True,
    "With --isolate, time the rows' steps in turns (all row "
    "processes alive at once); --nointerleave runs the rows one after the other.",
)
flags.DEFINE_bool("worker", False, "Internal: serve one row's timed steps to the parent (--isolate).")
FLAGS = flags.FLAGS

SOFTMAX = ["gin_configs/softmax_cifar10.gin"]
# Real CIFAR-10 images (the local JPEG archive); one batch is cached and repeated so that the row
# measures the train step, not the input pipeline.
CIFAR_LOCAL = ["DATASET = 'cifar10_jpeg'"]

# name -> (gin files, bindings, global batch). Rows of later issues use the same backbone/batch as
# their softmax baseline so that the ratio column is meaningful.
ROWS = {
    "softmax_wrn16_4_b64": (SOFTMAX, CIFAR_LOCAL + ["WideResNet.depth = 16", "WideResNet.width = 4"], 64),
    "softmax_wrn28_10_b16": (SOFTMAX, CIFAR_LOCAL, 16),
    "softmax_tiny_b64": (
        SOFTMAX,
        CIFAR_LOCAL + ["build_classifier.backbone = @TinyCNN()", "TinyCNN.input_shape = %IMAGE_SHAPE"],
        64,
    ),
    # The softmax step with the JEM configs' optimizer (Adam, no weight decay): same network, batch
    # and optimizer as the JEM rows, the baseline of their "x same-optimizer softmax" column.
    "softmax_adam_wrn16_4_b64": (
        SOFTMAX,
        CIFAR_LOCAL
        + [
            "WideResNet.depth = 16",
            "WideResNet.width = 4",
            "run_training.optimizer = @keras.optimizers.Adam",
            "keras.optimizers.Adam.learning_rate = 1e-4",
            "SoftmaxClassifier.weight_decay = 0.0",
        ],
        64,
    ),
}
WRN16_4 = ["WideResNet.depth = 16", "WideResNet.width = 4"]
ONE_BRANCH_64 = ["PX_BATCH_SIZE = 64"]
ROWS.update(
    {
        # JEM family at the softmax row's backbone and batch (classifier batch 64, p(x) batch 64).
        "jem_k1_wrn16_4_b64": (["gin_configs/jem.gin"], CIFAR_LOCAL + WRN16_4 + ["SGLD_STEPS = 1"], 64),
        "jem_k5_wrn16_4_b64": (["gin_configs/jem.gin"], CIFAR_LOCAL + WRN16_4 + ["SGLD_STEPS = 5"], 64),
        "jem_k20_wrn16_4_b64": (["gin_configs/jem.gin"], CIFAR_LOCAL + WRN16_4 + ["SGLD_STEPS = 20"], 64),
        "sadajem_k5_wrn16_4_b64": (
            ["gin_configs/sadajem.gin"],
            CIFAR_LOCAL + WRN16_4 + ONE_BRANCH_64 + ["informative_initializer.max_examples = 5000"],
            64,
        ),
        # JEM++ at K=5: SADA-JEM without SAM (BN, train-mode proximal SGLD, informative init), so
        # jem_k5 -> jempp_k5 -> sadajem_k5 splits SADA-JEM's cost into BN/sampling mode and SAM.
        "jempp_k5_wrn16_4_b64": (
            ["gin_configs/jempp.gin"],
            CIFAR_LOCAL + WRN16_4 + ["SGLD_STEPS = 5", "informative_initializer.max_examples = 5000"],
            64,
        ),
        # GMMC generative step at JEM's K (GMMC paper: less work than JEM per step).
        "gmmc_gen_k20_wrn16_4_b64": (
            ["gin_configs/gmmc_gen.gin"],
            CIFAR_LOCAL + WRN16_4 + ["SGLD_STEPS = 20", "BUFFER_SIZE = 10000"],
            64,
        ),
        "gmmc_gen_k5_wrn16_4_b64": (
            ["gin_configs/gmmc_gen.gin"],
            CIFAR_LOCAL + WRN16_4 + ["SGLD_STEPS = 5", "BUFFER_SIZE = 10000"],
            64,
        ),
    }
)
# HDGE at the softmax row's backbone (both WRN without BN) and batch: the queue's cost is the only
# difference (a K x C read in the loss and a K x C scatter after the step).
ROWS.update(
    {
        f"hdge_k{k}_wrn16_4_b64": (["gin_configs/hdge_nobn.gin"], CIFAR_LOCAL + WRN16_4 + [f"QUEUE_SIZE = {k}"], 64)
        for k in (256, 8192, 65536)
    }
)
# CLEL at the configs' own networks (EBM small/base/large, ResNet-18 encoder), 60 SGLD steps. The
# batch is the EBM's; clel_large's encoder sees 4x as many images (its config's 256 vs 64).
# On a 2-core CPU one step takes minutes: run these rows with --steps=1 --warmup=1.
ROWS.update(
    {
        "clel_small_b16": (["gin_configs/clel_small.gin"], CIFAR_LOCAL, 16),
        "clel_base_b16": (["gin_configs/clel_base.gin"], CIFAR_LOCAL, 16),
        "clel_large_b16_enc64": (["gin_configs/clel_large.gin"], CIFAR_LOCAL, 64),
        "clel_small_b64": (["gin_configs/clel_small.gin"], CIFAR_LOCAL, 64),
        "clel_base_b64": (["gin_configs/clel_base.gin"], CIFAR_LOCAL, 64),
        "clel_large_b64_enc256": (["gin_configs/clel_large.gin"], CIFAR_LOCAL, 256),
    }
)
# row -> softmax row it is compared with (same backbone and classifier batch)
BASELINE_OF = {name: "softmax_wrn16_4_b64" for name in ROWS if name.startswith(("jem", "sadajem", "gmmc", "hdge"))}
# row -> softmax row with the row's own optimizer (JEM and JEM++ configs: Adam, no weight decay)
SAME_OPTIMIZER_BASELINE_OF = {name: "softmax_adam_wrn16_4_b64" for name in ROWS if name.startswith(("jem_", "jempp"))}
# forward+backward passes per step relative to one softmax step (ideal ratio of step times):
# JEM with two loaders: K SGLD passes + classifier batch + p(x) data batch + samples = K + 3;
# SADA-JEM adds SAM's second pass over the three loss batches: K + 6.
# GMMC (one loader): K SGLD passes + data batch + samples = K + 2.
PASSES = {
    "jem_k1_wrn16_4_b64": 4,
    "jem_k5_wrn16_4_b64": 8,
    "jem_k20_wrn16_4_b64": 23,
    "sadajem_k5_wrn16_4_b64": 11,
    "gmmc_gen_k20_wrn16_4_b64": 22,
    "gmmc_gen_k5_wrn16_4_b64": 7,
    "jempp_k5_wrn16_4_b64": 8,
}
# HDGE: one forward+backward pass, like softmax (the queue adds a K x C matrix product).
PASSES.update({name: 1 for name in ROWS if name.startswith("hdge")})


def peak_memory_mb():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mb(key):
    """VmRSS / VmHWM of this process in MB (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_step_peak():
    """Start a new peak-memory window: the GPU allocator's peak, or on Linux the RSS high-water mark."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def step_peak_mb():
    """Peak memory since `reset_step_peak` (None where the kernel cannot say)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return _proc_status_mb("VmHWM")


class RowRunner:
    """One row's trainer, built and warmed up; `step()` times one train step."""

    def __init__(self, name, files, bindings, batch):
        import gin
        import keras
        import tensorflow as tf

        from keras_ebm import run_config, training

        gin.clear_config()
        run_config.parse_gin(files, bindings + [f"GLOBAL_BATCH_SIZE = {batch}"])
        objs = run_config.resolve_run_training()
        if FLAGS.mixed_precision:
            keras.mixed_precision.set_dtype_policy(FLAGS.mixed_precision)
        strategy = tf.distribute.get_strategy()
        model = training.build_trainer(
            objs["trainer"],
            objs["optimizer"],
            strategy,
            FLAGS.jit_compile,
            encoder_optimizer=objs.get("encoder_optimizer"),
        )
        self.data = iter(objs["train_data"](None).take(1).cache().repeat())
        self.train_step = tf.function(model.train_step, jit_compile=FLAGS.jit_compile)
        self.name, self.files, self.bindings, self.batch, self.model = name, files, bindings, batch, model
        for _ in range(FLAGS.warmup):
            logs = self.train_step(next(self.data))
        [float(v) for v in logs.values()]
        self.rss_before_mb = _proc_status_mb("VmRSS")
        reset_step_peak()
        self.times, self.cpu_times = [], []

    def step(self):
        inputs = next(self.data)
        t0, cpu0 = time.perf_counter(), time.process_time()
        logs = self.train_step(inputs)
        [float(v) for v in logs.values()]  # wait for the step
        self.times.append(time.perf_counter() - t0)
        self.cpu_times.append(time.process_time() - cpu0)
        return self.times[-1]

    def result(self):
        import keras
        import tensorflow as tf

        keras.mixed_precision.set_dtype_policy("float32")
        median = sorted(self.times)[len(self.times) // 2]
        return {
            "row": self.name,
            "batch": self.batch,
            "median_s_per_step": median,
            "s_per_step": self.times,
            # CPU seconds of the process (all its threads) per step: on a CPU shared with other work
            # it moves much less than wall time, so its ratios are the steadier ones there.
            "median_cpu_s_per_step": sorted(self.cpu_times)[len(self.cpu_times) // 2],
            "cpu_s_per_step": self.cpu_times,
            "images_per_s": self.batch / median,  # classifier-batch images per second
            "step_peak_memory_mb": step_peak_mb(),
            "rss_before_steps_mb": self.rss_before_mb,
            "peak_memory_mb": peak_memory_mb(),
            # every trained network (CLEL: EBM + projection + encoder; the EMA copies are not trained)
            "params": int(sum(int(tf.size(w)) for w in self.model.trainable_weights)),
            "gin_files": self.files,
            "bindings": self.bindings,
        }


def run_row(name, files, bindings, batch):
    runner = RowRunner(name, files, bindings, batch)
    for _ in range(FLAGS.steps):
        runner.step()
    return runner.result()


def serve_row(name):
    """--worker: build and warm up `name`, then run one timed step per "step" line of stdin and
    print the result as JSON on "done"; protocol lines start with "@@" (TensorFlow logs to stderr)."""
    files, bindings, batch = ROWS[name]
    runner = RowRunner(name, files, bindings, batch)
    print("@@ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            print(f"@@step {runner.step()}", flush=True)
        elif line.strip() == "done":
            print("@@result " + json.dumps(runner.result()), flush=True)
            return


def _worker_args(name):
    args = [
        sys.executable,
        os.path.abspath(__file__),
        f"--rows={name}",
        f"--steps={FLAGS.steps}",
        f"--warmup={FLAGS.warmup}",
        f"--jit_compile={FLAGS.jit_compile}",
    ]
    if FLAGS.mixed_precision:
        args.append(f"--mixed_precision={FLAGS.mixed_precision}")
    return args


def _read_protocol(proc, tag):
    for line in proc.stdout:
        if line.startswith("@@" + tag):
            return line[len(tag) + 2 :].strip()
    raise RuntimeError(f"row process exited before '{tag}' (exit code {proc.wait()})")


def run_interleaved(names):
    """Each row in its own process, built and warmed up one after another, then timed in turns."""
    import subprocess

    procs = {}
    try:
        for name in names:
            print(f"[benchmark] {name}: building and warming up ...", flush=True)
            procs[name] = subprocess.Popen(
                _worker_args(name) + ["--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            _read_protocol(procs[name], "ready")
        for i in range(FLAGS.steps):
            for name in names:
                procs[name].stdin.write("step\n")
                procs[name].stdin.flush()
                seconds = float(_read_protocol(procs[name], "step"))
                print(f"[benchmark] step {i + 1}/{FLAGS.steps} {name}: {seconds:.4f} s", flush=True)
        results = []
        for name in names:
            procs[name].stdin.write("done\n")
            procs[name].stdin.flush()
            results.append(json.loads(_read_protocol(procs[name], "result")))
            procs[name].wait()
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


def run_isolated(name):
    """`run_row` in a child process (same flags), for a per-row peak RSS on CPU."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        subprocess.run(_worker_args(name) + [f"--output={out}"], check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)["rows"][0]


def markdown_table(results):
    def num(value, fmt):
        return format(value, fmt) if value is not None else "-"

    lines = [
        "| row | batch | s/step (median) | CPU s/step | images/s | step peak MB | process peak MB | params | "
        "x baseline step | x same-optimizer softmax | same, CPU time | ideal (passes) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['row']} | {r['batch']} | {r['median_s_per_step']:.4f} | {r['median_cpu_s_per_step']:.3f} | "
            f"{r['images_per_s']:.1f} | {num(r.get('step_peak_memory_mb'), '.0f')} | {r['peak_memory_mb']:.0f} | "
            f"{r['params']:,} | {num(r['ratio_to_baseline'], '.2f')} | "
            f"{num(r.get('ratio_to_same_optimizer_softmax'), '.2f')} | "
            f"{num(r.get('cpu_ratio_to_same_optimizer_softmax'), '.2f')} | {r['ideal_ratio'] or '-'} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    import tensorflow as tf

    names = FLAGS.rows or list(ROWS)
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        raise app.UsageError(f"unknown rows {unknown}; known: {sorted(ROWS)}")
    if FLAGS.worker:
        serve_row(names[0])
        return
    interleaved = FLAGS.isolate and FLAGS.interleave and len(names) > 1
    if interleaved:
        results = run_interleaved(names)
    else:
        results = []
        for name in names:
            files, bindings, batch = ROWS[name]
            print(f"[benchmark] {name} ...", flush=True)
            results.append(run_isolated(name) if FLAGS.isolate else run_row(name, files, bindings, batch))
            print(
                f"[benchmark] {name}: {results[-1]['median_s_per_step']:.4f} s/step, "
                f"{results[-1]['images_per_s']:.1f} images/s",
                flush=True,
            )
    by_name = {r["row"]: r for r in results}
    for r in results:
        base = by_name.get(BASELINE_OF.get(r["row"]))
        r["ratio_to_baseline"] = (r["median_s_per_step"] / base["median_s_per_step"]) if base else None
        same = by_name.get(SAME_OPTIMIZER_BASELINE_OF.get(r["row"]))
        r["ratio_to_same_optimizer_softmax"] = (r["median_s_per_step"] / same["median_s_per_step"]) if same else None
        r["cpu_ratio_to_same_optimizer_softmax"] = (
            r["median_cpu_s_per_step"] / same["median_cpu_s_per_step"] if same else None
        )
        r["ideal_ratio"] = PASSES.get(r["row"])
    device = device_name()
    mode = "isolated, interleaved" if interleaved else ("isolated" if FLAGS.isolate else "one process")
    print(
        f"\nDevice: {device}  TF {tf.__version__}  jit_compile={FLAGS.jit_compile}  "
        f"policy={FLAGS.mixed_precision or 'float32'}  steps={FLAGS.steps}  warmup={FLAGS.warmup}  rows: {mode}\n"
    )
    print(markdown_table(results))
    out = FLAGS.output or os.path.join(os.path.dirname(__file__), "results", f"{device}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(
            {
                "device": device,
                "tensorflow": tf.__version__,
                "jit_compile": FLAGS.jit_compile,
                "mixed_precision": FLAGS.mixed_precision,
                "steps": FLAGS.steps,
                "warmup": FLAGS.warmup,
                "isolate": FLAGS.isolate,
                "interleaved": interleaved,
                "rows": results,
            },
            f,
            indent=2,
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    app.run(main)
