"""Two worker processes on 127.0.0.1 train under MultiWorkerMirroredStrategy and agree on the weights."""

import json
import os
import socket
import subprocess
import sys

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


@pytest.mark.slow
def test_two_workers_agree(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "_multiworker_worker.py"), str(tmp_path / "run"),
             str(tmp_path / f"w{i}.npz")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=240)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert int(w0["replicas"]) == 2
    arrays = [k for k in w0.files if k != "replicas"]
    for k in arrays:
        np.testing.assert_allclose(w0[k], w1[k], atol=1e-6)
    # The workers read different shards; with gradients all-reduced they equal one process
    # training on the global batch (their union), and the weights really moved.
    sys.path.insert(0, HERE)
    from _multiworker_worker import train
    from test_experiment import trainer_fn

    single = [w.numpy() for w in train(str(tmp_path / "single")).network.weights]
    initial = [w.numpy() for w in trainer_fn().network.weights]
    for k, s, i in zip(arrays, single, initial):
        np.testing.assert_allclose(w0[k], s, atol=1e-5)
    assert not np.allclose(single[0], initial[0])
    # Only the chief (worker 0) writes the real checkpoints.
    assert (tmp_path / "run" / "checkpoints").exists()
