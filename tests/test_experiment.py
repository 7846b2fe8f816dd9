"""run_training: checkpoints resume with equal weights, a crash keeps the last good checkpoint."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import ConstantInitializer, digits_arrays, run_briefly, run_script, tiny_jem, tiny_network
from keras_ebm import callbacks, divergence, generation, training
from keras_ebm.trainers import SoftmaxClassifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_fn(input_context=None):
    x, y = digits_arrays(256)
    batch = input_context.get_per_replica_batch_size(32) if input_context else 32
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch, drop_remainder=True)


def exploding_data_fn(input_context=None):
    """Two good batches, then inputs of 1e30: logits overflow and the loss becomes non-finite."""
    good = data_fn(input_context).take(2)
    return good.concatenate(data_fn(input_context).map(lambda x, y: (x * 1e30, y)))


def trainer_fn(**kwargs):
    return SoftmaxClassifier(tiny_network(), image_shape=(8, 8, 1), num_classes=10, **kwargs)


def run(model_dir, steps, data=data_fn, trainer=trainer_fn, **kwargs):
    return run_briefly(model_dir, trainer, lambda: keras.optimizers.Adam(0.05), data, steps, 2, **kwargs)


def test_resume_restores_weights_optimizer_and_step(tmp_path):
    trained = run(tmp_path, 4)
    weights = [w.numpy() for w in trained.weights]
    iterations = int(trained.optimizer.iterations.numpy())
    assert iterations == 4
    assert sorted(os.listdir(tmp_path / "checkpoints"))  # CheckpointManager files
    assert (tmp_path / "operative_config.gin").exists()
    assert os.listdir(tmp_path / "tensorboard")

    resumed = run(tmp_path, 4)  # nothing left to train: returns the restored model
    for a, b in zip(weights, resumed.weights):
        np.testing.assert_array_equal(a, b.numpy())
    assert int(resumed.optimizer.iterations.numpy()) == iterations
    # Adam slots come back too (momentum is part of the optimizer state).
    slots_a = [v.numpy() for v in trained.optimizer.variables]
    slots_b = [v.numpy() for v in resumed.optimizer.variables]
    for a, b in zip(slots_a, slots_b):
        np.testing.assert_array_equal(a, b)

    longer = run(tmp_path, 6)  # continues from step 4, not from scratch
    assert int(longer.optimizer.iterations.numpy()) == 6


def test_divergence_keeps_last_good_checkpoint(tmp_path):
    unchecked = lambda: trainer_fn(check_finite_inputs=False)  # noqa: E731
    with pytest.raises(divergence.DivergenceError, match="last good checkpoint"):
        run(tmp_path, 10, data=exploding_data_fn, trainer=unchecked)
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest is not None and latest.endswith("ckpt-2"), latest
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), f"non-finite checkpointed value {name}"
    # Resuming from the kept checkpoint works.
    assert int(run(tmp_path, 2).optimizer.iterations.numpy()) == 2


def test_max_minutes_stops_on_the_clock_checkpoints_and_resumes(tmp_path):
    # A budget shorter than the first step's tracing: the run stops after its first step, far
    # from train_steps, and still checkpoints that step and writes its summary.
    # train_steps stays small so that a budget that is ignored fails the assertion (not the clock).
    model = run(tmp_path, 200, max_minutes=0.001)
    stopped = int(model.optimizer.iterations.numpy())
    assert 1 <= stopped < 200
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith(f"ckpt-{stopped}")
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["stopped_by"] == "max_minutes"
    assert (summary["first_step"], summary["last_step"], summary["train_steps"]) == (0, stopped, 200)
    # A later call resumes from there with a fresh budget; without one it trains to train_steps.
    resumed = run(tmp_path, stopped + 3)
    assert int(resumed.optimizer.iterations.numpy()) == stopped + 3
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["stopped_by"] == "train_steps" and summary["first_step"] == stopped


@pytest.mark.parametrize("bad", [0, -1.0])
def test_max_minutes_must_be_positive(tmp_path, bad):
    with pytest.raises(ValueError, match="max_minutes must be a positive number"):
        run(tmp_path, 4, max_minutes=bad)


@pytest.mark.slow
def test_train_py_killed_then_resumed(tmp_path):
    model_dir = tmp_path / "run"
    # SADA-JEM at tiny size: weights, SAM/SGD state, replay buffer and seeds all go through the kill.
    cmd = [
        sys.executable,
        "train.py",
        "--gin_file=gin_configs/sadajem.gin",
        "--gin_file=gin_configs/tiny.gin",
        f"--model_dir={model_dir}",
        "--gin_param=run_training.train_steps=100000",
        "--gin_param=run_training.checkpoint_every=5",
        "--gin_param=run_training.evaluate=False",
        "--gin_param=run_training.export=False",
    ]
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt_dir = model_dir / "checkpoints"
    deadline = time.time() + 180
    while time.time() < deadline:
        latest = tf.train.latest_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() else None
        if latest and int(latest.rsplit("-", 1)[1]) >= 10:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    assert latest, "no checkpoint was written before the kill"
    saved_step = int(latest.rsplit("-", 1)[1])
    resume = [
        f"--gin_param=run_training.train_steps={saved_step + 5}",
        "--gin_param=run_training.evaluate=False",
        "--gin_param=run_training.export=False",
        "--gin_param=run_training.checkpoint_every=5",
    ]
    out = run_script(cmd[:-4] + resume, REPO, env, 240)
    log = out.stdout + out.stderr
    match = re.search(r"resumed from \S+ at step (\d+)", log)
    assert match and int(match.group(1)) == saved_step, log[-2000:]
    final = tf.train.latest_checkpoint(str(ckpt_dir))
    assert int(final.rsplit("-", 1)[1]) == saved_step + 5


def test_divergence_guard_recovers_and_continues(tmp_path):
    calls = []

    def explodes_once(input_context=None):
        calls.append(1)
        return exploding_data_fn(input_context) if len(calls) == 1 else data_fn(input_context)

    guard = divergence.DivergenceGuard(max_recoveries=2, lr_factor=0.5, remedies=("lower_lr",), confirm_steps=0)
    unchecked = lambda: trainer_fn(check_finite_inputs=False)  # noqa: E731
    model = run(tmp_path, 8, data=explodes_once, trainer=unchecked, divergence_guard=guard)
    assert int(model.optimizer.iterations.numpy()) == 8
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)
    events = [json.loads(line) for line in (tmp_path / "divergence_events.jsonl").read_text().splitlines()]
    assert len(events) == 1 and events[0]["step"] == 2 and events[0]["restored"].endswith("ckpt-2")
    assert "learning rate -> 0.025" in events[0]["change"] and "new random seeds" in events[0]["change"]
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.025)


def test_divergence_guard_gives_up_after_max_recoveries(tmp_path):
    guard = divergence.DivergenceGuard(max_recoveries=2, confirm_steps=0)
    unchecked = lambda: trainer_fn(check_finite_inputs=False)  # noqa: E731
    with pytest.raises(divergence.DivergenceError, match="Gave up after 2 automatic recoveries"):
        run(tmp_path, 10, data=exploding_data_fn, trainer=unchecked, divergence_guard=guard)
    assert len((tmp_path / "divergence_events.jsonl").read_text().splitlines()) == 2
    # Each retry trains two good batches before the data explodes again: 2 -> 4 -> 6, all finite.
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest.endswith("ckpt-6"), latest
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name


def test_divergence_guard_threshold():
    guard = divergence.DivergenceGuard(threshold=1e5)
    assert guard.exploded({"loss": np.float32(2e5), "clf_acc": np.float32(0.5)})
    assert guard.exploded({"loss": np.float32(1.0), "energy_sample": np.float32(-3e5)})
    assert not guard.exploded({"loss": np.float32(1.0), "clf_acc": np.float32(1e9)})


def jem_trainer_fn():
    return tiny_jem(check_finite_inputs=False)


def scheduled_adam():
    # 0.05 until step 100, then 0.01: a schedule, as every paper config has.
    return keras.optimizers.Adam(keras.optimizers.schedules.PiecewiseConstantDecay([100], [0.05, 0.01]))


def test_divergence_guard_scales_a_schedule_and_adds_sgld_steps_that_survive_a_resume(tmp_path):
    calls = []

    def explodes_once(input_context=None):
        calls.append(1)
        return exploding_data_fn(input_context) if len(calls) == 1 else data_fn(input_context)

    # Three recoveries, one remedy each (default order), every one applied once to an absolute value.
    def explodes_thrice(input_context=None):
        calls.append(1)
        return exploding_data_fn(input_context) if len(calls) <= 3 else data_fn(input_context)

    import _remedy_scenario as scenario

    energy_calls = tf.Variable(0, dtype=tf.int64, trainable=False)  # SGLD energy calls, in the graph
    guard = divergence.DivergenceGuard(
        max_recoveries=3, lr_factor=0.5, sgld_steps_factor=2.5, energy_l2=0.1, confirm_steps=0
    )
    built = []

    def counting_jem():  # K = 2, energy L2 0 in "means" mode: the penalty is checkable from the logs
        built.append(scenario.make_trainer(energy_calls))
        return built[-1]

    def run_jem(train_data, steps):
        return run_briefly(tmp_path, counting_jem, scheduled_adam, train_data, steps, 2, divergence_guard=guard)

    model = run_jem(explodes_thrice, 8)
    events = [json.loads(line) for line in (tmp_path / "divergence_events.jsonl").read_text().splitlines()]
    assert len(events) == 3, events
    assert all(e["fired"][0] in ("magnitude", "non_finite") for e in events), events
    assert "energy L2 -> 0.1" in events[0]["change"] and "SGLD" not in events[0]["change"], events[0]
    assert "SGLD steps -> 5" in events[1]["change"] and "energy" not in events[1]["change"], events[1]
    assert "optimizer: learning-rate schedule x 0.5" in events[2]["change"], events[2]
    assert all("new random seeds" in e["change"] for e in events)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.025)
    # A new process (a freshly built trainer) resuming the run computes with every change: they
    # are checkpointed (even though recoveries 2 and 3 restored checkpoints written before the
    # earlier remedies). What the resumed steps compute: the penalty in the loss (by hand from the
    # logged mean energies), 5 SGLD energy calls per step, the halved scheduled rate.
    records = []
    undo = scenario.record_monitor(records, energy_calls, lambda: built[-1])
    try:
        resumed = run_jem(data_fn, 10)
    finally:
        undo()
    assert int(resumed.optimizer.iterations.numpy()) == 10
    assert [r["step"] for r in records] == [9, 10], records
    for r in records:
        logs = r["logs"]
        np.testing.assert_allclose(
            logs["loss"] - logs["clf_loss"] - logs["px_loss"],
            0.1 * (logs["energy_data"] ** 2 + logs["energy_sample"] ** 2),
            rtol=1e-4,
        )
    assert records[1]["calls"] - records[0]["calls"] == 5, records
    np.testing.assert_allclose(float(resumed.optimizer.learning_rate), 0.025)


def test_divergence_before_the_first_checkpoint_restarts_from_initialisation(tmp_path):
    calls = []

    def explodes_at_once(input_context=None):
        calls.append(1)
        bad = data_fn(input_context).map(lambda x, y: (x * 1e30, y))
        return bad if len(calls) == 1 else data_fn(input_context)

    guard = divergence.DivergenceGuard(max_recoveries=1, lr_factor=1.0, confirm_steps=0)
    unchecked = lambda: trainer_fn(check_finite_inputs=False)  # noqa: E731
    adam = lambda: keras.optimizers.Adam(0.05)  # noqa: E731
    model = run_briefly(tmp_path, unchecked, adam, explodes_at_once, 4, 100, log_every=1, divergence_guard=guard)
    events = [json.loads(line) for line in (tmp_path / "divergence_events.jsonl").read_text().splitlines()]
    assert len(events) == 1 and events[0]["restored"].endswith("ckpt-0"), events
    assert int(model.optimizer.iterations.numpy()) == 4
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)


def test_a_non_finite_replay_buffer_counts_as_divergence():
    model = jem_trainer_fn()
    model(tf.zeros((1, 8, 8, 1)))
    names = [v.path for v in callbacks.float_variables(model)]
    assert any("buffer" in n for n in names), names  # not only trainable weights are checked
    assert callbacks.variables_finite(model)
    model.buffer.buffer.assign(tf.fill(model.buffer.buffer.shape, float("nan")))
    assert not callbacks.variables_finite(model)


def test_jit_compile_reaches_the_train_function(tmp_path, monkeypatch):
    compiled = []
    original = tf.function

    def recording_function(*args, **kwargs):
        compiled.append(bool(kwargs.get("jit_compile")))
        return original(*args, **kwargs)

    def deterministic_jem():
        # Stateless RNG picks another algorithm under XLA, so compare without randomness: no SGLD
        # noise, every chain restarting from the same image (reinit 1: which rows are drawn does
        # not matter).
        from keras_ebm.sampling import SGLDSampler

        sampler = SGLDSampler(n_steps=2, step_size=1.0, noise_std=0.0)
        return tiny_jem(reinit_prob=1.0, sampler=sampler, initializer=ConstantInitializer(0.1))

    def run_jem(model_dir, **kwargs):
        return run_briefly(model_dir, deterministic_jem, lambda: keras.optimizers.SGD(0.05), data_fn, 2, 2, **kwargs)

    plain = run_jem(tmp_path / "plain")
    monkeypatch.setattr(tf, "function", recording_function)
    xla = run_jem(tmp_path / "xla", jit_compile=True)
    monkeypatch.undo()
    assert any(compiled), "run_training(jit_compile=True) never asked tf.function for XLA"
    # Same seeds, same data: the XLA-compiled JEM step (SGLD loop, buffer gather/scatter) agrees.
    for a, b in zip(plain.trainable_weights, xla.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)


def test_is_chief_follows_tf_config_roles():
    from types import SimpleNamespace

    from keras_ebm import distribute

    def strategy(task_type, task_id, cluster):
        spec = tf.train.ClusterSpec(cluster)
        resolver = SimpleNamespace(task_type=task_type, task_id=task_id, cluster_spec=lambda: spec)
        return SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["a:1", "b:1"]}
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert distribute.is_chief(strategy("worker", 0, workers))
    assert not distribute.is_chief(strategy("worker", 1, workers))
    assert distribute.is_chief(strategy("chief", 0, with_chief))
    assert not distribute.is_chief(strategy("worker", 0, with_chief))  # the chief task writes, not worker 0
    assert distribute.is_chief(tf.distribute.get_strategy())


def test_buffer_grid_shows_every_class_block(tmp_path, monkeypatch):
    from keras_ebm.evaluation import plots
    from keras_ebm.trainers.jem import JEM

    model = JEM(
        tiny_network(), image_shape=(8, 8, 1), num_classes=10, buffer_size=100, px_weight=0.0, pxy_weight=1.0
    )  # class-partitioned buffer: 10 contiguous blocks of 10 rows
    assert model.buffer.class_conditional
    block = np.repeat(np.linspace(-0.9, 0.9, 10), 10).astype("float32")  # row value = its class
    model.buffer.buffer.assign(np.broadcast_to(block[:, None, None, None], (100, 8, 8, 1)))
    shown = {}
    monkeypatch.setattr(plots, "sample_grid", lambda images, path, **kw: shown.setdefault("x", images) is None or path)
    generation.save_buffer_grid(model, str(tmp_path / "buffer.png"), num_images=20)
    values = np.unique(np.round(shown["x"][:, 0, 0, 0], 3))
    assert len(shown["x"]) == 20 and len(values) == 10, values  # all ten classes, not only class 0


def test_guard_restores_only_a_confirmed_checkpoint_and_drops_the_failing_branch(tmp_path, monkeypatch):
    # Checkpoints every 2 steps; a checkpoint is good once 4 healthy steps followed it. The data
    # explode at step 7: checkpoints 2, 4 and 6 exist, only 2 is confirmed (2 + 4 <= 6), so the
    # guard restores ckpt-2 and deletes 4 and 6, which belong to the failing branch.
    calls = []

    def explodes_at_7(input_context=None):
        calls.append(1)
        if len(calls) > 1:
            return data_fn(input_context)
        good = data_fn(input_context).take(6)
        return good.concatenate(data_fn(input_context).map(lambda x, y: (x * 1e30, y)))

    guard = divergence.DivergenceGuard(max_recoveries=1, confirm_steps=4, remedies=())
    monkeypatch.chdir(tmp_path)  # a relative model_dir, as train.py users pass it
    unchecked = lambda: trainer_fn(check_finite_inputs=False)  # noqa: E731
    seen = []
    original = callbacks.Checkpointing.roll_back

    def spy(self, good_step):
        seen.append([os.path.basename(p) for p in self.manager.checkpoints])
        return original(self, good_step)

    monkeypatch.setattr(callbacks.Checkpointing, "roll_back", spy)
    model = run("run", 8, data=explodes_at_7, trainer=unchecked, divergence_guard=guard)
    assert seen == [["ckpt-0", "ckpt-2", "ckpt-4", "ckpt-6"]], seen
    events = [json.loads(line) for line in (tmp_path / "run" / "divergence_events.jsonl").read_text().splitlines()]
    assert len(events) == 1 and events[0]["restored"].endswith("ckpt-2") and events[0]["step"] == 2, events
    assert events[0]["at_step"] == 7 and events[0]["fired"] == ["magnitude"], events
    assert events[0]["change"] == "new random seeds"
    assert int(model.optimizer.iterations.numpy()) == 8
    # After the recovery the run trained 3..8 again and wrote fresh checkpoints; the state file
    # lists them (a new process resumes from the newest).
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), str(tmp_path / "run" / "checkpoints"), max_to_keep=None)
    assert [os.path.basename(p) for p in manager.checkpoints][-3:] == ["ckpt-4", "ckpt-6", "ckpt-8"]


def test_remedies_are_applied_once_each_in_order():
    from keras_ebm.divergence import RecoveryState

    model = jem_trainer_fn()
    model.compile(optimizer=scheduled_adam())
    model(tf.zeros((1, 8, 8, 1)))
    state = RecoveryState()
    state.attach(model)
    guard = divergence.DivergenceGuard(max_recoveries=6, energy_l2=0.1, sgld_steps_factor=2.0, lr_factor=0.5)
    rng = np.random.default_rng(0)
    changes = [guard.apply(model, n, rng, state=state) for n in range(1, 6)]
    assert changes[0] == "new random seeds, energy L2 -> 0.1"
    assert changes[1] == "new random seeds, SGLD steps -> 4"
    assert changes[2] == "new random seeds, optimizer: learning-rate schedule x 0.5"
    assert changes[3:] == ["new random seeds"] * 2  # nothing compounds after the ladder
    assert model.run_options()["energy_l2"] == 0.1 and model.run_options()["sampler.n_steps"] == 4
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.025)
    assert state.snapshot() == {"lr_scale": 0.5, "extra_sgld_steps": 2, "energy_l2": pytest.approx(0.1)}


def _replay(guard, clf_losses, gaps=None):
    monitor = guard.monitor()
    fired = {}
    for step, loss in enumerate(clf_losses, start=1):
        logs = {"loss": loss, "clf_loss": loss}
        if gaps is not None:
            logs["energy_gap"] = gaps[step - 1]
        for fired_signal in monitor.update(step, logs):
            fired.setdefault(fired_signal, step)
    return fired


def test_monitor_clf_loss_rise_and_energy_gap_band():
    rng = np.random.default_rng(0)
    healthy = list(np.linspace(2.3, 1.6, 300) * rng.uniform(0.75, 1.25, 300))
    guard = divergence.DivergenceGuard(max_energy_gap=5.0)
    assert _replay(guard, healthy, gaps=[0.5] * 300) == {}
    # The classifier collapses at step 201: loss 5.0 (2.5x its level); the 10-step mean passes 2x
    # the running median within a few steps.
    collapsing = healthy[:200] + [5.0] * 100
    fired = _replay(guard, collapsing)
    assert 201 <= fired["clf_loss_rise"] <= 210, fired
    # The energy gap leaving its band fires at once.
    gaps = [0.5] * 150 + [24.0] * 150
    assert _replay(guard, healthy, gaps=gaps) == {"energy_gap": 151}
    # Signals can be turned off.
    assert _replay(divergence.DivergenceGuard(clf_rise_factor=None), collapsing) == {}


def _recorded(row):
    with open(os.path.join(REPO, "tests", "data", "jem_small_trajectories.json")) as f:
        data = json.load(f)[row]
    keys = [k for k in data if k != "steps"]
    return data["steps"], [{k: data[k][i] for k in keys} for i in range(len(data["steps"]))]


def _first_signals(guard, steps, logs):
    monitor, first = guard.monitor(), {}
    for step, log in zip(steps, logs):
        for fired_signal in monitor.update(step, log):
            first.setdefault(fired_signal, step)
    return first


def test_jem_config_guard_fires_at_the_recorded_onset_and_not_on_a_healthy_run():
    # Per-step logs recorded by benchmarks/fidelity_small.py on real CIFAR-10: the official small JEM
    # recipe without a guard (the energy gap leaves 1 at ~130 and passes 24 by ~155, the classifier
    # loss doubles around 150; |loss| never reaches 1e8 in these 300 steps) and the same recipe's
    # cross-entropy run (healthy, 1,200 steps). jem.gin's guard must fire at the onset, the old
    # |loss| > 1e8 test never does, and nothing fires on the healthy run.
    from keras_ebm import run_config

    run_config.parse_gin(["gin_configs/jem.gin"], [])
    guard = run_config.resolve_parameter("run_training.divergence_guard")
    steps, logs = _recorded("jem_noguard")
    first = _first_signals(guard, steps, logs)
    assert 130 <= min(first.values()) <= 160, first
    assert 130 <= first["energy_gap"] <= 160 and 130 <= first["clf_loss_rise"] <= 175, first
    assert not any(guard.exploded(log) for log in logs)  # the official 1e8 test alone: no signal
    # Healthy: nothing fires over 1,200 steps of cross-entropy training.
    assert _first_signals(guard, *_recorded("ce")) == {}
    # Before the onset nothing fires either: a checkpoint at step 100 would have been confirmed.
    assert _first_signals(guard, steps[:110], logs[:110]) == {}


def test_energy_gap_band_sits_above_the_energy_penalty_equilibrium():
    # With an energy L2 penalty lam the p(x) term and the penalty balance at a gap of 1/lam (10 at
    # lam = 0.1: E(x) = -5, E(x~) = +5): the band widens to 2/lam so the remedy does not re-fire.
    guard = divergence.DivergenceGuard(max_energy_gap=10.0, clf_rise_factor=None)

    class Penalised:
        energy_l2 = 0.1

    for model, gap, fires in ((None, 12.0, True), (Penalised(), 12.0, False), (Penalised(), 25.0, True)):
        monitor = guard.monitor(model)
        assert (monitor.update(1, {"loss": 0.0, "energy_gap": gap}) == ["energy_gap"]) is fires


def run_exporting(model_dir, **kwargs):
    return run(model_dir, 2, export=True, **kwargs)


def test_export_onnx_writes_a_model_onnxruntime_runs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = run_exporting(tmp_path, export_onnx=True)
    onnx_path = tmp_path / "export" / "onnx" / "model.onnx"
    meta = json.loads((tmp_path / "export" / "assets" / "keras_ebm_export.json").read_text())
    assert meta["onnx"]["path"] == "onnx/model.onnx"
    session = ort.InferenceSession(str(onnx_path))
    images = np.random.RandomState(0).randint(0, 256, (3, 8, 8, 1)).astype(np.uint8)
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))
    expected = model(images.astype(np.float32) / 255.0 * 2.0 - 1.0, training=False)
    np.testing.assert_allclose(out["logits"], expected, atol=1e-4)


def test_export_onnx_without_tf2onnx_fails_before_training(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tf2onnx(name, *args, **kwargs):
        if name == "tf2onnx":
            raise ImportError("No module named 'tf2onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tf2onnx)
    with pytest.raises(ImportError, match=r"keras_ebm\[onnx\]"):
        run_exporting(tmp_path, export_onnx=True)
    assert not (tmp_path / "checkpoints").exists()


def test_a_rerun_removes_what_killed_saves_and_exports_left(tmp_path):
    """A kill during a checkpoint save leaves TensorFlow's `ckpt-N_temp` folder or unlisted
    checkpoint files; a kill during an export leaves `.export.tmp-<pid>-*` / `.export.old-<pid>-*`.
    The rerun removes them (the listed checkpoints and the export stay)."""
    run_exporting(tmp_path)
    ckpt = tmp_path / "checkpoints"
    listed = sorted(os.listdir(ckpt))
    dead = 2**22 + 4321  # above the default pid_max: not a running process
    (ckpt / "ckpt-9_temp").mkdir()
    (ckpt / "ckpt-9_temp" / "part").write_bytes(b"x")
    (ckpt / "ckpt-7.index").write_bytes(b"x")
    (ckpt / "ckpt-7.data-00000-of-00001").write_bytes(b"x")
    (tmp_path / f".export.tmp-{dead}-abc").mkdir()
    (tmp_path / f".export.old-{dead}-def").mkdir()
    run_exporting(tmp_path)
    assert sorted(os.listdir(ckpt)) == listed
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export.")]
    assert (tmp_path / "export" / "saved_model.pb").exists()


def test_a_resume_keeps_listed_checkpoints_without_timestamps(tmp_path):
    """A state file that lists a checkpoint without timestamps (`update_checkpoint_state` by hand,
    another tool) hides it from `CheckpointManager.checkpoints`; the leftover cleanup must still keep
    its files, and the resume restore it."""
    run(tmp_path, 4)  # checkpoints every 2 steps
    ckpt = tmp_path / "checkpoints"
    for f in ckpt.glob("ckpt-4.*"):
        f.unlink()
    tf.compat.v1.train.update_checkpoint_state(str(ckpt), "ckpt-2", all_model_checkpoint_paths=["ckpt-2"])
    kept = sorted(f.name for f in ckpt.glob("ckpt-2.*"))
    model = run(tmp_path, 2)  # resumed at step 2: nothing to train
    assert sorted(f.name for f in ckpt.glob("ckpt-2.*")) == kept
    assert int(model.optimizer.iterations.numpy()) == 2


def test_monitor_one_outlying_step_neither_fires_nor_hides_a_rise():
    # The running level and the current loss are medians: a single spike (a hard batch) in the
    # history does not fire the signal, and a single huge value in the baseline does not lift the
    # level above a real rise (a mean would do both).
    guard = divergence.DivergenceGuard(max_energy_gap=None, rise_window=10, baseline_window=100)
    flat = [1.0] * 150
    spike = flat[:120] + [1000.0] + flat[121:]
    assert _replay(guard, spike) == {}
    outlier_then_rise = [1.0] * 50 + [1000.0] + [1.0] * 59 + [3.0] * 20
    assert 111 <= _replay(guard, outlier_then_rise)["clf_loss_rise"] <= 120


def _tensorboard_scalars(directory):
    """{tag: {step: value}} of every scalar in the event files under `directory`."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(str(directory), "**", "events.out.tfevents.*"), recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return scalars


def test_tensorboard_scalars_are_the_mean_losses_of_each_logging_window(tmp_path):
    """The TensorBoard points every `log_every` = 2 steps are the means of the two steps' losses,
    which this test computes itself: the same network and optimizer stepped by `train_on_batch`
    on the same batches, the cross-entropy and accuracy of each batch taken before its step."""
    run(tmp_path, 4)
    x, y = digits_arrays(256)
    reference = trainer_fn()
    reference.compile(optimizer=keras.optimizers.Adam(0.05))
    losses, accuracies = [], []
    for k in range(4):
        xb, yb = x[32 * k : 32 * (k + 1)], y[32 * k : 32 * (k + 1)]
        logits = reference.network(xb).numpy().astype(np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        losses.append(-np.mean(log_probs[np.arange(32), yb]))
        accuracies.append(np.mean(np.argmax(logits, -1) == yb))
        reference.train_on_batch(xb, yb)
    assert abs(losses[0] - losses[1]) > 1e-2  # the steps differ: a running mean would show
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert sorted(scalars["loss"]) == [2, 4], scalars["loss"]
    for step, window in ((2, slice(0, 2)), (4, slice(2, 4))):
        np.testing.assert_allclose(scalars["loss"][step], np.mean(losses[window]), rtol=1e-4)
        np.testing.assert_allclose(scalars["clf_loss"][step], np.mean(losses[window]), rtol=1e-4)
        np.testing.assert_allclose(scalars["clf_acc"][step], np.mean(accuracies[window]), atol=1e-6)
    assert all(v > 0 for v in scalars["steps_per_second"].values())


def test_operative_config_holds_the_bound_values(tmp_path):
    """operative_config.gin lists the values the run used: bindings given on the command line,
    values from the config files, and the macros they refer to."""
    from keras_ebm import run_config

    run_config.parse_gin(
        ["gin_configs/quickstart.gin", "gin_configs/tiny.gin"],
        ["run_training.train_steps = 1", "run_training.keep_checkpoints = 7", "SGLDSampler.step_size = 0.75"],
    )
    training.run_training(model_dir=str(tmp_path), progress=False, export=False)
    text = (tmp_path / "operative_config.gin").read_text()

    def bound(name):
        match = re.search(rf"^(?:[\w.]+\.)?{re.escape(name)} = (.+)$", text, re.M)
        assert match, f"{name} is not in the operative config:\n{text}"
        return match.group(1).strip()

    assert bound("run_training.keep_checkpoints") == "7"
    assert bound("run_training.train_steps") == "1"
    assert bound("SGLDSampler.step_size") == "0.75"
    assert bound("TinyCNN.input_shape") == "%IMAGE_SHAPE" and bound("IMAGE_SHAPE") == "(8, 8, 1)"
    assert bound("SGLDSampler.n_steps") == str(gin.query_parameter("SGLDSampler.n_steps"))
