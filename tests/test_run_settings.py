"""Run-time settings reach the compiled step (keras_ebm.run_settings, issue: remedies that act).

The divergence guard's remedies, checked in what the step computes (not in attributes): the
penalty in the loss against a by-hand value, the SGLD chain length counted inside the graph, the
weight update under the lowered rate, along every path a run takes (one `fit`, several `fit`
calls, `run_training`, its multi-worker loop); see tests/_remedy_scenario.py.
"""

import json
import os
import sys

import numpy as np
import pytest

import _remedy_scenario as scenario
from helpers import run_script

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


@pytest.mark.parametrize("path", ["fit_one", "fit_calls", "run_training"])
def test_remedies_reach_the_compiled_step(tmp_path, path):
    records = scenario.run(path, str(tmp_path))
    scenario.check(records)


def test_remedies_reach_the_multiworker_loop(tmp_path):
    out = tmp_path / "records.json"
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        TF_CONFIG="",
        PYTHONPATH=os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")]),
    )
    env.pop("TF_CONFIG")
    run_script(
        [sys.executable, os.path.join(HERE, "_remedy_scenario.py"), str(tmp_path / "run"), str(out)], REPO, env, 600
    )
    scenario.check(json.loads(out.read_text()))


def test_settings_table_matches_the_declarations_and_the_docs():
    from keras_ebm import run_settings
    from keras_ebm.optim.gradients import SAMGradients
    from keras_ebm.sampling import ReplayBuffer, SGLDSampler
    from keras_ebm.trainers import CLEL, GMMC, HDGE, JEM
    from keras_ebm.trainers.base import EBMTrainer

    declared = set()
    for cls in (SGLDSampler, SAMGradients, ReplayBuffer, EBMTrainer, JEM, HDGE, GMMC, CLEL):
        for name, value in vars(cls).items():
            if isinstance(value, run_settings.Setting):
                declared.add((cls.__name__, name, run_settings.VARIABLE))
            elif isinstance(value, run_settings.TraceSetting):
                declared.add((cls.__name__, name, run_settings.TRACE))
    assert declared == {(owner, name, kind) for owner, name, kind, _ in run_settings.SETTINGS}
    with open(os.path.join(REPO, "docs", "run_time_settings.md")) as f:
        doc = f.read()
    for owner, name, kind, _ in run_settings.SETTINGS:
        assert f"| {owner} | `{name}` | {kind} |" in doc, (owner, name)


def test_a_graph_shaping_change_between_steps_rebuilds_the_step_in_one_fit(tmp_path):
    # A callback changes settings after step 2 of one `fit` call: K (a variable) and px_weight
    # from 1 to 0 (structural: the SGLD chain and the p(x) term leave the graph) and the classifier
    # weight. The steps after it compute with them: no SGLD energy call, loss = 2 x clf_loss.
    import keras
    import tensorflow as tf

    from keras_ebm import callbacks

    calls = tf.Variable(0, dtype=tf.int64, trainable=False)
    model = scenario.make_trainer(calls)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    seen = []

    class Change(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            callbacks.begin_step(self.model)
            if batch == 2:
                self.model.set_run_options({"sampler.n_steps": 3, "px_weight": 0.0, "clf_weight": 2.0})

        def on_train_batch_end(self, batch, logs=None):
            seen.append((callbacks.step_logs(self.model), int(calls.numpy())))

    model.fit(scenario.segment_data(0), epochs=1, steps_per_epoch=5, verbose=0, callbacks=[Change()])
    counts = [c for _, c in seen]
    assert np.diff([0] + counts).tolist() == [2, 2, 0, 0, 0], counts
    for logs, _ in seen[2:]:
        np.testing.assert_allclose(logs["loss"], 2.0 * logs["clf_loss"], rtol=1e-6)
    for logs, _ in seen[:2]:
        np.testing.assert_allclose(logs["loss"], logs["clf_loss"] + logs["px_loss"], rtol=1e-5)
    # Back on: the chain runs K = 3 (the variable set while it was off).
    model.set_run_options(px_weight=1.0)
    before = int(calls.numpy())
    model.fit(scenario.segment_data(0), epochs=1, steps_per_epoch=1, verbose=0)
    assert int(calls.numpy()) - before == 3
