"""Keras callbacks that make a long EBM run survivable, for `model.fit` and for `run_training`.

The same callback objects serve both drivers: `model.fit(..., callbacks=[...])` in user code and
`keras_ebm.training.run_training` (which calls `fit` on one machine and drives the very same
callbacks from its custom loop under MultiWorkerMirroredStrategy, where Keras 3's `fit` fails:
keras-team/keras#20585).

    cbs = keras_ebm.callbacks.training_callbacks("runs/x", train_steps=2000, checkpoint_every=500,
                                                 divergence_guard=DivergenceGuard(), max_minutes=60)
    model.fit(train_ds, epochs=1, steps_per_epoch=2000, callbacks=cbs)   # rerun to resume

| callback | what it does |
|---|---|
| `Checkpointing` | restores the newest checkpoint at `on_train_begin` (resume), saves every `every` steps and at the end; the checkpoint holds every tracked variable of the trainer (weights, BN statistics, replay buffer, queue, EMA copies), every optimizer, the RNG states and the divergence `RecoveryState`; refuses to save non-finite variables |
| `DivergenceRecovery` | watches every step (`keras_ebm.divergence.DivergenceMonitor`); with a `DivergenceGuard` it restores the newest *confirmed good* checkpoint in place, deletes the failing branch and applies the next remedy; without one it raises `DivergenceError` (the last good checkpoint is kept) |
| `TimeBudget` | stops training (`model.stop_training`) at the first step past `max_minutes`; `Checkpointing` then saves that step |
| `StopAtStep` | stops at a total step count, so a rerun of the same `fit` after a kill ends where an uninterrupted run ends (a finished run trains no further step) |
| `TrainingLog` | TensorBoard scalars (means over `every` steps, steps/s), progress bar or console lines |
| `SampleGrids` | the replay buffer as a PNG grid (and a TensorBoard image) every `every` steps and at the end |
| `OperativeConfig` | writes gin's operative config after the first step |

The step of a run is `model.optimizer.iterations` (one optimizer update per train step for every
trainer, SAM included), so it is checkpointed and rolled back with the optimizer.

Every step's logs are that step's values: the trainers' trackers are reset before every step
(`begin_step`) and read after it in cross-replica context (summed over replicas; `step_logs`), so
the guard sees each step, and `fit`'s progress bar and History show the last step's values.
"""  # noqa: E501  (Markdown table rows: a table row cannot wrap)

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_ebm import divergence, generation

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

    from keras_ebm.trainers.base import EBMTrainer

DivergenceError = divergence.DivergenceError


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped training after the running step, which was checkpointed
    (`Checkpointing(save_on_interrupt=True)`); `checkpoint` is its path. Rerun the same code (or
    `train.py` command) to resume."""

    def __init__(self, message: str, checkpoint: str | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.step = step


def _log(msg):
    print(f"[keras_ebm] {msg}", flush=True)


def current_step(model: EBMTrainer) -> int:
    """The run's step: the number of train steps applied (`model.optimizer.iterations`)."""
    return int(model.optimizer.iterations.numpy())


# ---------------------------------------------------------------------------------- per-step logs
_STEP_LOGS = weakref.WeakKeyDictionary()
_RESET_FOR = weakref.WeakKeyDictionary()


def begin_step(model: EBMTrainer) -> None:
    """Reset the trainer's trackers before a step (once per step, whichever callback asks first)."""
    step = current_step(model)
    if _RESET_FOR.get(model) != step:
        for m in model.metrics:
            m.reset_state()
        _RESET_FOR[model] = step


def ran_a_step(model: EBMTrainer) -> bool:
    """False when the batch that just ended trained nothing (`StopAtStep` on a finished run)."""
    return _RESET_FOR.get(model) != current_step(model)


def step_logs(model: EBMTrainer) -> dict[str, float]:
    """This step's logs `{name: float}` from the trainer's trackers (reset by `begin_step`), read
    once per step in cross-replica context (SyncOnRead totals are summed over replicas)."""
    step = current_step(model)
    cached = _STEP_LOGS.get(model)
    if cached is not None and cached[0] == step:
        return cached[1]
    logs = {m.name: float(np.mean(m.result().numpy())) for m in model.metrics}
    _STEP_LOGS[model] = (step, logs)
    return logs


def forget_step_logs(model: EBMTrainer) -> None:
    """Drop the cached logs and resets (after a rollback the same step numbers come again)."""
    _STEP_LOGS.pop(model, None)
    _RESET_FOR.pop(model, None)


class StepCallback(keras.callbacks.Callback):
    """Base of the keras_ebm callbacks: resets the trainer's trackers before each step."""

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        begin_step(self.model)


# ---------------------------------------------------------------------------------- checkpoints
_CHECKPOINT_FILE = re.compile(r"^(ckpt-\d+)(\.index|\.data-\d+-of-\d+)$")
_CHECKPOINT_STAGING = re.compile(r"^ckpt-\d+_temp$")


def listed_checkpoints(directory: str | os.PathLike) -> list[str]:
    """Every checkpoint the state file of `directory` lists (latest included). Not
    `CheckpointManager.checkpoints`: that leaves out the ones whose timestamps are missing or not
    after `last_preserved_timestamp` (a state file written by `update_checkpoint_state` without
    timestamps, or by another tool), which are still checkpoints the user keeps."""
    state = tf.train.get_checkpoint_state(os.fspath(directory))
    if state is None:
        return []
    return list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]


def remove_checkpoint_leftovers(directory: str | os.PathLike, listed: Sequence[str]) -> list[str]:
    """Delete what a kill during a save leaves in `directory`: TensorFlow's `ckpt-N_temp` staging
    folders and `ckpt-N.index` / `.data-*` files of checkpoints the state file does not list (never
    read: a resume reads the listed ones; the step is saved again anyway). Returns the names removed.
    One writer per directory (the chief, or a worker's own temporary directory)."""
    if not tf.io.gfile.isdir(directory):
        return []
    keep = {os.path.basename(p) for p in listed}
    removed = []
    for name in sorted(tf.io.gfile.listdir(directory)):
        name = name.rstrip("/")
        path = os.path.join(directory, name)
        match = _CHECKPOINT_FILE.match(name)
        if _CHECKPOINT_STAGING.match(name):
            tf.io.gfile.rmtree(path)
        elif match and match.group(1) not in keep:
            tf.io.gfile.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def make_checkpoint(model: EBMTrainer, recovery: divergence.RecoveryState | None = None) -> tf.train.Checkpoint:
    """A `tf.train.Checkpoint` of the trainer (all its tracked variables), its optimizer(s), its RNG
    states and, when given, the divergence guard's `RecoveryState`."""
    kwargs = {"model": model}
    if recovery is not None:
        kwargs["recovery"] = recovery
    kwargs.update(model.optimizers)
    # keras.random.SeedGenerator is a plain object that tf.train.Checkpoint does not walk: save the
    # RNG states (trainer, sampler, buffer) explicitly, in construction order, so a resumed run
    # continues every random sequence instead of replaying it.
    kwargs["rng_states"] = [v for v in model.variables if "seed_generator_state" in v.path]
    return tf.train.Checkpoint(**kwargs)


def checkpoint_step(path: str) -> int:
    """The step number of a checkpoint path (`.../ckpt-<step>`)."""
    return int(path.rsplit("-", 1)[1])


@tf.function
def _variables_finite(variables):
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])


def float_variables(model: EBMTrainer) -> list[keras.Variable]:
    """Every floating-point variable of the trainer: weights, BN statistics, buffer, queue, EMA."""
    return [v for v in model.variables if keras.backend.is_float_dtype(v.dtype)]


def variables_finite(model: EBMTrainer) -> bool:
    return bool(_variables_finite(float_variables(model)))


def ensure_built(model: EBMTrainer) -> None:
    """Build the trainer and its optimizer(s), which checkpoint restoration needs first."""
    if not model.built:
        model(tf.zeros((1,) + tuple(model.image_shape), tf.float32))
    with model.distribute_strategy.scope():
        model.build_optimizers()


class Checkpointing(StepCallback):
    """Checkpoint and resume every piece of training state; the last good checkpoint is never lost.

    Args:
        directory: checkpoint directory (`tf.train.CheckpointManager`; `<model_dir>/checkpoints`).
        every: steps between checkpoints; the last step of a `fit` call is always saved.
        keep: how many checkpoints to keep (raised by `DivergenceRecovery` so that the newest good
            one outlives rotation).
        resume: restore the newest checkpoint of `directory` when training begins.
        save_initial: also save the state before the first step (a run that diverges before its
            first checkpoint restarts from there; `DivergenceRecovery` with a guard sets it).

    Ctrl-C (`save_on_interrupt`, default on): during `fit` the first SIGINT lets the running step
    finish, saves it (the same atomic save as every checkpoint), prints one line saying where and
    how to resume and raises `TrainingInterrupted` (a `KeyboardInterrupt`; `train.py` exits with
    status 130). A second SIGINT goes to the handler that was installed before `fit` (Python's:
    `KeyboardInterrupt` without a save; `train.py` installs the default action, which ends the
    process at once). Only in the main thread, and not under MultiWorkerMirroredStrategy (one
    worker's save would wait for the others' collectives): there Ctrl-C behaves as before.
    Without this callback a `KeyboardInterrupt` ends `fit` with nothing saved since the last
    checkpoint.

    Writes are TensorFlow's (data files first, then the `checkpoint` index is replaced), so a kill
    leaves the previous checkpoint readable; no step is written twice (`final_hook`), and SIGKILLs
    at random moments, during checkpoint writes and during the export never left an unreadable
    checkpoint (benchmarks/fault_injection.py). `save()` refuses non-finite variables
    (`DivergenceError`), so a diverged state is never written over a good one.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        every: int = 500,
        keep: int = 3,
        resume: bool = True,
        save_initial: bool = False,
        verbose: bool = True,
        save_on_interrupt: bool = True,
    ) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"`every` must be >= 1 step. Received: every={every}")
        self.directory = os.fspath(directory)
        self.every = int(every)
        self.keep = int(keep)
        self.resume = bool(resume)
        self.save_initial = bool(save_initial)
        self.verbose = bool(verbose)
        self.recovery = None
        self.checkpoint = None
        self.manager = None
        self.restored_from = None
        self.after_save = []  # callables (path, step): DivergenceRecovery marks good checkpoints
        # Run `final_hook()` once, right before the first save of a step for which `is_final()`
        # holds (run_training: the trainer's `after_training`), so the run's last step is written
        # once, with the post-training estimates in it: a checkpoint rewritten in place could be
        # left unreadable by a kill, and a resume from a last step saved before the hook ran would
        # skip it.
        self.final_hook = None
        self.is_final = lambda: False
        self.save_on_interrupt = bool(save_on_interrupt)
        self.interrupted = False
        self._previous_sigint = None

    # ---------------------------------------------------------------- state
    def setup(self) -> str | None:
        """Build the checkpoint and restore the newest one; idempotent (a second `fit` call, or
        `run_training` calling it before `fit` to position the data at the restored step)."""
        if self.checkpoint is not None:
            return self.restored_from
        model = self.model
        ensure_built(model)
        with model.distribute_strategy.scope():
            self.recovery = divergence.RecoveryState()
        self.recovery.attach(model)
        self.checkpoint = make_checkpoint(model, self.recovery)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.keep)
        self.removed_leftovers = remove_checkpoint_leftovers(self.directory, listed_checkpoints(self.directory))
        if self.resume and self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            notes = self.recovery.apply(model)
            self.restored_from = self.manager.latest_checkpoint
            if self.verbose:
                _log(
                    f"resumed from {self.restored_from} at step {current_step(model)}"
                    + (f" (divergence recoveries: {', '.join(notes)})" if notes else "")
                )
        elif self.save_initial:
            self.save()  # step 0
        return self.restored_from

    def steps(self) -> list[int]:
        """Steps of the checkpoints on disk, oldest first."""
        return [checkpoint_step(p) for p in self.manager.checkpoints]

    def is_save_step(self, step: int) -> bool:
        return step % self.every == 0

    def save(self) -> str | None:
        """Save the current step (no-op when it is already saved); returns the path."""
        step = current_step(self.model)
        if step in self.steps():
            return None
        if self.final_hook is not None and self.is_final():
            hook, self.final_hook = self.final_hook, None
            hook()
        if not variables_finite(self.model):
            raise DivergenceError(
                f"not saving step {step}: the trainer holds NaN/Inf variables. The last good checkpoint "
                f"is kept ({self.manager.latest_checkpoint}); see keras_ebm.callbacks.DivergenceRecovery."
            )
        path = self.manager.save(checkpoint_number=step)
        for fn in self.after_save:
            fn(path, step)
        return path

    def restore(self, path: str) -> None:
        """Restore `path` into the live trainer (the recovery remedies are the caller's to keep)."""
        self.checkpoint.restore(path).assert_existing_objects_matched()
        forget_step_logs(self.model)

    def roll_back(self, good_step: int) -> str | None:
        """Delete the checkpoints newer than `good_step` (the diverging branch) and return the path
        of the newest one left (None when there is none)."""
        paths = list(self.manager.checkpoints)
        # (A kill during CheckpointManager's rotation can leave the state file listing a deleted
        # checkpoint: only checkpoints whose files exist are kept.)
        keep = [p for p in paths if checkpoint_step(p) <= good_step and tf.io.gfile.exists(p + ".index")]
        if not keep:
            return None
        # The state file first (atomic), then the files: a kill in between leaves unlisted files,
        # never a listed checkpoint without its files.
        # Timestamps after `last_preserved_timestamp`, or a new manager would not list (nor rotate)
        # them. (update_checkpoint_state rewrites the path list it is given in place: pass a copy.)
        stamps = [os.path.getmtime(p + ".index") for p in keep]
        tf.compat.v1.train.update_checkpoint_state(
            self.directory,
            keep[-1],
            all_model_checkpoint_paths=list(keep),
            all_model_checkpoint_timestamps=stamps,
            last_preserved_timestamp=min(stamps) - 1.0,
        )
        for path in paths:
            if path not in keep:
                for f in tf.io.gfile.glob(path + ".*"):
                    tf.io.gfile.remove(f)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.keep)
        return self.manager.latest_checkpoint

    # ---------------------------------------------------------------- Ctrl-C
    def _install_interrupt_handler(self):
        if (
            not self.save_on_interrupt
            or self._previous_sigint is not None
            or threading.current_thread() is not threading.main_thread()
            or isinstance(self.model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)
        ):
            return
        self.interrupted = False
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            # Only a flag: the step in flight finishes, then `on_train_batch_end` saves it. The
            # next Ctrl-C goes to the previous handler (at once).
            self.interrupted = True
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
            _log("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop at once, without it)")

        signal.signal(signal.SIGINT, on_sigint)
        self._previous_sigint = previous if previous is not None else signal.default_int_handler

    def _remove_interrupt_handler(self):
        if self._previous_sigint is not None:
            if signal.getsignal(signal.SIGINT) is not self._previous_sigint:
                signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _stop_on_interrupt(self):
        """Save the step just trained and stop with `TrainingInterrupted`."""
        self._remove_interrupt_handler()
        self.interrupted = False
        step = current_step(self.model)
        path = self.save() or self.manager.latest_checkpoint
        message = (
            f"interrupted at step {step}: saved {path}; to resume, run the same command again "
            "(train.py with the same --model_dir, or fit with the same callbacks)"
        )
        _log(message)
        raise TrainingInterrupted(message, checkpoint=path, step=step)

    # ---------------------------------------------------------------- callback
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.setup()
        self._install_interrupt_handler()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.is_save_step(current_step(self.model)):
            self.save()
        if self.interrupted:
            self._stop_on_interrupt()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._remove_interrupt_handler()
        if current_step(self.model) > 0 or not self.steps():
            self.save()
        if self.interrupted:  # Ctrl-C during the last step: saved above
            self._stop_on_interrupt()


class DivergenceRecovery(StepCallback):
    """Watch every step for divergence; recover in place with a `DivergenceGuard`, else stop.

    Args:
        checkpointing: the run's `Checkpointing` callback (restores come from it).
        guard: a `keras_ebm.divergence.DivergenceGuard`, or None: then any non-finite log or
            variable raises `DivergenceError` (the last good checkpoint is kept).
        log_dir: where `divergence_events.jsonl` and the TensorBoard counter go (None: nowhere).
        seed: seed of the generator that draws the new random seeds of a recovery.
        restart_data: after a recovery, also stop the current `fit` call so that the driver
            (`run_training`) restarts the data stream with a new seed, as the official JEM code's
            restart does; with `model.fit` in user code (False) the data stream just continues.

    A checkpoint counts as good once `guard.confirm_steps` healthy steps followed it. A recovery
    restores the newest good checkpoint, deletes the newer ones, reseeds, and applies the guard's
    next remedy (`DivergenceGuard.apply`); what it changed is in the checkpointed `RecoveryState`.
    """

    def __init__(
        self,
        checkpointing: Checkpointing,
        guard: divergence.DivergenceGuard | None = None,
        log_dir: str | os.PathLike | None = None,
        seed: int = 0,
        restart_data: bool = False,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.checkpointing = checkpointing
        self.guard = guard
        self.log_dir = log_dir
        self.rng = np.random.default_rng(seed)
        self.restart_data = bool(restart_data)
        self.verbose = bool(verbose)
        self.recoveries = 0
        self.monitor = None
        if guard is not None:
            # The newest *good* checkpoint (confirm_steps healthy steps after it) must outlive rotation.
            checkpointing.keep = max(checkpointing.keep, -(-guard.confirm_steps // checkpointing.every) + 2)
            checkpointing.save_initial = True
        checkpointing.after_save.append(self._mark_good)

    @property
    def confirm_steps(self) -> int:
        return self.guard.confirm_steps if self.guard is not None else 0

    def _mark_good(self, path=None, step=None):
        """Advance `RecoveryState.good_step` to the newest checkpoint `confirm_steps` behind."""
        recovery = self.checkpointing.recovery
        current = current_step(self.checkpointing.model)
        good = [s for s in self.checkpointing.steps() if s <= current - self.confirm_steps]
        if good and max(good) > int(recovery.good_step.numpy()):
            recovery.good_step.assign(max(good))

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.checkpointing.setup()
        if self.monitor is None and self.guard is not None:
            self.monitor = self.guard.monitor(self.model)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if not ran_a_step(self.model):
            return
        step = current_step(self.model)
        values = step_logs(self.model)
        if self.monitor is not None:
            signals = self.monitor.update(step, values)
        else:
            signals = [] if all(np.isfinite(v) for v in values.values()) else ["non_finite"]
        if not signals and self.checkpointing.is_save_step(step) and not variables_finite(self.model):
            signals = ["non_finite_variables"]
        if signals:
            fired = self.monitor.fired.get("values") if self.monitor is not None and self.monitor.fired else None
            error = _divergence_error(step, signals, fired or values, self.checkpointing.manager)
            if self.guard is None:
                raise error
            self._recover(error)
            return
        self._mark_good()

    def _recover(self, error):
        guard, ckpt, model = self.guard, self.checkpointing, self.model
        good_step = int(ckpt.recovery.good_step.numpy())
        if self.recoveries >= guard.max_recoveries:
            raise DivergenceError(
                f"{error}\nGave up after {self.recoveries} automatic recoveries "
                f"(DivergenceGuard.max_recoveries={guard.max_recoveries})."
            ) from error
        restored = ckpt.roll_back(good_step)
        if restored is None:
            raise DivergenceError(
                f"{error}\nNo checkpoint at or before the last good step {good_step} is left to recover from."
            ) from error
        self.recoveries += 1
        remedies = ckpt.recovery.snapshot()  # what earlier recoveries changed belongs to the run
        ckpt.restore(restored)
        ckpt.recovery.load(remedies)
        ckpt.recovery.apply(model)  # the restored optimizer brought back its saved (unlowered) rate
        step = current_step(model)
        ckpt.recovery.good_step.assign(step)
        for m in model.metrics:
            m.reset_state()
        change = guard.apply(model, self.recoveries, self.rng, state=ckpt.recovery)
        self.monitor = guard.monitor(model)
        event = {
            "recovery": self.recoveries,
            "fired": error.signals,
            "at_step": error.step,
            "values": error.values,
            "restored": restored,
            "step": step,
            "change": change,
        }
        if self.verbose:
            _log(
                f"divergence recovery {self.recoveries}/{guard.max_recoveries}: {event['fired']} at step "
                f"{event['at_step']}; restored the last good checkpoint {restored} (step {step}); {change}"
            )
        if self.log_dir is not None:
            os.makedirs(self.log_dir, exist_ok=True)
            with open(os.path.join(self.log_dir, "divergence_events.jsonl"), "a") as f:
                f.write(json.dumps(event) + "\n")
            with tf.summary.create_file_writer(os.path.join(self.log_dir, "tensorboard")).as_default(step=step):
                tf.summary.scalar("divergence/recoveries", self.recoveries)
        if self.restart_data:
            model.stop_training = True


def _divergence_error(step, signals, values, manager):
    values = {k: float(np.mean(v)) for k, v in values.items()}
    error = DivergenceError(
        f"training diverged at step {step}: {', '.join(signals)} in "
        f"{ {k: round(v, 5) for k, v in values.items()} }. Nothing is saved from this state: the last good "
        f"checkpoint is kept (the newest is {manager.latest_checkpoint if manager else None}); resume from a "
        "good one with a lower learning rate, more SGLD steps, an energy L2 penalty or another seed, or pass "
        "a DivergenceGuard (run_training.divergence_guard = @DivergenceGuard() in gin) to do it automatically."
    )
    error.step, error.signals, error.values = step, list(signals), values
    return error


class TimeBudget(StepCallback):
    """Stop training at the first step past `max_minutes` of wall-clock time (tracing included).

    The budget starts at the first `on_train_begin` and spans later `fit` calls of the same object.
    `stopped` tells whether it ended the run. One machine only: workers of a
    MultiWorkerMirroredStrategy could stop at different steps and hang their collectives.
    """

    def __init__(self, max_minutes: float) -> None:
        super().__init__()
        if max_minutes is None or not max_minutes > 0:
            raise ValueError(f"`max_minutes` must be a positive number of minutes. Received: {max_minutes!r}")
        self.max_minutes = float(max_minutes)
        self.deadline = None
        self.stopped = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.deadline is None:
            self.deadline = time.time() + 60.0 * self.max_minutes

    def check(self) -> bool:
        """True once the budget is used up (then training stops at the end of this step)."""
        if not self.stopped and self.deadline is not None and time.time() > self.deadline:
            self.stopped = True
            self.model.stop_training = True
        return self.stopped

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.check()


class StopAtStep(StepCallback):
    """End training when the run's step reaches `train_steps`, whatever `fit`'s own count says.

    With it, rerunning the same `fit` after a kill trains exactly the remainder; when the restored
    run is already complete, the `fit` call trains no step at all (its train function is replaced by
    a no-op for that call).
    """

    def __init__(self, train_steps: int) -> None:
        super().__init__()
        self.train_steps = int(train_steps)
        self._saved_train_function = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if current_step(self.model) >= self.train_steps:
            _log(f"already trained {current_step(self.model)} >= {self.train_steps} steps; nothing to do")
            self._saved_train_function = self.model.train_function
            self.model.train_function = lambda iterator: {}
            self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if current_step(self.model) >= self.train_steps:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._saved_train_function is not None:
            self.model.train_function = self._saved_train_function
            self._saved_train_function = None


def _stdout_is_terminal():
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


class TrainingLog(StepCallback):
    """TensorBoard scalars, progress and console lines from the per-step logs.

    Args:
        log_dir: TensorBoard directory (None: no TensorBoard).
        every: steps between TensorBoard points / console lines (means over those steps).
        total_steps: for the progress bar and the console lines.
        progress: show a `keras.utils.Progbar` when stdout is a terminal; otherwise (or with
            False) a console line every `every` steps: a log file or CI output gets one line per
            `every` steps, not the bar redrawn at every step.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        every: int = 50,
        total_steps: int | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.every = int(every)
        self.total_steps = total_steps
        self.progress = bool(progress)
        self.writer = None
        self.bar = None
        self.window = []
        self.logs = {}
        self._t0 = None
        self._last_step = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.log_dir is not None and self.writer is None:
            self.writer = tf.summary.create_file_writer(self.log_dir)
        if self.progress and self.bar is None and _stdout_is_terminal():
            names = [m.name for m in self.model.metrics]
            self.bar = keras.utils.Progbar(self.total_steps, stateful_metrics=names)
        self._t0, self._last_step = time.time(), current_step(self.model)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if not ran_a_step(self.model):
            return
        step = current_step(self.model)
        values = step_logs(self.model)
        if step <= self._last_step:  # a rollback: the window belongs to the failed branch
            self.window, self._last_step, self._t0 = [], step - 1, time.time()
        self.window.append(values)
        self.logs = {k: float(np.mean([w[k] for w in self.window if k in w])) for k in values}
        if step % self.every == 0 or self.model.stop_training or step == self.total_steps:
            self.flush(step)
        if self.bar is not None:
            self.bar.update(step, values=list(self.logs.items()))

    def flush(self, step: int) -> None:
        rate = (step - self._last_step) / max(time.time() - self._t0, 1e-9)
        self._t0, self._last_step = time.time(), step
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for k, v in self.logs.items():
                    tf.summary.scalar(k, v)
                tf.summary.scalar("steps_per_second", rate)
        if self.bar is None:
            total = f"/{self.total_steps}" if self.total_steps else ""
            _log(f"step {step}{total} " + " ".join(f"{k}={v:.4g}" for k, v in self.logs.items()))
        self.window = []

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.writer is not None:
            self.writer.flush()


class OperativeConfig(keras.callbacks.Callback):
    """Write `gin.operative_config_str()` (the bindings actually used) after the first step."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = path
        self.written = False

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if not self.written:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            staging = f"{self.path}.tmp-{os.getpid()}"  # renamed into place: never truncated by a kill
            with open(staging, "w") as f:
                f.write(gin.operative_config_str())
            os.replace(staging, self.path)
            self.written = True


class SampleGrids(keras.callbacks.Callback):
    """The replay buffer as a PNG grid (`<directory>/buffer.png`, and `buffer_<step>.png` every
    `every` steps) and as a TensorBoard image: a look at the chains before reading numbers.
    Does nothing for a trainer without a buffer."""

    def __init__(
        self,
        directory: str | os.PathLike,
        every: int | None = None,
        log_dir: str | os.PathLike | None = None,
        num_images: int = 64,
    ) -> None:
        super().__init__()
        self.directory = directory
        self.every = every
        self.log_dir = log_dir
        self.num_images = int(num_images)

    def _write(self, name):
        if self.model.buffer is None:
            return None
        # Written beside and renamed into place: a kill never leaves a truncated PNG (a finished
        # run that is rerun does not draw it again).
        path = os.path.join(self.directory, name)
        staging = os.path.join(self.directory, f".{name}.tmp-{os.getpid()}.png")
        os.replace(generation.save_buffer_grid(self.model, staging, self.num_images), path)
        if self.log_dir is not None:
            image = tf.io.decode_png(tf.io.read_file(path))[None]
            with tf.summary.create_file_writer(self.log_dir).as_default(step=current_step(self.model)):
                tf.summary.image("samples/replay_buffer", image)
        return path

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        step = current_step(self.model)
        if self.every and step % self.every == 0:
            self._write(f"buffer_{step}.png")

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._write("buffer.png")


def training_callbacks(
    model_dir: str | os.PathLike,
    train_steps: int | None = None,
    checkpoint_every: int = 500,
    keep_checkpoints: int = 3,
    divergence_guard: divergence.DivergenceGuard | None = None,
    max_minutes: float | None = None,
    log_every: int = 50,
    progress: bool = False,
    sample_grids: bool = True,
    operative_config: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int = 0,
    restart_data: bool = False,
    chief: bool = True,
) -> list[keras.callbacks.Callback]:
    """The callbacks of a keras_ebm run in `model_dir`, in the order they must run.

    Layout: `checkpoints/`, `tensorboard/`, `samples/`, `operative_config.gin`,
    `divergence_events.jsonl`. Pass the list to `model.fit`; rerunning the same code resumes.
    `checkpoint_dir` overrides `<model_dir>/checkpoints` (non-chief workers write to scratch);
    `chief=False` leaves out everything that writes files other than checkpoints. `progress=True`
    adds keras_ebm's own progress bar over the run's steps (use it with `fit(verbose=0)`); by
    default `fit`'s bar shows each step's values and `TrainingLog` a line every `log_every` steps.

    Returns:
        A list: [DivergenceRecovery, Checkpointing, (StopAtStep), (TimeBudget), (TrainingLog),
        (SampleGrids), (OperativeConfig)]. The guard comes first so that a step is checked before
        it is saved.
    """
    checkpointing = Checkpointing(
        checkpoint_dir or os.path.join(model_dir, "checkpoints"),
        every=checkpoint_every,
        keep=keep_checkpoints,
        verbose=chief,
    )
    callbacks = [
        DivergenceRecovery(
            checkpointing,
            divergence_guard,
            log_dir=model_dir if chief else None,
            seed=seed,
            restart_data=restart_data,
            verbose=chief,
        ),
        checkpointing,
    ]
    if train_steps is not None:
        callbacks.append(StopAtStep(train_steps))
    if max_minutes is not None:
        callbacks.append(TimeBudget(max_minutes))
    if chief:
        callbacks.append(
            TrainingLog(
                os.path.join(model_dir, "tensorboard"), every=log_every, total_steps=train_steps, progress=progress
            )
        )
        if sample_grids:
            callbacks.append(
                SampleGrids(os.path.join(model_dir, "samples"), log_dir=os.path.join(model_dir, "tensorboard"))
            )
        if operative_config:
            callbacks.append(OperativeConfig(os.path.join(model_dir, "operative_config.gin")))
    return callbacks


def resume(model: EBMTrainer, callbacks: Sequence[keras.callbacks.Callback]) -> int:
    """Restore the newest checkpoint of the run now, before `fit`; returns the step restored to
    (0 for a new run). Use it to position the data: `fit(ds.skip(step), ...)` (or a data seed
    derived from the step) makes the resumed run see the batches an uninterrupted run would."""
    checkpointing = find(callbacks, Checkpointing)
    if checkpointing is None:
        raise ValueError("`callbacks` has no keras_ebm.callbacks.Checkpointing to resume from.")
    for callback in callbacks:
        callback.set_model(model)
    checkpointing.setup()
    return current_step(model)


def find(callbacks: Iterable[keras.callbacks.Callback], kind: type) -> keras.callbacks.Callback | None:
    """The first callback of type `kind` in `callbacks` (None when there is none)."""
    return next((c for c in callbacks if isinstance(c, kind)), None)
