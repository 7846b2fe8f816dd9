"""Tests of keras_ebm.data: sources, pipelines and pixel-range conversions."""

import io
import os
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_ebm import data, run_config
from keras_ebm.data import sources
from keras_ebm.data.sources import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _random_images(n, h=8, w=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _first_batch(ds):
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()


# ------------------------------------------------------------------------------- preprocess
def test_pixel_range_round_trip_and_values():
    images = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    for lo, hi in [(-1.0, 1.0), (0.0, 1.0)]:
        x = data.to_pixel_range(images, (lo, hi)).numpy()
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, images / 255.0 * (hi - lo) + lo, atol=1e-6)
        assert x.min() == pytest.approx(lo) and x.max() == pytest.approx(hi)
        np.testing.assert_array_equal(data.from_pixel_range(x, (lo, hi)).numpy(), images)
    # Out-of-range values clip; rank-3 (single image) input works.
    out = data.from_pixel_range(tf.constant([[[-3.0], [3.0]]]), (-1.0, 1.0)).numpy()
    np.testing.assert_array_equal(out.ravel(), [0, 255])


def test_pixel_range_errors():
    with pytest.raises(ValueError, match="rank >= 3"):
        data.to_pixel_range(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="pixel_range"):
        data.to_pixel_range(np.zeros((2, 4, 4, 3), np.uint8), (1.0, -1.0))


# ---------------------------------------------------------------------- local CIFAR-10 JPEG
def test_cifar10_jpeg_source(cifar10_npz):
    ds, info = data.load_source("cifar10_jpeg", "test", local_path=cifar10_npz, max_examples=200)
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    assert info.num_examples == 200 and info.class_names[0] == "airplane"
    assert ds.element_spec[0].shape == (32, 32, 3) and ds.element_spec[0].dtype == tf.uint8
    assert ds.element_spec[1].dtype == tf.int32
    x, y = sources.dataset_to_arrays(ds)
    assert x.shape == (200, 32, 32, 3) and y.shape == (200,)
    with np.load(cifar10_npz) as f:
        np.testing.assert_array_equal(y, f["test_y"][:200])
    assert 0 <= y.min() and y.max() <= 9 and len(np.unique(y)) > 5
    assert x.std() > 20  # real images, not a blank decode


def test_cifar10_jpeg_matches_pillow(cifar10_npz):
    Image = pytest.importorskip("PIL.Image")
    x, _ = data.load_arrays("cifar10_jpeg", "test", max_examples=5, local_path=cifar10_npz)
    with np.load(cifar10_npz) as f:
        offsets, raw = f["test_offsets"], f["test_jpeg"]
        for i in range(5):
            pil = np.asarray(Image.open(io.BytesIO(raw[offsets[i] : offsets[i + 1]].tobytes())))
            np.testing.assert_array_equal(x[i], pil)


@pytest.mark.parametrize("pixel_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_cifar10_make_dataset_pixel_range(cifar10_npz, pixel_range):
    ds = data.make_dataset(
        "cifar10_jpeg",
        "test",
        64,
        pixel_range=pixel_range,
        local_path=cifar10_npz,
        max_examples=100,
    )
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [64, 36]  # test split: no repeat, keep remainder
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() >= pixel_range[0] and x.max() <= pixel_range[1]
    assert x.min() < pixel_range[0] + 0.1 and x.max() > pixel_range[1] - 0.1
    x_uint8, y_ref = data.load_arrays("cifar10_jpeg", "test", 100, local_path=cifar10_npz)
    np.testing.assert_array_equal(data.from_pixel_range(x, pixel_range).numpy(), x_uint8)
    np.testing.assert_array_equal(y, y_ref)


def test_cifar10_jpeg_env_var_and_missing_file(tmp_path, monkeypatch):
    # A tiny archive in the same format, found through the environment variable.
    images = _random_images(3, 32, 32, 3)
    jpegs = [tf.io.encode_jpeg(img, quality=95).numpy() for img in images]
    offsets = np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64)
    path = _write_npz(
        tmp_path / "tiny.npz",
        test_jpeg=np.frombuffer(b"".join(jpegs), np.uint8),
        test_offsets=offsets,
        test_y=np.array([2, 0, 1], np.uint8),
        class_names=np.array([str(i) for i in range(10)]),
    )
    monkeypatch.setenv("KERAS_EBM_CIFAR10_JPEG", path)
    x, y = data.load_arrays("cifar10_jpeg", "test")
    assert x.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(y, [2, 0, 1])
    for i, jpeg in enumerate(jpegs):
        decoded = tf.io.decode_jpeg(jpeg, dct_method="INTEGER_ACCURATE").numpy()
        np.testing.assert_array_equal(x[i], decoded)

    missing = tmp_path / "absent.npz"
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        data.load_source("cifar10_jpeg", "test", local_path=str(missing))
    with pytest.raises(ValueError, match="'train' and 'test'"):
        data.load_source("cifar10_jpeg", "validation", local_path=path)


# ------------------------------------------------------------------------------------- tfds
def test_tfds_mock_cifar10(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds, info = data.load_source("cifar10", "train", data_dir=str(tmp_path))
        assert info.image_shape == (32, 32, 3) and info.num_classes == 10
        x, y = sources.dataset_to_arrays(ds)
        assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
        assert 0 <= y.min() and y.max() < 10
        ds = data.make_dataset("cifar10", "train", 4, data_dir=str(tmp_path), augment="pad_crop_flip")
        xb, yb = _first_batch(ds)
        assert xb.shape == (4, 32, 32, 3) and yb.shape == (4,)
        assert -1.0 <= xb.min() and xb.max() <= 1.0


def test_tfds_mock_celeb_a_and_dtd_are_32x32(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):
        ds, info = data.load_source("celeb_a", "test", data_dir=str(tmp_path))
        x, y = sources.dataset_to_arrays(ds)
        assert info.image_shape == (32, 32, 3) and x.shape == (3, 32, 32, 3)
        np.testing.assert_array_equal(y, 0)
        ds, info = data.load_source("dtd", "test", data_dir=str(tmp_path))
        x, _ = sources.dataset_to_arrays(ds)
        assert info.image_shape == (32, 32, 3) and x.shape == (3, 32, 32, 3)
        assert info.num_classes == 47


def test_tfds_offline_fails_fast(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    start = time.time()
    with pytest.raises(FileNotFoundError) as err:
        data.load_source("cifar10", "test", data_dir=str(tmp_path), download=False)
    assert time.time() - start < 5
    message = str(err.value)
    for hint in ("cifar10_jpeg", "'npz'", "'folder'", "download=True", "KERAS_EBM_CIFAR10_JPEG", "cifar10_python.gin"):
        assert hint in message


def test_tfds_download_without_network_fails_fast(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.time()
    with pytest.raises(FileNotFoundError, match="download=True, but no network") as err:
        data.load_source("cifar10", "test", data_dir=str(tmp_path), download=True)
    assert time.time() - start < 5
    assert "cifar10_jpeg" in str(err.value) and "'npz'" in str(err.value)


def test_unknown_name():
    with pytest.raises(ValueError, match="Known names.*cifar10_jpeg"):
        data.load_source("imagenet", "train")
    with pytest.raises(ValueError, match="Known names"):
        data.make_dataset("imagenet_interp", "test", 4)
    with pytest.raises(ValueError, match="Known names"):
        data.make_dataset_fn("mnist", "train", 4)


# -------------------------------------------------------------------------------------- npz
def test_npz_source_splits_and_classes(tmp_path):
    x_train, x_test = _random_images(20, seed=1), _random_images(6, seed=2)
    y_train, y_test = np.arange(20) % 4, np.array([3, 1, 0, 3, 2, 1])
    path = _write_npz(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

    x, y = data.load_arrays("npz", "test", local_path=path)
    np.testing.assert_array_equal(x, x_test)
    np.testing.assert_array_equal(y, y_test)

    ds, info = data.load_source("npz", "train", local_path=path, classes=[3, 1])
    assert info.num_classes == 2 and info.num_examples == 10 and info.class_names == ("3", "1")
    x, y = sources.dataset_to_arrays(ds)
    keep = np.isin(y_train, [3, 1])
    np.testing.assert_array_equal(x, x_train[keep])
    np.testing.assert_array_equal(y, np.where(y_train[keep] == 3, 0, 1))

    with pytest.raises(ValueError, match="classes"):
        data.load_source("npz", "train", local_path=path, classes=[7])


def test_npz_grayscale_channels_and_resize(tmp_path):
    path = _write_npz(tmp_path / "g.npz", x=_random_images(5, c=1)[..., 0], y=np.zeros(5))
    ds, info = data.load_source("npz", "test", local_path=path)
    assert info.image_shape == (8, 8, 1) and info.num_classes == 1
    ds, info = data.load_source("npz", "test", local_path=path, channels=3, image_size=4)
    x, _ = sources.dataset_to_arrays(ds)
    assert info.image_shape == (4, 4, 3) and x.shape == (5, 4, 4, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        data.load_source("npz", "train", local_path=str(tmp_path / "nope.npz"))
    with pytest.raises(ValueError, match="local_path"):
        data.load_source("npz", "train")
    floats = _write_npz(tmp_path / "f.npz", x=np.zeros((2, 4, 4, 3), np.float32), y=np.zeros(2))
    with pytest.raises(ValueError, match="uint8"):
        data.load_source("npz", "train", local_path=floats)
    rank5 = _write_npz(tmp_path / "r.npz", x=np.zeros((2, 1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        data.load_source("npz", "train", local_path=rank5)
    wrong = _write_npz(tmp_path / "w.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="keys"):
        data.load_source("npz", "train", local_path=wrong)


def test_shared_ood_subsets(dtd_npz):
    ds, info = data.load_source("dtd_npz", "test", local_path=dtd_npz, max_examples=10)
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    assert info.class_names[0] == "banded" and info.num_examples == 10


# ----------------------------------------------------------------------------------- folder
def test_folder_source(tmp_path):
    images = _random_images(6, 6, 5, 3, seed=3)
    for split in ("train", "test"):
        for i, img in enumerate(images):
            cls = "b_cls" if i % 2 else "a_cls"
            (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
            png = tf.io.encode_png(img).numpy()
            (tmp_path / split / cls / f"{split}_{i}.png").write_bytes(png)
    ds, info = data.load_source("folder", "test", local_path=str(tmp_path))
    assert info.class_names == ("a_cls", "b_cls") and info.image_shape == (6, 5, 3)
    assert info.num_examples == 6
    x, y = sources.dataset_to_arrays(ds)
    # Sorted class folders, sorted files inside each: a_cls gets images 0, 2, 4.
    np.testing.assert_array_equal(x, images[[0, 2, 4, 1, 3, 5]])
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])

    ds, info = data.load_source("folder", "train", local_path=str(tmp_path), classes=[1])
    x, y = sources.dataset_to_arrays(ds)
    assert info.num_examples == 3 and info.class_names == ("b_cls",)
    np.testing.assert_array_equal(x, images[[1, 3, 5]])
    np.testing.assert_array_equal(y, 0)

    with pytest.raises(FileNotFoundError, match="no directory"):
        data.load_source("folder", "train", local_path=str(tmp_path / "missing"))


# ------------------------------------------------------------------------ sklearn sources
def test_digits_split():
    x_tr, y_tr = data.load_arrays("digits", "train")
    x_te, y_te = data.load_arrays("digits", "test")
    x_all, y_all = data.load_arrays("digits", "all")
    assert x_tr.shape == (1438, 8, 8, 1) and x_te.shape == (359, 8, 8, 1)
    assert x_tr.dtype == np.uint8 and x_all.max() == 255 and x_all.min() == 0
    assert set(np.unique(y_tr)) == set(range(10))

    # train + test is a partition of the whole set (the rows, as multisets, coincide).
    def rows(x, y):
        return sorted(a.tobytes() + bytes([b]) for a, b in zip(x, y))

    assert rows(np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])) == rows(x_all, y_all)
    # A fixed split: loading again gives the same order.
    np.testing.assert_array_equal(data.load_arrays("digits", "test")[0], x_te)


def test_photo_patches():
    x, y = data.load_arrays("photo_patches", "all")
    assert x.shape == (2 * 13 * 20, 32, 32, 3)  # two 427x640 photos, 32x32 tiles
    np.testing.assert_array_equal(np.bincount(y), [260, 260])
    ds, info = data.load_source("photo_patches", "test", image_size=8, channels=1)
    assert info.image_shape == (8, 8, 1) and ds.element_spec[0].shape == (8, 8, 1)
    xs, _ = sources.dataset_to_arrays(ds)
    assert len(xs) == info.num_examples == 104 and xs.std() > 10


# -------------------------------------------------------------------------------- interp
def test_interp_constructions_match_numpy(tmp_path):
    x = _random_images(250, 4, 4, 3, seed=4)
    y = np.arange(250) % 10
    path = _write_npz(tmp_path / "base.npz", x=x, y=y)
    xf = x.astype(np.float64)

    x_clel, y_clel = data.load_arrays("npz_interp", "test", local_path=path, interp="clel")
    np.testing.assert_array_equal(x_clel, np.round((xf[:-100] + xf[100:]) / 2).astype(np.uint8))
    np.testing.assert_array_equal(y_clel, y[:-100])

    x_jem, _ = data.load_arrays("npz_interp", "test", local_path=path, interp="jem", interp_seed=5)
    perm = np.random.default_rng(5).permutation(250)
    batches = xf[perm][:200].reshape(2, 100, 4, 4, 3)  # the partial last batch is dropped
    expected = np.round((batches[1] + batches[0]) / 2).astype(np.uint8)
    np.testing.assert_array_equal(x_jem, expected)

    x_noisy, _ = data.load_arrays("npz_interp", "test", local_path=path, interp="jem", interp_seed=5, interp_noise=0.03)
    diff = x_noisy.astype(float) - expected
    assert x_noisy.dtype == np.uint8 and 2.0 < diff.std() < 6.0  # 0.03 * 127.5 ~ 3.8 levels

    with pytest.raises(ValueError, match="interp"):
        data.load_arrays("npz_interp", "test", local_path=path, interp="mix")


def test_interp_info_and_max_examples():
    ds, info = data.load_source("digits_interp", "test", interp="clel", max_examples=50)
    assert info.name == "digits_interp" and info.num_examples == 50
    assert info.image_shape == (8, 8, 1)


# ------------------------------------------------------------------------------ pipeline
def _id_npz(tmp_path, n=40):
    """Images whose first pixel is their index, labels = index: order checks."""
    x = np.zeros((n, 8, 8, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    return _write_npz(tmp_path / "ids.npz", x=x, y=np.arange(n))


def test_input_context_sharding(tmp_path):
    path = _id_npz(tmp_path)
    seen = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
        ds = data.make_dataset("npz", "train", 8, input_context=ctx, local_path=path, repeat=False)
        ids = []
        for x, y in ds:
            assert x.shape == (4, 8, 8, 1)  # per-replica batch = 8 / 2
            ids.extend(y.numpy().tolist())
        assert len(ids) == 20
        seen.append(set(ids))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(40))


def test_make_dataset_fn_with_strategy(tmp_path, two_device_strategy):
    path = _id_npz(tmp_path)
    fn = data.make_dataset_fn("npz", "train", 8, local_path=path, augment="pad_crop_flip")
    dist = two_device_strategy.distribute_datasets_from_function(fn)
    x, y = next(iter(dist))
    per_replica = two_device_strategy.experimental_local_results(x)
    assert len(per_replica) == 2 and all(t.shape == (4, 8, 8, 1) for t in per_replica)


def test_train_defaults_and_determinism(tmp_path):
    path = _id_npz(tmp_path)
    kwargs = dict(local_path=path, augment="pad_crop_flip", dequantize_noise=0.03)
    a = list(data.make_dataset("npz", "train", 16, seed=3, **kwargs).take(5))
    b = list(data.make_dataset("npz", "train", 16, seed=3, **kwargs).take(5))
    c = list(data.make_dataset("npz", "train", 16, seed=4, **kwargs).take(5))
    assert len(a) == 5  # repeats: 5 batches of 16 from 40 examples
    assert all(x.shape == (16, 8, 8, 1) for x, _ in a)  # drop_remainder: static batch
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    assert not all(np.array_equal(ya.numpy(), yc.numpy()) for (_, ya), (_, yc) in zip(a, c))
    ids = np.concatenate([y.numpy() for _, y in a[:2]])
    assert len(set(ids.tolist())) == 32 and not np.array_equal(ids, np.arange(32))  # shuffled
    # Noise of sigma 0.03 on a [-1, 1] grid: the residual to the nearest grid point is small
    # but not zero.
    x = a[0][0].numpy()
    grid = data.to_pixel_range(data.from_pixel_range(x)).numpy()
    assert 0.01 < np.abs(x - grid).mean() < 0.05


def test_make_dataset_custom_augment_and_errors(tmp_path):
    path = _id_npz(tmp_path)
    ds = data.make_dataset("npz", "test", 8, local_path=path, augment=lambda x, seed: x * 0.0 + 0.5)
    x, _ = _first_batch(ds)
    np.testing.assert_array_equal(x, 0.5)
    with pytest.raises(ValueError, match="augment"):
        data.make_dataset("npz", "test", 8, local_path=path, augment=3)
    with pytest.raises(ValueError, match="global_batch_size"):
        data.make_dataset("npz", "test", 0, local_path=path)
    with pytest.raises(ValueError, match="dequantize_noise"):
        data.make_dataset("npz", "test", 8, local_path=path, dequantize_noise=-1.0)


def test_two_branch_dataset(tmp_path):
    path = _id_npz(tmp_path)
    ds = data.make_two_branch_dataset("npz", "train", 8, 4, local_path=path)
    (x_clf, y_clf), (x_px, y_px) = next(iter(ds))
    assert x_clf.shape == (8, 8, 8, 1) and y_clf.shape == (8,)
    assert x_px.shape == (4, 8, 8, 1) and y_px.shape == (4,)
    # The p(x) branch is not augmented: its first pixel still encodes its label.
    np.testing.assert_array_equal(data.from_pixel_range(x_px).numpy()[:, 0, 0, 0], y_px.numpy())
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    fn = data.make_two_branch_dataset_fn("npz", "train", 8, 4, local_path=path)
    (x_clf, _), (x_px, _) = next(iter(fn(ctx)))
    assert x_clf.shape[0] == 4 and x_px.shape[0] == 2


def test_uniform_dequantisation_is_clels(tmp_path):
    """(k + U(0, 1)) / 256: each pixel stays inside its own 1/256 bin, uniformly spread over it."""
    x_u8, y = data.load_arrays("digits", "test")
    path = tmp_path / "d.npz"
    np.savez(path, x=x_u8[:64], y=y[:64])
    kwargs = dict(local_path=str(path), shuffle=False, repeat=False, pixel_range=(0.0, 1.0))
    plain, _ = _first_batch(data.make_dataset("npz", "test", 64, **kwargs))
    deq, _ = _first_batch(data.make_dataset("npz", "test", 64, uniform_dequantize=True, seed=1, **kwargs))
    k = x_u8[:64].astype(np.float64)
    np.testing.assert_allclose(plain, k / 255.0, atol=1e-6)
    frac = deq * 256.0 - k  # the uniform draw
    assert frac.min() >= 0.0 and frac.max() < 1.0 + 1e-4
    assert abs(frac.mean() - 0.5) < 0.02 and abs(frac.var() - 1 / 12) < 0.01
    again, _ = _first_batch(data.make_dataset("npz", "test", 64, uniform_dequantize=True, seed=1, **kwargs))
    np.testing.assert_array_equal(deq, again)  # seeded: reproducible


# ------------------------------------------------------------------------------- registry
# The whole of a user's new data set: one function registered in one new file.
TOY_SOURCE = '''"""A toy data set."""
import numpy as np

from keras_ebm.data import sources


@sources.register_source("toy")
def toy(name, split, *, classes=None, max_examples=None, toy_offset=0):
    """Grey 8x8 images, image i all pixels i + `toy_offset`, label i % 3; 60 train, 30 test."""
    n = 60 if split == "train" else 30
    x = np.broadcast_to((np.arange(n) + toy_offset).astype(np.uint8)[:, None, None, None], (n, 8, 8, 1))
    return sources.from_arrays(np.array(x), np.arange(n) % 3, ("a", "b", "c"), classes, max_examples)
'''


@pytest.fixture
def toy_source_file(tmp_path, monkeypatch):
    """toy_source.py on the import path; what it registers is forgotten after the test."""
    (tmp_path / "toy_source.py").write_text(TOY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    monkeypatch.setattr(registry, "_OPTION_CHECKS", dict(registry._OPTION_CHECKS))
    yield tmp_path / "toy_source.py"
    sys.modules.pop("toy_source", None)


def test_a_new_source_is_one_registered_function_loaded_through_gin(toy_source_file, tmp_path):
    overlay = tmp_path / "toy.gin"
    overlay.write_text(
        "import toy_source\n"
        "DATASET = 'toy'\n"
        "train/make_dataset_fn.toy_offset = 100\n"
        "run_eval.in_dist = {'name': 'toy', 'split': 'test', 'classes': [2, 0]}\n"
        "run_eval.ood_sets = {'interp': {'name': 'toy_interp', 'split': 'test', "
        "'interp': 'clel', 'interp_offset': 10}}\n"
    )
    configs = [os.path.join(REPO, "gin_configs", f) for f in ("softmax_cifar10.gin", "tiny.gin")]
    run_config.parse_gin(configs + [str(overlay)], [])
    assert "toy" in sources.source_names()
    train_data = run_config.resolve_run_training()["train_data"]
    x, y = next(iter(train_data()))
    assert train_data.source_info.class_names == ("a", "b", "c") and train_data.source_info.num_examples == 60
    index = np.round((x.numpy()[:, 0, 0, 0] + 1.0) / 2.0 * 255.0).astype(int) - 100  # pixel range (-1, 1)
    np.testing.assert_array_equal(y.numpy(), index % 3)  # the option reached the source
    x, y = data.load_arrays(**run_config.resolve_parameter("run_eval.in_dist"))  # the evaluation path
    np.testing.assert_array_equal(x[:, 0, 0, 0] % 3, [2 - 2 * (i % 3 == 1) for i in y])
    np.testing.assert_array_equal(x[:, 3, 5, 0], [i for i in range(30) if i % 3 in (0, 2)])
    x, y = data.load_arrays(**run_config.resolve_parameter("run_eval.ood_sets")["interp"])
    np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(20) + 5)  # (i + (i + 10)) / 2, CLEL's pairs
    with pytest.raises(ValueError, match="Known names: 'cifar10', .*'photo_patches', 'toy', or any"):
        data.make_dataset_fn("toys", "train", 4)


def test_every_source_documents_its_options():
    assert sources.source_names() == data.KNOWN_DATASETS  # the built-in ones, in their order
    for name in sources.source_names():
        source = sources.get_source(name)
        undocumented = [o for o in source.options if f"{o}:" not in (source.load.__doc__ or "")]
        assert source.load.__doc__ and not undocumented, (name, undocumented)


def test_register_source_errors(toy_source_file):
    with pytest.raises(TypeError, match=r"`classes` and `max_examples`.*lacks \['max_examples'\]"):
        sources.register_source("bad")(lambda name, split, *, classes=None: None)
    with pytest.raises(ValueError, match="not ending in '_interp'"):
        sources.register_source("bad_interp")(lambda name, split, *, classes=None, max_examples=None: None)
    with pytest.raises(TypeError, match="unexpected keyword argument 'toy_offset'"):
        data.load_source("digits", "train", toy_offset=1)  # nothing registered takes it yet
    import toy_source  # noqa: F401  registers "toy"

    _, info = data.load_source("digits", "train", toy_offset=1)  # another source's option: ignored
    assert info.num_examples == 1438
