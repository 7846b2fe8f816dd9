"""Kill-and-resume fuzzing, bounded (the full run: benchmarks/fault_injection.py, docs/benchmarks.md "Kill and
resume"): train.py on real CIFAR-10 images (tiny networks; conftest's
stand-in without the archive) is SIGKILLed during a checkpoint write,
during its export, and during the write of its last checkpoint, rerun, and must end bit-identical
to an uninterrupted run (every checkpoint variable, the export's variables), with no unreadable
checkpoint and no half-written export after any kill. Two trainers: softmax, and GMMC (replay
buffer, and `after_training`'s sigma, written with the last step)."""

import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import fault_injection  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize(
    "trainer,schedule",
    [
        ("softmax", [["checkpoint", "export"]]),  # one trial: two runs killed, the third finishes
        ("gmmc_gen", [["final_checkpoint"]]),
    ],
)
def test_killed_runs_resume_bit_identical_and_nothing_is_corrupt(tmp_path, monkeypatch, cifar10_npz, trainer, schedule):
    # The real CIFAR-10 archive, else conftest's stand-in in its format (a fresh CI machine).
    monkeypatch.setenv("KERAS_EBM_CIFAR10_JPEG", cifar10_npz)
    logs = []
    row = fault_injection.run_trainer(
        trainer,
        n_kills=0,
        rng=np.random.default_rng(0),
        workdir=str(tmp_path),
        log=logs.append,
        schedule=schedule,
        reference_runs=1,
    )
    report = "\n".join(logs)
    assert row["kills"] >= 1, report
    assert row["corrupt"] == 0, report
    assert row["resumed"] == row["trials"] == 1, report
    assert row["equal"] == 1, report
    assert not row["failures"], report
    assert not row["damaged_files"], report
