"""What a tiny `train.py` run leaves behind, as a comparable fingerprint (tests/test_run_steps.py).

`run_quickstart_tiny(model_dir)` trains gin_configs/quickstart.gin with the tiny.gin overlay
(SADA-JEM, then its softmax baseline; 4 steps each, export and evaluation on) the way train.py
does, and `fingerprint(model_dir, model)` reduces what it wrote to JSON: the files written,
the training summaries, every checkpointed variable, the returned model's weights, the evaluation
results, the comparison table, the configs, the TensorBoard scalars and the exported scores on a
fixed batch. Values that depend on the clock or the machine are left out: the summaries'
`seconds`, the `steps_per_second` scalar, the TensorBoard event file names (time, host, pid) and
the directory itself (written as `<run>`); and the one line `run_training.actions = None` that the
operative config gained with that parameter (the golden file predates it).

Regenerate the golden file (only when a change of outputs is intended):

    KERAS_BACKEND=tensorflow PYTHONPATH=.:tests python tests/run_fingerprint.py tests/data/run_golden.json
"""

import glob
import hashlib
import json
import os
import re
import sys

import numpy as np

CONFIGS = ["gin_configs/quickstart.gin", "gin_configs/tiny.gin"]
PARAMS = ["run_training.train_steps = 4", "run_training.evaluate = True", "run_training.progress = False"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quickstart_tiny(model_dir, extra_params=()):
    """Train the tiny quickstart into `model_dir` as train.py does; returns the trained model."""
    from keras_ebm import run_config, training

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        run_config.parse_gin(CONFIGS, PARAMS + list(extra_params))
        run_config.save_config(model_dir, gin_files=CONFIGS)
        return training.run_training(model_dir=model_dir)
    finally:
        os.chdir(cwd)


def _sha(data):
    return hashlib.sha256(data).hexdigest()[:16]


def _array_sha(value):
    value = np.asarray(value)
    return f"{value.dtype}{list(value.shape)}:{_sha(np.ascontiguousarray(value).tobytes())}"


def _files(model_dir):
    out = []
    for root, _, names in os.walk(model_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), model_dir)
            out.append(re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents.*", rel))
    return sorted(out)


def _text(path, model_dir):
    with open(path) as f:
        return f.read().replace(os.path.abspath(model_dir), "<run>").replace(model_dir, "<run>")


def _checkpoint(directory):
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(directory)
    reader = tf.train.load_checkpoint(latest)
    values = {}
    for name in sorted(reader.get_variable_to_shape_map()):
        if name == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        values[name] = _array_sha(reader.get_tensor(name))
    return {"latest": os.path.basename(latest), "variables": values}


def _scalars(directory):
    import tensorflow as tf

    scalars = {}
    for path in sorted(glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag != "steps_per_second" and value.metadata.plugin_data.plugin_name == "scalars":
                    scalars.setdefault(value.tag, {})[str(event.step)] = float(tf.make_ndarray(value.tensor))
    return scalars


def _export_scores(export_dir):
    import tensorflow as tf

    loaded = tf.saved_model.load(export_dir)
    images = np.random.RandomState(0).randint(0, 256, (4, 8, 8, 1)).astype(np.float32)
    out = loaded.signatures["scores"](images=tf.constant(images))
    return {k: _array_sha(v.numpy()) for k, v in sorted(out.items())}


def _operative_config(model_dir):
    # The one line run_training's `actions` parameter added (gin lists every parameter's default
    # value); everything else is compared as written.
    text = _text(os.path.join(model_dir, "operative_config.gin"), model_dir)
    return text.replace("run_training.actions = None\n", "", 1)


def _one_run(model_dir):
    summary = json.loads(_text(os.path.join(model_dir, "training_summary.json"), model_dir))
    summary.pop("seconds")
    return {
        "summary": summary,
        "checkpoint": _checkpoint(os.path.join(model_dir, "checkpoints")),
        "results": json.loads(_text(os.path.join(model_dir, "eval", "results.json"), model_dir)),
        "results_md": _sha(_text(os.path.join(model_dir, "eval", "results.md"), model_dir).encode()),
        "config": _sha(_text(os.path.join(model_dir, "config.gin"), model_dir).encode()),
        "operative_config": _sha(_operative_config(model_dir).encode()),
        "scalars": _scalars(os.path.join(model_dir, "tensorboard")),
        "export_scores": _export_scores(os.path.join(model_dir, "export")),
        "export_meta": _sha(
            _text(os.path.join(model_dir, "export", "assets", "keras_ebm_export.json"), model_dir).encode()
        ),
    }


def environment():
    """What bit-level float results depend on besides the code: library versions and the CPU."""
    import platform

    import keras
    import tensorflow as tf

    cpu = platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__, "cpu": cpu}


# The parts of a fingerprint that do not depend on floating point: compared on any machine.
EXACT_EVERYWHERE = ("files",)
EXACT_EVERYWHERE_PER_RUN = ("summary", "config", "operative_config", "export_meta")


def fingerprint(model_dir, model):
    """The JSON-able fingerprint of the run in `model_dir` that returned `model`."""
    return {
        "files": _files(model_dir),
        "run": _one_run(model_dir),
        "baseline": _one_run(os.path.join(model_dir, "baseline")),
        "comparison": _text(os.path.join(model_dir, "comparison.md"), model_dir),
        "images": {
            rel: _sha(open(os.path.join(model_dir, rel), "rb").read())
            for rel in _files(model_dir)
            if rel.endswith(".png")
        },
        "model": {
            "class": type(model).__name__,
            "weights": [f"{w.path}={_array_sha(w.numpy())}" for w in model.weights],
        },
    }


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        result = fingerprint(run_dir, run_quickstart_tiny(run_dir))
    result["environment"] = environment()
    with open(sys.argv[1], "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
