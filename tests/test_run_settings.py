"""Run-time settings reach the compiled step (keras_ebm.run_settings, issue: remedies that act).

The divergence guard's remedies, checked in what the step computes (not in attributes): the
penalty in the loss against a by-hand value, the SGLD chain length counted inside the graph, the
weight update under the lowered rate, along every path a run takes (one `fit`, several `fit`
calls, `run_training`, its multi-worker loop); see tests/_remedy_scenario.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import _remedy_scenario as scenario

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


@pytest.mark.parametrize("path", ["fit_one", "fit_calls", "run_training"])
def test_remedies_reach_the_compiled_step(tmp_path, path):
    records = scenario.run(path, str(tmp_path))
    scenario.check(records)


def test_remedies_reach_the_multiworker_loop(tmp_path):
    out = tmp_path / "records.json"
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG="",
               PYTHONPATH=os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_CONFIG")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_remedy_scenario.py"), str(tmp_path / "run"), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scenario.check(json.loads(out.read_text()))
