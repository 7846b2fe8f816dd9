"""Two worker processes on 127.0.0.1 (free ports, TF_CONFIG) train under MultiWorkerMirroredStrategy:

- they agree on the weights, which equal one process training on the global batch;
- a lost worker (worker 1 or the chief, SIGKILLed mid-run) stops the other within
  `peer_timeout_seconds` (plus teardown) with `WorkerLostError` instead of a hang, and restarting
  both with the same command resumes from the last checkpoint and ends bit-identical to an
  uninterrupted two-worker run;
- the loop itself (one process): an aborted collective becomes `WorkerLostError`, nothing saved.

Every subprocess has a hard timeout and is killed in a `finally`.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def start_workers(ports, model_dir, out_prefix, args=()):
    """One `_multiworker_worker.py` process per port (worker i writes `<out_prefix>{i}.npz`)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(len(ports)):
        env = dict(
            os.environ,
            KERAS_BACKEND="tensorflow",
            TF_CPP_MIN_LOG_LEVEL="3",
            PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(HERE, "_multiworker_worker.py"),
                    str(model_dir),
                    f"{out_prefix}{i}.npz",
                    *args,
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)


def finish(procs, timeout):
    """Wait for every worker (hard timeout), assert each exited 0, return their outputs."""
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return outputs


@pytest.mark.slow
def test_two_workers_agree(tmp_path):
    procs = start_workers(free_ports(2), tmp_path / "run", tmp_path / "w")
    try:
        finish(procs, timeout=240)
    finally:
        kill_all(procs)
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert int(w0["replicas"]) == 2 and int(w0["step"]) == 4
    arrays = [k for k in w0.files if k.startswith("v")]
    for k in arrays:
        np.testing.assert_allclose(w0[k], w1[k], atol=1e-6)
    # The workers read different shards; with gradients all-reduced they equal one process
    # training on the global batch (their union), and the weights really moved.
    sys.path.insert(0, HERE)
    from _multiworker_worker import state, train
    from test_experiment import trainer_fn

    single_model = train(str(tmp_path / "single"))
    single = state(single_model)
    assert sorted(single) == arrays
    for k in arrays:  # weights, RNG states, iterations, momentum slots
        np.testing.assert_allclose(w0[k], single[k], atol=1e-5, err_msg=k)
    initial = [w.numpy() for w in trainer_fn().network.weights]
    assert not np.allclose(single_model.network.weights[0].numpy(), initial[0])
    # Only the chief (worker 0) writes the real checkpoints.
    assert (tmp_path / "run" / "checkpoints").exists()


PEER_TIMEOUT = 10  # run_training.peer_timeout_seconds of the workers below
STEPS, EVERY = 24, 4
# 250 ms per batch (a sleep inside tf.data): the run lasts long enough to be killed mid-way.
LOST_WORKER_ARGS = [
    "--steps",
    str(STEPS),
    "--checkpoint_every",
    str(EVERY),
    "--step_delay_ms",
    "250",
    "--peer_timeout_seconds",
    str(PEER_TIMEOUT),
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted two-worker run of the command the lost-worker tests kill and restart."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    began = time.time()
    procs = start_workers(free_ports(2), tmp / "run", tmp / "whole", LOST_WORKER_ARGS)
    try:
        finish(procs, timeout=240)
    finally:
        kill_all(procs)
    print(f"\nuninterrupted run: {time.time() - began:.1f} s", flush=True)
    return np.load(tmp / "whole0.npz")


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker1_killed", "chief_killed"])
def test_lost_worker_stops_the_other_in_bounded_time_and_a_restart_resumes_exactly(tmp_path, uninterrupted, victim):
    import tensorflow as tf

    survivor = 1 - victim
    # The same command; `victim` is SIGKILLed once the chief's first checkpoint exists.
    run_dir, ports = tmp_path / "run", free_ports(2)
    ckpt_dir = run_dir / "checkpoints"
    procs = start_workers(ports, run_dir, tmp_path / "run", LOST_WORKER_ARGS)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if ckpt_dir.exists() and tf.train.latest_checkpoint(str(ckpt_dir)):
                break
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), "a worker ended before the kill"
        procs[victim].send_signal(signal.SIGKILL)
        killed = time.time()
        try:
            out = procs[survivor].communicate(timeout=PEER_TIMEOUT + 90)[0]
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {survivor} still running {PEER_TIMEOUT + 90} s after worker {victim} was killed")
        survivor_seconds = time.time() - killed
    finally:
        kill_all(procs)
    print(f"worker {survivor} exited {survivor_seconds:.1f} s after worker {victim} was SIGKILLed", flush=True)
    assert procs[survivor].returncode != 0
    assert "WorkerLostError: a peer worker stopped responding" in out, out[-4000:]
    assert "Restart every worker with the same command" in out, out[-4000:]
    # Detection takes at most the heartbeat timeout (a refused or reset connection is seen at
    # once); what is left is the process' teardown.
    assert survivor_seconds < PEER_TIMEOUT + 30, out[-4000:]
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    killed_at = int(latest.rsplit("-", 1)[1])
    assert EVERY <= killed_at < STEPS
    assert tf.train.load_checkpoint(latest).get_variable_to_shape_map()  # intact and readable

    # Both restarted with the same command (same ports and model_dir): they resume from the last
    # checkpoint and end where the uninterrupted run ended.
    restarted = time.time()
    procs = start_workers(ports, run_dir, tmp_path / "resumed", LOST_WORKER_ARGS)
    try:
        outputs = finish(procs, timeout=240)
    finally:
        kill_all(procs)
    print(f"restarted run (from step {killed_at}): {time.time() - restarted:.1f} s", flush=True)
    match = re.search(r"resumed from \S+ at step (\d+)", outputs[0])
    assert match and int(match.group(1)) == killed_at, outputs[0][-4000:]
    assert f"worker_1: resuming from the chief's checkpoint {latest}" in outputs[1], outputs[1][-4000:]
    whole, resumed = uninterrupted, np.load(tmp_path / "resumed0.npz")
    resumed1 = np.load(tmp_path / "resumed1.npz")
    assert int(whole["step"]) == int(resumed["step"]) == int(resumed1["step"]) == STEPS
    assert sorted(whole.files) == sorted(resumed.files)
    for k in whole.files:  # weights, BN statistics, RNG states, iterations, momentum slots
        np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)
        np.testing.assert_array_equal(resumed1[k], whole[k], err_msg=k)


def test_the_loop_turns_a_lost_peer_into_worker_lost_error_and_saves_nothing_more(tmp_path):
    # One process: the failure is raised by a callback where an aborted collective would surface.
    import keras
    import tensorflow as tf

    from keras_ebm import callbacks, distribute, training

    sys.path.insert(0, HERE)
    from _multiworker_worker import sharded_data_fn
    from test_experiment import trainer_fn

    class PeerLostAt(keras.callbacks.Callback):
        """Raises what a survivor's aborted collective raises, when step `at` ends (before
        Checkpointing sees that step)."""

        def __init__(self, at):
            super().__init__()
            self.at = at

        def on_train_batch_end(self, batch, logs=None):
            if callbacks.current_step(self.model) == self.at:
                raise tf.errors.UnavailableError(
                    None,
                    None,
                    "Collective ops is aborted by: Error reported from /job:worker/task:1: "
                    "The following tasks are unhealthy (stopped sending heartbeats):\n"
                    "/job:worker/replica:0/task:1\nThe tasks have crashed.",
                )

    strategy = tf.distribute.get_strategy()
    model = training.build_trainer(trainer_fn, lambda: keras.optimizers.SGD(0.1), strategy)
    cbs = callbacks.training_callbacks(str(tmp_path), train_steps=10, checkpoint_every=2)
    with pytest.raises(distribute.WorkerLostError) as info:
        training.train_loop(model, sharded_data_fn(), strategy, 10, [PeerLostAt(4)] + cbs)
    message = str(info.value)
    assert "a peer worker stopped responding" in message
    assert "stopped sending heartbeats): /job:worker/replica:0/task:1" in message
    assert "the last checkpoint is " + str(tmp_path / "checkpoints" / "ckpt-2") in message
    assert "Restart every worker with the same command" in message
    assert isinstance(info.value.__cause__, tf.errors.UnavailableError)
    assert isinstance(info.value, RuntimeError)
    # Step 4 ran but its checkpoint (and the end-of-training one) was never written.
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")


def test_peer_timeout_must_be_positive(monkeypatch):
    from keras_ebm import distribute

    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}),
    )
    with pytest.raises(ValueError, match="peer_timeout_seconds must be a positive number"):
        distribute.make_strategy(peer_timeout_seconds=0)


def test_exit_when_worker_lost_ends_the_process_at_once_with_the_traceback():
    code = (
        "import atexit\nfrom keras_ebm import distribute\natexit.register(print, 'atexit ran')\n"
        "with distribute.exit_when_worker_lost():\n    raise distribute.WorkerLostError('peer gone')\n"
    )
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "WorkerLostError: peer gone" in out.stderr
    assert "atexit ran" not in out.stdout  # os._exit: no interpreter teardown


def test_a_non_chief_worker_takes_the_chiefs_newest_checkpoint(tmp_path):
    # The chief saved steps 4 and 8; the worker's scratch copy got to step 12 (or stayed at 4):
    # the worker must restore step 8, and its scratch directory list the same checkpoints.
    import tensorflow as tf

    from keras_ebm import training

    v = tf.Variable(0.0)
    chief = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(tmp_path / "checkpoints"), 3)
    scratch_dir = tmp_path / ".workers" / "worker_1"
    scratch = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(scratch_dir), 3)
    for step in (4, 8):
        v.assign(float(step))
        chief.save(checkpoint_number=step)
    v.assign(12.0)
    scratch.save(checkpoint_number=12)
    training._copy_chief_checkpoint(str(tmp_path), str(scratch_dir))
    copied = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(scratch_dir), 3)
    assert [os.path.basename(p) for p in copied.checkpoints] == ["ckpt-8"]
    copied.checkpoint.restore(copied.latest_checkpoint).assert_existing_objects_matched()
    assert float(v.numpy()) == 8.0
    copied.save(checkpoint_number=12)  # the scratch manager goes on saving and rotating as before
    assert [os.path.basename(p) for p in copied.checkpoints] == ["ckpt-8", "ckpt-12"]
