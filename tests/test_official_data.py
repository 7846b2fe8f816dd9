"""The official-format sources (CIFAR python version, SVHN .mat), their search path, the prepare tool,
the offline overlays, and the stand-ins the data-dependent tests use without ../shared/data."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

import standins
from keras_ebm import data, run_config
from keras_ebm.data import official, prepare, sources

_REAL_SEARCH_DIRS = sources.files.data_search_dirs


@pytest.fixture
def no_data_dirs(tmp_path, monkeypatch):
    """Search only an empty working directory: no env var, no ../shared/data, no Keras cache."""
    for env in ("KERAS_EBM_DATA_DIR", "KERAS_EBM_SHARED_DATA"):
        monkeypatch.delenv(env, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(sources.files, "data_search_dirs", lambda: [work, tmp_path / "keras_home" / "datasets"])
    return work


# ------------------------------------------------------------------------------------ CIFAR
@pytest.mark.parametrize("folder", [False, True], ids=["tar_gz", "extracted"])
def test_cifar10_python_is_pixel_exact(tmp_path, folder):
    archive = tmp_path / ("extract" if folder else "cifar-10-python.tar.gz")
    expected, names = standins.write_cifar_python(archive, sizes=(("train", 23), ("test", 9)), folder=folder)
    for split in ("train", "test"):
        ds, info = data.load_source("cifar10_python", split, local_path=archive)
        x, y = sources.dataset_to_arrays(ds)
        np.testing.assert_array_equal(x, expected[split][0])  # CHW rows -> HWC, every pixel
        np.testing.assert_array_equal(y, expected[split][1])  # train: data_batch_1..5 in order
        assert info.class_names == standins.CIFAR10_CLASSES and info.num_examples == len(x)
        assert info.image_shape == (32, 32, 3)
    # The layout is the documented one: R plane, G plane, B plane, each row-major.
    raw = expected["test"][0][0]
    row = np.concatenate([raw[..., c].ravel() for c in range(3)])
    np.testing.assert_array_equal(row, raw.transpose(2, 0, 1).reshape(-1))


def test_cifar100_python_fine_and_coarse_labels(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    expected, names = standins.write_cifar_python(archive, "cifar100_python")
    x, y = data.load_arrays("cifar100_python", "test", local_path=tmp_path)  # the directory
    np.testing.assert_array_equal(x, expected["test"][0])
    np.testing.assert_array_equal(y, expected["test"][1])
    ds, info = data.load_source("cifar100_python", "train", local_path=archive, label_mode="coarse")
    np.testing.assert_array_equal(sources.dataset_to_arrays(ds)[1], expected["train"][2])
    assert info.num_classes == 20 and info.class_names == names["coarse"]
    _, info = data.load_source("cifar100_python", "train", local_path=archive, classes=[7, 3])
    assert info.class_names == ("fine_7", "fine_3")
    with pytest.raises(ValueError, match="label_mode"):
        data.load_source("cifar10_python", "test", local_path=archive, label_mode="coarse")


def test_cifar_pickles_that_are_not_plain_arrays_are_refused(tmp_path):
    class Gadget:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    standins.write_cifar_python(tmp_path, folder=True)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Gadget(), b"labels": [0]}))
    with pytest.raises(ValueError, match="Refusing to load `builtins.print`"):
        data.load_source("cifar10_python", "test", local_path=folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ValueError, match=r"lacks the CIFAR batch files \['data_batch_3'\]"):
        data.load_source("cifar10_python", "train", local_path=folder)
    with pytest.raises(ValueError, match="splits"):
        data.load_source("cifar10_python", "extra", local_path=folder)


# ------------------------------------------------------------------------------------- SVHN
def test_svhn_mat_is_pixel_exact_and_maps_10_to_0(tmp_path):
    x_train, y_train = standins.write_svhn_mat(tmp_path / "train_32x32.mat", n=25, seed=1)
    x_test, y_test = standins.write_svhn_mat(tmp_path / "test_32x32.mat", n=12, seed=2)
    for split, (x_ref, y_ref) in {"train": (x_train, y_train), "test": (x_test, y_test)}.items():
        ds, info = data.load_source("svhn_mat", split, local_path=tmp_path)
        x, y = sources.dataset_to_arrays(ds)
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
        assert info.class_names == tuple("0123456789") and info.image_shape == (32, 32, 3)
    assert y_test[0] == 0  # stored as 10 in the file
    # A file of another split is not silently read as the one asked for.
    with pytest.raises(ValueError, match="'train' split, but split 'test'"):
        data.load_source("svhn_mat", "test", local_path=tmp_path / "train_32x32.mat")
    with pytest.raises(FileNotFoundError, match="extra_32x32.mat"):
        data.load_source("svhn_mat", "extra", local_path=tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match="not an SVHN .mat file"):
        data.load_source("svhn_mat", "test", local_path=tmp_path / "bad")


# ------------------------------------------------------------------ search path and errors
def test_data_dir_env_var_finds_the_official_names(tmp_path, no_data_dirs, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        data.load_source("cifar10_python", "test")
    message = str(err.value)
    for hint in (
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        "KERAS_EBM_DATA_DIR",
        "local_path",
        official.CIFAR_URL,
        str(no_data_dirs),
    ):
        assert hint in message, hint
    with pytest.raises(FileNotFoundError, match="ufldl.stanford.edu/housenumbers"):
        data.load_source("svhn_mat", "test")

    data_dir = tmp_path / "downloads"
    data_dir.mkdir()
    expected, _ = standins.write_cifar_python(data_dir / "cifar-10-python.tar.gz")
    monkeypatch.setenv("KERAS_EBM_DATA_DIR", str(data_dir))
    monkeypatch.setattr(sources.files, "data_search_dirs", _REAL_SEARCH_DIRS)  # the env var comes first
    x, y = data.load_arrays("cifar10_python", "test")
    np.testing.assert_array_equal(x, expected["test"][0])
    # The interpolation OOD set of the new source, as in the overlays.
    xi, _ = data.load_arrays("cifar10_python_interp", "train", interp_offset=10)
    assert xi.shape == (40, 32, 32, 3)


def test_search_dirs_order_and_the_shared_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_EBM_DATA_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("KERAS_EBM_SHARED_DATA", str(tmp_path / "b"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "k"))
    dirs = sources.data_search_dirs()
    assert dirs[:2] == [tmp_path / "a", tmp_path / "b"] and tmp_path / "k" / "datasets" in dirs
    # KERAS_EBM_DATA_DIR also serves the shared files (the name cifar10_local.gin gives).
    standins.write_dtd_subset(tmp_path / "dtd.npz")
    (tmp_path / "a").mkdir()
    (tmp_path / "dtd.npz").rename(tmp_path / "a" / "dtd_subset_32.npz")
    monkeypatch.delenv("KERAS_EBM_DTD_NPZ", raising=False)
    _, info = data.load_source("dtd_npz", "test")
    assert info.num_examples == 120 and info.class_names[0] == "banded"


def test_keras_cache_layout_is_found(tmp_path, no_data_dirs):
    # keras.datasets.cifar10.load_data() extracts into ~/.keras/datasets/cifar-10-batches-py-target/.
    expected, _ = standins.write_cifar_python(
        tmp_path / "keras_home" / "datasets" / "cifar-10-batches-py-target", folder=True
    )
    x, _ = data.load_arrays("cifar10_python", "test")
    np.testing.assert_array_equal(x, expected["test"][0])


# ---------------------------------------------------------------------------------- prepare
def test_prepare_writes_the_npz_the_sources_read_first(tmp_path, no_data_dirs, capsys):
    expected, names = standins.write_cifar_python(tmp_path / "cifar-100-python.tar.gz", "cifar100_python")
    out = prepare.prepare("cifar100_python", path=tmp_path)
    assert out == tmp_path / "cifar100_python.npz"
    log = capsys.readouterr().out
    assert "train: 50 images" in log and "wrote" in log
    (tmp_path / "cifar-100-python.tar.gz").unlink()  # from now on only the npz is there
    for split in ("train", "test"):
        x, y = data.load_arrays("cifar100_python", split, local_path=tmp_path)
        np.testing.assert_array_equal(x, expected[split][0])
        np.testing.assert_array_equal(y, expected[split][1])
        _, yc = data.load_arrays("cifar100_python", split, local_path=out, label_mode="coarse")
        np.testing.assert_array_equal(yc, expected[split][2])
        # The generic "npz" source reads the same file (fine labels and names).
        ds, info = data.load_source("npz", split, local_path=out)
        np.testing.assert_array_equal(sources.dataset_to_arrays(ds)[0], expected[split][0])
        assert info.class_names == names["fine"]
    # An npz made from another source is refused by name.
    with pytest.raises(ValueError, match="prepare cifar10_python"):
        data.load_source("cifar10_python", "test", local_path=out)
    with pytest.raises(ValueError, match="already a prepared npz"):
        prepare.prepare("cifar100_python", path=out)


def test_prepare_command_line(tmp_path, no_data_dirs):
    x_ref, y_ref = standins.write_svhn_mat(tmp_path / "test_32x32.mat", n=15)
    out = tmp_path / "out" / "svhn.npz"
    out.parent.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_ebm.data.prepare",
            "svhn_mat",
            f"--path={tmp_path}",
            f"--output={out}",
            "--splits=test",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test: 15 images" in result.stdout and str(out) in result.stdout
    x, y = data.load_arrays("svhn_mat", "test", local_path=out)
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)
    with pytest.raises(ValueError, match="holds the splits \\['test'\\], not 'train'"):
        data.load_source("svhn_mat", "train", local_path=out)
    # A missing input is a one-line error naming what to download, not a traceback.
    missing = subprocess.run(
        [sys.executable, "-m", "keras_ebm.data.prepare", "cifar10_python", f"--path={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1 and "error:" in missing.stderr and "Traceback" not in missing.stderr


# ---------------------------------------------------------------------------------- overlays
@pytest.mark.parametrize(
    "overlay, dataset, num_classes",
    [
        ("cifar10_python", "cifar10_python", 10),
        ("cifar100_python", "cifar100_python", 100),
        ("svhn_mat", "svhn_mat", 10),
    ],
)
def test_official_overlays_rebind_every_data_set(overlay, dataset, num_classes):
    run_config.parse_gin(["gin_configs/sadajem.gin", f"gin_configs/data/{overlay}.gin"], [])
    import gin

    assert gin.query_parameter("%DATASET") == dataset
    assert gin.query_parameter("%NUM_CLASSES") == num_classes
    assert run_config.resolve_parameter("run_eval.in_dist")["name"] == dataset
    for spec in run_config.resolve_parameter("run_eval.ood_sets").values():
        assert spec["name"] in (f"{dataset}_interp", "photo_patches")  # nothing else to download


def test_configs_name_only_environment_variables_the_library_reads():
    import glob
    import re

    library = "".join(open(p).read() for p in glob.glob("keras_ebm/**/*.py", recursive=True))
    read = set(re.findall(r"[\"'](KERAS_EBM_[A-Z0-9_]+)[\"']", library))
    assert {"KERAS_EBM_DATA_DIR", "KERAS_EBM_SHARED_DATA", "KERAS_EBM_CIFAR10_JPEG"} <= read
    for path in glob.glob("gin_configs/**/*.gin", recursive=True):
        named = set(re.findall(r"KERAS_EBM_[A-Z0-9_]+", open(path).read()))
        assert named <= read, (path, named - read)


# ---------------------------------------------------------------------------------- stand-ins
def test_standins_have_the_shared_formats(shared_standins, real_shared_data):
    """The stand-ins carry the real files' keys, dtypes and class names; where the real files are
    present (../shared/data), they are compared key by key."""
    ds, info = data.load_source("cifar10_jpeg", "test", local_path=shared_standins / "cifar10_jpeg_bytes.npz")
    x, y = sources.dataset_to_arrays(ds)
    assert info.class_names == standins.CIFAR10_CLASSES and x.shape[1:] == (32, 32, 3)
    assert x.std() > 20 and len(np.unique(y)) == 10
    _, info = data.load_source("dtd_npz", "test", local_path=shared_standins / "dtd_subset_32.npz")
    assert info.class_names == standins.DTD_CLASSES
    _, info = data.load_source("celeba_npz", "test", local_path=shared_standins / "celeba_subset_32.npz")
    assert info.class_names == ("face",)
    if real_shared_data is None:
        return
    for name in standins.SHARED_FILES:
        with np.load(real_shared_data / name) as real, np.load(shared_standins / name) as fake:
            assert sorted(real.files) == sorted(fake.files), name
            for key in real.files:
                assert real[key].dtype.kind == fake[key].dtype.kind, (name, key)
                assert real[key].shape[1:] == fake[key].shape[1:], (name, key)
            if "class_names" in real.files:
                np.testing.assert_array_equal(real["class_names"], fake["class_names"])
