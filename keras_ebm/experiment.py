"""Training and evaluation runners: what `train.py` and `eval.py` call (gin-configurable).

`run_training` drives a trainer's own `train_step` with a custom loop over
`strategy.distribute_datasets_from_function`. One loop serves every strategy: the default one (one
CPU/GPU), MirroredStrategy (several GPUs) and MultiWorkerMirroredStrategy (several machines), where
Keras 3's `fit` fails (keras-team/keras#20585: "Attempt to convert a value (PerReplica...)"). `model.fit` remains the
API for users on one machine; both call the same `train_step`.

Model directory layout:
    config.gin               the gin files and bindings as given (train.py writes it; eval.py reads it)
    operative_config.gin     the bindings actually used (written after the first step)
    checkpoints/             tf.train.CheckpointManager: weights, optimizer state(s), step, and every
                             tracked variable of the trainer (replay buffer, queue, EMA copies)
    tensorboard/             scalars every `log_every` steps
    export/                  SavedModel (keras_ebm.export) after training
    eval/                    results.json, results.md and plots (eval.py)
"""

import json
import os
import time

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_ebm import distribute
from keras_ebm import divergence


# Re-exported: the divergence guard lives in keras_ebm.divergence.
DivergenceError = divergence.DivergenceError
DivergenceGuard = divergence.DivergenceGuard
RecoveryState = divergence.RecoveryState
ScaledSchedule = divergence.ScaledSchedule


def _log(msg):
    print(f"[keras_ebm] {msg}", flush=True)


def _dummy_batch(image_shape):
    return tf.zeros((1,) + tuple(image_shape), tf.float32)


def build_trainer(trainer, optimizer, strategy, jit_compile=False):
    """Build `trainer()` and its optimizer(s) under `strategy.scope()`, ready for `train_step`.

    `trainer` is a zero-argument callable (a gin reference such as `@SoftmaxClassifier`) and
    `optimizer` a zero-argument callable returning a Keras optimizer. The model is called once and
    the optimizer built on its variables, which MultiWorkerMirroredStrategy needs before the loop.
    """
    with strategy.scope():
        model = trainer()
        model.compile(optimizer=optimizer(), jit_compile=jit_compile)
        model(_dummy_batch(model.image_shape))
        if hasattr(model, "build_optimizers"):
            model.build_optimizers()
        else:
            model.optimizer.build(model.trainable_variables)
    return model


def make_checkpoint(model, step, recovery=None):
    """A tf.train.Checkpoint of the model (all its tracked variables), its optimizer(s) and step
    (and the divergence guard's `RecoveryState`, which `run_training` always passes)."""
    kwargs = {"model": model, "step": step}
    if recovery is not None:
        kwargs["recovery"] = recovery
    optimizers = getattr(model, "optimizers", None) or {"optimizer": model.optimizer}
    kwargs.update(optimizers)
    # keras.random.SeedGenerator is a plain object that tf.train.Checkpoint does not walk: save the
    # RNG states (trainer, sampler, buffer) explicitly, in construction order, so a resumed run
    # continues every random sequence instead of replaying it.
    kwargs["rng_states"] = [v for v in model.variables if "seed_generator_state" in v.path]
    return tf.train.Checkpoint(**kwargs)


def _checkpoint_dir(model_dir, strategy):
    if distribute.is_chief(strategy):
        return os.path.join(model_dir, "checkpoints")
    # Non-chief workers must also save (the save may run collectives) but into a scratch directory.
    task_id = strategy.cluster_resolver.task_id
    return os.path.join(model_dir, ".workers", f"worker_{task_id}")


def _all_finite(logs):
    return all(np.all(np.isfinite(v)) for v in logs.values())


@tf.function
def _variables_finite(variables):
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])


def _float_variables(model):
    """Every floating-point variable of the trainer: weights, BN statistics, buffer, queue, EMA."""
    return [v for v in model.variables if keras.backend.is_float_dtype(v.dtype)]


@gin.configurable(module="keras_ebm.experiment")
def run_training(
    model_dir,
    trainer,
    optimizer,
    train_data,
    train_steps,
    checkpoint_every=500,
    log_every=50,
    keep_checkpoints=3,
    export=True,
    evaluate=False,
    jit_compile=False,
    strategy=None,
    progress=True,
    divergence_guard=None,
    baseline=None,
    seed=0,
    max_minutes=None,
):
    """Train `trainer()` for `train_steps` steps in `model_dir`, resuming from its last checkpoint.

    Args:
        model_dir: experiment directory (created if missing).
        trainer: zero-argument callable building the trainer (a `keras_ebm.trainers.EBMTrainer`).
        optimizer: zero-argument callable building its optimizer (`@keras.optimizers.Adam` in gin).
        train_data: `fn(input_context) -> tf.data.Dataset` yielding per-replica batches
            (`keras_ebm.data.make_dataset_fn(...)`), repeated.
        train_steps: total optimisation steps (a resumed run trains the remainder).
        checkpoint_every: steps between checkpoints; the last step is always saved.
        log_every: steps between TensorBoard/console logs and divergence checks.
        keep_checkpoints: how many checkpoints CheckpointManager keeps.
        export: write the SavedModel to `model_dir/export` at the end.
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
        seed: global seed (`keras.utils.set_random_seed`); the data order on resume is re-seeded
            with the restored step so a resumed run does not replay the first batches.
        max_minutes: optional wall-clock budget for this call's training (tracing included,
            export and evaluation excluded): at the first step past it the run checkpoints and
            goes on to `after_training`, export and evaluation as if it had reached `train_steps`
            (learning-rate schedules still count towards `train_steps`). A later call resumes
            with a fresh budget. With `baseline`, the baseline gets the same budget: "trained for
            the same time". One machine only (workers of a MultiWorkerMirroredStrategy could stop
            at different steps); a multi-worker strategy raises ValueError.

    Returns:
        The trained model.
    """
    os.makedirs(model_dir, exist_ok=True)
    strategy = strategy or distribute.make_strategy()
    chief = distribute.is_chief(strategy)
    if max_minutes is not None:
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise ValueError(
                "run_training.max_minutes is for one machine: the workers of a "
                "MultiWorkerMirroredStrategy would stop at different steps and hang their collectives. "
                "Set run_training.train_steps instead."
            )
        if not max_minutes > 0:
            raise ValueError(f"run_training.max_minutes must be a positive number of minutes, got {max_minutes!r}.")
    deadline = None if max_minutes is None else time.time() + 60.0 * max_minutes
    keras.utils.set_random_seed(seed)

    model = build_trainer(trainer, optimizer, strategy, jit_compile=jit_compile)
    with strategy.scope():
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        recovery = RecoveryState()
    recovery.attach(model)
    checkpoint = make_checkpoint(model, step, recovery)
    checkpoint_dir = _checkpoint_dir(model_dir, strategy)
    if divergence_guard is not None:
        # The newest *good* checkpoint (confirm_steps healthy steps after it) must outlive rotation.
        keep_checkpoints = max(keep_checkpoints, -(-divergence_guard.confirm_steps // checkpoint_every) + 2)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        notes = recovery.reapply(model)
        _log(f"resumed from {manager.latest_checkpoint} at step {int(step.numpy())}"
             + (f" (divergence recoveries: {', '.join(notes)})" if notes else ""))
    elif divergence_guard is not None and train_steps > 0:
        manager.save(checkpoint_number=0)  # a run that diverges before its first checkpoint restarts here
    start = int(step.numpy())
    if start >= train_steps:
        _log(f"already trained {start} >= train_steps={train_steps} steps; nothing to do")
    recoveries, rng = 0, np.random.default_rng(seed)
    trained_now = start < train_steps
    out_of_time = False
    train_start_time, first_step = time.time(), start
    while int(step.numpy()) < train_steps and not out_of_time:
        start = int(step.numpy())
        tf.random.set_seed(seed + start + 7919 * recoveries)
        dataset = strategy.distribute_datasets_from_function(train_data)
        try:
            out_of_time = _train_loop(
                model, step, manager, dataset, strategy, model_dir, train_steps,
                checkpoint_every, log_every, progress and chief, chief, divergence_guard,
                jit_compile=jit_compile, deadline=deadline, recovery=recovery,
            )
        except DivergenceError as error:
            if divergence_guard is None:
                raise
            good_step = int(recovery.good_step.numpy())
            if recoveries >= divergence_guard.max_recoveries:
                raise DivergenceError(
                    f"{error}\nGave up after {recoveries} automatic recoveries "
                    f"(DivergenceGuard.max_recoveries={divergence_guard.max_recoveries})."
                ) from error
            manager, restored = _roll_back(manager, checkpoint, good_step, keep_checkpoints)
            if restored is None:
                raise DivergenceError(f"{error}\nNo checkpoint at or before the last good step {good_step} "
                                      "is left to recover from.") from error
            recoveries += 1
            remedies = recovery.snapshot()  # what earlier recoveries changed belongs to the run
            checkpoint.restore(restored).assert_existing_objects_matched()
            recovery.load(remedies)
            recovery.good_step.assign(int(step.numpy()))
            for m in model.metrics:
                m.reset_state()
            change = divergence_guard.apply(model, recoveries, rng, state=recovery)
            event = {"recovery": recoveries, "fired": getattr(error, "signals", None),
                     "at_step": getattr(error, "step", None), "values": getattr(error, "values", None),
                     "restored": restored, "step": int(step.numpy()), "change": change}
            _log(f"divergence recovery {recoveries}/{divergence_guard.max_recoveries}: "
                 f"{event['fired']} at step {event['at_step']}; restored the last good checkpoint "
                 f"{restored} (step {int(step.numpy())}); {change}")
            if chief:
                with open(os.path.join(model_dir, "divergence_events.jsonl"), "a") as f:
                    f.write(json.dumps(event) + "\n")
                with tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard")).as_default(
                    step=int(step.numpy())
                ):
                    tf.summary.scalar("divergence/recoveries", recoveries)

    if trained_now and chief:
        with open(os.path.join(model_dir, "training_summary.json"), "w") as f:
            json.dump({
                "trainer": type(model).__name__,
                "first_step": first_step,
                "last_step": int(step.numpy()),
                "train_steps": int(train_steps),
                "stopped_by": "max_minutes" if out_of_time else "train_steps",
                "seconds": round(time.time() - train_start_time, 1),
                "recoveries": recoveries,
            }, f, indent=2)
    if trained_now and hasattr(model, "after_training"):
        # Post-training estimates that belong to the model (GMMC's sigma, paper section 3.1),
        # saved with a final checkpoint so the export and a resumed run both carry them.
        model.after_training(train_data)
        manager.save(checkpoint_number=int(step.numpy()))
    if chief and getattr(model, "buffer", None) is not None:
        save_buffer_grid(model, os.path.join(model_dir, "samples", "buffer.png"))
    if chief and export:
        from keras_ebm import export as export_lib  # depends on the trained model only

        export_dir = os.path.join(model_dir, "export")
        export_lib.export_model(
            model,
            export_dir,
            image_shape=model.image_shape,
            pixel_range=model.pixel_range,
            ood_score=model.default_ood_score,
        )
        _log(f"exported SavedModel to {export_dir}")
    if chief and evaluate:
        from keras_ebm.evaluation.runner import run_eval

        results = run_eval(model_dir=model_dir)
    if baseline is not None:
        _log(f"training the baseline {getattr(baseline, '__name__', baseline)} with the same budget")
        run_training(
            os.path.join(model_dir, "baseline"), baseline, optimizer, train_data, train_steps,
            checkpoint_every=checkpoint_every, log_every=log_every, keep_checkpoints=keep_checkpoints,
            export=export, evaluate=evaluate, jit_compile=jit_compile, strategy=strategy,
            progress=progress, divergence_guard=divergence_guard, seed=seed, max_minutes=max_minutes,
            baseline=None,  # explicit: gin would bind the baseline's baseline again
        )
        if chief and evaluate:
            with open(os.path.join(model_dir, "baseline", "eval", "results.json")) as f:
                base_results = json.load(f)
            table = comparison_table({type(model).__name__: results, "baseline": base_results})
            with open(os.path.join(model_dir, "comparison.md"), "w") as f:
                f.write(table)
            print("\n" + table, flush=True)
    return model


def comparison_table(results_by_model, extra_columns=None):
    """Markdown table of accuracy, ECE and OOD AUROCs for several eval results (same OOD sets).

    `extra_columns`: optional dict column name -> {model name: cell text}, shown after the model
    name (e.g. steps reached in a same-time study).
    """
    names = list(results_by_model)
    first = results_by_model[names[0]]
    extra = extra_columns or {}
    columns = list(extra) + ["accuracy", "ECE"] + [
        f"AUROC {ood} [{score}]" for ood, by_score in first["ood"].items() for score in by_score
    ]
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        r = results_by_model[name]
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        cells = [extra[c].get(name, "-") for c in extra] + [pct(r["accuracy"]), pct(r["ece"])] + [
            f"{r['ood'].get(ood, {}).get(score, float('nan')):.3f}"
            for ood, by_score in first["ood"].items() for score in by_score
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _checkpoint_step(path):
    return int(path.rsplit("-", 1)[1])


def _roll_back(manager, checkpoint, good_step, max_to_keep):
    """Delete the checkpoints newer than `good_step` (they belong to the diverging branch) and
    return `(manager, path)` of the newest one left (None when there is none)."""
    paths = list(manager.checkpoints)
    keep = [p for p in paths if _checkpoint_step(p) <= good_step]
    if not keep:
        return manager, None
    for path in paths:
        if path not in keep:
            for f in tf.io.gfile.glob(path + ".*"):
                tf.io.gfile.remove(f)
    directory = manager.directory
    # Timestamps after `last_preserved_timestamp`, or a new manager would not list (nor rotate) them.
    stamps = [os.path.getmtime(p + ".index") for p in keep]
    # (update_checkpoint_state rewrites the path list it is given in place: pass a copy.)
    tf.compat.v1.train.update_checkpoint_state(
        directory, keep[-1], all_model_checkpoint_paths=list(keep), all_model_checkpoint_timestamps=stamps,
        last_preserved_timestamp=min(stamps) - 1.0)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)
    return manager, manager.latest_checkpoint


def _train_loop(model, step, manager, dataset, strategy, model_dir, train_steps,
                checkpoint_every, log_every, progress, chief, guard=None, jit_compile=False,
                deadline=None, recovery=None):
    """Train from `step` towards `train_steps`; True when it stopped early at `deadline`.

    The trackers are reset after every step, so each step's logs are that step's values: the
    divergence guard watches every step, and TensorBoard / the console show the mean over the
    `log_every` steps since the last log.
    """
    iterator = iter(dataset)
    # XLA compiles the per-replica step (as Keras' own fit does); the iterator stays outside it.
    step_fn = tf.function(model.train_step, jit_compile=True, reduce_retracing=True) if jit_compile \
        else model.train_step

    @tf.function
    def train_one_step(iterator):
        strategy.run(step_fn, args=(next(iterator),))
        step.assign_add(1)
        # Read the trackers in cross-replica context: SyncOnRead totals/counts are summed over replicas.
        return {m.name: m.result() for m in model.metrics}

    writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard")) if chief else None
    bar = keras.utils.Progbar(train_steps, stateful_metrics=[m.name for m in model.metrics]) if progress else None
    monitor = guard.monitor(model) if guard is not None else None
    confirm = guard.confirm_steps if guard is not None else 0
    start = int(step.numpy())
    t0, last_log_step = time.time(), start
    window, logs = [], {}
    operative_written = False
    for current in range(start + 1, train_steps + 1):
        step_logs = {k: v.numpy() for k, v in train_one_step(iterator).items()}
        for m in model.metrics:
            m.reset_state()
        if not operative_written and chief:
            with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
                f.write(gin.operative_config_str())
            operative_written = True
        out_of_time = deadline is not None and time.time() > deadline and current < train_steps
        at_log = current % log_every == 0 or current == train_steps or out_of_time
        at_ckpt = current % checkpoint_every == 0 or current == train_steps or out_of_time
        if monitor is not None:
            signals = monitor.update(current, step_logs)
        else:
            signals = [] if _all_finite(step_logs) else ["non_finite"]
        if not signals and at_ckpt and not bool(_variables_finite(_float_variables(model))):
            signals = ["non_finite_variables"]
        if signals:
            values = monitor.fired.get("values") if monitor is not None and monitor.fired else None
            raise _divergence_error(current, signals, values or step_logs, manager)
        window.append(step_logs)
        logs = {k: np.mean([w[k] for w in window]) for k in step_logs}
        if at_log:
            rate = (current - last_log_step) / max(time.time() - t0, 1e-9)
            t0, last_log_step = time.time(), current
            if writer is not None:
                with writer.as_default(step=current):
                    for k, v in logs.items():
                        tf.summary.scalar(k, v)
                    tf.summary.scalar("steps_per_second", rate)
            if bar is None and chief:
                _log(f"step {current}/{train_steps} " + " ".join(f"{k}={float(v):.4g}" for k, v in logs.items()))
            window = []
        if bar is not None:
            bar.update(current, values=[(k, float(v)) for k, v in logs.items()])
        if at_ckpt:
            manager.save(checkpoint_number=current)
        if recovery is not None:
            # A checkpoint is good once `confirm` healthy steps followed it (0 without a guard).
            good = [s for s in map(_checkpoint_step, manager.checkpoints) if s <= current - confirm]
            if good and max(good) > int(recovery.good_step.numpy()):
                recovery.good_step.assign(max(good))
        if out_of_time:
            break
    if writer is not None:
        writer.flush()
    stopped_early = int(step.numpy()) < train_steps
    if chief:
        why = "time budget (run_training.max_minutes) used up at " if stopped_early else "trained to "
        _log(f"{why}step {int(step.numpy())}/{train_steps}: "
             + json.dumps({k: round(float(v), 5) for k, v in logs.items()}))
    return stopped_early


def _divergence_error(current, signals, step_logs, manager):
    values = {k: float(np.mean(v)) for k, v in step_logs.items()}  # the monitor's values or the logs
    error = DivergenceError(
        f"training diverged at step {current}: {', '.join(signals)} in "
        f"{ {k: round(v, 5) for k, v in values.items()} }. Nothing is saved from this state: the last good "
        f"checkpoint is kept (the newest is {manager.latest_checkpoint}); resume from a good one with a lower learning "
        "rate, more SGLD steps, an energy L2 penalty or another seed, or set "
        "run_training.divergence_guard = @DivergenceGuard() to do it automatically."
    )
    error.step, error.signals, error.values = current, list(signals), values
    return error


def restore_trainer(model_dir, strategy=None):
    """Rebuild the trainer of `model_dir` from the parsed gin config and restore its last checkpoint.

    Parse `<model_dir>/config.gin` first (`keras_ebm.cli.parse_gin`). Used for sample generation,
    which needs the sampler and the replay buffer (training state the export leaves out).
    """
    from keras_ebm import cli

    objs = cli.resolve_run_training()
    strategy = strategy or tf.distribute.get_strategy()
    model = build_trainer(objs["trainer"], objs["optimizer"], strategy)
    with strategy.scope():
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"No checkpoint in {model_dir}/checkpoints: train with train.py first.")
    make_checkpoint(model, step).restore(latest).expect_partial()
    _log(f"restored {latest} (step {int(step.numpy())})")
    return model


def save_buffer_grid(model, path, num_images=64):
    """A look at the chains before reading numbers: replay-buffer rows as a PNG grid.

    The rows are spread evenly over the buffer, so a class-partitioned buffer (GMMC, JEM with
    p(x, y)), whose classes sit in contiguous blocks, shows every class in order. Reads the buffer
    variable directly (no sampling, no RNG), so it changes no training state.
    """
    from keras_ebm.data.preprocess import from_pixel_range
    from keras_ebm.evaluation import plots

    size = int(model.buffer.size)
    index = np.unique(np.linspace(0, size - 1, min(num_images, size)).round().astype(np.int64))
    rows = tf.gather(model.buffer.buffer, index).numpy()
    return plots.sample_grid(from_pixel_range(rows, model.pixel_range).numpy(), path,
                             title=f"replay buffer ({len(rows)} of {model.buffer.size})")


def generate_samples(model, output_dir, num_samples=64, n_steps=None, from_buffer=False,
                     conditional=False, name=None, batch_size=None, labelled_data=None):
    """Draw samples with `model.generate` and write a PNG grid and an npz (uint8 NHWC, labels).

    For FID, draw many samples in batches (`batch_size`) and feed the npz's `images` (uint8, the
    whole set) to an FID tool; the PNG shows the first 256.

    Args:
        model: a trainer with `generate` (JEM family, HDGE+JEM, GMMC, CLEL).
        output_dir: directory for `<name>.png` and `<name>.npz`.
        num_samples: number of images (rounded up to a multiple of the classes when conditional).
        n_steps: SGLD steps (default the sampler's; 0 with `from_buffer` shows the buffer as is).
        from_buffer: start from replay-buffer states instead of fresh initialiser draws.
        conditional: class-conditional chains, one row per class (on E(x, y) for classifiers; on
            p(x | z_bar_y) for CLEL, whose class latents come from `labelled_data`).
        name: file stem (default derived from the options).
        batch_size: chains run at once (default all `num_samples`).
        labelled_data: `(x, y)` images in the model's pixel range and int labels, for models that
            condition on class latents computed from data (CLEL's `set_class_latents`, Appendix D).

    Returns:
        The path of the PNG grid.
    """
    from keras_ebm.data.preprocess import from_pixel_range
    from keras_ebm.evaluation import plots

    os.makedirs(output_dir, exist_ok=True)
    y = None
    if conditional:
        num_classes = model.num_classes
        if hasattr(model, "set_class_latents"):
            if labelled_data is None:
                raise ValueError(f"{type(model).__name__} conditions on class latents computed from labelled "
                                 "images: pass labelled_data=(x, y). Received: labelled_data=None")
            num_classes = int(model.set_class_latents(*labelled_data).shape[0])
        per_class = -(-num_samples // num_classes)
        y = tf.repeat(tf.range(num_classes, dtype=tf.int32), per_class)
        num_samples = int(y.shape[0])
    batch_size = int(batch_size or num_samples)
    chunks = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        y_chunk = None if y is None else y[start:start + n]
        chunks.append(from_pixel_range(model.generate(n, y=y_chunk, n_steps=n_steps, from_buffer=from_buffer),
                                       model.pixel_range).numpy())
        if num_samples > batch_size:
            _log(f"generated {start + n}/{num_samples} samples")
    images = np.concatenate(chunks, axis=0)
    name = name or ("conditional" if conditional else "buffer" if from_buffer else "fresh") + (
        f"_{n_steps}steps" if n_steps is not None else "")
    np.savez(os.path.join(output_dir, f"{name}.npz"), images=images,
             labels=np.asarray(y) if y is not None else np.zeros(0, np.int32))
    shown = images[:256] if not conditional else images
    path = plots.sample_grid(shown, os.path.join(output_dir, f"{name}.png"),
                             nrow=per_class if conditional else None, title=name)
    _log(f"wrote {num_samples} samples to {path} and {name}.npz")
    return path
