"""Test setup: quiet TF, TensorFlow backend, two logical CPU devices for the distribution tests, and
the data files: the real ones of ../shared/data where present, else generated stand-ins in the same
formats (tests/standins.py), so a clone without that folder runs every test."""

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

import helpers
import standins

_cpus = tf.config.list_physical_devices("CPU")
_TWO_DEVICES_ERROR = None
try:
    tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError as error:  # TensorFlow's devices were initialised before this file ran
    _TWO_DEVICES_ERROR = error

REPO = pathlib.Path(__file__).resolve().parents[1]
# The real files; KERAS_EBM_SHARED_DATA=/nonexistent runs the tests on the stand-ins instead.
SHARED_DATA = pathlib.Path(os.environ.get("KERAS_EBM_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (seconds to minutes); run in CI too")


def pytest_report_header(config):
    found = [n for n in standins.SHARED_FILES if (SHARED_DATA / n).exists()]
    if len(found) == len(standins.SHARED_FILES):
        return f"data: the real files of {SHARED_DATA}"
    return (
        f"data: {SHARED_DATA} lacks {sorted(set(standins.SHARED_FILES) - set(found))}; those tests use "
        "generated stand-ins in the same formats (tests/standins.py)"
    )


@pytest.fixture(scope="session")
def real_shared_data():
    """The real shared data directory if it holds all three files, else None."""
    return SHARED_DATA if all((SHARED_DATA / n).exists() for n in standins.SHARED_FILES) else None


@pytest.fixture(scope="session")
def shared_standins(tmp_path_factory):
    """A directory of generated cifar10_jpeg_bytes.npz, dtd_subset_32.npz, celeba_subset_32.npz."""
    return standins.write_shared_standins(tmp_path_factory.mktemp("shared_standins"))


@pytest.fixture(scope="session")
def shared_data_dir(request, real_shared_data):
    """A directory with all three shared files: the real one, else the stand-ins (for scripts that
    find them through KERAS_EBM_DATA_DIR)."""
    return real_shared_data or request.getfixturevalue("shared_standins")


def _shared_file(request, name):
    real = SHARED_DATA / name
    return str(real if real.exists() else request.getfixturevalue("shared_standins") / name)


@pytest.fixture
def cifar10_npz(request):
    """cifar10_jpeg_bytes.npz: all of CIFAR-10 (JPEG) if present, else a 512 + 256 image stand-in."""
    return _shared_file(request, "cifar10_jpeg_bytes.npz")


@pytest.fixture
def cifar10_arrays(cifar10_npz):
    """`fn(n=128, pixel_range=(-1, 1))`: the first `n` images of `cifar10_npz`'s train split as
    floats in `pixel_range`, and their labels (`helpers.cifar_arrays`)."""
    return lambda n=128, pixel_range=(-1.0, 1.0): helpers.cifar_arrays(cifar10_npz, n, pixel_range)


@pytest.fixture
def dtd_npz(request):
    """dtd_subset_32.npz: the 1,200-image DTD subset if present, else a 120-image stand-in."""
    return _shared_file(request, "dtd_subset_32.npz")


@pytest.fixture(scope="session")
def two_device_strategy():
    # One strategy per process: separate MirroredStrategy objects reuse collective instance keys,
    # so a second strategy running a different collective (all_gather after all_reduce) aborts.
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        # A failure, not a skip: a skip would hide every distribution test while the run stays green.
        pytest.fail(
            f"The two-replica tests need two logical CPU devices, but TensorFlow has {len(devices)}: "
            "tests/conftest.py splits the CPU in two when it is imported, which must happen before "
            "anything initialises TensorFlow's devices (a plugin, a sitecustomize or an earlier "
            f"import that ran TensorFlow ops). TensorFlow said: {_TWO_DEVICES_ERROR}",
            pytrace=False,
        )
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


@pytest.fixture(autouse=True)
def _fresh_state():
    import gin
    import keras

    gin.clear_config()
    keras.utils.set_random_seed(0)
    yield
    gin.clear_config()
