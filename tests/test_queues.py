"""FeatureQueue: FIFO order, wraparound, partial batches, masks, checkpoints, two replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm.trainers.hdge.queue import FeatureQueue


def rows(start, n, dim=2):
    """Rows whose every entry is their global index: row i is [i, i, ...]."""
    return np.repeat(np.arange(start, start + n, dtype="float32")[:, None], dim, axis=1)


@pytest.mark.parametrize("graph", [False, True])
def test_fifo_wraparound_and_partial_batches(graph):
    queue = FeatureQueue(size=5, dim=2)
    enqueue = tf.function(queue.enqueue) if graph else queue.enqueue
    assert queue.fill_fraction().numpy() == 0.0
    assert not queue.valid_mask().numpy().any()

    # 5 is not a multiple of 3: the second batch wraps around the end.
    enqueue(rows(0, 3))  # rows 0..2 -> slots 0..2
    assert (int(queue.pointer.numpy()), int(queue.count.numpy())) == (3, 3)
    np.testing.assert_array_equal(queue.valid_mask().numpy(), [True, True, True, False, False])
    np.testing.assert_allclose(queue.fill_fraction().numpy(), 3 / 5)
    np.testing.assert_array_equal(queue.values().numpy()[:3, 0], [0, 1, 2])

    enqueue(rows(3, 3))  # rows 3, 4 -> slots 3, 4; row 5 wraps to slot 0
    assert (int(queue.pointer.numpy()), int(queue.count.numpy())) == (1, 5)
    np.testing.assert_array_equal(queue.values().numpy()[:, 0], [5, 1, 2, 3, 4])
    assert queue.valid_mask().numpy().all() and queue.fill_fraction().numpy() == 1.0

    enqueue(rows(6, 1))  # a partial batch of one row
    np.testing.assert_array_equal(queue.values().numpy()[:, 0], [5, 6, 2, 3, 4])
    assert int(queue.pointer.numpy()) == 2

    # A batch larger than the queue keeps its last 5 rows, in FIFO positions: rows 7..13 go to
    # slots 2,3,4,0,1,2,3, so 7 and 8 are overwritten by 12 and 13.
    enqueue(rows(7, 7))
    np.testing.assert_array_equal(queue.values().numpy()[:, 0], [10, 11, 12, 13, 9])
    assert (int(queue.pointer.numpy()), int(queue.count.numpy())) == (4, 5)


def test_initially_full_random_queue_and_validation():
    queue = FeatureQueue(
        size=6, dim=3, initializer=keras.initializers.RandomNormal(stddev=1.0, seed=1), initially_full=True
    )
    assert queue.valid_mask().numpy().all() and queue.fill_fraction().numpy() == 1.0
    assert np.std(queue.values().numpy()) > 0.5  # the code's randn queue, not zeros
    with pytest.raises(ValueError, match="Received: rows.shape"):
        queue.enqueue(np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match="Received: size=0"):
        FeatureQueue(size=0, dim=3)
    assert FeatureQueue.from_config(queue.get_config()).size == 6


class _Owner(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)
        self.queue = FeatureQueue(size=4, dim=2, name="q")

    def call(self, x):
        return self.dense(x)


def test_checkpoint_round_trip(tmp_path):
    model = _Owner()
    model(np.zeros((1, 3), "float32"))
    model.queue.enqueue(rows(0, 3))
    assert {"q/queue", "q/pointer", "q/count"} <= {w.path for w in model.non_trainable_weights}
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    saved = model.queue.values().numpy().copy()

    restored = _Owner()
    restored(np.zeros((1, 3), "float32"))
    restored.queue.enqueue(rows(50, 2))  # different state, overwritten by the restore
    tf.train.Checkpoint(model=restored).read(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored.queue.values().numpy(), saved)
    assert (int(restored.queue.pointer.numpy()), int(restored.queue.count.numpy())) == (3, 3)
    # The restored queue continues where the saved one stopped.
    restored.queue.enqueue(rows(3, 2))
    np.testing.assert_array_equal(restored.queue.values().numpy()[:, 0], [4, 1, 2, 3])


def test_two_replicas_enqueue_the_gathered_rows_and_stay_identical(two_device_strategy):
    strategy = two_device_strategy
    with strategy.scope():
        queue = FeatureQueue(size=7, dim=2)

    @tf.function
    def step(offset):
        def replica_fn():
            rid = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
            # Replica r contributes rows [offset + 3r, offset + 3r + 1, offset + 3r + 2].
            values = offset + 3.0 * rid + tf.range(3, dtype=tf.float32)
            queue.enqueue(tf.repeat(values[:, None], 2, axis=1))

        strategy.run(replica_fn)

    step(tf.constant(0.0))  # global rows 0..5 -> slots 0..5
    step(tf.constant(6.0))  # global rows 6..11 -> slots 6, 0, 1, 2, 3, 4
    expected = np.array([7, 8, 9, 10, 11, 5, 6], "float32")
    for var, want in (
        (queue.queue, np.repeat(expected[:, None], 2, axis=1)),
        (queue.pointer, 12 % 7),
        (queue.count, 7),
    ):
        copies = [v.numpy() for v in strategy.experimental_local_results(var.value)]
        assert len(copies) == 2
        for copy in copies:
            np.testing.assert_array_equal(copy, want)


def test_enqueue_in_cross_replica_context_is_an_error(two_device_strategy):
    with two_device_strategy.scope():
        queue = FeatureQueue(size=4, dim=2)
        with pytest.raises(RuntimeError, match="replica context"):
            queue.enqueue(rows(0, 2))
