"""One worker of tests/test_multiworker.py: trains under MultiWorkerMirroredStrategy, dumps weights."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def main(model_dir, out_path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from keras_ebm import distribute, experiment

    strategy = distribute.make_strategy()  # first TF work in the process, as MWMS requires
    import keras

    from test_experiment import data_fn, trainer_fn

    model = experiment.run_training(
        model_dir=model_dir, trainer=trainer_fn, optimizer=lambda: keras.optimizers.SGD(0.1),
        train_data=data_fn, train_steps=4, checkpoint_every=2, log_every=2, export=False,
        progress=False, strategy=strategy,
    )
    np.savez(out_path, *[w.numpy() for w in model.network.weights],
             replicas=strategy.num_replicas_in_sync)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
