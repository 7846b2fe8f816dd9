"""Train-step throughput (images/s) and peak memory of keras_ebm trainer configs on this device.

Each row is a gin config plus bindings, built exactly as train.py builds it, timed over `--steps`
steps after `--warmup` steps (tracing excluded), all rows in one process so ratios compare like with
like. Prints a markdown table and writes JSON (default benchmarks/results/<device>.json).

    python benchmarks/train_step_throughput.py                    # every row
    python benchmarks/train_step_throughput.py --rows=softmax_wrn16_4_b64 --steps=5

Peak memory: on a GPU, TensorFlow's allocator peak for the row (reset between rows); on CPU, the
process's peak RSS so far (monotone across rows: read each row as "at most"), or, with
--isolate, each row's own process peak (Python + TensorFlow + the row).
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
flags.DEFINE_bool("isolate", False, "Run each row in its own process, so that on CPU the peak RSS is "
                  "the row's own (rows still run one after the other, on the same machine).")
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
    "softmax_tiny_b64": (SOFTMAX, CIFAR_LOCAL + ["build_classifier.backbone = @TinyCNN()",
                                              "TinyCNN.input_shape = %IMAGE_SHAPE"], 64),
}
WRN16_4 = ["WideResNet.depth = 16", "WideResNet.width = 4"]
ONE_BRANCH_64 = ["PX_BATCH_SIZE = 64"]
ROWS.update({
    # JEM family at the softmax row's backbone and batch (classifier batch 64, p(x) batch 64).
    "jem_k5_wrn16_4_b64": (["gin_configs/jem.gin"], CIFAR_LOCAL + WRN16_4 + ["SGLD_STEPS = 5"], 64),
    "jem_k20_wrn16_4_b64": (["gin_configs/jem.gin"], CIFAR_LOCAL + WRN16_4 + ["SGLD_STEPS = 20"], 64),
    "sadajem_k5_wrn16_4_b64": (["gin_configs/sadajem.gin"], CIFAR_LOCAL + WRN16_4 + ONE_BRANCH_64 + [
        "informative_initializer.max_examples = 5000"], 64),
    # JEM++ at K=5: SADA-JEM without SAM (BN, train-mode proximal SGLD, informative init), so
    # jem_k5 -> jempp_k5 -> sadajem_k5 splits SADA-JEM's cost into BN/sampling mode and SAM.
    "jempp_k5_wrn16_4_b64": (["gin_configs/jempp.gin"], CIFAR_LOCAL + WRN16_4 + [
        "SGLD_STEPS = 5", "informative_initializer.max_examples = 5000"], 64),
    # GMMC generative step at JEM's K (GMMC paper: less work than JEM per step).
    "gmmc_gen_k20_wrn16_4_b64": (["gin_configs/gmmc_gen.gin"], CIFAR_LOCAL + WRN16_4 + [
        "SGLD_STEPS = 20", "BUFFER_SIZE = 10000"], 64),
    "gmmc_gen_k5_wrn16_4_b64": (["gin_configs/gmmc_gen.gin"], CIFAR_LOCAL + WRN16_4 + [
        "SGLD_STEPS = 5", "BUFFER_SIZE = 10000"], 64),
})
# HDGE at the softmax row's backbone (both WRN without BN) and batch: the queue's cost is the only
# difference (a K x C read in the loss and a K x C scatter after the step).
ROWS.update({
    f"hdge_k{k}_wrn16_4_b64": (["gin_configs/hdge_nobn.gin"], CIFAR_LOCAL + WRN16_4 + [f"QUEUE_SIZE = {k}"], 64)
    for k in (256, 8192, 65536)
})
# CLEL at the configs' own networks (EBM small/base/large, ResNet-18 encoder), 60 SGLD steps. The
# batch is the EBM's; clel_large's encoder sees 4x as many images (its config's 256 vs 64).
# On a 2-core CPU one step takes minutes: run these rows with --steps=1 --warmup=1.
ROWS.update({
    "clel_small_b16": (["gin_configs/clel_small.gin"], CIFAR_LOCAL, 16),
    "clel_base_b16": (["gin_configs/clel_base.gin"], CIFAR_LOCAL, 16),
    "clel_large_b16_enc64": (["gin_configs/clel_large.gin"], CIFAR_LOCAL, 64),
    "clel_small_b64": (["gin_configs/clel_small.gin"], CIFAR_LOCAL, 64),
    "clel_base_b64": (["gin_configs/clel_base.gin"], CIFAR_LOCAL, 64),
    "clel_large_b64_enc256": (["gin_configs/clel_large.gin"], CIFAR_LOCAL, 256),
})
# row -> softmax row it is compared with (same backbone and classifier batch)
BASELINE_OF = {name: "softmax_wrn16_4_b64" for name in ROWS if name.startswith(("jem", "sadajem", "gmmc", "hdge"))}
# forward+backward passes per step relative to one softmax step (ideal ratio of step times):
# JEM with two loaders: K SGLD passes + classifier batch + p(x) data batch + samples = K + 3;
# SADA-JEM adds SAM's second pass over the three loss batches: K + 6.
# GMMC (one loader): K SGLD passes + data batch + samples = K + 2.
PASSES = {"jem_k5_wrn16_4_b64": 8, "jem_k20_wrn16_4_b64": 23, "sadajem_k5_wrn16_4_b64": 11,
          "gmmc_gen_k20_wrn16_4_b64": 22, "gmmc_gen_k5_wrn16_4_b64": 7, "jempp_k5_wrn16_4_b64": 8}
# HDGE: one forward+backward pass, like softmax (the queue adds a K x C matrix product).
PASSES.update({name: 1 for name in ROWS if name.startswith("hdge")})


def peak_memory_mb():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_row(name, files, bindings, batch):
    import gin
    import keras
    import tensorflow as tf

    from keras_ebm import cli, experiment

    gin.clear_config()
    cli.parse_gin(files, bindings + [f"GLOBAL_BATCH_SIZE = {batch}"])
    objs = cli.resolve_run_training()
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_dtype_policy(FLAGS.mixed_precision)
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")
    strategy = tf.distribute.get_strategy()
    model = experiment.build_trainer(objs["trainer"], objs["optimizer"], strategy, FLAGS.jit_compile)
    data = iter(objs["train_data"](None).take(1).cache().repeat())
    step = tf.function(model.train_step, jit_compile=FLAGS.jit_compile)
    for _ in range(FLAGS.warmup):
        logs = step(next(data))
    [float(v) for v in logs.values()]
    times = []
    for _ in range(FLAGS.steps):
        inputs = next(data)
        t0 = time.perf_counter()
        logs = step(inputs)
        [float(v) for v in logs.values()]  # wait for the step
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    keras.mixed_precision.set_dtype_policy("float32")
    return {
        "row": name, "batch": batch, "median_s_per_step": median,
        "images_per_s": batch / median,  # classifier-batch images per second
        "peak_memory_mb": peak_memory_mb(),
        # every trained network (CLEL: EBM + projection + encoder; the EMA copies are not trained)
        "params": int(sum(int(tf.size(w)) for w in model.trainable_weights)),
        "gin_files": files, "bindings": bindings,
    }


def run_isolated(name):
    """`run_row` in a child process (same flags), for a per-row peak RSS on CPU."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        args = [sys.executable, os.path.abspath(__file__), f"--rows={name}", f"--steps={FLAGS.steps}",
                f"--warmup={FLAGS.warmup}", f"--output={out}", f"--jit_compile={FLAGS.jit_compile}"]
        if FLAGS.mixed_precision:
            args.append(f"--mixed_precision={FLAGS.mixed_precision}")
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)["rows"][0]


def main(argv):
    del argv
    import tensorflow as tf

    names = FLAGS.rows or list(ROWS)
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        raise app.UsageError(f"unknown rows {unknown}; known: {sorted(ROWS)}")
    results = []
    for name in names:
        files, bindings, batch = ROWS[name]
        print(f"[benchmark] {name} ...", flush=True)
        results.append(run_isolated(name) if FLAGS.isolate else run_row(name, files, bindings, batch))
        print(f"[benchmark] {name}: {results[-1]['median_s_per_step']:.4f} s/step, "
              f"{results[-1]['images_per_s']:.1f} images/s", flush=True)
    by_name = {r["row"]: r for r in results}
    for r in results:
        base = by_name.get(BASELINE_OF.get(r["row"]))
        r["ratio_to_baseline"] = (r["median_s_per_step"] / base["median_s_per_step"]) if base else None
        r["ideal_ratio"] = PASSES.get(r["row"])
    device = device_name()
    print(f"\nDevice: {device}  TF {tf.__version__}  jit_compile={FLAGS.jit_compile}  "
          f"policy={FLAGS.mixed_precision or 'float32'}  steps={FLAGS.steps}\n")
    print("| row | batch | s/step (median) | images/s | peak MB | params | x baseline step | ideal (passes) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['ratio_to_baseline']:.2f}" if r["ratio_to_baseline"] else "-"
        ideal = str(r["ideal_ratio"]) if r["ideal_ratio"] else "-"
        print(f"| {r['row']} | {r['batch']} | {r['median_s_per_step']:.4f} | {r['images_per_s']:.1f} | "
              f"{r['peak_memory_mb']:.0f} | {r['params']:,} | {ratio} | {ideal} |")
    out = FLAGS.output or os.path.join(os.path.dirname(__file__), "results", f"{device}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"device": device, "tensorflow": tf.__version__, "jit_compile": FLAGS.jit_compile,
                   "mixed_precision": FLAGS.mixed_precision, "steps": FLAGS.steps, "rows": results}, f, indent=2)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    app.run(main)
