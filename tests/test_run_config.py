"""train.py validates before it writes: a config that disagrees with the run in --model_dir, or a
misspelt data set, is refused with nothing written (the run's config.gin stays as it was). The gin
names of earlier releases still parse (keras_ebm.configurables.GIN_ALIASES)."""

import os
import shutil
import subprocess
import sys

import gin
import pytest

from keras_ebm import configurables, run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "gin_configs", "quickstart.gin")
# The config.gin of a GMMC run as train.py writes it (gmmc_gen.gin + tiny.gin, a divergence guard
# added), with the full gin names of earlier releases: keras_ebm.experiment.run_training,
# keras_ebm.experiment.DivergenceGuard, keras_ebm.heads.build_mmc_classifier, keras_ebm.cli.optional_macros.
OLD_NAMES_CONFIG = os.path.join(REPO, "tests", "data", "config_old_gin_names.gin")


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
    bad = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"--gin_file={QUICK}",
            "--gin_param=DATASET = 'digitz'",
            f"--model_dir={tmp_path / 'new'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "Unknown data set" in bad.stderr and "digitz" in bad.stderr
    assert not (tmp_path / "new").exists()
    parse()
    run_config.save_config(str(tmp_path / "run"))
    saved = (tmp_path / "run" / "config.gin").read_text()
    other = subprocess.run(
        [
            sys.executable,
            "train.py",
            f"--gin_file={QUICK}",
            "--gin_param=SGLD_STEPS = 7",
            f"--model_dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode != 0 and "SGLD_STEPS/gin.macro.value: 5 -> 7" in other.stderr
    assert (tmp_path / "run" / "config.gin").read_text() == saved
    assert sorted(os.listdir(tmp_path / "run")) == ["config.gin"]


def test_a_saved_config_with_the_gin_names_of_earlier_releases_parses(tmp_path):
    """eval.py and a resume read a run's config.gin back: one written with the names of earlier
    releases parses, every binding reaches today's configurable, the resume check accepts it, and
    the config saved again uses today's names."""
    from keras_ebm.divergence import DivergenceGuard
    from keras_ebm.trainers import GMMC
    from keras_ebm.trainers.gmmc import build_mmc_classifier

    model_dir = tmp_path / "old_run"
    model_dir.mkdir()
    config = str(model_dir / "config.gin")
    shutil.copy(OLD_NAMES_CONFIG, config)
    with gin.unlock_config():
        gin.clear_config()
        run_config.parse_gin([config], [])
    assert run_config.config_files(str(model_dir)) == ["gin_configs/gmmc_gen.gin", "gin_configs/tiny.gin"]
    assert run_config.resolve_parameter("run_training.train_steps") == 4
    assert gin.query_parameter("keras_ebm.training.run_training.checkpoint_every") == 2
    assert gin.query_parameter("run_training.trainer").configurable.wrapped is GMMC
    assert gin.query_parameter("GMMC.network").configurable.wrapped is build_mmc_classifier
    assert gin.query_parameter("build_mmc_classifier.scale") == 10.0
    guard = run_config.resolve_parameter("run_training.divergence_guard")
    assert isinstance(guard, DivergenceGuard) and guard.max_energy_gap == 10.0 and guard.confirm_steps == 100
    assert "QUEUE_SIZE" in gin.query_parameter("tiny/optional_macros.names")

    run_config.check_run_config(str(model_dir), [config], [])  # resume: its own config, no refusal
    run_config.save_config(str(model_dir), gin_files=[config])
    with open(config) as f:
        saved = f.read()
    assert saved.startswith("# keras_ebm config files: gin_configs/gmmc_gen.gin, gin_configs/tiny.gin\n")
    assert "\nrun_training.train_steps = %TRAIN_STEPS\n" in saved and "\nbuild_mmc_classifier.scale = 10.0\n" in saved
    assert not [line for line in saved.splitlines() if line.startswith(("keras_ebm.", "tiny/keras_ebm."))]


@pytest.mark.parametrize("old", sorted(configurables.GIN_ALIASES))
def test_gin_names_of_earlier_releases_name_todays_configurables(old):
    """Each alias, in full or by a suffix, selects the configurable registered under today's name,
    and today's short name is not made ambiguous by it."""
    registry = gin.config._REGISTRY
    now = registry.get(configurables.GIN_ALIASES[old])
    assert now is not None, f"{configurables.GIN_ALIASES[old]} is not a registered configurable"
    assert registry.get_match(old) is now
    if old.count(".") > 1:
        assert registry.get_match(old.split(".", 1)[1]) is now
    assert registry.get_match(old.rsplit(".", 1)[1]) is now
