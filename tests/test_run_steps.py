"""`run_training` as steps: the run's outputs are those recorded before the refactoring, bit for bit,
and after-training actions can be added, removed or overridden from Python and gin."""

import json
import os

import pytest

import run_fingerprint

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "run_golden.json")


def test_the_tiny_quickstart_writes_what_it_wrote_before_the_refactoring(tmp_path):
    # tests/data/run_golden.json was recorded with the single-function run_training (two runs of
    # that code gave identical fingerprints); see tests/run_fingerprint.py.
    run_dir = str(tmp_path / "run")
    got = run_fingerprint.fingerprint(run_dir, run_fingerprint.run_quickstart_tiny(run_dir))
    with open(GOLDEN) as f:
        expected = json.load(f)
    got = json.loads(json.dumps(got))  # tuples -> lists, str keys: as read back
    for key in expected:
        assert got[key] == expected[key], key
    assert got == expected
