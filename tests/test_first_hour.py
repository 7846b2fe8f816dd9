"""What a new user meets in the first hour (issue 25): the design's own command, complete run
folders, misspelt macros, [0, 1] images, the --compare report, error output, package metadata."""

import json
import os
import re
import subprocess
import sys
import time

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import digits_arrays, run_script, tiny_network
from keras_ebm import data, run_config, training
from keras_ebm.data import sources
from keras_ebm.trainers import SoftmaxClassifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "gin_configs", "quickstart.gin")
TINY = os.path.join(REPO, "gin_configs", "tiny.gin")


def _parse(files, params=()):
    with gin.unlock_config():
        gin.clear_config()
        run_config.parse_gin(list(files), list(params))


# ------------------------------------------------------------------- 0. the design's own command
def test_model_dir_defaults_to_runs_config_name():
    assert run_config.default_model_dir(["gin_configs/clel_large.gin"]) == os.path.join("runs", "clel_large")
    assert run_config.default_model_dir(["gin_configs/sadajem.gin", "gin_configs/tiny.gin"]) == os.path.join(
        "runs", "sadajem_tiny"
    )


class _FakeBuilder:
    """A tfds builder with nothing prepared, recording a download."""

    def __init__(self):
        self.downloaded = False

    def as_dataset(self, split, shuffle_files):
        if not self.downloaded:
            raise AssertionError("not prepared")
        raise RuntimeError("downloaded, then read")  # far enough: the download was asked for

    def is_prepared(self):
        return self.downloaded

    def download_and_prepare(self):
        self.downloaded = True


def test_tfds_downloads_by_default_when_the_network_answers(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    builder = _FakeBuilder()
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: builder)
    monkeypatch.setattr(sources.tfds, "_network_reachable", lambda timeout=3.0: True)
    with pytest.raises(RuntimeError, match="downloaded, then read"):
        data.load_source("cifar10", "train")
    assert builder.downloaded
    # download=False never downloads, network or not.
    builder = _FakeBuilder()
    with pytest.raises(FileNotFoundError, match=r"downloading is off \(download=False\)"):
        data.load_source("cifar10", "train", download=False)
    assert not builder.downloaded


def test_tfds_without_network_fails_at_once_with_the_offline_overlays(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources.tfds, "_network_reachable", lambda timeout=3.0: False)
    start = time.time()
    with pytest.raises(FileNotFoundError) as info:
        data.load_source("cifar10", "train", data_dir=str(tmp_path))
    assert time.time() - start < 10
    message = str(info.value)
    assert "cannot download it: no network" in message
    assert "--gin_file=gin_configs/data/cifar10_python.gin" in message and "KERAS_EBM_DATA_DIR" in message
    # KERAS_EBM_OFFLINE: the probe answers False without touching the network.
    monkeypatch.undo()
    monkeypatch.setenv("KERAS_EBM_OFFLINE", "1")
    start = time.time()
    assert sources.tfds._network_reachable() is False and time.time() - start < 0.5


def test_run_training_refuses_unavailable_data_before_building_a_model(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources.tfds, "_network_reachable", lambda timeout=3.0: False)

    def trainer():
        raise AssertionError("the model was built before the data was checked")

    fn = data.make_dataset_fn("cifar10", "train", 8, data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="cannot download it"):
        training.run_training(
            str(tmp_path / "run"), trainer, lambda: keras.optimizers.Adam(), fn, 2, progress=False, export=False
        )


@pytest.mark.slow
def test_the_design_command_starts_and_fails_fast_offline(tmp_path):
    """`python train.py --gin_file=gin_configs/clel_large.gin`, no --model_dir, from another working
    directory, offline: the first line names runs/clel_large, then one message with the offline
    overlays, no traceback, nothing left behind."""
    env = dict(os.environ, KERAS_EBM_OFFLINE="1", TFDS_DATA_DIR=str(tmp_path / "tfds"))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("KERAS_EBM_VERBOSE", None)
    start = time.time()
    args = [sys.executable, os.path.join(REPO, "train.py"), "--gin_file=gin_configs/clel_large.gin"]
    out = run_script(args, tmp_path, env, 300, returncode=1, tail=2000)
    assert out.stdout.splitlines()[0].startswith("[keras_ebm] model_dir: runs/clel_large")
    assert "--gin_file=gin_configs/data/cifar10_python.gin" in out.stderr
    assert "Traceback" not in out.stderr and "cuInit" not in out.stderr, out.stderr[-3000:]
    assert not (tmp_path / "runs" / "clel_large").exists()
    assert time.time() - start < 120


# ----------------------------------------------------------- 1. every run folder is a complete run
def test_the_baseline_folder_gets_its_own_config(tmp_path):
    _parse([QUICK, TINY])
    run_config.save_config(str(tmp_path), gin_files=[QUICK, TINY])
    path = run_config.save_baseline_config(str(tmp_path), str(tmp_path / "baseline"))
    assert path == str(tmp_path / "baseline" / "config.gin")
    _parse([path])  # parses (no unread-macro error), and is a softmax run on the digits
    assert gin.query_parameter("run_training.trainer").selector.endswith("SoftmaxClassifier")
    assert gin.query_parameter("run_training.baseline") is None
    assert run_config.resolve_parameter("run_eval.in_dist") == {"name": "digits", "split": "test"}
    assert run_config.config_files(str(tmp_path / "baseline")) == [QUICK, TINY]
    from keras_ebm.evaluation import report

    assert report.run_name(str(tmp_path / "baseline")) == "SoftmaxClassifier (quickstart, tiny, baseline)"
    assert report.run_name(str(tmp_path)) == "SADAJEM (quickstart, tiny)"


# --------------------------------------------------------------------- 2. unread macros refused
def test_a_misspelt_macro_in_a_file_is_refused(tmp_path):
    typo = tmp_path / "my_tiny.gin"
    typo.write_text("TRAIN_STEP = 4\n")
    with pytest.raises(ValueError) as info:
        _parse([QUICK, str(typo)])
    assert "TRAIN_STEP (set in my_tiny.gin): did you mean TRAIN_STEPS?" in str(info.value)
    with pytest.raises(ValueError, match=r"TRAIN_STEP \(set in --gin_param\): did you mean TRAIN_STEPS\?"):
        _parse([QUICK], ["TRAIN_STEP = 4"])
    typo.write_text("TRAIN_STEPS = 4\n")
    _parse([QUICK, str(typo)])
    assert gin.query_parameter("%TRAIN_STEPS") == 4


def test_a_macro_this_config_does_not_read_is_refused_unless_declared_optional(tmp_path):
    overlay = tmp_path / "mine.gin"
    overlay.write_text("SGLD_STEPS = 2\n")  # softmax has no sampler
    with pytest.raises(ValueError, match=r"SGLD_STEPS \(set in mine.gin\)"):
        _parse(["gin_configs/softmax_cifar10.gin", str(overlay)])
    overlay.write_text("import keras_ebm.configurables\nSGLD_STEPS = 2\nmine/optional_macros.names = ['SGLD_STEPS']\n")
    _parse(["gin_configs/softmax_cifar10.gin", str(overlay)])
    _parse(["gin_configs/softmax_cifar10.gin", TINY])  # tiny.gin declares its trainer-specific macros


def test_a_saved_run_config_with_unread_macros_still_parses(tmp_path):
    """config.gin of a run trained before the check (softmax + tiny: SGLD_STEPS unread, no
    optional_macros binding) is read back by eval.py and resume."""
    old = tmp_path / "config.gin"
    old.write_text(
        "import keras_ebm.configurables\n\n# Macros:\n# " + "=" * 78 + "\nSGLD_STEPS = 2\n"
        "TRAIN_STEPS = 4\n\nrun_training.train_steps = %TRAIN_STEPS\n"
    )
    _parse([str(old)])


# ----------------------------------------------------------------------- 3. [0, 1] images to fit
def _softmax(pixel_range=(-1.0, 1.0)):
    model = SoftmaxClassifier(tiny_network(), image_shape=(8, 8, 1), num_classes=10, pixel_range=pixel_range)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_unit_range_images_on_a_minus_one_one_model_are_refused():
    x01, y = digits_arrays(64, pixel_range=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\].*Map them: x = x \* 2\.0 - 1\.0"):
        _softmax().fit(x01, y, batch_size=32, epochs=1, verbose=0)
    # A dataset: caught inside the step, at the first batch.
    ds = tf.data.Dataset.from_tensor_slices((x01, y)).batch(32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"x = x \* 2\.0 - 1\.0"):
        _softmax().fit(ds, epochs=1, verbose=0)


def test_the_unit_range_rule_leaves_real_data_alone():
    x, y = digits_arrays(64)  # correctly mapped [-1, 1] images
    _softmax().fit(x, y, batch_size=32, epochs=1, verbose=0)
    _softmax().fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(32), epochs=1, verbose=0)
    x01, _ = digits_arrays(64, pixel_range=(0.0, 1.0))
    _softmax(pixel_range=(0.0, 1.0)).fit(x01, y, batch_size=32, epochs=1, verbose=0)  # CLEL's range
    _softmax().fit(x01[:4], y[:4], batch_size=4, epochs=1, verbose=0)  # below 8 images: not judged


# ------------------------------------------------------------------------ 4. the --compare report
def _fake_run(root, name, trainer, ood_order, auroc):
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "training_summary.json").write_text(json.dumps({"trainer": trainer}))
    (run / "config.gin").write_text(f"{run_config.CONFIG_FILES_HEADER}gin_configs/quickstart.gin\n")
    ood = {o: {"log_px": auroc[o]} for o in ood_order}
    (run / "eval" / "results.json").write_text(
        json.dumps({"accuracy": 0.9, "ece": 0.05, "ood": ood, "num_examples": 10})
    )
    return str(run)


def test_compare_orders_sets_by_name_names_rows_by_trainer_and_config(tmp_path, monkeypatch):
    from keras_ebm.evaluation import report

    monkeypatch.chdir(tmp_path)
    a = _fake_run(tmp_path, "quickstart", "SADAJEM", ["photos", "interp"], {"photos": 0.72, "interp": 0.8091})
    b = _fake_run(tmp_path, "other", "SoftmaxClassifier", ["interp", "photos"], {"photos": 0.7874, "interp": 0.5})
    out = report.compare_runs([a, b], str(tmp_path / "report"))
    assert out["columns"][2:] == ["AUROC interp [log_px]", "AUROC photos [log_px]"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| SADAJEM (quickstart) | quickstart | 90.0% | 5.0% | 0.809 | 0.720 |" in text
    assert "| SoftmaxClassifier (quickstart) | other | 90.0% | 5.0% | 0.500 | 0.787 |" in text


def test_score_histograms_do_not_depend_on_the_order_of_the_sets(tmp_path):
    from keras_ebm.evaluation import plots

    rng = np.random.default_rng(0)
    scores = {"test": rng.normal(0, 1, 50), "photos": rng.normal(-1, 1, 50), "interp": rng.normal(1, 1, 50)}
    first = plots.score_histograms(scores, str(tmp_path / "a.png"), "test", "log_px")
    reordered = {k: scores[k] for k in ("test", "interp", "photos")}
    second = plots.score_histograms(reordered, str(tmp_path / "b.png"), "test", "log_px")
    assert open(first, "rb").read() == open(second, "rb").read()
    assert plots.colors_by_name(["photos", "interp"]) == plots.colors_by_name(["interp", "photos", "photos"])


# ---------------------------------------------------------------------- 6. what a user sees
@pytest.mark.slow
def test_a_user_error_is_one_message_and_tensorflow_start_up_is_quiet(tmp_path):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("KERAS_EBM_VERBOSE", None)
    cmd = [
        sys.executable,
        "train.py",
        f"--gin_file={QUICK}",
        f"--gin_file={TINY}",
        "--gin_param=DATASET = 'digitz'",
        f"--model_dir={tmp_path / 'run'}",
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "ValueError: Unknown data set" in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "KERAS_EBM_VERBOSE=1" in out.stderr
    for noise in ("cuInit", "oneDNN", "absl::InitializeLog", "cuda drivers"):
        assert noise not in out.stderr, out.stderr[:3000]
    verbose = subprocess.run(cmd + ["--verbose"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_error_message_of_a_step_assert_is_its_own_text():
    from keras_ebm import scripts

    @tf.function
    def step(x):
        tf.debugging.Assert(tf.reduce_min(x) < 0, ["The x images lie in [0, 1]: map them"])
        return x

    for run in (step, step.python_function):  # graph (a train step) and eager
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            run(tf.ones(3))
        assert scripts.error_message(info.value) == "InvalidArgumentError: The x images lie in [0, 1]: map them"
    noise = (
        "I0000 00:00:1796516530.493378    8394 port.cc:153] oneDNN custom operations are on.",
        "E0000 00:00:1796516535.299046    8394 cuda_platform.cc:52] failed call to cuInit: INTERNAL",
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    )
    assert all(scripts._STARTUP_NOISE.match(line) for line in noise)
    assert not scripts._STARTUP_NOISE.match("E0000 00:00:1 1 some_op.cc:1] a real error")


def test_training_off_a_terminal_logs_lines_not_a_progress_bar(tmp_path, capsys):
    x, y = digits_arrays(64)

    def data_fn(input_context=None):
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16, drop_remainder=True)

    training.run_training(
        str(tmp_path),
        lambda: SoftmaxClassifier(tiny_network(), image_shape=(8, 8, 1), num_classes=10),
        lambda: keras.optimizers.Adam(1e-3),
        data_fn,
        4,
        log_every=2,
        progress=True,
        export=False,
    )
    out = capsys.readouterr().out
    assert re.search(r"\[keras_ebm\] step 2/4 loss=", out) and re.search(r"\[keras_ebm\] step 4/4 ", out), out
    assert "━" not in out and "\r" not in out  # no Progbar redraws


# ----------------------------------------------------------------- 7. package metadata, commands
def test_package_metadata_and_console_scripts(tmp_path):
    out = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    info = tmp_path / "keras_ebm.egg-info"
    meta = (info / "PKG-INFO").read_text()
    assert "Author: keras_ebm developers" in meta
    assert re.search(r"^License(-Expression)?: Apache-2\.0$", meta, re.M)
    # No Home-page until the project has a public address (setup.py says so): never a made-up one.
    summary = re.search(r"^Summary: (.*)$", meta, re.M).group(1)
    assert "JEM" in summary and "softmax baseline" in summary
    assert "Classifier: Intended Audience :: Science/Research" in meta
    entry_points = (info / "entry_points.txt").read_text()
    assert "keras-ebm-train = keras_ebm.scripts.train:run" in entry_points
    assert "keras-ebm-eval = keras_ebm.scripts.eval:run" in entry_points
    assert "Apache License" in open(os.path.join(REPO, "LICENSE")).read()
    for module, flag in (("keras_ebm.scripts.train", "--model_dir"), ("keras_ebm.scripts.eval", "--compare")):
        helped = subprocess.run(
            [sys.executable, "-c", f"import sys; sys.argv[0] = 'keras-ebm'; from {module} import run; run()", "--help"],
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=REPO),
        )
        # (absl's --help exits with status 1)
        assert flag in helped.stdout and "--gin_file" in helped.stdout, helped.stderr[-2000:]
    for wrapper in ("train.py", "eval.py"):
        helped = subprocess.run(
            [sys.executable, wrapper, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert "  --gin_file:" in helped.stdout and "--[no]verbose" in helped.stdout, helped.stderr[-2000:]


# --------------------------------------------------------- 8. the README (first pages), no history
def test_the_quickstart_section_needs_no_history():
    """The README is the first page; history belongs in CHANGELOG.md."""
    with open(os.path.join(REPO, "README.md")) as f:
        first = f.read()
    for history in ("previous release", "this release", "did not reproduce", "Before the"):
        assert history not in first, history
