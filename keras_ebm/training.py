"""`run_training`: what `train.py` calls (gin-configurable), built on `model.fit` and the callbacks of
`keras_ebm.callbacks`.

A run is made of steps, each a small function: check what can fail early (`_check_before_training`),
seed (`seed_run`), build the trainer (`build_trainer`) and its callbacks (`_build_callbacks`), resume
(`_resume`), train (`_train`: `fit` or the multi-worker loop, `_fit`), finish (`_finish_training`),
then the after-training actions (`keras_ebm.actions`: summary, export, evaluation, baseline), which
a user can add, remove or override (`run_training.actions`).

On one machine (one CPU/GPU, or MirroredStrategy over several GPUs) `run_training` calls
`model.fit` with `keras_ebm.callbacks.training_callbacks(...)`: exactly what a user's own
`model.fit(..., callbacks=...)` gets. Under MultiWorkerMirroredStrategy, where Keras 3's `fit`
fails (keras-team/keras#20585: "Attempt to convert a value (PerReplica...)"), a small custom loop
(`train_loop`) calls the trainer's `train_step` through `strategy.run` and drives the *same*
callback objects. Both call the same `train_step`.

Model directory layout:
    config.gin               the gin files and bindings as given (train.py writes it; eval.py reads it)
    operative_config.gin     the bindings actually used (written after the first step)
    checkpoints/             tf.train.CheckpointManager: weights, optimizer state(s), and every
                             tracked variable of the trainer (replay buffer, queue, EMA copies),
                             RNG states and the divergence guard's recovery state
    tensorboard/             scalars every `log_every` steps, replay-buffer grids
    samples/buffer.png       the replay buffer after training
    export/                  SavedModel (keras_ebm.export) after training
    eval/                    results.json, results.md and plots (eval.py)
    training_summary.json    steps, time, what stopped the run, divergence recoveries
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import TYPE_CHECKING

import gin
import keras
import tensorflow as tf

from keras_ebm import actions as actions_lib
from keras_ebm import callbacks as callbacks_lib
from keras_ebm import distribute

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from keras_ebm import divergence
    from keras_ebm.data.sources.common import SourceInfo
    from keras_ebm.trainers.base import EBMTrainer


def _log(msg):
    print(f"[keras_ebm] {msg}", flush=True)


PRECISIONS = (None, "float32", "mixed_bfloat16")


@contextlib.contextmanager
def dtype_policy(mixed_precision: str | None) -> Iterator[None]:
    """Build Keras layers under `mixed_precision` (None / "float32" / "mixed_bfloat16"); the
    global policy is restored afterwards (the layers keep theirs)."""
    if mixed_precision not in PRECISIONS:
        raise ValueError(
            f"run_training.mixed_precision must be one of {PRECISIONS}: bfloat16 needs no loss scaling "
            "and keeps float32's range; float16 would need loss scaling, which keras_ebm does not "
            f"apply. Received: mixed_precision={mixed_precision!r}"
        )
    previous = keras.mixed_precision.dtype_policy()
    if mixed_precision is not None:
        keras.mixed_precision.set_dtype_policy(mixed_precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def build_trainer(
    trainer: Callable[[], EBMTrainer],
    optimizer: Callable[[], keras.optimizers.Optimizer],
    strategy: tf.distribute.Strategy,
    jit_compile: bool = False,
    encoder_optimizer: Callable[[], keras.optimizers.Optimizer] | None = None,
    mixed_precision: str | None = None,
) -> EBMTrainer:
    """Build `trainer()` and its optimizer(s) under `strategy.scope()`, ready for `train_step`.

    `trainer` is a zero-argument callable (a gin reference such as `@SoftmaxClassifier`) and
    `optimizer` a zero-argument callable returning a Keras optimizer. The model is called once and
    its optimizers built (`EBMTrainer.build_optimizers`), which MultiWorkerMirroredStrategy needs
    before the loop and checkpoint restoration needs before restoring slots. `encoder_optimizer`
    (CLEL's second optimizer, a zero-argument callable) goes to `compile` too. `mixed_precision`:
    see `run_training`.
    """
    extra = {} if encoder_optimizer is None else {"encoder_optimizer": encoder_optimizer()}
    with dtype_policy(mixed_precision), strategy.scope():
        model = trainer()
        model.compile(optimizer=optimizer(), jit_compile=jit_compile, **extra)
        model(tf.zeros((1,) + tuple(model.image_shape), tf.float32))
        model.build_optimizers()
    return model


def train_loop(
    model: EBMTrainer,
    dataset: Callable[..., tf.data.Dataset],
    strategy: tf.distribute.Strategy,
    train_steps: int,
    callbacks: keras.callbacks.CallbackList,
    jit_compile: bool = False,
) -> None:
    """The custom loop for MultiWorkerMirroredStrategy: `train_step` under `strategy.run`, driving
    `callbacks` (a `keras.callbacks.CallbackList` or a list) as `fit` would, until the run's step
    reaches `train_steps` or a callback sets `model.stop_training`.

    When a peer worker is lost, TensorFlow aborts the collectives and this raises
    `keras_ebm.distribute.WorkerLostError` (the TensorFlow error is its `__cause__`) without
    saving anything more."""
    cbs = (
        callbacks
        if isinstance(callbacks, keras.callbacks.CallbackList)
        else keras.callbacks.CallbackList(callbacks, model=model)
    )
    iterator = iter(dataset)

    def make_step():
        # XLA compiles the per-replica step (as Keras' own fit does); the iterator stays outside it.
        step_fn = (
            tf.function(model.train_step, jit_compile=True, reduce_retracing=True) if jit_compile else model.train_step
        )

        @tf.function
        def train_one_step(iterator):
            strategy.run(step_fn, args=(next(iterator),))

        return train_one_step

    # Rebuilt when a graph-shaping run-time setting changed between steps (as `fit`'s train
    # function, `EBMTrainer.make_train_function`); variables need no rebuild.
    signature, train_one_step = model.trace_signature(), make_step()
    model.stop_training = False
    try:
        cbs.on_train_begin()
        batch = 0
        while callbacks_lib.current_step(model) < train_steps and not model.stop_training:
            cbs.on_train_batch_begin(batch)
            if model.trace_signature() != signature:
                signature, train_one_step = model.trace_signature(), make_step()
            train_one_step(iterator)
            cbs.on_train_batch_end(batch, {})
            batch += 1
        cbs.on_train_end()
    except distribute.PEER_FAILURES as error:
        # A lost peer aborts this worker's collectives (after peer_timeout_seconds without its
        # heartbeats, or at once when its port refuses): leave without `on_train_end`, so nothing
        # is saved from the failed step; the checkpoints on disk are the last good ones.
        raise distribute.worker_lost_error(error, _latest_checkpoint(cbs.callbacks)) from error


@gin.configurable(
    module="keras_ebm.training"
)  # its gin name of earlier releases is an alias (configurables.GIN_ALIASES)
def run_training(
    model_dir: str | os.PathLike,
    trainer: Callable[[], EBMTrainer],
    optimizer: Callable[[], keras.optimizers.Optimizer],
    train_data: Callable[..., tf.data.Dataset],
    train_steps: int,
    checkpoint_every: int = 500,
    log_every: int = 50,
    keep_checkpoints: int = 3,
    export: bool = True,
    export_onnx: bool = False,
    evaluate: bool = False,
    jit_compile: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    progress: bool = True,
    divergence_guard: divergence.DivergenceGuard | None = None,
    baseline: Callable[[], EBMTrainer] | None = None,
    seed: int = 0,
    max_minutes: float | None = None,
    encoder_optimizer: Callable[[], keras.optimizers.Optimizer] | None = None,
    mixed_precision: str | None = None,
    peer_timeout_seconds: float = distribute.DEFAULT_PEER_TIMEOUT_SECONDS,
    actions: Sequence[actions_lib.Action] | None = None,
) -> EBMTrainer:
    """Train `trainer()` for `train_steps` steps in `model_dir`, resuming from its last checkpoint.

    Args:
        model_dir: experiment directory (created if missing).
        trainer: zero-argument callable building the trainer (a `keras_ebm.trainers.EBMTrainer`).
        optimizer: zero-argument callable building its optimizer (`@keras.optimizers.Adam` in gin).
        train_data: `fn(input_context) -> tf.data.Dataset` yielding per-replica batches
            (`keras_ebm.data.make_dataset_fn(...)`), repeated.
        train_steps: total optimisation steps (a resumed run trains the remainder).
        checkpoint_every: steps between checkpoints; the last step is always saved.
        log_every: steps between TensorBoard/console logs.
        keep_checkpoints: how many checkpoints CheckpointManager keeps.
        export: write the SavedModel to `model_dir/export` at the end.
        export_onnx: also write `model_dir/export/onnx/model.onnx` (the forward scores; needs
            `pip install "keras_ebm[onnx]"`, checked before training starts).
        evaluate: run `keras_ebm.evaluation.run_eval(model_dir=model_dir)` after training.
        jit_compile: compile the train step with XLA (slower than graph mode on CPU for these steps).
        strategy: a tf.distribute strategy; default `keras_ebm.distribute.make_strategy()`.
        progress: show a progress bar.
        baseline: optional zero-argument builder of a second trainer (e.g. `@SoftmaxClassifier`)
            trained afterwards in `model_dir/baseline` with the same data, optimizer, steps and
            evaluation; with `evaluate`, both results are printed side by side and written to
            `model_dir/comparison.md` (the quickstart compares SADA-JEM with softmax this way).
        divergence_guard: a `DivergenceGuard` to recover from divergence automatically; without
            one a diverging run stops with `DivergenceError` (the last good checkpoint is kept).
        seed: global seed (`keras.utils.set_random_seed`). A resumed run rebuilds the data
            stream with the same seed and skips the batches of the steps already trained (tf.data
            reads and drops them: input-pipeline time, no train step), so it sees the batches an
            uninterrupted run sees and ends bit-identical to it on CPU (benchmarks/fault_injection.py);
            after a divergence recovery the stream is re-seeded with the step and the number of
            recoveries instead (a new data order).
        max_minutes: optional wall-clock budget for this call's training (tracing included,
            export and evaluation excluded): at the first step past it the run checkpoints and
            goes on to `after_training`, export and evaluation as if it had reached `train_steps`
            (learning-rate schedules still count towards `train_steps`). A later call resumes
            with a fresh budget. With `baseline`, the baseline gets the same budget: "trained for
            the same time". One machine only; a multi-worker strategy raises ValueError.
        encoder_optimizer: CLEL's encoder optimizer (zero-argument callable, given to `compile`).
        mixed_precision: None (float32) or "mixed_bfloat16": the trainer's networks compute in
            bfloat16 with float32 variables (Keras dtype policy, set while the trainer is built);
            images, SGLD chains, the replay buffer, logits, energies, losses, HDGE's queue, GMMC's
            max-Mahalanobis head and every optimizer update stay float32 (docs/training.md, "Mixed precision").
        peer_timeout_seconds: several machines (TF_CONFIG) only, and only when `strategy` is None:
            a worker from which no heartbeat came for this long counts as lost; the other workers'
            collectives are aborted and they stop with `keras_ebm.distribute.WorkerLostError`
            (nothing saved after the failure; restart every worker with the same command to
            resume from the last checkpoint). None: TensorFlow's default (10 s). A worker whose
            process dies is usually detected sooner (its port refuses connections).
        actions: what to do after training, in order: a list of `keras_ebm.actions` objects
            (`SummaryAction`, `ExportAction`, `EvaluateAction`, `SampleGridAction`,
            `BaselineAction`) or any callable `action(run)`. None (default): built from `export`,
            `export_onnx`, `evaluate` and `baseline` (`keras_ebm.actions.default_actions`); a list
            given here replaces them.

    Returns:
        The trained model.
    """
    os.makedirs(model_dir, exist_ok=True)
    strategy = strategy or distribute.make_strategy(peer_timeout_seconds=peer_timeout_seconds)
    from_flags = actions is None
    actions = actions_lib.default_actions(export, export_onnx, evaluate, baseline) if from_flags else list(actions)
    _check_before_training(strategy, max_minutes, actions, train_data)
    seed_run(seed)
    model = build_trainer(
        trainer,
        optimizer,
        strategy,
        jit_compile=jit_compile,
        encoder_optimizer=encoder_optimizer,
        mixed_precision=mixed_precision,
    )
    callbacks = _build_callbacks(
        model_dir,
        model,
        strategy,
        train_data,
        train_steps,
        seed=seed,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        divergence_guard=divergence_guard,
        max_minutes=max_minutes,
        log_every=log_every,
        progress=progress,
    )
    first_step = _resume(model_dir, model, strategy, callbacks)
    seconds = _train(model, train_data, strategy, train_steps, callbacks, seed, jit_compile, first_step)
    settings = dict(
        optimizer=optimizer,
        train_data=train_data,
        train_steps=train_steps,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        keep_checkpoints=keep_checkpoints,
        export=export,
        evaluate=evaluate,
        jit_compile=jit_compile,
        strategy=strategy,
        progress=progress,
        divergence_guard=divergence_guard,
        seed=seed,
        max_minutes=max_minutes,
        encoder_optimizer=encoder_optimizer,
        mixed_precision=mixed_precision,
    )
    run = _finish_training(
        model_dir,
        model,
        strategy,
        callbacks,
        first_step,
        train_steps,
        seconds,
        settings=settings,
        actions=actions,
        from_flags=from_flags,
    )
    actions_lib.run_actions(actions, run)
    return model


def seed_run(seed: int) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras for the run (`keras.utils.set_random_seed`), before
    the trainer is built; the data stream is seeded when it is built (`_distributed_data`)."""
    keras.utils.set_random_seed(seed)


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _check_before_training(strategy, max_minutes, actions, train_data):
    """What can be refused before a model is built: the time budget, the actions, the data."""
    if max_minutes is not None:
        if _is_multi_worker(strategy):
            raise ValueError(
                "run_training.max_minutes is for one machine: the workers of a "
                "MultiWorkerMirroredStrategy would stop at different steps and hang their collectives. "
                "Set run_training.train_steps instead."
            )
        if not max_minutes > 0:
            raise ValueError(f"run_training.max_minutes must be a positive number of minutes, got {max_minutes!r}.")
    actions_lib.check_actions(actions)  # e.g. a missing tf2onnx: fail now, not after training
    check_available = getattr(train_data, "check_available", None)
    if check_available is not None:
        check_available()  # data neither prepared nor downloadable: fail before building a model


def _build_callbacks(model_dir, model, strategy, train_data, train_steps, progress, **kwargs):
    """`training_callbacks` for this worker, with the checkpointing's final hook: post-training
    estimates that belong to the model (GMMC's sigma, paper section 3.1) are made right before the
    last step is saved, so that step is written once, with them (a resumed run and the export both
    carry them; a checkpoint rewritten in place could be torn by a kill)."""
    chief = distribute.is_chief(strategy)
    callbacks = callbacks_lib.training_callbacks(
        model_dir,
        train_steps=train_steps,
        progress=progress and chief,
        restart_data=True,
        chief=chief,
        checkpoint_dir=_checkpoint_dir(model_dir, strategy),
        **kwargs,
    )
    checkpointing = callbacks_lib.find(callbacks, callbacks_lib.Checkpointing)
    budget = callbacks_lib.find(callbacks, callbacks_lib.TimeBudget)
    checkpointing.final_hook = lambda: model.after_training(train_data)
    checkpointing.is_final = lambda: (
        callbacks_lib.current_step(model) >= train_steps or (budget is not None and budget.check())
    )
    return keras.callbacks.CallbackList(callbacks, model=model)  # (sets the model of each callback)


def _resume(model_dir, model, strategy, callbacks):
    """Restores the newest checkpoint (a non-chief worker: the chief's); returns its step."""
    checkpointing = callbacks_lib.find(callbacks.callbacks, callbacks_lib.Checkpointing)
    multi_worker = _is_multi_worker(strategy)
    if multi_worker and not distribute.is_chief(strategy):
        _copy_chief_checkpoint(model_dir, checkpointing.directory)
    try:
        checkpointing.setup()  # restore first: the data stream starts at the restored step
        first_step = callbacks_lib.current_step(model)
        if multi_worker:
            _check_workers_agree(strategy, first_step)
    except distribute.PEER_FAILURES as error:
        raise distribute.worker_lost_error(error, _latest_checkpoint([checkpointing])) from error
    return first_step


def _train(model, train_data, strategy, train_steps, callbacks, seed, jit_compile, first_step):
    """Trains from the restored step to `train_steps` (or the time budget), starting again on a new
    data stream after each divergence recovery; returns the seconds it took."""
    if first_step >= train_steps:
        _log(f"already trained {first_step} >= train_steps={train_steps} steps; nothing to do")
    recovery = callbacks_lib.find(callbacks.callbacks, callbacks_lib.DivergenceRecovery)
    budget = callbacks_lib.find(callbacks.callbacks, callbacks_lib.TimeBudget)
    start_time = time.time()
    while callbacks_lib.current_step(model) < train_steps and not (budget is not None and budget.stopped):
        start = callbacks_lib.current_step(model)
        dataset = _distributed_data(train_data, strategy, seed, start, recovery.recoveries)
        check_data_classes(model, getattr(train_data, "source_info", None))
        _fit(model, dataset, strategy, start, train_steps, callbacks, jit_compile)
    return time.time() - start_time


def _distributed_data(train_data, strategy, seed, start, recoveries):
    """The data stream from step `start` on: the stream of an uninterrupted run, from the batch of
    step `start` on (exact resume); after a divergence recovery a new data order."""
    if recoveries:
        tf.random.set_seed(seed + start + 7919 * recoveries)
        return strategy.distribute_datasets_from_function(train_data)
    tf.random.set_seed(seed)
    return strategy.distribute_datasets_from_function(_skip_batches(train_data, start))


def _fit(model, dataset, strategy, start, train_steps, callbacks, jit_compile):
    """Steps `start`..`train_steps`: `model.fit` on one machine, `train_loop` under
    MultiWorkerMirroredStrategy (where Keras 3's fit fails, keras-team/keras#20585).
    `callbacks`: a CallbackList."""
    if _is_multi_worker(strategy):
        train_loop(model, dataset, strategy, train_steps, callbacks, jit_compile=jit_compile)
    else:
        model.fit(
            dataset,
            epochs=1,
            steps_per_epoch=train_steps - start,
            verbose=0,
            shuffle=False,
            callbacks=callbacks.callbacks,
        )


def _finish_training(model_dir, model, strategy, callbacks, first_step, train_steps, seconds, **run_fields):
    """Logs the end of training, makes sure the last step was saved with the post-training
    estimates, and returns the `keras_ebm.actions.Run` the actions are given."""
    budget = callbacks_lib.find(callbacks.callbacks, callbacks_lib.TimeBudget)
    last_step = callbacks_lib.current_step(model)
    out_of_time = budget is not None and budget.stopped and last_step < train_steps
    recovery = callbacks_lib.find(callbacks.callbacks, callbacks_lib.DivergenceRecovery)
    run = actions_lib.Run(
        model_dir,
        model,
        distribute.is_chief(strategy),
        first_step,
        last_step,
        train_steps,
        "max_minutes" if out_of_time else "train_steps",
        seconds,
        recovery.recoveries,
        **run_fields,
    )
    if run.trained_now and run.chief:
        why = "time budget (run_training.max_minutes) used up at " if out_of_time else "trained to "
        log = callbacks_lib.find(callbacks.callbacks, callbacks_lib.TrainingLog)
        _log(
            f"{why}step {last_step}/{train_steps}: "
            + json.dumps({k: round(v, 5) for k, v in (log.logs if log else {}).items()})
        )
    if run.trained_now:
        _save_final_step(callbacks.callbacks, last_step)
    return run


def _save_final_step(callbacks, last_step):
    """If the last step was saved before it was known to be the last (not expected), make the
    post-training estimates now and save that step again (and its sample grid)."""
    checkpointing = callbacks_lib.find(callbacks, callbacks_lib.Checkpointing)
    if checkpointing.final_hook is None:
        return
    checkpointing.final_hook()
    checkpointing.final_hook = None
    checkpointing.manager.save(checkpoint_number=last_step)
    grids = callbacks_lib.find(callbacks, callbacks_lib.SampleGrids)
    if grids is not None:
        grids.on_train_end()  # after `after_training`: what the export carries


def check_data_classes(model: EBMTrainer, source_info: SourceInfo | None) -> None:
    """Refuses training data whose class count differs from the trainer's `num_classes`.

    More classes in the data than in the trainer would put labels out of range; fewer would leave
    logits that are never a target and, for the JEM family, an energy -logsumexp(logits) over
    classes that do not exist (in-step label checks cannot see that). Trainers that ignore labels
    (`uses_labels = False`: CLEL) and sources without a `SourceInfo` are not checked.

    Args:
        model: the trainer (`num_classes`, `uses_labels`).
        source_info: the training source's `keras_ebm.data.SourceInfo`, or None.
    """
    num_classes = getattr(model, "num_classes", None)
    if source_info is None or num_classes is None or not getattr(model, "uses_labels", True):
        return
    data_classes = int(source_info.num_classes)
    if data_classes == int(num_classes):
        return
    names = list(source_info.class_names)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    if data_classes < num_classes:
        why = (
            f"{num_classes - data_classes} of its logits would never be a target, and the energy "
            "-logsumexp(logits) would sum over classes that are not in the data"
        )
    else:
        why = f"labels {num_classes}..{data_classes - 1} would be out of range"
    raise ValueError(
        f"The training data ({source_info.name!r}, split {source_info.split!r}) has {data_classes} "
        f"classes ({shown}), but {type(model).__name__} has num_classes={num_classes}: {why}. Set "
        f"the trainer's num_classes (NUM_CLASSES in the gin configs) to {data_classes}. A local npz "
        "whose labels do not reach every class can name them all: np.savez(path, x=..., y=..., "
        "class_names=[...])."
    )


def _skip_batches(train_data, steps):
    """`train_data` (fn(input_context) -> dataset) without its first `steps` batches."""
    if not steps:
        return train_data
    return lambda input_context=None: train_data(input_context).skip(steps)


def _latest_checkpoint(callbacks):
    checkpointing = callbacks_lib.find(callbacks, callbacks_lib.Checkpointing)
    try:
        return tf.train.latest_checkpoint(checkpointing.directory) if checkpointing else None
    except Exception:  # noqa: BLE001 - only for the message
        return None


def _copy_chief_checkpoint(model_dir, scratch_dir):
    """A non-chief worker restores the chief's newest checkpoint, not its own scratch copy (a worker
    killed between the chief's save and its own would resume a step behind): with a shared
    `model_dir`, that checkpoint replaces the scratch directory's, so both hold the same steps and
    decide the same saves. Without a shared `model_dir` the scratch checkpoint stays (and
    `_check_workers_agree` refuses a mismatch)."""
    chief_latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if chief_latest is None:
        return
    _log(f"{os.path.basename(scratch_dir)}: resuming from the chief's checkpoint {chief_latest}")
    if tf.io.gfile.exists(scratch_dir):
        tf.io.gfile.rmtree(scratch_dir)
    tf.io.gfile.makedirs(scratch_dir)
    for f in tf.io.gfile.glob(chief_latest + ".*"):
        tf.io.gfile.copy(f, os.path.join(scratch_dir, os.path.basename(f)))
    path = os.path.join(scratch_dir, os.path.basename(chief_latest))
    stamp = tf.io.gfile.stat(path + ".index").mtime_nsec / 1e9  # (gs:// paths too)
    tf.compat.v1.train.update_checkpoint_state(
        scratch_dir,
        path,
        all_model_checkpoint_paths=[path],
        all_model_checkpoint_timestamps=[stamp],
        last_preserved_timestamp=stamp - 1.0,
    )


def _check_workers_agree(strategy, step):
    """Every worker must have restored the same step, or they would stop at different steps."""
    steps = distribute.gather_from_workers(strategy, step)
    if len(set(steps)) > 1:
        raise RuntimeError(
            f"the workers restored different steps ({steps}, in worker order): their checkpoints "
            "disagree. Give every worker the same shared model_dir (the non-chief workers restore the "
            "chief's newest checkpoint from model_dir/checkpoints), or copy the chief's newest "
            "checkpoint into each worker's model_dir/.workers/worker_<i>/ and restart them all."
        )


def _checkpoint_dir(model_dir, strategy):
    if distribute.is_chief(strategy):
        return os.path.join(model_dir, "checkpoints")
    # Non-chief workers must also save (the save may run collectives) but into a scratch directory.
    task_id = strategy.cluster_resolver.task_id
    return os.path.join(model_dir, ".workers", f"worker_{task_id}")
