"""ReplayBuffer and chain initialisers: reinit rate, class blocks, writes, checkpoints, mirrors."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ebm.distribute import replica_id
from keras_ebm.sampling import InformativeInitializer, ReplayBuffer, UniformInitializer, class_gaussian_statistics

SHAPE = (2, 2, 1)


def test_fill_is_uniform_and_deterministic():
    a = ReplayBuffer(size=50, image_shape=SHAPE, initializer=UniformInitializer((0, 1)), seed=4)
    b = ReplayBuffer(size=50, image_shape=SHAPE, initializer=UniformInitializer((0, 1)), seed=4)
    values = a.buffer.numpy()
    assert values.shape == (50,) + SHAPE
    np.testing.assert_array_equal(values, b.buffer.numpy())
    assert values.min() >= 0.0 and values.max() < 1.0 and values.std() > 0.2
    assert [w.name for w in a.non_trainable_weights] == ["buffer"]
    assert not a.trainable_weights


def test_reinit_fraction_matches_reinit_prob():
    buffer = ReplayBuffer(size=10, image_shape=SHAPE, reinit_prob=0.05, seed=0)
    buffer.buffer.assign(tf.fill(buffer.buffer.shape, 5.0))  # reinit samples lie in [-1, 1)
    draws = 20000
    x0, idx = buffer.sample(draws)
    reinit = np.all(x0.numpy() < 1.0, axis=(1, 2, 3))
    kept = np.all(x0.numpy() == 5.0, axis=(1, 2, 3))
    assert np.all(reinit | kept)
    # Binomial(20000, 0.05): mean 1000, sd ~31; allow 4 sd.
    assert abs(reinit.sum() - 1000) < 4 * np.sqrt(draws * 0.05 * 0.95)
    assert idx.dtype == tf.int32 and idx.numpy().min() >= 0 and idx.numpy().max() < 10
    assert len(np.unique(idx.numpy())) == 10


def test_no_reinit_returns_buffer_rows():
    buffer = ReplayBuffer(size=8, image_shape=SHAPE, reinit_prob=0.0, seed=1)
    x0, idx = buffer.sample(tf.constant(16))
    np.testing.assert_array_equal(x0.numpy(), buffer.buffer.numpy()[idx.numpy()])


def test_class_blocks_are_respected():
    buffer = ReplayBuffer(size=40, image_shape=SHAPE, num_classes=4, class_conditional=True, reinit_prob=0.0, seed=2)
    np.testing.assert_array_equal(buffer.labels.numpy(), np.repeat(np.arange(4), 10))
    y = tf.constant(np.random.RandomState(0).randint(0, 4, size=500), tf.int32)
    _, idx = buffer.sample(None, y=y)
    idx = idx.numpy()
    assert np.all(idx // 10 == y.numpy())
    assert len(np.unique(idx)) == 40  # every row of every block reachable
    # Without labels the classes are drawn uniformly; labels_of recovers them.
    _, idx = buffer.sample(400)
    labels = buffer.labels_of(idx).numpy()
    np.testing.assert_array_equal(labels, buffer.labels.numpy()[idx.numpy()])
    assert set(labels.tolist()) == {0, 1, 2, 3}


def test_writes_land_at_the_drawn_indices_last_write_wins():
    buffer = ReplayBuffer(size=6, image_shape=SHAPE, seed=3)
    before = buffer.buffer.numpy()
    idx = tf.constant([4, 1, 4])
    x = tf.reshape(tf.range(3 * 4, dtype=tf.float32), (3,) + SHAPE) + 10.0
    buffer.update(idx, x)
    after = buffer.buffer.numpy()
    np.testing.assert_array_equal(after[1], x.numpy()[1])
    np.testing.assert_array_equal(after[4], x.numpy()[2])  # duplicate: the later sample
    np.testing.assert_array_equal(after[[0, 2, 3, 5]], before[[0, 2, 3, 5]])


def test_update_inside_tf_function():
    buffer = ReplayBuffer(size=16, image_shape=SHAPE, seed=3)

    @tf.function
    def step():
        x0, idx = buffer.sample(4)
        buffer.update(idx, x0 + 100.0)
        return idx

    idx = step().numpy()
    assert np.all(buffer.buffer.numpy()[idx] >= 99.0)
    assert np.sum(np.all(buffer.buffer.numpy() >= 99.0, axis=(1, 2, 3))) == len(set(idx.tolist()))


class _Holder(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)
        self.replay = ReplayBuffer(size=12, image_shape=SHAPE, num_classes=3, class_conditional=True, seed=5)

    def call(self, x):
        return self.dense(x)


def test_save_restore_round_trip(tmp_path):
    model = _Holder()
    model(tf.zeros([1, 3]))
    assert any(w is model.replay.buffer for w in model.non_trainable_weights)
    saved = model.replay.buffer.numpy().copy()
    path = str(tmp_path / "holder.weights.h5")
    model.save_weights(path)
    checkpoint = tf.train.Checkpoint(model=model)
    prefix = checkpoint.save(str(tmp_path / "ckpt"))

    model.replay.buffer.assign(tf.zeros_like(model.replay.buffer))
    model.load_weights(path)
    np.testing.assert_array_equal(model.replay.buffer.numpy(), saved)

    model.replay.buffer.assign(tf.zeros_like(model.replay.buffer))
    checkpoint.restore(prefix).assert_existing_objects_matched()
    np.testing.assert_array_equal(model.replay.buffer.numpy(), saved)


def test_mirrors_stay_identical_and_keep_every_replica_write(two_device_strategy):
    strategy = two_device_strategy
    batch, size = 5, 12
    with strategy.scope():
        buffer = ReplayBuffer(size=size, image_shape=SHAPE, reinit_prob=0.5, seed=7)
    before = buffer.buffer.numpy()

    @tf.function
    def step():
        def replica_fn():
            x0, idx = buffer.sample(batch)
            # Each written sample is tagged with its global position (replica-major).
            tag = tf.cast(replica_id() * batch + tf.range(batch), tf.float32) + 100.0
            x = tf.zeros_like(x0) + tag[:, None, None, None]
            buffer.update(idx, x)
            return idx

        return strategy.run(replica_fn)

    idx = np.concatenate([t.numpy() for t in strategy.experimental_local_results(step())])
    first, second = (v.numpy() for v in buffer.buffer.value.values)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(idx[:batch], idx[batch:])  # replicas drew differently
    expected = before.copy()
    for position, row in enumerate(idx):  # last write wins, replica-major order
        expected[row] = 100.0 + position
    np.testing.assert_array_equal(first, expected)


def test_config_round_trip():
    buffer = ReplayBuffer(size=8, image_shape=SHAPE, initializer=UniformInitializer((0, 1)), reinit_prob=0.1, seed=1)
    config = buffer.get_config()
    assert ReplayBuffer.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="divisible"):
        ReplayBuffer(size=10, image_shape=SHAPE, num_classes=3, class_conditional=True)
    with pytest.raises(ValueError, match="class-conditional"):
        ReplayBuffer(size=8, image_shape=SHAPE).sample(None, y=tf.constant([0]))


def test_buffer_is_a_registered_keras_object_and_the_earlier_config_format_loads():
    buffer = ReplayBuffer(size=6, image_shape=SHAPE, reinit_prob=0.2, num_classes=3, class_conditional=True, seed=2)
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(buffer)).get_config() == (
        buffer.get_config()
    )
    # Configs written before the initialiser was a nested Keras object still load.
    old = dict(
        buffer.get_config(), initializer={"class_name": "UniformInitializer", "config": {"pixel_range": [0.0, 1.0]}}
    )
    assert ReplayBuffer.from_config(old).initializer.pixel_range == (0.0, 1.0)
    with pytest.raises(ValueError, match="built from data"):
        ReplayBuffer.from_config(dict(old, initializer={"class_name": "InformativeInitializer", "config": None}))


# ---------------------------------------------------------------- informative initialisation
def _gaussian_data(n_per_class=3000, seed=0):
    """Two classes of 4x4x1 images with known means and covariances (well inside (-10, 10))."""
    rng = np.random.RandomState(seed)
    dim = 16
    means = np.stack([np.full(dim, -2.0), np.linspace(0.0, 3.0, dim)])
    factors = [rng.randn(dim, dim) * 0.2 for _ in range(2)]
    covs = np.stack([a @ a.T + 0.05 * np.eye(dim) for a in factors])
    xs, ys = [], []
    for c in range(2):
        xs.append(rng.multivariate_normal(means[c], covs[c], size=n_per_class))
        ys.append(np.full(n_per_class, c))
    x = np.concatenate(xs).reshape(-1, 4, 4, 1).astype("float32")
    return x, np.concatenate(ys), means, covs


def test_informative_statistics_and_samples_match_the_data(tmp_path):
    x, y, _, _ = _gaussian_data()
    cache = str(tmp_path / "stats" / "gauss.npz")
    init = InformativeInitializer.from_dataset((x, y), num_classes=2, pixel_range=(-10, 10), cache_path=cache)
    assert os.path.exists(cache)
    flat = x.reshape(len(x), -1).astype(np.float64)
    data_mean = [flat[y == c].mean(0) for c in range(2)]
    data_cov = [np.cov(flat[y == c], rowvar=False, bias=True) for c in range(2)]
    np.testing.assert_allclose(init.mean.numpy(), np.stack(data_mean), atol=1e-5)

    n = 20000
    samples = init.init([n, 4, 4, 1], seed=tf.constant([1, 2]), y=tf.ones([n], tf.int32))
    samples = samples.numpy().reshape(n, -1)
    np.testing.assert_allclose(samples.mean(0), data_mean[1], atol=0.02)
    # The cov entries are O(0.5); their sampling error with 20000 draws is ~0.005.
    np.testing.assert_allclose(np.cov(samples, rowvar=False), data_cov[1], atol=0.03)

    # Cache reuse: the data is not touched again (None would fail if it were read).
    reloaded = InformativeInitializer.from_dataset(None, num_classes=2, pixel_range=(-10, 10), cache_path=cache)
    # Exactly the statistics the fitting run used (float32, as cached): a resumed run samples the
    # chains an uninterrupted one does.
    np.testing.assert_array_equal(reloaded.cholesky.numpy(), init.cholesky.numpy())
    np.testing.assert_array_equal(reloaded.mean.numpy(), init.mean.numpy())
    # A cache made for another pixel range (or other data) is refused, not silently reused.
    with pytest.raises(ValueError, match="computed for other data.*pixel_range"):
        InformativeInitializer.from_dataset(None, num_classes=2, pixel_range=(-1, 1), cache_path=cache)


def test_informative_initializer_caches_once_per_data_and_range(tmp_path, monkeypatch):
    from keras_ebm.sampling import initializers

    monkeypatch.setenv("KERAS_EBM_CACHE", str(tmp_path))
    first = initializers.informative_initializer("digits", num_classes=10, pixel_range=(-1, 1), max_examples=300)
    path = initializers.default_cache_path("digits", "train", 10, (-1, 1), 300)
    assert os.path.exists(path) and path.startswith(str(tmp_path))
    # The second call reads the cache: the data source is never loaded.
    import keras_ebm.data

    monkeypatch.setattr(keras_ebm.data, "load_arrays", lambda *a, **k: pytest.fail("data loaded again"))
    second = initializers.informative_initializer("digits", num_classes=10, pixel_range=(-1, 1), max_examples=300)
    np.testing.assert_allclose(second.mean.numpy(), first.mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(second.cholesky.numpy(), first.cholesky.numpy(), atol=1e-3)  # float32 cache
    # Another pixel range is another cache file, not the first one reused.
    assert initializers.default_cache_path("digits", "train", 10, (0, 1), 300) != path


def test_informative_random_classes_and_clamp():
    x, y, _, _ = _gaussian_data(n_per_class=200)
    init = InformativeInitializer.from_dataset((x, y), num_classes=2, pixel_range=(-1, 1))
    samples = init.init(tf.constant([2000, 4, 4, 1]), seed=tf.constant([3, 4])).numpy()
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    assert np.mean(samples == -1.0) > 0.3  # class 0 (mean -2) mostly clamped
    # Class 0 images average below 0, class 1 (means 0..3) above: about half of the draws each.
    class0 = np.mean(samples.reshape(2000, -1), axis=1) < 0.0
    assert abs(class0.mean() - 0.5) < 0.05


def test_statistics_from_a_dataset_of_uint8_batches():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(64, 2, 2, 1)).astype(np.uint8)
    labels = np.arange(64) % 2
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(10)
    mean, cov = class_gaussian_statistics(dataset, num_classes=2, pixel_range=(-1, 1))
    scaled = images.reshape(64, -1) / 255.0 * 2 - 1
    np.testing.assert_allclose(mean[1], scaled[labels == 1].mean(0), atol=1e-6)
    np.testing.assert_allclose(cov[0], np.cov(scaled[labels == 0], rowvar=False, bias=True), atol=1e-6)


def test_class_conditional_buffer_with_informative_init():
    x, y, means, _ = _gaussian_data(n_per_class=200)
    init = InformativeInitializer.from_dataset((x, y), num_classes=2, pixel_range=(-10, 10))
    buffer = ReplayBuffer(size=200, image_shape=(4, 4, 1), initializer=init, num_classes=2, class_conditional=True)
    rows = buffer.buffer.numpy().reshape(200, -1)
    # Class blocks: rows 0-99 from class 0, 100-199 from class 1 (means at least 2 apart;
    # 0.5 is ~4 standard errors of a 100-row mean).
    np.testing.assert_allclose(rows[:100].mean(0), means[0], atol=0.5)
    np.testing.assert_allclose(rows[100:].mean(0), means[1], atol=0.5)
    # Reinitialised samples follow the requested class.
    buffer = ReplayBuffer(
        size=200,
        image_shape=(4, 4, 1),
        initializer=init,
        num_classes=2,
        class_conditional=True,
        reinit_prob=1.0,
    )
    x0, _ = buffer.sample(None, y=tf.zeros([300], tf.int32))
    np.testing.assert_allclose(x0.numpy().reshape(300, -1).mean(0), means[0], atol=0.5)


@pytest.mark.parametrize("size", [40, 43])
def test_informative_fill_is_class_balanced(size):
    # JEM++ / SADA-JEM fill buffer_size / C chains from each class Gaussian (class-contiguous
    # blocks), not a random class per row. Class c has mean c / 10 and a tiny covariance, so each
    # row's class is read off its mean.
    num_classes, dim = 4, 2 * 2 * 1
    mean = np.repeat(np.arange(num_classes, dtype=np.float32)[:, None] / 10.0, dim, axis=1)
    cov = np.stack([np.eye(dim, dtype=np.float32) * 1e-8] * num_classes)
    init = InformativeInitializer(mean, cov, jitter=1e-8)
    buffer = ReplayBuffer(size=size, image_shape=(2, 2, 1), initializer=init, reinit_prob=0.0, seed=3)
    rows = buffer.buffer.numpy().reshape(size, -1).mean(axis=1)
    classes = np.rint(rows * 10).astype(int)
    counts = np.bincount(classes, minlength=num_classes)
    assert counts.max() - counts.min() <= (0 if size % num_classes == 0 else 1)
    if size % num_classes == 0:
        np.testing.assert_array_equal(counts, [size // num_classes] * num_classes)
    # Contiguous class blocks, in class order (the code concatenates the class blocks).
    assert np.all(np.diff(classes) >= 0)


def test_informative_initializer_settings_are_config_and_its_statistics_travel_with_the_buffer(tmp_path):
    """`get_config` holds the settings; `from_config` gives zero statistics of the right shape; a
    .keras file of a model holding the buffer carries the fitted statistics (no data, no refit)."""
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (40,) + SHAPE).astype("float32")
    y = np.arange(40) % 2
    init = InformativeInitializer.from_dataset((x, y), num_classes=2, pixel_range=(-1, 1), jitter=1e-3)
    config = init.get_config()
    assert config == {
        "pixel_range": [-1.0, 1.0],
        "jitter": 1e-3,
        "factor_order": "hwc",
        "dtype": "float32",
        "num_classes": 2,
        "dim": 4,
    }
    blank = InformativeInitializer.from_config(config)
    assert blank.get_config() == config and not blank.get_statistics()["cholesky"].any()
    blank.set_statistics(**init.get_statistics())
    seed = tf.constant([3, 4])
    np.testing.assert_array_equal(
        blank.init([5] + list(SHAPE), seed).numpy(), init.init([5] + list(SHAPE), seed).numpy()
    )

    class Holder(keras.Model):
        def __init__(self, buffer=None, **kwargs):
            super().__init__(**kwargs)
            self.replay = buffer

        def call(self, x):
            return x

        def get_config(self):
            return {"buffer": keras.saving.serialize_keras_object(self.replay)}

        @classmethod
        def from_config(cls, config):
            return cls(keras.saving.deserialize_keras_object(config["buffer"]))

    holder = Holder(ReplayBuffer(size=4, image_shape=SHAPE, initializer=init, seed=1))
    holder(x[:1])
    path = str(tmp_path / "holder.keras")
    holder.save(path)
    loaded = keras.saving.load_model(path, custom_objects={"Holder": Holder})
    for name, value in init.get_statistics().items():
        np.testing.assert_array_equal(loaded.replay.initializer.get_statistics()[name], value)
    np.testing.assert_array_equal(loaded.replay.buffer.numpy(), holder.replay.buffer.numpy())
