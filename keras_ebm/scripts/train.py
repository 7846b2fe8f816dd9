"""Train a keras_ebm model from gin configs (`keras-ebm-train`, or `python train.py`).

    python train.py --gin_file=gin_configs/quickstart.gin                  # into runs/quickstart
    python train.py --gin_file=gin_configs/sadajem.gin --gin_file=gin_configs/tiny.gin --model_dir=/tmp/x

Flags: --gin_file (repeatable, later files override earlier ones), --gin_param (repeatable
bindings, applied last), --model_dir (default runs/<config name>: the names of the gin files,
joined by '_'), --verbose (tracebacks for errors). Everything else is gin (see
docs/configuration.md). A run resumes from the last checkpoint in --model_dir.
"""

from __future__ import annotations

import signal
import sys

from absl import flags

from keras_ebm import scripts

flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.")
flags.DEFINE_multi_string("gin_param", [], 'Gin bindings, e.g. "run_training.train_steps = 100".')
flags.DEFINE_string(
    "model_dir",
    None,
    "Experiment directory (checkpoints, logs, export); default "
    "runs/<config name>, e.g. runs/clel_large for --gin_file=gin_configs/clel_large.gin.",
)
flags.DEFINE_bool("verbose", False, "Show the traceback of an error (also: KERAS_EBM_VERBOSE=1).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    from absl import app, logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}: pass configs with --gin_file=...")
    if not FLAGS.gin_file:
        raise app.UsageError("Pass a config: --gin_file=gin_configs/<name>.gin (e.g. quickstart.gin).")
    # Ctrl-C: during training the first one saves the step and exits with 130 (see
    # keras_ebm.callbacks.Checkpointing); a second one, or one outside training, ends the process
    # at once (the default action: checkpoints are written atomically, never left half-written).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines (savers, signatures) drown the progress
    from keras_ebm import distribute, run_config, training  # after absl parsed the flags: TensorFlow loads here

    model_dir = FLAGS.model_dir or run_config.default_model_dir(FLAGS.gin_file)
    print(
        f"[keras_ebm] model_dir: {model_dir}"
        + ("" if FLAGS.model_dir else " (--model_dir not given: runs/<config name>)"),
        flush=True,
    )
    run_config.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    # Validate before writing anything: a config that disagrees with the run in model_dir, and
    # the data sets and batch sizes (checked when the dataset functions are built).
    run_config.check_run_config(model_dir, FLAGS.gin_file, FLAGS.gin_param)
    run_config.resolve_run_training()
    # Errors found later (a data file that does not load, labels out of range at the first step)
    # leave config.gin as it was: removed again for a run that never checkpointed, so that a
    # corrected command is not refused as "another config".
    with run_config.config_restored_on_failure(model_dir):
        run_config.save_config(model_dir, gin_files=FLAGS.gin_file)
        # Several machines: a lost worker ends this one at once with WorkerLostError (docs/training.md,
        # "Several machines"); restart every worker with the same command to resume.
        with distribute.exit_when_worker_lost():
            try:
                training.run_training(model_dir=model_dir)
            except KeyboardInterrupt:
                # Ctrl-C during training: the step was checkpointed and the resume line printed
                # (keras_ebm.callbacks.Checkpointing); elsewhere nothing is lost since the last save.
                sys.exit(130)


def run() -> None:
    """The `keras-ebm-train` console script (and `python train.py`)."""
    scripts.run_main(main)


if __name__ == "__main__":
    run()
