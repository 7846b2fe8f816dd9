"""Bad input, tried as a new user would (issue 15): every case of the table "Bad input: what you
see" (docs/reliability.md) is a test here. Each asserts the error type and the key words of its message (what was wrong
and what to do), and, where a run directory is involved, that its config and checkpoint are left
byte-for-byte as they were.

Data layer (`keras_ebm.data`), `EBMTrainer.fit` on arrays and datasets, and the CLI (`train.py`,
`keras_ebm.run_config`). The export cases are in tests/test_export.py.
"""

import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import digits_arrays, tiny_network
from keras_ebm import data, run_config
from keras_ebm.trainers import SoftmaxClassifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [os.path.join(REPO, "gin_configs", "softmax_cifar10.gin"), os.path.join(REPO, "gin_configs", "tiny.gin")]


def _images(n, h=8, w=8, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _trainer(strategy=None):
    scope = strategy.scope() if strategy is not None else tf.init_scope()
    with scope:
        trainer = SoftmaxClassifier(tiny_network(), image_shape=(8, 8, 1), num_classes=10)
        trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    return trainer


@pytest.fixture
def trainer():
    """A fresh compiled trainer for each `fit` case."""
    return _trainer()


@pytest.fixture(scope="module")
def digits():
    return digits_arrays(32)


def _fit(trainer, x, y=None, **kwargs):
    kwargs.setdefault("batch_size", 8)
    return trainer.fit(x, y, epochs=1, verbose=0, **kwargs)


def _fit_dataset(trainer, x, y, batch=8):
    return trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch), epochs=1, verbose=0)


# ======================================================================== data files (npz)
def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing at .*nope\.npz.*local_path"):
        data.load_source("npz", "train", local_path=str(tmp_path / "nope.npz"))


def test_npz_truncated(tmp_path):
    good = _npz(tmp_path / "good.npz", x=_images(20), y=np.arange(20) % 4)
    blob = open(good, "rb").read()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz cannot be read as a \.npz.*truncated.*np\.savez"):
        data.make_dataset("npz", "train", 4, local_path=str(tmp_path / "cut.npz"))


def test_npz_not_an_npz(tmp_path):
    (tmp_path / "page.npz").write_text("<html>404 Not Found</html>")
    with pytest.raises(ValueError, match=r"cannot be read as a \.npz.*not an npz at all"):
        data.load_source("npz", "train", local_path=str(tmp_path / "page.npz"))
    objects = _npz(tmp_path / "objects.npz", x=np.array([_images(1)[0], _images(1)[0, :4]], dtype=object))
    with pytest.raises(ValueError, match=r"cannot be read as a \.npz.*Object arrays"):
        data.load_source("npz", "train", local_path=objects)


def test_npz_path_is_a_directory(tmp_path):
    with pytest.raises(ValueError, match=r"reads one \.npz file.*is a directory.*the file itself"):
        data.load_source("npz", "train", local_path=str(tmp_path))


def test_npz_float_images(tmp_path):
    path = _npz(tmp_path / "f.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.zeros(4, int))
    with pytest.raises(ValueError, match=r"must be uint8 images.*np\.round\(x \* 255\)"):
        data.load_source("npz", "train", local_path=path)


def test_npz_grayscale_without_channel_axis_loads(tmp_path):
    path = _npz(tmp_path / "g.npz", x_train=_images(6)[..., 0], y_train=np.arange(6) % 2)
    _, info = data.load_source("npz", "train", local_path=path)
    assert info.image_shape == (8, 8, 1)  # [N, H, W] gains the channel axis: not an error


def test_npz_without_labels_is_refused_for_training(tmp_path):
    path = _npz(tmp_path / "ood.npz", x=_images(12))
    with pytest.raises(ValueError) as info:
        data.make_dataset("npz", "train", 4, local_path=path)
    message = str(info.value)
    assert "no labels ('y')" in message and "every label would be 0" in message
    assert "OOD / evaluation set" in message and "np.savez(path, x=x, y=y)" in message
    with pytest.raises(ValueError, match="no labels"):  # the SADA-JEM two-loader pipeline too
        data.make_two_branch_dataset("npz", "train", 4, 4, local_path=path, clf_augment=None)
    # What a label-free file is for: an OOD / evaluation set, and a trainer that ignores labels.
    _, source = data.load_source("npz", "test", local_path=path)
    assert not source.has_labels and source.single_split
    data.make_dataset("npz", "test", 4, local_path=path)
    data.make_dataset("npz", "train", 4, local_path=path, require_labels=False)


def test_npz_single_array_warns_that_every_split_is_the_file(tmp_path):
    path = _npz(tmp_path / "one.npz", x=_images(12), y=np.arange(12) % 3)
    with pytest.warns(UserWarning, match=r"no per-split arrays.*'test' split read from it is the training"):
        data.make_dataset("npz", "train", 4, local_path=path)


def test_npz_negative_labels(tmp_path):
    path = _npz(tmp_path / "n.npz", x=_images(6), y=np.array([0, 1, -1, 2, 0, 1]))
    with pytest.raises(ValueError, match=r"must hold class labels >= 0.*Received: y min=-1"):
        data.load_source("npz", "train", local_path=path)


def test_npz_non_integer_labels(tmp_path):
    path = _npz(tmp_path / "s.npz", x=_images(4), y=np.array([0.0, 0.5, 1.0, 2.7]))
    with pytest.raises(ValueError, match=r"non-integer values.*argmax"):
        data.load_source("npz", "train", local_path=path)
    whole = _npz(tmp_path / "w.npz", x_train=_images(4), y_train=np.array([0.0, 1.0, 2.0, 1.0]))
    assert data.load_source("npz", "train", local_path=whole)[1].num_classes == 3  # 1.0 is a class id


def test_npz_labels_beyond_class_names(tmp_path):
    path = _npz(tmp_path / "c.npz", x=_images(4), y=np.array([0, 1, 2, 3]), class_names=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"labels up to 3, but the file's class_names name 2 classes"):
        data.load_source("npz", "train", local_path=path)


def test_empty_source(tmp_path):
    path = _npz(tmp_path / "e.npz", x_train=_images(0), y_train=np.zeros(0, int))
    with pytest.raises(ValueError, match=r"no examples in split 'train'.*yields no batch"):
        data.make_dataset("npz", "train", 4, local_path=path)
    with pytest.raises(ValueError, match=r"no examples in split 'train' after \{'max_examples': 0\}"):
        data.make_dataset("digits", "train", 4, max_examples=0)


def test_classes_out_of_range():
    with pytest.raises(ValueError, match=r"`classes` must be labels in \[0, 10\)"):
        data.make_dataset("digits", "train", 4, classes=[3, 12])


# ================================================================ the JPEG archive, folders
def _jpeg_archive(path, images, corrupt=None):
    encoded = [tf.io.encode_jpeg(img).numpy() for img in images]
    if corrupt is not None:
        encoded[corrupt] = encoded[corrupt][: len(encoded[corrupt]) // 2]  # a truncated copy
    blob = np.frombuffer(b"".join(encoded), np.uint8)
    offsets = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
    labels = np.arange(len(images)).astype(np.uint8) % 10
    return _npz(path, train_jpeg=blob, train_offsets=offsets, train_y=labels)


def test_jpeg_archive_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing at .*missing\.npz"):
        data.load_source("cifar10_jpeg", "train", local_path=str(tmp_path / "missing.npz"))


def test_jpeg_archive_with_an_image_that_does_not_decode(tmp_path):
    images = _images(5, 32, 32, 3)
    path = _jpeg_archive(tmp_path / "cifar.npz", images, corrupt=3)
    with pytest.raises(ValueError, match=r"1 image\(s\) of the 'train' split .* are not complete JPEG.*\[3\]"):
        data.make_dataset("cifar10_jpeg", "train", 2, local_path=path)
    x, _ = data.load_arrays("cifar10_jpeg", "train", local_path=_jpeg_archive(tmp_path / "ok.npz", images))
    assert x.shape == (5, 32, 32, 3)  # the intact archive decodes


def test_official_archive_truncated(tmp_path):
    import standins

    archive = tmp_path / "cifar-10-python.tar.gz"
    standins.write_cifar_python(archive)
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) * 9 // 10])  # an interrupted download
    with pytest.raises(ValueError, match=r"not a readable tar archive \(EOFError.*truncated.*Download it again"):
        data.load_source("cifar10_python", "train", local_path=str(archive))


def test_empty_image_folder(tmp_path):
    with pytest.raises(ValueError, match=r"must contain one sub-folder per class.*sub-folders=\[\]"):
        data.load_source("folder", "train", local_path=str(tmp_path))
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    with pytest.raises(ValueError, match=r"sub-folder per class holding images.*\['cats', 'dogs'\]"):
        data.load_source("folder", "train", local_path=str(tmp_path))


def test_image_folder_with_a_file_that_is_not_an_image(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "0.png").write_bytes(tf.io.encode_png(_images(1)[0]).numpy())
    (tmp_path / "b" / "1.jpg").write_text("<html>an error page saved as .jpg</html>")
    with pytest.raises(ValueError, match=r"1 file\(s\) of the image folder are not PNG, JPEG.*b/1\.jpg"):
        data.make_dataset("folder", "train", 2, local_path=str(tmp_path))


def test_image_folder_with_mixed_sizes_is_resized(tmp_path):
    for cls, (h, w) in (("a", (8, 8)), ("b", (16, 12))):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "0.png").write_bytes(tf.io.encode_png(_images(1, h, w, 1)[0]).numpy())
    x, y = data.load_arrays("folder", "train", local_path=str(tmp_path), image_size=6)
    assert x.shape == (2, 6, 6, 1) and list(y) == [0, 1]  # every image at image_size: not an error


# ======================================================================== batches, replicas
def test_global_batch_smaller_than_replicas():
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    with pytest.raises(
        ValueError,
        match=r"global batch size 1 must be a multiple of the number of replicas "
        r"\(2.*at least one example\)\. Use a batch size of 2, or fewer devices",
    ):
        data.make_dataset("digits", "train", 1, input_context=context)
    with pytest.raises(ValueError, match=r"global batch size 3 must be a multiple.*Use a batch size of 2 or 4"):
        data.make_dataset("digits", "train", 3, input_context=context)


def test_batch_larger_than_the_data_set(tmp_path):
    path = _npz(tmp_path / "small.npz", x_train=_images(5), y_train=np.arange(5) % 2)
    x, y = next(iter(data.make_dataset("npz", "train", 16, local_path=path)))
    assert x.shape == (16, 8, 8, 1)  # a train split repeats before batching: full batches, no error


def test_zero_batch_size():
    with pytest.raises(ValueError, match=r"`global_batch_size` must be a positive int. Received: global_batch_size=0"):
        data.make_dataset_fn("digits", "train", 0)


# ================================================================================ fit
def test_fit_grayscale_without_channel_axis(trainer, digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"shape \[batch, 8, 8, 1\].*\(32, 8, 8\).*x\[\.\.\., None\]"):
        _fit(trainer, x[..., 0], y)


def test_fit_wrong_channel_count(trainer, digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"have 3 channel\(s\), the trainer 1.*image_shape=\(8, 8, 3\)"):
        _fit(trainer, np.repeat(x, 3, axis=-1), y)
    with pytest.raises(ValueError, match=r"channels-first"):
        _fit(trainer, np.zeros((4, 1, 8, 8), np.float32), y[:4])


def test_fit_wrong_image_size_in_a_dataset(trainer, digits):
    x, y = digits
    big = tf.image.resize(x, (16, 16)).numpy()
    with pytest.raises(ValueError, match=r"shape \[batch, 8, 8, 1\]; the 'x' batch has shape \(None, 16, 16, 1\)"):
        _fit_dataset(trainer, big, y)
    _fit_dataset(trainer, x, y)  # the same trainer fits the corrected data (its optimizer was built up front)


def test_fit_uint8_images(trainer, digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"expects float images.*is uint8.*to_pixel_range"):
        _fit(trainer, np.round((x + 1) * 127.5).astype(np.uint8), y)


def test_fit_0_255_float_images(trainer, digits):
    x, y = digits
    pixels = (x + 1) * 127.5  # x.astype('float32') of uint8 images: trains silently on the wrong scale
    with pytest.raises(ValueError, match=r"far outside the trainer's pixel_range.*0\.\.255.*Received: x in \[0, 255\]"):
        _fit(trainer, pixels, y)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"The x images lie far outside pixel_range.*0\.\.255"):
        _fit_dataset(trainer, pixels, y)  # a tf.data pipeline: the step's assert


def test_fit_nan_or_inf_images(trainer, digits):
    x, y = digits
    x = x.copy()
    x[5, 0, 0, 0], x[9, 1, 1, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"2 image\(s\) of `x` contain NaN or Inf.*\[5, 9\]"):
        _fit(trainer, x, y)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"'x' image batch contains NaN or Inf"):
        _fit_dataset(trainer, x, y)


def test_fit_labels_out_of_range(trainer, digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"class ids in \[0, 10\).*num_classes=10.*Received: y in \[0, 12\]"):
        _fit(trainer, x, np.where(y == 9, 12, y))
    with pytest.raises(ValueError, match=r"class ids in \[0, 10\).*Received: y in \[-1, 8\]"):
        _fit(trainer, x, np.where(y == 9, -1, y))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"The y labels must be class ids in \[0, 10\)"):
        _fit_dataset(trainer, x, np.where(y == 9, 12, y).astype(np.int32))


def test_fit_non_integer_labels(trainer, digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"floats that are not whole numbers.*Received: e\.g\. y=\[0\.5"):
        _fit(trainer, x, y + 0.5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"The y labels are floats that are not whole"):
        _fit_dataset(trainer, x, (y + 0.5).astype(np.float32))
    _fit(trainer, x[:8], y[:8].astype(np.float32))  # whole-number floats are class ids: accepted


def test_fit_one_hot_labels(trainer, digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"labels of shape \[N\]; `y` has shape \(32, 10\).*np\.argmax\(y, axis=-1\)"):
        _fit(trainer, x, np.eye(10)[y])
    with pytest.raises(ValueError, match=r"the 'y' batch has shape \(None, 10\).*argmax"):
        _fit_dataset(trainer, x, np.eye(10, dtype=np.float32)[y])


def test_fit_without_labels(trainer, digits):
    x, _ = digits
    with pytest.raises(ValueError, match=r"fit needs labels with the images: fit\(x, y, \.\.\.\).*y=None"):
        _fit(trainer, x)


def test_fit_labels_and_images_of_different_lengths(trainer, digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"(?s)Data cardinality is ambiguous.*'x' sizes: 32.*'y' sizes: 30"):
        _fit(trainer, x, y[:30])  # Keras' own message, clear enough


def test_fit_empty_data(trainer, digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"`fit` was given no images: nothing would train"):
        _fit(trainer, x[:0], y[:0])
    with pytest.raises(ValueError, match=r"dataset passed to `fit` is empty.*cardinality\(\)=0"):
        _fit_dataset(trainer, x[:0], y[:0])


def test_fit_batch_smaller_than_replicas(digits, two_device_strategy):
    x, y = digits
    trainer = _trainer(two_device_strategy)
    with pytest.raises(
        ValueError, match=r"With 2 replicas every batch needs at least 2 examples, but batch_size has 1"
    ):
        _fit(trainer, x[:4], y[:4], batch_size=1)
    with pytest.raises(ValueError, match=r"but the last batch has 1 \(5 examples in batches of 4\).*drop the last 1"):
        _fit(trainer, x[:5], y[:5], batch_size=4)
    # A tf.data pipeline's batch sizes are not static: the step itself refuses an empty replica
    # batch (before: "LeakyReluGrad ... must have the same size and shape" in the backward pass).
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"A replica got an empty x batch: the last batch "
        r"of the dataset has fewer examples than the 2 replicas. Batch it with drop_remainder=True",
    ):
        _fit_dataset(trainer, x[:5], y[:5], batch=4)
    before = [w.numpy() for w in trainer.network.weights]
    _fit(trainer, x[:4], y[:4], batch_size=2)  # even batches still train, with identical replicas
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, trainer.network.weights))


# ================================================================================ CLI
def _parse(*params, files=TINY):
    with gin.unlock_config():
        gin.clear_config()
        run_config.parse_gin(list(files), list(params))


def test_gin_misspelt_parameter_or_configurable():
    with pytest.raises(
        ValueError, match=r"(?s)'run_training' doesn't have a parameter named 'trian_steps'.*Check the spelling"
    ):
        _parse("run_training.trian_steps = 3")
    with pytest.raises(ValueError, match=r"(?s)No configurable matching 'run_trainin'.*Check the spelling"):
        _parse("run_trainin.train_steps = 3")


def test_gin_misspelt_macro():
    with pytest.raises(ValueError) as info:
        _parse("GLOBAL_BATCH_SIZ = 4")  # gin would define a new macro that nothing reads
    assert "read by nothing in the config" in str(info.value)
    assert "GLOBAL_BATCH_SIZ (set in --gin_param): did you mean GLOBAL_BATCH_SIZE?" in str(info.value)
    _parse("GLOBAL_BATCH_SIZE = 4")  # the real one is fine


def test_gin_unquoted_string():
    with pytest.raises(ValueError, match=r"needs quotes: DATASET = 'digits', not DATASET = digits"):
        _parse("DATASET = digits")


def test_gin_file_missing():
    with pytest.raises(FileNotFoundError, match=r"gin config file not found: gin_configs/tiny_cnn\.gin.*gin_configs/"):
        run_config.parse_gin(["gin_configs/tiny_cnn.gin"], [])


def test_model_dir_is_a_file(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("my notes")
    _parse()
    with pytest.raises(ValueError, match=r"--model_dir must be a directory.*is a file"):
        run_config.check_run_config(str(path), TINY, [])
    assert path.read_text() == "my notes"


def _train_py(model_dir, *params):
    """python train.py with the tiny softmax config, in a subprocess."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    cmd = (
        [sys.executable, "train.py"]
        + [f"--gin_file={f}" for f in TINY]
        + [f"--gin_param={p}" for p in params]
        + [f"--model_dir={model_dir}"]
    )
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_train_py_label_free_npz_into_a_new_model_dir(tmp_path):
    path = _npz(tmp_path / "faces.npz", x=_images(40))
    run = _train_py(
        tmp_path / "run",
        "DATASET = 'npz'",
        f"train/make_dataset_fn.local_path = '{path}'",
        "run_training.export = False",
    )
    assert run.returncode != 0
    assert "no labels ('y')" in run.stderr and "OOD / evaluation set" in run.stderr
    assert not (tmp_path / "run").exists()  # nothing left: a corrected command starts clean


def test_train_py_more_classes_in_the_config_than_in_the_data(tmp_path):
    """NUM_CLASSES = 20 on 10-class data: refused before the first step, naming both counts and
    what to set; nothing is left in the new model_dir."""
    run = _train_py(tmp_path / "run", "NUM_CLASSES = 20", "run_training.export = False")
    assert run.returncode != 0
    assert (
        "ValueError: The training data ('digits', split 'train') has 10 classes (0, 1, 2, 3, 4, 5, 6, 7, "
        "8, 9), but SoftmaxClassifier has num_classes=20: 10 of its logits would never be a target" in run.stderr
    ), run.stderr[-2000:]
    assert "NUM_CLASSES in the gin configs) to 10" in run.stderr
    assert not (tmp_path / "run").exists()


def test_check_data_classes():
    from keras_ebm.training import check_data_classes

    info = data.SourceInfo("npz", "train", 64, (8, 8, 1), 3, ("a", "b", "c"))
    check_data_classes(_trainer(), None)  # no source information: nothing to compare

    class Unsupervised:
        num_classes, uses_labels = 10, False

    check_data_classes(Unsupervised(), info)  # CLEL ignores labels
    with pytest.raises(ValueError, match=r"has 3 classes \(a, b, c\).*num_classes=10: 7 of its logits.*class_names"):
        check_data_classes(_trainer(), info)
    with pytest.raises(ValueError, match=r"has 12 classes .*num_classes=10: labels 10..11 would be out of range"):
        check_data_classes(_trainer(), data.SourceInfo("npz", "train", 64, (8, 8, 1), 12, tuple("abcdefghijkl")))


def _snapshot(directory):
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, directory)] = f.read()
    return out


def test_failed_resume_leaves_config_and_checkpoints_unchanged(tmp_path, monkeypatch):
    """A run trained 2 steps on an npz; then the file is truncated (a bad copy) and the run resumed,
    then resumed with labels beyond num_classes: both fail naming the problem, and config.gin and
    checkpoints/ are byte-for-byte what they were (train.py's main, in this process)."""
    from absl import flags

    from helpers import import_script

    train = import_script("train")  # train.py's main, with its flags (eval's may be defined)
    from keras_ebm import training

    path = str(tmp_path / "digits.npz")
    x, y = data.load_arrays("digits", "train", max_examples=64)
    np.savez(path, x_train=x, y_train=y)
    params = [
        "DATASET = 'npz'",
        f"train/make_dataset_fn.local_path = '{path}'",
        "run_training.export = False",
        "run_training.progress = False",
    ]
    model_dir = str(tmp_path / "run")
    argv = (
        ["train.py"]
        + [f"--gin_file={f}" for f in TINY]
        + [f"--gin_param={p}" for p in params]
        + [f"--model_dir={model_dir}"]
    )

    def main(steps):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv + [f"--gin_param=run_training.train_steps = {steps}"])
        with gin.unlock_config():
            gin.clear_config()
        try:
            with gin.unlock_config():
                train.main([])
        finally:
            flags.FLAGS.unparse_flags()

    main(2)
    assert training  # (imported: train.main uses it)
    before = _snapshot(os.path.join(model_dir, "checkpoints"))
    config = open(os.path.join(model_dir, "config.gin"), "rb").read()
    assert any(name.startswith("ckpt-2") for name in before)

    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 3])
    with pytest.raises(ValueError, match=r"digits\.npz cannot be read as a \.npz.*truncated"):
        main(4)
    assert _snapshot(os.path.join(model_dir, "checkpoints")) == before
    assert open(os.path.join(model_dir, "config.gin"), "rb").read() == config

    np.savez(path, x_train=x, y_train=np.where(y == 9, 11, y))  # 12 classes in the data, 10 in the config
    with pytest.raises(ValueError, match=r"has 12 classes .* num_classes=10: labels 10..11 would be out of range"):
        main(4)
    assert _snapshot(os.path.join(model_dir, "checkpoints")) == before
    assert open(os.path.join(model_dir, "config.gin"), "rb").read() == config
