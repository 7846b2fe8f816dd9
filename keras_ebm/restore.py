"""Trainer restoration: rebuild the trainer of a run directory and load its newest checkpoint.

Used for sample generation and evaluation that need training state the export leaves out (the
sampler, the replay buffer, EMA copies).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import tensorflow as tf

from keras_ebm import callbacks as callbacks_lib
from keras_ebm import run_config, training

if TYPE_CHECKING:
    from collections.abc import Sequence

    from keras_ebm.trainers.base import EBMTrainer


def restore_trainer(model_dir: str | os.PathLike, strategy: tf.distribute.Strategy | None = None) -> EBMTrainer:
    """Rebuild the trainer of `model_dir` from the parsed gin config and restore its last checkpoint.

    Parse `<model_dir>/config.gin` first (`keras_ebm.run_config.parse_gin`).
    """
    objs = run_config.resolve_run_training()
    if "trainer" not in objs or "optimizer" not in objs:
        raise FileNotFoundError(
            f"No trainer to rebuild for {model_dir}: the parsed config binds no run_training.trainer"
            f"{'' if os.path.isfile(os.path.join(model_dir, 'config.gin')) else ' (it has no config.gin)'}. "
            "Pass a run directory written by train.py (it saves config.gin), or parse the run's "
            "config before restoring."
        )
    strategy = strategy or tf.distribute.get_strategy()
    model = training.build_trainer(
        objs["trainer"],
        objs["optimizer"],
        strategy,
        encoder_optimizer=objs.get("encoder_optimizer"),
        mixed_precision=objs.get("mixed_precision"),
    )
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"No checkpoint in {model_dir}/checkpoints: train with train.py first.")
    callbacks_lib.make_checkpoint(model).restore(latest).expect_partial()
    print(f"[keras_ebm] restored {latest} (step {callbacks_lib.current_step(model)})", flush=True)
    return model


def restore_run(model_dir: str | os.PathLike, gin_params: Sequence[str] = ()) -> EBMTrainer:
    """The trainer of another run: clear the gin config, parse `<model_dir>/config.gin` (then
    `gin_params`), rebuild and restore it. The caller's config is gone afterwards: parse it again
    (eval.py does) before building anything else from gin. The returned model no longer needs gin.
    """
    import gin

    config = os.path.join(model_dir, "config.gin")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"No config.gin in {model_dir}: pass a directory written by train.py.")
    with gin.unlock_config():  # run_config.parse_gin locked (finalized) the caller's config
        gin.clear_config()
        run_config.parse_gin([config], list(gin_params))
    return restore_trainer(model_dir)


def step_of(model: EBMTrainer) -> int:
    """The training step a restored trainer's weights are from."""
    return int(callbacks_lib.current_step(model))
