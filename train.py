"""Train a keras_ebm model from gin configs.

    python train.py --gin_file=gin_configs/quickstart.gin --model_dir=runs/quickstart
    python train.py --gin_file=gin_configs/sadajem.gin --gin_file=gin_configs/tiny.gin --model_dir=/tmp/x

Flags: --gin_file (repeatable, later files override earlier ones), --gin_param (repeatable
bindings, applied last), --model_dir. Everything else is gin (see README, "Configuration").
A run resumes from the last checkpoint in --model_dir.
"""

import os
import signal
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging

flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. \"run_training.train_steps = 100\".")
flags.DEFINE_string("model_dir", None, "Experiment directory (checkpoints, logs, export).")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    # Ctrl-C: during training the first one saves the step and exits with 130 (see
    # keras_ebm.callbacks.Checkpointing); a second one, or one outside training, ends the process
    # at once (the default action: checkpoints are written atomically, never left half-written).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines (savers, signatures) drown the progress
    from keras_ebm import cli, distribute, training  # after absl parsed the flags: TensorFlow loads here

    cli.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    # Validate before writing anything: a config that disagrees with the run in --model_dir, and
    # the data sets and batch sizes (checked when the dataset functions are built).
    cli.check_run_config(FLAGS.model_dir, FLAGS.gin_file, FLAGS.gin_param)
    cli.resolve_run_training()
    # Errors found later (a data file that does not load, labels out of range at the first step)
    # leave config.gin as it was: removed again for a run that never checkpointed, so that a
    # corrected command is not refused as "another config".
    with cli.config_restored_on_failure(FLAGS.model_dir):
        cli.save_config(FLAGS.model_dir)
        # Several machines: a lost worker ends this one at once with WorkerLostError (README,
        # "Several machines"); restart every worker with the same command to resume.
        with distribute.exit_when_worker_lost():
            try:
                training.run_training(model_dir=FLAGS.model_dir)
            except KeyboardInterrupt:
                # Ctrl-C during training: the step was checkpointed and the resume line printed
                # (keras_ebm.callbacks.Checkpointing); elsewhere nothing is lost since the last save.
                sys.exit(130)


if __name__ == "__main__":
    app.run(main)
