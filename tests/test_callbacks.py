"""keras_ebm.callbacks: one training engine for `model.fit` in user code and for run_training's loops.

- `fit` + callbacks and the multi-worker custom loop driving the same callbacks give the same
  weights, replay buffer and checkpoints;
- a `fit` run that crashes (or is SIGKILLed) resumes exactly: the resumed run ends equal to an
  uninterrupted one;
- the divergence guard recovers inside `fit`; the time budget stops `fit` and checkpoints.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import digits_arrays, run_script, tiny_jem
from keras_ebm import callbacks, divergence, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jem_fn():
    return tiny_jem()


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
    cbs = callbacks.training_callbacks(
        str(model_dir), train_steps=train_steps, checkpoint_every=2, progress=False, **kwargs
    )
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
    # What the remedy computes (the penalty in the loss, on every path) is checked in
    # tests/test_run_settings.py; here the recovery itself.
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
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "whole"), str(steps), str(tmp_path / "whole.npz")],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(steps), str(tmp_path / "run.npz")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        latest = (
            tf.train.latest_checkpoint(str(run_dir / "checkpoints")) if (run_dir / "checkpoints").exists() else None
        )
        if latest and callbacks.checkpoint_step(latest) >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = callbacks.checkpoint_step(tf.train.latest_checkpoint(str(run_dir / "checkpoints")))
    assert 10 <= killed_at < steps
    subprocess.run(
        [sys.executable, str(script), str(run_dir), str(steps), str(tmp_path / "run.npz")],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    whole, resumed = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "run.npz")
    assert sorted(whole.files) == sorted(resumed.files)
    for k in whole.files:
        np.testing.assert_array_equal(whole[k], resumed[k], err_msg=k)


def test_the_guard_reads_each_steps_own_values_in_one_fit(tmp_path, monkeypatch):
    # One `fit` call for the whole run: the logs the guard reads at step k are compute_losses of
    # batch k (at the weights before step k), not running means over the call.
    from keras_ebm.stateless_scope import discard_updates

    model, cbs = build(
        tmp_path,
        6,
        divergence_guard=divergence.DivergenceGuard(max_recoveries=0, clf_rise_factor=None, max_energy_gap=None),
    )
    x, y = digits_arrays(256)
    expected, seen = {}, {}

    class Expect(keras.callbacks.Callback):
        """Before step k: compute_losses of batch k without changing any state (the step then
        draws the same SGLD samples from the same seeds)."""

        def on_train_batch_begin(self, batch, logs=None):
            k = callbacks.current_step(self.model)
            xb, yb = x[16 * k : 16 * (k + 1)], y[16 * k : 16 * (k + 1)]
            with discard_updates():
                b = self.model.unpack_batch((xb, yb), training=True)
                logs = self.model.compute_losses(b, self.model.sample_negatives(b), training=True)
            expected[k + 1] = {n: float(v) for n, v in logs.items()}

    original = divergence.DivergenceMonitor.update

    def spy(self, step, logs):
        seen[step] = dict(logs)
        return original(self, step, logs)

    monkeypatch.setattr(divergence.DivergenceMonitor, "update", spy)
    model.fit(data(), epochs=1, steps_per_epoch=6, verbose=0, callbacks=[Expect()] + cbs)
    assert sorted(seen) == [1, 2, 3, 4, 5, 6]
    for k in seen:
        # The classifier batch's terms (the SGLD samples of an eager replay differ slightly).
        for name in ("clf_loss", "clf_acc", "energy_data"):
            np.testing.assert_allclose(
                seen[k][name], expected[k][name], rtol=2e-4, atol=1e-5, err_msg=f"step {k} {name}"
            )


def test_ctrl_c_during_fit_saves_the_step_and_says_how_to_resume(tmp_path, capsys):
    # A real SIGINT to this process, sent between steps 3 and 4: the running step finishes, is
    # checkpointed, and fit stops with TrainingInterrupted (a KeyboardInterrupt); the handler that
    # was there before fit is back.
    class SendSigint(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if callbacks.current_step(self.model) == 3:
                os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    model, cbs = build(tmp_path / "run", 100)
    callbacks.find(cbs, callbacks.Checkpointing).every = 1000  # only the interrupt saves
    with pytest.raises(callbacks.TrainingInterrupted) as info:
        model.fit(data(), epochs=1, steps_per_epoch=100, verbose=0, callbacks=[SendSigint()] + cbs)
    assert info.value.step == 4 and info.value.checkpoint.endswith("ckpt-4")
    assert signal.getsignal(signal.SIGINT) is before
    assert "ckpt-4.index" in checkpoint_files(tmp_path / "run")
    out = capsys.readouterr().out
    assert "interrupted at step 4: saved" in out and "to resume, run the same command again" in out
    resumed, cbs = build(tmp_path / "run", 100)
    assert callbacks.resume(resumed, cbs) == 4
    assert_same_state(state(model), state(resumed))


TRAIN_ARGS = [
    "--gin_file=gin_configs/jem.gin",
    "--gin_file=gin_configs/tiny.gin",
    "--gin_param=run_training.train_steps = 300",
    "--gin_param=run_training.export = False",
    "--gin_param=run_training.checkpoint_every = 1000",
    "--gin_param=run_training.progress = False",
]


def _train(model_dir, env, extra=()):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train.py"), f"--model_dir={model_dir}"] + TRAIN_ARGS + list(extra),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_first_step(proc, model_dir, timeout=240):
    """operative_config.gin is written after the first step: fit (and its Ctrl-C handler) runs."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (model_dir / "operative_config.gin").exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not start (returncode {proc.poll()})")


def _final_state(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "save_counter" not in k}


@pytest.mark.slow
def test_ctrl_c_to_train_py_checkpoints_exits_130_and_resumes_exactly(tmp_path):
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    run_dir = tmp_path / "run"
    proc = _train(run_dir, env)
    try:
        _wait_for_first_step(proc, run_dir)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-3000:]
    lines = [line for line in out.splitlines() if "interrupted at step" in line]
    assert len(lines) == 1, out[-3000:]
    step = int(re.search(r"interrupted at step (\d+)", lines[0]).group(1))
    assert 0 < step < 300 and f"ckpt-{step}" in lines[0] and "run the same command again" in lines[0]
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith(f"ckpt-{step}")
    # The same command resumes from it and ends bit-identical to an uninterrupted run.
    for model_dir in (run_dir, tmp_path / "whole"):
        run_script(
            [sys.executable, os.path.join(REPO, "train.py"), f"--model_dir={model_dir}"] + TRAIN_ARGS, REPO, env, 600
        )
    resumed, whole = _final_state(run_dir), _final_state(tmp_path / "whole")
    assert sorted(resumed) == sorted(whole)
    for k in whole:
        if isinstance(whole[k], np.ndarray):
            np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)
    # A second Ctrl-C during the (slow: 3,000 SGLD steps) step ends the process at once, killed by
    # SIGINT, without saving that step.
    again = tmp_path / "again"
    proc = _train(again, env, extra=["--gin_param=SGLD_STEPS = 3000"])
    try:
        _wait_for_first_step(proc, again)
        saved = tf.train.latest_checkpoint(str(again / "checkpoints"))
        proc.send_signal(signal.SIGINT)
        for line in proc.stdout:  # the first Ctrl-C is acknowledged...
            if "Ctrl-C: saving a checkpoint after this step" in line:
                break
        proc.send_signal(signal.SIGINT)  # ...and the second one does not wait for the step
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGINT
    assert tf.train.latest_checkpoint(str(again / "checkpoints")) == saved


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
