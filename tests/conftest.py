"""Test setup: quiet TF, TensorFlow backend, two logical CPU devices for the distribution tests."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib
import tempfile

# Caches the library writes (JEM++ class statistics) go to a per-session folder, not ~/.cache;
# subprocesses (train.py, eval.py) inherit it.
os.environ.setdefault("KERAS_EBM_CACHE", tempfile.mkdtemp(prefix="keras_ebm_cache_"))

import pytest
import tensorflow as tf

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialised (e.g. imported twice); the tests that need 2 skip
    pass

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("KERAS_EBM_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR10_NPZ = SHARED_DATA / "cifar10_jpeg_bytes.npz"
DTD_NPZ = SHARED_DATA / "dtd_subset_32.npz"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (seconds to minutes); run in CI too")


@pytest.fixture
def cifar10_npz():
    if not CIFAR10_NPZ.exists():
        pytest.skip(f"real CIFAR-10 archive not found at {CIFAR10_NPZ} (set KERAS_EBM_SHARED_DATA)")
    return str(CIFAR10_NPZ)


@pytest.fixture
def dtd_npz():
    if not DTD_NPZ.exists():
        pytest.skip(f"DTD subset not found at {DTD_NPZ} (set KERAS_EBM_SHARED_DATA)")
    return str(DTD_NPZ)


@pytest.fixture(scope="session")
def two_device_strategy():
    # One strategy per process: separate MirroredStrategy objects reuse collective instance keys,
    # so a second strategy running a different collective (all_gather after all_reduce) aborts.
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs two logical CPU devices")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


@pytest.fixture(autouse=True)
def _fresh_state():
    import gin
    import keras

    gin.clear_config()
    keras.utils.set_random_seed(0)
    yield
    gin.clear_config()
