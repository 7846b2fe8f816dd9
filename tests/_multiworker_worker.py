"""One worker of tests/test_multiworker.py: trains under MultiWorkerMirroredStrategy, dumps weights."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def sharded_data_fn(input_context=None):
    """Each worker reads its own shard (elements i::2), so the workers' batches differ and their
    union is the single-process batch of the same step: agreement needs a working all-reduce."""
    import tensorflow as tf

    from helpers import digits_arrays

    x, y = digits_arrays(256)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    batch = input_context.get_per_replica_batch_size(32) if input_context else 32
    return ds.repeat().batch(batch, drop_remainder=True)


def train(model_dir, strategy=None):
    import keras

    from keras_ebm import training
    from test_experiment import trainer_fn

    return training.run_training(
        model_dir=model_dir, trainer=trainer_fn, optimizer=lambda: keras.optimizers.SGD(0.1),
        train_data=sharded_data_fn, train_steps=4, checkpoint_every=2, log_every=2, export=False,
        progress=False, strategy=strategy,
    )


def main(model_dir, out_path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from keras_ebm import distribute

    strategy = distribute.make_strategy()  # first TF work in the process, as MWMS requires
    model = train(model_dir, strategy)
    np.savez(out_path, *[w.numpy() for w in model.network.weights],
             replicas=strategy.num_replicas_in_sync)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
