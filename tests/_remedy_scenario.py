"""One divergence-guard scenario, run along four paths, recording what the compiled step computed.

A tiny JEM (energy L2 0 in "means" mode, K = 2 SGLD steps, SGD with a constant rate) trains on
digits whose batches turn NaN four times. The guard (remedies in the default order: energy L2 0.1,
twice the SGLD steps, learning rate x 0) recovers each time from ckpt-0 (the only checkpoint), so
the fourth recovery restores an optimizer saved before the rate was lowered. Every step the guard
sees is recorded (a spy on `DivergenceMonitor.update`, i.e. the logs the guard reads) with the
number of recoveries so far, the SGLD energy calls counted by a variable inside the graph, and a
kernel of the network. `check(records)` compares them with what the remedies must do.

Paths: `fit_one` (one `fit` call, data stream continuing through the recoveries), `fit_calls`
(one `fit` call per segment: every remedy is first computed by a later call), `run_training`,
and `multiworker` (`run_training` under a one-worker MultiWorkerMirroredStrategy, its custom loop;
run in a subprocess: `python _remedy_scenario.py <model_dir> <out.json>`).
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

GOOD_STEPS = 3  # healthy steps before each NaN batch
RECOVERIES = 4
TRAIN_STEPS = 6
K = 2
ENERGY_L2 = 0.1


def segment_data(segments, clean_tail=True):
    """`segments` times (GOOD_STEPS good batches, one NaN batch), then good batches forever."""
    import tensorflow as tf

    from helpers import digits_arrays

    x, y = digits_arrays(256)
    good = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16, drop_remainder=True)
    bad = good.take(1).map(lambda a, b: (a * np.nan, b))
    ds = None
    for _ in range(segments):
        part = good.take(GOOD_STEPS).concatenate(bad)
        ds = part if ds is None else ds.concatenate(part)
    if clean_tail:
        ds = good if ds is None else ds.concatenate(good)
    return ds


def make_trainer(calls):
    from helpers import tiny_jem
    from keras_ebm.sampling import SGLDSampler
    from keras_ebm.trainers.jem import JEM

    class CountingJEM(JEM):
        def _energy(self, x, y=None, training=False):
            calls.assign_add(1)  # one per SGLD step, inside the compiled chain
            return super()._energy(x, y, training=training)

    return tiny_jem(
        trainer_class=CountingJEM,
        energy_l2=0.0,
        energy_l2_mode="means",
        check_finite_inputs=False,
        sampler=SGLDSampler(n_steps=K, step_size=1.0, noise_std=0.01, seed=0),
    )


def guard():
    from keras_ebm import divergence

    return divergence.DivergenceGuard(
        max_recoveries=RECOVERIES,
        confirm_steps=0,
        clf_rise_factor=None,
        max_energy_gap=None,
        energy_l2=ENERGY_L2,
        sgld_steps_factor=2.0,
        lr_factor=0.0,
    )


def record_monitor(records, calls, model_ref):
    """Patch `DivergenceMonitor` so that every update is recorded; returns an undo function."""
    from keras_ebm import divergence

    original_init, original_update = divergence.DivergenceMonitor.__init__, divergence.DivergenceMonitor.update
    monitors = []

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        monitors.append(self)

    def update(self, step, logs):
        model = model_ref()
        records.append(
            {
                "recoveries": monitors.index(self),
                "step": int(step),
                "logs": {k: float(v) for k, v in logs.items()},
                "calls": int(calls.numpy()),
                "kernel": model.network.trainable_weights[0].numpy().ravel()[:8].tolist(),
            }
        )
        return original_update(self, step, logs)

    divergence.DivergenceMonitor.__init__, divergence.DivergenceMonitor.update = init, update

    def undo():
        divergence.DivergenceMonitor.__init__, divergence.DivergenceMonitor.update = original_init, original_update

    return undo


def run(path, model_dir, strategy=None):
    """Run the scenario along `path`; returns the records."""
    import keras
    import tensorflow as tf

    from helpers import run_briefly
    from keras_ebm import callbacks, training

    calls = tf.Variable(0, dtype=tf.int64, trainable=False)
    records, holder = [], {}
    undo = record_monitor(records, calls, lambda: holder["model"])
    try:
        optimizer = lambda: keras.optimizers.SGD(0.05)  # noqa: E731
        if path in ("run_training", "multiworker"):
            segments = []

            def train_data(input_context=None):
                segments.append(1)  # a fresh stream after every recovery (restart_data)
                return segment_data(1 if len(segments) <= RECOVERIES else 0)

            def trainer():
                holder["model"] = make_trainer(calls)
                return holder["model"]

            run_briefly(
                model_dir,
                trainer,
                optimizer,
                train_data,
                TRAIN_STEPS,
                1000,
                divergence_guard=guard(),
                strategy=strategy,
            )
            return records
        keras.utils.set_random_seed(0)
        model = holder["model"] = training.build_trainer(
            lambda: make_trainer(calls), optimizer, tf.distribute.get_strategy()
        )
        cbs = callbacks.training_callbacks(
            model_dir,
            train_steps=TRAIN_STEPS,
            checkpoint_every=1000,
            divergence_guard=guard(),
            sample_grids=False,
            operative_config=False,
        )
        if path == "fit_one":
            model.fit(segment_data(RECOVERIES), epochs=1, steps_per_epoch=100, verbose=0, callbacks=cbs)
        elif path == "fit_calls":
            for _ in range(RECOVERIES):
                model.fit(
                    segment_data(1, clean_tail=False),
                    epochs=1,
                    steps_per_epoch=GOOD_STEPS + 1,
                    verbose=0,
                    callbacks=cbs,
                )
            model.fit(segment_data(0), epochs=1, steps_per_epoch=TRAIN_STEPS, verbose=0, callbacks=cbs)
        else:
            raise ValueError(path)
        return records
    finally:
        undo()


def check(records):
    """The remedies in the computation: after recovery 1 the loss holds 0.1 x (E_data^2 + E_sample^2)
    (by hand from the logged mean energies: "means" mode), after recovery 2 each step runs 2K SGLD
    energy calls, after recovery 3 (and still after recovery 4, which restored an optimizer saved
    with the old rate) no weight moves. Before each remedy: no penalty, K calls, moving weights."""
    assert max(r["recoveries"] for r in records) == RECOVERIES, [r["recoveries"] for r in records]
    seen = dict.fromkeys(range(RECOVERIES + 1), 0)
    previous = None
    for r in records:
        logs = r["logs"]
        finite = all(np.isfinite(v) for v in logs.values())
        n = r["recoveries"]
        if finite:
            penalty = logs["loss"] - logs["clf_loss"] - logs["px_loss"]
            by_hand = (ENERGY_L2 if n >= 1 else 0.0) * (logs["energy_data"] ** 2 + logs["energy_sample"] ** 2)
            np.testing.assert_allclose(penalty, by_hand, rtol=1e-4, atol=2e-5, err_msg=str(r))
            if n >= 1:
                assert by_hand > 0.1, r
        if (
            previous is not None
            and previous["recoveries"] == n
            and r["step"] == previous["step"] + 1
            and finite
            and all(np.isfinite(v) for v in previous["logs"].values())
        ):
            assert r["calls"] - previous["calls"] == (2 * K if n >= 2 else K), (previous, r)
            moved = np.abs(np.subtract(r["kernel"], previous["kernel"])).max()
            if n >= 3:
                assert moved == 0.0, (n, moved, previous, r)
            else:
                assert moved > 0.0, (n, previous, r)
            seen[n] += 1
        previous = r
    assert all(count >= 1 for count in seen.values()), seen  # every stage had steps to check


if __name__ == "__main__":
    # The multi-worker path: MultiWorkerMirroredStrategy must be the first TF work in the process.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    out = run("multiworker", sys.argv[1], strategy=strategy)
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
