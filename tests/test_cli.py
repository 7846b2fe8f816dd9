"""train.py validates before it writes: a config that disagrees with the run in --model_dir, or a
misspelt data set, is refused with nothing written (the run's config.gin stays as it was)."""

import os
import subprocess
import sys

import gin
import pytest

from keras_ebm import run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "gin_configs", "quickstart.gin")


def parse(*params):
    with gin.unlock_config():
        gin.clear_config()
        run_config.parse_gin([QUICK], list(params))


def test_a_different_config_is_refused_naming_the_bindings(tmp_path):
    parse()
    run_config.save_config(str(tmp_path))
    saved = (tmp_path / "config.gin").read_text()
    parse("SGLD_STEPS = 7", "SAMGradients.rho = 0.05")
    with pytest.raises(ValueError) as info:
        run_config.check_run_config(str(tmp_path), [QUICK], ["SGLD_STEPS = 7", "SAMGradients.rho = 0.05"])
    message = str(info.value)
    assert "SGLD_STEPS/gin.macro.value: 5 -> 7" in message
    assert "SAMGradients.rho: 0.2 -> 0.05" in message
    assert f"--gin_file={tmp_path / 'config.gin'}" in message and "Nothing was written" in message
    assert (tmp_path / "config.gin").read_text() == saved
    # The new config is still the parsed one (the check parses the old one aside).
    assert gin.query_parameter("SAMGradients.rho") == 0.05


def test_run_control_bindings_may_change(tmp_path):
    parse()
    run_config.save_config(str(tmp_path))
    params = ["run_training.train_steps = 3000", "run_training.evaluate = False", "run_training.max_minutes = 5"]
    parse(*params)
    run_config.check_run_config(str(tmp_path), [QUICK], params)  # no error
    # The run's own config.gin resumes it as well.
    with gin.unlock_config():
        gin.clear_config()
        run_config.parse_gin([str(tmp_path / "config.gin")], [])
    run_config.check_run_config(str(tmp_path), [str(tmp_path / "config.gin")], [])


@pytest.mark.slow
def test_train_py_writes_nothing_for_a_misspelt_data_set_or_a_conflicting_config(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    bad = subprocess.run([sys.executable, "train.py", f"--gin_file={QUICK}", "--gin_param=DATASET = 'digitz'",
                          f"--model_dir={tmp_path / 'new'}"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "Unknown data set" in bad.stderr and "digitz" in bad.stderr
    assert not (tmp_path / "new").exists()
    parse()
    run_config.save_config(str(tmp_path / "run"))
    saved = (tmp_path / "run" / "config.gin").read_text()
    other = subprocess.run([sys.executable, "train.py", f"--gin_file={QUICK}", "--gin_param=SGLD_STEPS = 7",
                            f"--model_dir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert other.returncode != 0 and "SGLD_STEPS/gin.macro.value: 5 -> 7" in other.stderr
    assert (tmp_path / "run" / "config.gin").read_text() == saved
    assert sorted(os.listdir(tmp_path / "run")) == ["config.gin"]
