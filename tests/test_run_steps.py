"""`run_training` as steps: the run's outputs are those recorded before the refactoring, bit for bit,
and after-training actions can be added, removed or overridden from Python and gin."""

import json
import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import run_fingerprint
from helpers import digits_arrays, tiny_jem, tiny_network
from keras_ebm import actions as actions_lib
from keras_ebm import training
from keras_ebm.trainers import SoftmaxClassifier

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "run_golden.json")


def test_the_tiny_quickstart_writes_what_it_wrote_before_the_refactoring(tmp_path):
    # tests/data/run_golden.json was recorded with the single-function run_training (two runs of
    # that code gave identical fingerprints); see tests/run_fingerprint.py. Floating-point results
    # are compared bit for bit in the environment they were recorded in (library versions, CPU);
    # elsewhere only what does not depend on floating point is.
    # In a fresh process, as train.py runs (in a pytest worker, layers other tests built before
    # would shift Keras' automatic names, and with them the weight paths).
    out = tmp_path / "fingerprint.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([run_fingerprint.REPO, os.path.dirname(__file__)]))
    proc = subprocess.run(
        [sys.executable, run_fingerprint.__file__, str(out)],
        cwd=run_fingerprint.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with open(out) as f:
        got = json.load(f)
    got.pop("environment")
    with open(GOLDEN) as f:
        expected = json.load(f)
    recorded_in = expected.pop("environment")
    for key in run_fingerprint.EXACT_EVERYWHERE:
        assert got[key] == expected[key], key
    for run in ("run", "baseline"):
        for key in run_fingerprint.EXACT_EVERYWHERE_PER_RUN:
            assert got[run][key] == expected[run][key], (run, key)
    if run_fingerprint.environment() != recorded_in:
        pytest.skip(f"float results recorded in {recorded_in}, not {run_fingerprint.environment()}")
    for key in expected:
        assert got[key] == expected[key], key
    assert got == expected


def data_fn(input_context=None):
    x, y = digits_arrays(256)
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(32, drop_remainder=True)


def trainer_fn():
    return SoftmaxClassifier(tiny_network(), image_shape=(8, 8, 1), num_classes=10)


def run(model_dir, **kwargs):
    """Two steps of a tiny softmax classifier; run_training's flags at their defaults (export=True)."""
    kwargs.setdefault("trainer", trainer_fn)
    return training.run_training(
        model_dir=str(model_dir),
        optimizer=lambda: keras.optimizers.Adam(0.05),
        train_data=data_fn,
        train_steps=2,
        checkpoint_every=2,
        log_every=2,
        progress=False,
        **kwargs,
    )


class WriteFile(actions_lib.Action):
    """A user's action: writes `<model_dir>/<name>` with the step the run ended at."""

    def __init__(self, name="custom.txt"):
        self.name = name

    def __call__(self, run):
        with open(os.path.join(run.model_dir, self.name), "w") as f:
            f.write(f"{type(run.model).__name__} {run.last_step} {sorted(run.outputs)}")


def test_the_flags_stand_for_the_default_actions():
    names = lambda actions: [type(a).__name__ for a in actions]  # noqa: E731
    assert names(actions_lib.default_actions()) == ["SummaryAction", "ExportAction"]
    assert names(actions_lib.default_actions(export=False)) == ["SummaryAction"]
    full = actions_lib.default_actions(export_onnx=True, evaluate=True, baseline=trainer_fn)
    assert names(full) == ["SummaryAction", "ExportAction", "EvaluateAction", "BaselineAction"]
    assert full[1].onnx and full[3].trainer is trainer_fn


def test_an_action_added_from_python_runs_after_the_default_ones(tmp_path):
    run(tmp_path, actions=actions_lib.default_actions() + [WriteFile()])
    assert (tmp_path / "custom.txt").read_text() == "SoftmaxClassifier 2 []"
    assert (tmp_path / "export" / "saved_model.pb").exists()
    assert json.loads((tmp_path / "training_summary.json").read_text())["last_step"] == 2


def test_a_list_of_actions_replaces_the_flags_so_removing_export_writes_no_export(tmp_path):
    run(tmp_path / "a", export=True, actions=[actions_lib.SummaryAction(), WriteFile()])
    assert not (tmp_path / "a" / "export").exists()
    assert (tmp_path / "a" / "training_summary.json").exists() and (tmp_path / "a" / "custom.txt").exists()
    run(tmp_path / "b", actions=[])  # nothing after training: not even the summary
    assert not (tmp_path / "b" / "export").exists() and not (tmp_path / "b" / "training_summary.json").exists()
    assert (tmp_path / "b" / "checkpoints").exists()


def test_an_action_overridden_by_a_subclass_and_a_plain_function(tmp_path):
    class LongerSummary(actions_lib.SummaryAction):
        def __call__(self, run):
            super().__call__(run)
            path = os.path.join(run.model_dir, "training_summary.json")
            with open(path) as f:
                summary = json.load(f)
            with open(path, "w") as f:
                json.dump(dict(summary, model_dir=os.path.basename(run.model_dir)), f)

    seen = []
    run(tmp_path / "run", actions=[LongerSummary(), lambda r: seen.append((r.first_step, r.last_step))])
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["model_dir"] == "run" and summary["trainer"] == "SoftmaxClassifier"
    assert seen == [(0, 2)]
    run(tmp_path / "run", actions=[lambda r: seen.append((r.first_step, r.trained_now))])  # resumed: done
    assert seen[-1] == (2, False)


def test_checks_run_before_training_and_non_chief_workers_run_only_shared_actions(tmp_path):
    class Refuses(actions_lib.Action):
        def check(self):
            raise RuntimeError("refused before training")

    with pytest.raises(RuntimeError, match="refused before training"):
        run(tmp_path / "refused", actions=[actions_lib.SummaryAction(), Refuses()])
    assert not (tmp_path / "refused" / "checkpoints").exists()

    calls = []

    class Shared(actions_lib.Action):
        chief_only = False

        def __call__(self, run):
            calls.append("shared")

    worker = actions_lib.Run(
        model_dir=str(tmp_path),
        model=None,
        chief=False,
        first_step=0,
        last_step=2,
        train_steps=2,
        stopped_by="train_steps",
        seconds=0.0,
        recoveries=0,
        settings={},
        actions=[],
    )
    actions_lib.run_actions([lambda r: calls.append("chief only"), Shared()], worker)
    assert calls == ["shared"]


def test_a_baseline_action_gets_the_runs_other_actions(tmp_path):
    run(tmp_path, actions=[WriteFile(), actions_lib.BaselineAction(trainer_fn)])
    assert (tmp_path / "custom.txt").exists() and (tmp_path / "baseline" / "custom.txt").exists()
    assert not (tmp_path / "baseline" / "baseline").exists()
    assert not (tmp_path / "export").exists() and not (tmp_path / "baseline" / "export").exists()
    assert not (tmp_path / "comparison.md").exists()  # neither run was evaluated
    # Its own list, when given.
    run(tmp_path / "own", actions=[actions_lib.BaselineAction(trainer_fn, actions=[WriteFile("b.txt")])])
    assert (tmp_path / "own" / "baseline" / "b.txt").exists()
    assert not (tmp_path / "own" / "baseline" / "custom.txt").exists()


@gin.configurable
class GinWriteFile(WriteFile):
    """WriteFile as a gin configurable (a user's own module would register it so)."""


def _parse(bindings):
    gin.parse_config("import keras_ebm.configurables\n" + bindings)


def test_actions_from_gin_add_remove_and_override(tmp_path, monkeypatch):
    # Add: the user's action after the summary; remove: no ExportAction although export is True.
    _parse(
        "run_training.export = True\n"
        "run_training.actions = [@SummaryAction(), @GinWriteFile()]\n"
        "GinWriteFile.name = 'from_gin.txt'\n"
    )
    run(tmp_path / "a")
    assert (tmp_path / "a" / "from_gin.txt").read_text() == "SoftmaxClassifier 2 []"
    assert (tmp_path / "a" / "training_summary.json").exists()
    assert not (tmp_path / "a" / "export").exists()
    assert (
        "run_training.actions = [@SummaryAction(), @GinWriteFile()]"
        in (tmp_path / "a" / "operative_config.gin").read_text()
    )
    # Override: an action's own setting bound in gin (a spy stands in for the ONNX export).
    gin.clear_config()
    _parse("run_training.actions = [@ExportAction()]\nExportAction.onnx = True\n")
    exported = []
    monkeypatch.setattr(
        actions_lib.export_lib, "export_model", lambda model, export_dir, **kw: exported.append(kw["onnx"])
    )
    run(tmp_path / "b")
    assert exported == [True]
    assert not (tmp_path / "b" / "training_summary.json").exists()


def test_a_sample_grid_action_draws_from_the_trained_model(tmp_path):
    _parse(
        "run_training.actions = [@SampleGridAction()]\nSampleGridAction.num_samples = 4\nSampleGridAction.n_steps = 1\n"
    )
    run(tmp_path, trainer=tiny_jem)
    assert (tmp_path / "samples" / "fresh_1steps.png").exists()
    images = np.load(tmp_path / "samples" / "fresh_1steps.npz")["images"]
    assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8


gin.external_configurable(trainer_fn, "tiny_softmax")


def test_a_baseline_action_from_gin(tmp_path):
    _parse("run_training.actions = [@GinWriteFile(), @BaselineAction()]\nBaselineAction.trainer = @tiny_softmax\n")
    run(tmp_path)
    assert (tmp_path / "custom.txt").exists() and (tmp_path / "baseline" / "custom.txt").exists()
    assert (tmp_path / "baseline" / "checkpoints").exists() and not (tmp_path / "baseline" / "baseline").exists()
