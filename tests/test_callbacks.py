"""keras_ebm.callbacks: one training engine for `model.fit` in user code and for run_training's loops.

- `fit` + callbacks and the multi-worker custom loop driving the same callbacks give the same
  weights, replay buffer and checkpoints;
- a `fit` run that crashes (or is SIGKILLed) resumes exactly: the resumed run ends equal to an
  uninterrupted one;
- the divergence guard recovers inside `fit`; the time budget stops `fit` and checkpoints.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import callbacks, divergence, training
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers import JEM

from helpers import digits_arrays, tiny_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jem_fn():
    return JEM(tiny_network(), image_shape=(8, 8, 1), num_classes=10, buffer_size=64, seed=0,
               sampler=SGLDSampler(n_steps=2, step_size=1.0, noise_std=0.01, seed=0))


def data(start=0, explode_at=None):
    """Deterministic batches of 16 digits; `start` skips the batches already trained on."""
    x, y = digits_arrays(256)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16, drop_remainder=True)
    if explode_at is not None:  # NaN images in batch `explode_at` (step explode_at + 1)
        ds = ds.enumerate().map(lambda i, b: (tf.where(i == explode_at, b[0] * np.nan, b[0]), b[1]))
    return ds.skip(start)


def build(model_dir, train_steps, **kwargs):
    keras.utils.set_random_seed(0)
    model = training.build_trainer(jem_fn, lambda: keras.optimizers.Adam(0.01), tf.distribute.get_strategy())
    cbs = callbacks.training_callbacks(str(model_dir), train_steps=train_steps, checkpoint_every=2,
                                       progress=False, **kwargs)
    return model, cbs


def state(model):
    """Every variable of the trainer (weights, BN statistics, buffer, RNG states) and of its
    optimizer, keyed by position (Keras numbers layer names per process)."""
    variables = list(model.variables) + list(model.optimizer.variables)
    return {f"{i:03d}": v.numpy() for i, v in enumerate(variables)}


def assert_same_state(a, b, atol=0.0):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)


def checkpoint_files(model_dir):
    return sorted(f for f in os.listdir(os.path.join(model_dir, "checkpoints")) if f != "checkpoint")


def test_fit_and_the_custom_loop_drive_the_same_callbacks_to_the_same_state(tmp_path):
    fit_model, fit_cbs = build(tmp_path / "fit", 6)
    fit_model.fit(data(), epochs=1, steps_per_epoch=100, verbose=0, callbacks=fit_cbs)  # StopAtStep ends it
    loop_model, loop_cbs = build(tmp_path / "loop", 6)
    strategy = tf.distribute.get_strategy()
    training.train_loop(loop_model, strategy.experimental_distribute_dataset(data()), strategy, 6, loop_cbs)
    assert callbacks.current_step(fit_model) == callbacks.current_step(loop_model) == 6
    assert_same_state(state(fit_model), state(loop_model))  # weights, Adam slots, buffer, RNG states
    assert checkpoint_files(tmp_path / "fit") == checkpoint_files(tmp_path / "loop")
    assert "ckpt-6.index" in checkpoint_files(tmp_path / "fit")
    for run in ("fit", "loop"):
        assert (tmp_path / run / "operative_config.gin").exists()
        assert (tmp_path / run / "samples" / "buffer.png").exists()
        assert os.listdir(tmp_path / run / "tensorboard")


class Crash(keras.callbacks.Callback):
    """Stands in for a kill: raises after `at` steps (after the checkpoint of step at - 1)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if callbacks.current_step(self.model) == self.at:
            raise KeyboardInterrupt("simulated kill")


def test_a_crashed_fit_resumes_exactly(tmp_path):
    whole, cbs = build(tmp_path / "whole", 8)
    whole.fit(data(), epochs=1, steps_per_epoch=8, verbose=0, callbacks=cbs)

    crashed, cbs = build(tmp_path / "run", 8)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(data(), epochs=1, steps_per_epoch=8, verbose=0, callbacks=cbs + [Crash(5)])
    assert checkpoint_files(tmp_path / "run")[-1] == "ckpt-4.index"

    resumed, cbs = build(tmp_path / "run", 8)  # a new process would do exactly this
    start = callbacks.resume(resumed, cbs)
    assert start == 4
    resumed.fit(data(start), epochs=1, steps_per_epoch=8, verbose=0, callbacks=cbs)
    assert callbacks.current_step(resumed) == 8
    assert_same_state(state(whole), state(resumed))

    # Rerunning a finished run trains nothing.
    again, cbs = build(tmp_path / "run", 8)
    again.fit(data(callbacks.resume(again, cbs)), epochs=1, steps_per_epoch=8, verbose=0, callbacks=cbs)
    assert callbacks.current_step(again) == 8
    assert_same_state(state(whole), state(again))


def test_fit_recovers_from_divergence_in_place(tmp_path):
    guard = divergence.DivergenceGuard(max_recoveries=2, confirm_steps=2, remedies=("energy_l2",))
    model, cbs = build(tmp_path, 10, divergence_guard=guard)
    model.check_finite_inputs = False
    model.fit(data(explode_at=5), epochs=1, steps_per_epoch=10, verbose=0, callbacks=cbs)
    events = [json.loads(line) for line in (tmp_path / "divergence_events.jsonl").read_text().splitlines()]
    # Checkpoints 0, 2, 4; at step 6 only ckpt-2 had confirm_steps=2 healthy steps after it.
    assert len(events) == 1 and events[0]["at_step"] == 6 and events[0]["restored"].endswith("ckpt-2"), events
    assert "energy L2 -> 0.1" in events[0]["change"]
    assert model.energy_l2 == 0.1
    # fit's own step budget ran out in the failing branch: the run stops short, healthy, resumable.
    assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)
    assert callbacks.find(cbs, callbacks.DivergenceRecovery).recoveries == len(events)


def test_fit_without_a_guard_stops_and_keeps_the_good_checkpoint(tmp_path):
    model, cbs = build(tmp_path, 10)
    model.check_finite_inputs = False
    with pytest.raises(divergence.DivergenceError, match="diverged at step 6"):
        model.fit(data(explode_at=5), epochs=1, steps_per_epoch=10, verbose=0, callbacks=cbs)
    assert checkpoint_files(tmp_path)[-1] == "ckpt-4.index"
    restored, cbs = build(tmp_path, 10)
    assert callbacks.resume(restored, cbs) == 4
    assert callbacks.variables_finite(restored)


def test_time_budget_stops_fit_and_checkpoints(tmp_path):
    model, cbs = build(tmp_path, 1000, max_minutes=1e-6)
    model.fit(data(), epochs=1, steps_per_epoch=1000, verbose=0, callbacks=cbs)
    assert callbacks.find(cbs, callbacks.TimeBudget).stopped
    step = callbacks.current_step(model)
    assert step == 1
    assert checkpoint_files(tmp_path)[-1] == f"ckpt-{step}.index"


def test_checkpointing_refuses_to_save_non_finite_variables(tmp_path):
    model, cbs = build(tmp_path, 4)
    ckpt = callbacks.find(cbs, callbacks.Checkpointing)
    ckpt.set_model(model)
    ckpt.setup()
    model.buffer.buffer.assign(tf.fill(model.buffer.buffer.shape, float("nan")))
    with pytest.raises(divergence.DivergenceError, match="NaN/Inf"):
        ckpt.save()
    assert not os.path.exists(tmp_path / "checkpoints" / "checkpoint")


FIT_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import keras, numpy as np
    from keras_ebm import callbacks
    from test_callbacks import build, data, state
    model_dir, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    model, cbs = build(model_dir, steps)
    start = callbacks.resume(model, cbs)
    model.fit(data(start), epochs=1, steps_per_epoch=steps, verbose=0, callbacks=cbs)
    np.savez(out, **{{k.replace("/", "|"): v for k, v in state(model).items()}})
""")


@pytest.mark.slow
def test_fit_sigkilled_then_resumed_equals_an_uninterrupted_run(tmp_path):
    script = tmp_path / "fit_run.py"
    script.write_text(FIT_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    steps = 40
    subprocess.run([sys.executable, str(script), str(tmp_path / "whole"), str(steps), str(tmp_path / "whole.npz")],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), str(steps), str(tmp_path / "run.npz")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints")) if (run_dir / "checkpoints").exists() else None
        if latest and callbacks.checkpoint_step(latest) >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = callbacks.checkpoint_step(tf.train.latest_checkpoint(str(run_dir / "checkpoints")))
    assert 10 <= killed_at < steps
    subprocess.run([sys.executable, str(script), str(run_dir), str(steps), str(tmp_path / "run.npz")],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    whole, resumed = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "run.npz")
    assert sorted(whole.files) == sorted(resumed.files)
    for k in whole.files:
        np.testing.assert_array_equal(whole[k], resumed[k], err_msg=k)


def test_time_budget_reads_minutes_on_a_fake_clock(monkeypatch):
    """2 minutes: not stopped at 119 s, stopped at 121 s (read as hours or seconds it would stop at
    7,200 s or 2 s), and the budget spans later `fit` calls (it starts at the first)."""
    now = [1000.0]
    monkeypatch.setattr(callbacks.time, "time", lambda: now[0])

    class Model:
        stop_training = False

    budget = callbacks.TimeBudget(2)
    model = Model()
    budget.set_model(model)
    budget.on_train_begin()
    for elapsed, stopped in ((1.0, False), (119.0, False)):
        now[0] = 1000.0 + elapsed
        budget.on_train_batch_end(0)
        assert budget.stopped is stopped and model.stop_training is stopped, elapsed
    budget.on_train_begin()  # a second fit call does not restart the budget
    now[0] = 1121.0
    budget.on_train_batch_end(0)
    assert budget.stopped and model.stop_training
