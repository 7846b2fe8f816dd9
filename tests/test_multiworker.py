"""Two worker processes on 127.0.0.1 (free ports, TF_CONFIG) train under MultiWorkerMirroredStrategy:

- they agree on the weights, which equal one process training on the global batch;
- a lost worker (SIGKILLed mid-run) stops the other within `peer_timeout_seconds` with
  `WorkerLostError` instead of a hang, and restarting both with the same command resumes from the
  last checkpoint and ends equal to an uninterrupted two-worker run.

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
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "_multiworker_worker.py"), str(model_dir),
             f"{out_prefix}{i}.npz", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
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

    single = state(train(str(tmp_path / "single")))
    assert sorted(single) == arrays
    for k in arrays:
        np.testing.assert_allclose(w0[k], single[k], atol=1e-5, err_msg=k)
    initial = [w.numpy() for w in trainer_fn().network.weights]
    assert not np.allclose(single["v000"], initial[0])
    # Only the chief (worker 0) writes the real checkpoints.
    assert (tmp_path / "run" / "checkpoints").exists()


PEER_TIMEOUT = 10  # run_training.peer_timeout_seconds of the workers below


@pytest.mark.slow
def test_lost_worker_stops_the_other_in_bounded_time_and_a_restart_resumes_exactly(tmp_path):
    import tensorflow as tf

    steps, every = 24, 4
    # 250 ms per batch (a sleep inside tf.data): the run lasts long enough to be killed mid-way.
    args = ["--steps", str(steps), "--checkpoint_every", str(every), "--step_delay_ms", "250",
            "--peer_timeout_seconds", str(PEER_TIMEOUT)]
    # The uninterrupted two-worker run.
    began = time.time()
    procs = start_workers(free_ports(2), tmp_path / "whole", tmp_path / "whole", args)
    try:
        finish(procs, timeout=240)
    finally:
        kill_all(procs)

    print(f"\nuninterrupted run: {time.time() - began:.1f} s", flush=True)
    # The same command; worker 1 is SIGKILLed once the first checkpoint exists.
    run_dir, ports = tmp_path / "run", free_ports(2)
    ckpt_dir = run_dir / "checkpoints"
    procs = start_workers(ports, run_dir, tmp_path / "run", args)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if ckpt_dir.exists() and tf.train.latest_checkpoint(str(ckpt_dir)):
                break
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), "a worker ended before the kill"
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        try:
            out = procs[0].communicate(timeout=PEER_TIMEOUT + 90)[0]
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker 0 still running {PEER_TIMEOUT + 90} s after worker 1 was killed")
        survivor_seconds = time.time() - killed
    finally:
        kill_all(procs)
    print(f"worker 0 exited {survivor_seconds:.1f} s after worker 1 was SIGKILLed", flush=True)
    assert procs[0].returncode != 0
    assert "WorkerLostError: a peer worker stopped responding" in out, out[-4000:]
    assert "Restart every worker with the same command" in out, out[-4000:]
    # Detection takes at most the heartbeat timeout (a refused connection is seen at once); what
    # is left is the process' teardown.
    assert survivor_seconds < PEER_TIMEOUT + 30, out[-4000:]
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    killed_at = int(latest.rsplit("-", 1)[1])
    assert every <= killed_at < steps
    assert tf.train.load_checkpoint(latest).get_variable_to_shape_map()  # intact and readable

    # Both restarted with the same command (same ports and model_dir): they resume from the last
    # checkpoint and end where the uninterrupted run ended.
    restarted = time.time()
    procs = start_workers(ports, run_dir, tmp_path / "resumed", args)
    try:
        outputs = finish(procs, timeout=240)
    finally:
        kill_all(procs)
    print(f"restarted run: {time.time() - restarted:.1f} s", flush=True)
    match = re.search(r"resumed from \S+ at step (\d+)", outputs[0])
    assert match and int(match.group(1)) == killed_at, outputs[0][-4000:]
    assert f"worker_1: resuming from the chief's checkpoint {latest}" in outputs[1], outputs[1][-4000:]
    whole, resumed = np.load(tmp_path / "whole0.npz"), np.load(tmp_path / "resumed0.npz")
    resumed1 = np.load(tmp_path / "resumed1.npz")
    assert int(whole["step"]) == int(resumed["step"]) == int(resumed1["step"]) == steps
    assert sorted(whole.files) == sorted(resumed.files)
    for k in whole.files:  # weights, BN statistics, RNG states, iterations, momentum slots
        np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)
        np.testing.assert_array_equal(resumed1[k], whole[k], err_msg=k)
