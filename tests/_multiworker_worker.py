"""One worker of tests/test_multiworker.py: trains under MultiWorkerMirroredStrategy, dumps its state.

    python tests/_multiworker_worker.py MODEL_DIR OUT.npz [--steps N] [--checkpoint_every K]
        [--step_delay_ms MS] [--peer_timeout_seconds S]

TF_CONFIG names the cluster and this worker. OUT.npz holds every variable of the trainer and of its
optimizer (keyed by position), the step and the number of replicas in sync.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def sharded_data_fn(input_context=None, step_delay_ms=0):
    """Each worker reads its own shard (elements i::2), so the workers' batches differ and their
    union is the single-process batch of the same step: agreement needs a working all-reduce.
    `step_delay_ms` slows every batch down (a sleep inside tf.data, no Python function: a test
    can then kill a worker mid-run); it changes no value."""
    import tensorflow as tf

    from helpers import digits_arrays

    x, y = digits_arrays(256)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    batch = input_context.get_per_replica_batch_size(32) if input_context else 32
    ds = ds.repeat().batch(batch, drop_remainder=True)
    if step_delay_ms:
        from tensorflow.python.data.experimental.ops import testing

        ds = ds.apply(testing.sleep(int(1000 * step_delay_ms)))
    return ds


def train(model_dir, strategy=None, steps=4, checkpoint_every=2, step_delay_ms=0):
    import functools

    import keras

    from keras_ebm import training
    from test_experiment import trainer_fn

    return training.run_training(
        model_dir=model_dir,
        trainer=trainer_fn,
        optimizer=lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        train_data=functools.partial(sharded_data_fn, step_delay_ms=step_delay_ms),
        train_steps=steps,
        checkpoint_every=checkpoint_every,
        log_every=2,
        export=False,
        progress=False,
        strategy=strategy,
    )


def state(model):
    """Every variable of the trainer (weights, BN statistics, RNG states) and of its optimizer
    (iterations, momentum slots), keyed by position."""
    variables = list(model.variables) + list(model.optimizer.variables)
    return {f"v{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("out_path")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--checkpoint_every", type=int, default=2)
    parser.add_argument("--step_delay_ms", type=float, default=0)
    parser.add_argument("--peer_timeout_seconds", type=float, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from keras_ebm import callbacks, distribute

    # The first TF work in the process, as MultiWorkerMirroredStrategy requires.
    strategy = distribute.make_strategy(
        **({} if args.peer_timeout_seconds is None else {"peer_timeout_seconds": args.peer_timeout_seconds})
    )
    with distribute.exit_when_worker_lost():  # as train.py
        model = train(
            args.model_dir,
            strategy,
            steps=args.steps,
            checkpoint_every=args.checkpoint_every,
            step_delay_ms=args.step_delay_ms,
        )
    np.savez(args.out_path, **state(model), step=callbacks.current_step(model), replicas=strategy.num_replicas_in_sync)


if __name__ == "__main__":
    main()
