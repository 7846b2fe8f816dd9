"""Memory limits checked before the big state is allocated (keras_ebm.memory)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import memory
from keras_ebm.sampling.initializers import InformativeInitializer, class_gaussian_statistics
from keras_ebm.sampling.replay_buffer import ReplayBuffer
from keras_ebm.trainers.hdge.queue import FeatureQueue


def test_parse_and_format_bytes():
    assert memory.parse_bytes("2GiB") == 2 * 2**30
    assert memory.parse_bytes("500 MB") == 500 * 10**6
    assert memory.parse_bytes("1e9") == 10**9
    assert memory.parse_bytes("none") is None
    with pytest.raises(ValueError, match="KERAS_EBM_MEMORY_LIMIT must be a number of bytes"):
        memory.parse_bytes("lots")
    assert memory.format_bytes(12_288_000_000) == "12.3 GB (11.4 GiB)"


def test_a_million_image_buffer_is_refused_with_its_size(monkeypatch):
    monkeypatch.setenv(memory.ENV_LIMIT, "8GiB")
    with pytest.raises(memory.ResourceError, match=r"1000000 images .* needs 12.3 GB .*8.6 GB .*buffer_size"):
        ReplayBuffer(size=1_000_000, image_shape=(32, 32, 3))
    ReplayBuffer(size=1000, image_shape=(32, 32, 3))  # 12 MB: fine


def test_a_big_queue_is_refused_on_a_tiny_machine(monkeypatch):
    monkeypatch.setenv(memory.ENV_LIMIT, "16MB")
    with pytest.raises(memory.ResourceError, match=r"65536 x 100 float32\) needs 26.2 MB.*queue_size"):
        FeatureQueue(65536, 100)
    monkeypatch.setenv(memory.ENV_LIMIT, "none")  # the check can be switched off
    assert FeatureQueue(65536, 100).queue.shape == (65536, 100)


def test_buffer_copies_per_cpu_replica_are_counted(monkeypatch, two_device_strategy):
    nbytes = memory.float32_bytes(1000, 8, 8, 3)  # 768 kB per copy
    monkeypatch.setenv(memory.ENV_LIMIT, str(int(nbytes * 1.5 / memory.DEFAULT_FRACTION)))
    ReplayBuffer(size=1000, image_shape=(8, 8, 3))  # one copy fits
    with two_device_strategy.scope():
        assert memory.host_copies() == 2
        with pytest.raises(memory.ResourceError, match="2 copies of 768.0 kB"):
            ReplayBuffer(size=1000, image_shape=(8, 8, 3))


def test_class_gaussians_are_refused_before_fitting(monkeypatch):
    monkeypatch.setenv(memory.ENV_LIMIT, "1MB")
    images = np.random.RandomState(0).randint(0, 256, (20, 8, 8, 3)).astype(np.uint8)
    labels = np.arange(20) % 10
    # 10 x 192^2 x 16 bytes = 5.9 MB
    with pytest.raises(memory.ResourceError, match=r"10 class covariances of 192 x 192\) needs 5.9 MB"):
        class_gaussian_statistics((images, labels), 10)
    with pytest.raises(memory.ResourceError, match="uniform initialiser"):
        InformativeInitializer(np.zeros((10, 192)), np.tile(np.eye(192), (10, 1, 1)))
    monkeypatch.setenv(memory.ENV_LIMIT, "100MB")
    mean, cov = class_gaussian_statistics((images, labels), 10)
    # The in-place covariance equals the textbook one.
    flat = images[labels == 3].reshape(2, -1).astype(np.float64) / 255.0 * 2 - 1
    np.testing.assert_allclose(cov[3], np.cov(flat.T, bias=True), atol=1e-12)
    sampler = InformativeInitializer(mean, cov)
    x = sampler.init((4, 8, 8, 3), tf.constant([1, 2], tf.int64))
    assert x.shape == (4, 8, 8, 3)
