"""Tests of keras_ebm.export: a SavedModel that scores images (pixel values 0..255) without keras_ebm installed."""

import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import TRAINER_NAMES, every_trainer, tiny_network
from keras_ebm import export
from keras_ebm import scores as scores_lib

IMAGE_SHAPE = (8, 8, 3)
NUM_CLASSES = 5
PIXEL_RANGE = (-1.0, 1.0)
BUFFER_SHAPE = (64, 8, 8, 3)  # 12288 floats = 48 KiB: must not reach the export


def _network(seed=0, num_classes=NUM_CLASSES):
    net = tiny_network(IMAGE_SHAPE, num_classes, seed=seed, widths=(4,), pool="average", norm=True)
    # Non-trivial moving statistics, so that a training-mode BN call would show in the outputs.
    bn = next(layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization))
    bn.moving_mean.assign(np.linspace(-0.3, 0.3, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
    return net


class TinyTrainer(keras.Model, scores_lib.Scorer):
    """A trainer-like model: a network plus training-only state and a model-specific score."""

    score_names = scores_lib.CLASSIFIER_SCORES + ("max_logit",)

    def __init__(self, network, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.buffer = self.add_weight(shape=BUFFER_SHAPE, initializer="ones", trainable=False, name="replay_buffer")
        self.steps = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False, name="steps")

    def call(self, x, training=False):
        return self.network(x, training=training)

    def scores(self, x, names=None):
        out = {"max_logit": tf.reduce_max(self.network(x, training=False), axis=-1)}
        builtin = [n for n in (names or self.score_names) if n in scores_lib.CLASSIFIER_SCORES]
        out.update(scores_lib.classifier_scores(lambda v: self(v), x, builtin))
        return {n: out[n] for n in (names or self.score_names)}


def _mean_logit(model, x):
    return tf.reduce_mean(model(x, training=False), axis=-1)


def _images(n=6, seed=1):
    return np.random.RandomState(seed).randint(0, 256, (n,) + IMAGE_SHAPE).astype(np.uint8)


def _float(images):
    return images.astype(np.float32) / 255.0 * (PIXEL_RANGE[1] - PIXEL_RANGE[0]) + PIXEL_RANGE[0]


def _expected_outputs(model, images):
    """Everything the export should return, computed eagerly from the Keras model."""
    x = tf.constant(_float(images))
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        log_px = tf.reduce_logsumexp(logits, axis=-1)
    grad = tape.gradient(log_px, x)
    logits = logits.numpy()
    probabilities = tf.nn.softmax(logits).numpy()
    return {
        "logits": logits,
        "probabilities": probabilities,
        "energy": -log_px.numpy(),
        "log_px": log_px.numpy(),
        "max_softmax": probabilities.max(-1),
        "grad_norm": -np.sqrt((grad.numpy() ** 2).reshape(len(images), -1).sum(-1)),
        "max_logit": logits.max(-1),
        "mean_logit": logits.mean(-1),
    }


_CHILD = textwrap.dedent(
    """
    import sys

    sys.modules["keras"] = None  # the export must run without Keras: any import of it fails
    import numpy as np
    import tensorflow as tf

    export_dir, images_path, out_path = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    assert "keras_ebm" not in sys.modules, sorted(m for m in sys.modules if "keras_ebm" in m)
    images = np.load(images_path)
    out = {}
    for name in ["logits", "energy", "ood_score", "scores", "serving_default"]:
        (spec,) = loaded.signatures[name].structured_input_signature[1].values()
        out["spec/" + name] = np.array([str(spec.dtype.name), str(spec.shape.as_list())])
        # A NumPy array, as a user passes it: TensorFlow converts it to the declared float32.
        for key, value in loaded.signatures[name](images=images).items():
            out["sig/" + name + "/" + key] = value.numpy()
        for key, value in loaded.signatures[name](images=images.astype(np.float64)).items():
            out["sigf64/" + name + "/" + key] = value.numpy()
        # Case 3(b) of the reliability issue: float images that are not pixel values are refused
        # by the signatures themselves, in a process without keras_ebm.
        for label, bad in (("half", np.full(images.shape, 0.5)), ("nan", np.full(images.shape, np.nan))):
            try:
                loaded.signatures[name](images=bad)
                out["refused/" + name + "/" + label] = np.array("scored")
            except tf.errors.InvalidArgumentError as e:
                message = str(e)
                out["refused/" + name + "/" + label] = np.array(message[message.find("assertion failed"):][:400])
        for key, value in getattr(loaded, name)(images).items():
            out["attr/" + name + "/" + key] = value.numpy()
    out["meta/image_shape"] = loaded.image_shape.numpy()
    out["meta/pixel_range"] = loaded.pixel_range.numpy()
    out["meta/num_classes"] = loaded.num_classes.numpy()
    out["meta/ood_score_name"] = np.array(loaded.ood_score_name.numpy().decode())
    out["meta/score_names"] = np.array([s.decode() for s in loaded.score_names.numpy()])
    np.savez(out_path, **out)
    """
)


@pytest.fixture(scope="module")
def trainer():
    model = TinyTrainer(_network())
    model(tf.zeros((1,) + IMAGE_SHAPE))
    return model


@pytest.fixture(scope="module")
def exported(trainer, tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("export") / "model")
    export.export_model(
        trainer,
        export_dir,
        IMAGE_SHAPE,
        pixel_range=PIXEL_RANGE,
        ood_score="grad_norm",
        extra_scores={"mean_logit": _mean_logit},
    )
    return export_dir


def test_fresh_process_outputs_match_keras(trainer, exported, tmp_path):
    images = _images()
    np.save(tmp_path / "images.npy", images)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    # Run from tmp_path with the repository off sys.path: keras_ebm must not be importable-by-accident.
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, exported, str(tmp_path / "images.npy"), str(tmp_path / "out.npz")],
        cwd=tmp_path,
        env={k: v for k, v in env.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = dict(np.load(tmp_path / "out.npz"))
    expected = _expected_outputs(trainer, images)
    checks = {
        "logits/logits": "logits",
        "energy/energy": "energy",
        "ood_score/ood_score": "grad_norm",
        "serving_default/logits": "logits",
        "serving_default/probabilities": "probabilities",
        "serving_default/energy": "energy",
        "serving_default/ood_score": "grad_norm",
    }
    for score in ["log_px", "max_softmax", "grad_norm", "max_logit", "mean_logit"]:
        checks["scores/" + score] = score
    for path in ("sig", "sigf64", "attr"):
        for key, name in checks.items():
            np.testing.assert_allclose(out[f"{path}/{key}"], expected[name], atol=1e-4, err_msg=f"{path}/{key}")
    # Exactly the documented outputs, no more.
    assert sorted(k[len("sig/scores/") :] for k in out if k.startswith("sig/scores/")) == sorted(
        ["log_px", "max_softmax", "grad_norm", "max_logit", "mean_logit"]
    )
    assert sorted(k for k in out if k.startswith("sig/serving_default/")) == [
        "sig/serving_default/" + k for k in ["energy", "logits", "ood_score", "probabilities"]
    ]
    for name in export.ENDPOINTS:  # declared for serving tools: float32 [None, H, W, C]
        assert list(out["spec/" + name]) == ["float32", "[None, 8, 8, 3]"], name
        assert "not whole numbers" in str(out[f"refused/{name}/half"]), out[f"refused/{name}/half"]
        assert "NaN or Inf" in str(out[f"refused/{name}/nan"]), out[f"refused/{name}/nan"]
    np.testing.assert_array_equal(out["meta/image_shape"], IMAGE_SHAPE)
    np.testing.assert_allclose(out["meta/pixel_range"], PIXEL_RANGE)
    assert int(out["meta/num_classes"]) == NUM_CLASSES
    assert str(out["meta/ood_score_name"]) == "grad_norm"
    assert list(out["meta/score_names"]) == ["log_px", "max_softmax", "grad_norm", "max_logit", "mean_logit"]


def test_metadata_json_round_trip(exported):
    meta = export.read_export_metadata(exported)
    with open(os.path.join(exported, "assets", export.METADATA_FILENAME)) as f:
        assert json.load(f) == meta  # plain JSON, readable without TF
    assert meta["image_shape"] == list(IMAGE_SHAPE)
    assert meta["pixel_range"] == list(PIXEL_RANGE)
    assert meta["num_classes"] == NUM_CLASSES
    assert meta["ood_score"] == "grad_norm"
    assert meta["score_names"] == ["log_px", "max_softmax", "grad_norm", "max_logit", "mean_logit"]
    assert sorted(meta["signatures"]) == sorted(export.ENDPOINTS)
    assert meta["signatures"]["scores"]["outputs"] == sorted(meta["score_names"])
    assert meta["format_version"] == 3
    assert meta["signatures"]["logits"]["inputs"]["images"] == {
        "dtype": "float32",
        "shape": [None, 8, 8, 3],
        "values": "whole numbers in [0, 255] (pixel values)",
    }
    loaded = export.load_export(exported)
    assert sorted(loaded.signatures) == sorted(export.ENDPOINTS)
    with pytest.raises(ValueError, match="No keras_ebm export metadata"):
        export.read_export_metadata(os.path.dirname(exported))


def test_training_only_variables_are_not_exported(trainer, exported):
    saved = dict(tf.train.list_variables(os.path.join(exported, "variables", "variables")))
    saved_shapes = sorted(tuple(s) for name, s in saved.items() if name.startswith("network_variables/"))
    network_shapes = sorted(tuple(v.shape) for v in trainer.network.weights)
    assert saved_shapes == network_shapes
    assert BUFFER_SHAPE not in [tuple(s) for s in saved.values()]
    metadata_names = {"image_shape", "pixel_range", "num_classes", "ood_score_name", "score_names", "format_version"}
    others = {name.split("/")[0] for name in saved if not name.startswith(("network_variables/", "_CHECKPOINT"))}
    assert others == metadata_names
    variables_bytes = sum(
        os.path.getsize(os.path.join(exported, "variables", f)) for f in os.listdir(os.path.join(exported, "variables"))
    )
    assert variables_bytes < np.prod(BUFFER_SHAPE) * 4  # the buffer alone is 48 KiB
    loaded = export.load_export(exported)
    assert len(loaded.network_variables) == len(trainer.network.weights)


@pytest.mark.parametrize("endpoint", ["logits", "scores"])
def test_bad_inputs_raise_with_expected_shape(exported, endpoint):
    loaded = export.load_export(exported)
    expected = r"expected images of shape \[N, 8, 8, 3\] \(pixel values 0..255\)"
    good = _images(2)
    bad_shape = np.zeros((2, 16, 16, 3), np.uint8)
    bad_rank = np.zeros(IMAGE_SHAPE, np.uint8)
    bad_channels = np.zeros((2, 8, 8, 1), np.uint8)
    attr = getattr(loaded, endpoint)
    sig = loaded.signatures[endpoint]
    for bad in (bad_shape, bad_rank, bad_channels):
        with pytest.raises(tf.errors.InvalidArgumentError, match=expected + "; received shape"):
            attr(bad)
        with pytest.raises(tf.errors.InvalidArgumentError, match=expected + "; received shape"):
            sig(images=tf.constant(bad, tf.float32))
    # Other dtypes holding pixel values are scored like the uint8 images; floats in the model's
    # pixel_range (here [-1, 1]) are not pixel values and are refused.
    reference = attr(good)
    for same in (good.astype(np.int64), good.astype(np.float64), tf.constant(good, tf.float32)):
        for key, value in attr(same).items():
            np.testing.assert_array_equal(value, reference[key])
    for bad in (_float(good), tf.constant(_float(good))):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside \[0, 255\].*np.round"):
            attr(bad)
    # A uint8 *tensor* to a float32 signature: TensorFlow's own message names both dtypes.
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor but is a uint8"):
        sig(images=tf.constant(good))


def test_in_process_module_matches_keras_default_score():
    net = _network(seed=3)
    module = export.ServingModule(net, IMAGE_SHAPE, pixel_range=PIXEL_RANGE)
    images = _images(3, seed=4)
    expected = _expected_outputs(net, images)
    out = module.serving_default(tf.constant(images))
    np.testing.assert_allclose(out["ood_score"], expected["log_px"], atol=1e-4)
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-5)
    assert module.score_name_list == ["log_px", "max_softmax", "grad_norm"]
    assert len(module.network_variables) == len(net.weights)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[N, 8, 8, 3\]"):
        module.logits(tf.zeros((1, 4, 4, 3), tf.uint8))


class TinyEBM(keras.Model, scores_lib.Scorer):
    """A model that is not a classifier: its own energy and scores (as CLEL's trainer)."""

    is_classifier = False
    default_ood_score = "neg_energy"
    score_names = ("neg_energy",)

    def __init__(self, network, **kwargs):
        super().__init__(**kwargs)
        self.network = network

    def call(self, x, training=False):
        return self.network(x, training=training)

    def energy(self, x, training=False):
        return 0.5 * tf.reduce_sum(tf.square(self.network(x, training=False)), axis=-1)

    def scores(self, x, names=None):
        return {"neg_energy": -self.energy(x)}


def test_non_classifier_exports_its_own_energy_and_scores_only():
    net = _network(seed=7)
    module = export.ServingModule(TinyEBM(net), IMAGE_SHAPE, pixel_range=PIXEL_RANGE)
    images = _images(3, seed=8)
    logits = net(_float(images), training=False).numpy()
    energy = 0.5 * (logits**2).sum(-1)
    assert module.score_name_list == ["neg_energy"]  # no JEM scores of a non-classifier's outputs
    assert module.metadata()["classifier"] is False and module.metadata()["ood_score"] == "neg_energy"
    np.testing.assert_allclose(module.energy(tf.constant(images))["energy"], energy, rtol=1e-5, atol=1e-5)
    out = module.serving_default(tf.constant(images))
    assert sorted(out) == ["energy", "logits", "ood_score"]
    np.testing.assert_allclose(out["energy"], energy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["ood_score"], -energy, rtol=1e-5, atol=1e-5)
    assert sorted(module.scores(tf.constant(images))) == ["neg_energy"]
    with pytest.raises(ValueError, match="ood_score=.*log_px"):
        export.ServingModule(TinyEBM(net), IMAGE_SHAPE, ood_score="log_px")

    # Only a `keras_ebm.scores.Scorer` speaks for itself; any other Keras model is a classifier.
    plain = export.ServingModule(net, IMAGE_SHAPE, pixel_range=PIXEL_RANGE)
    assert plain.score_name_list == list(scores_lib.CLASSIFIER_SCORES)


def test_constructor_validation():
    net = _network()
    with pytest.raises(ValueError, match="ood_score=.*nope"):
        export.ServingModule(net, IMAGE_SHAPE, ood_score="nope")
    with pytest.raises(ValueError, match="already taken"):
        export.ServingModule(net, IMAGE_SHAPE, extra_scores={"log_px": _mean_logit})
    with pytest.raises(ValueError, match="image_shape"):
        export.ServingModule(net, (8, 8))
    with pytest.raises(ValueError, match="pixel_range"):
        export.ServingModule(net, IMAGE_SHAPE, pixel_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="shape \\[batch\\]"):
        export.ServingModule(net, IMAGE_SHAPE, extra_scores={"bad": lambda m, x: m(x)})


def test_reexport_replaces_and_crash_keeps_previous(tmp_path, monkeypatch):
    export_dir = str(tmp_path / "model")
    images = _images(2)
    first, second = _network(seed=5), _network(seed=6, num_classes=3)
    export.export_model(first, export_dir, IMAGE_SHAPE)
    export.export_model(second, export_dir, IMAGE_SHAPE, ood_score="max_softmax")
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no staging or old copies left behind
    loaded = export.load_export(export_dir)
    np.testing.assert_allclose(loaded.logits(images)["logits"], second(_float(images)), atol=1e-4)
    assert export.read_export_metadata(export_dir)["num_classes"] == 3

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_model(first, export_dir, IMAGE_SHAPE)
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert export.read_export_metadata(export_dir)["ood_score"] == "max_softmax"
    monkeypatch.undo()

    precious = tmp_path / "not_an_export"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to replace"):
        export.export_model(first, str(precious), IMAGE_SHAPE)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_empty_batch_gives_empty_outputs(exported):
    loaded = export.load_export(exported)
    empty = np.zeros((0,) + IMAGE_SHAPE, np.uint8)
    widths = {"logits": (0, NUM_CLASSES), "probabilities": (0, NUM_CLASSES)}
    for name in export.ENDPOINTS:
        # noqa B023: each lambda is called within its iteration of `name`.
        for call in (lambda: getattr(loaded, name)(empty), lambda: loaded.signatures[name](images=empty)):  # noqa: B023
            out = call()
            assert out, name
            for key, value in out.items():
                assert tuple(value.shape) == widths.get(key, (0,)), (name, key, value.shape)


def test_float_images_that_are_not_pixel_values_are_refused(exported):
    """Case 3(b): a float array (0.5, NaN, ...) is never scored as the black image a uint8 cast
    makes of it, through a signature (the NumPy array passed as it is) or an attribute function;
    the message names the problem and says how to convert."""
    loaded = export.load_export(exported)
    shape = (2,) + IMAGE_SHAPE
    binary = (_images(2) > 127).astype(np.float32)  # a [0, 1] image of zeros and ones
    # Each case names its own fix: [0, 1] floats np.round(x * 255), floats already on the
    # [0, 255] scale np.round(x), and neither for values that are not pixels at all.
    unit, pixels = r"np\.round\(x \* 255\)", r"np\.round\(x\)"
    cases = [
        (np.full(shape, 0.5), "not whole numbers, all in \\[0, 1\\].*" + unit, pixels),
        (np.full(shape, 100.5), "not whole numbers, in \\[0, 255\\].*" + pixels, unit),
        (np.full(shape, np.nan, np.float32), "NaN or Inf", "np\\.round"),
        (np.full(shape, np.inf), "NaN or Inf", "np\\.round"),
        (np.full(shape, 300.0), r"outside \[0, 255\]", "np\\.round"),
        (np.full(shape, 300, np.int64), r"outside \[0, 255\]", "np\\.round"),
        (np.full(shape, -5.0, np.float32), r"outside \[0, 255\]", "np\\.round"),
        (-np.ones(shape, np.float32), r"outside \[0, 255\], all in \[-1, 1\].*np\.round\(\(x \+ 1\) \* 127\.5\)", unit),
        (binary, r"look like floats in \[0, 1\].*" + unit, pixels),
    ]
    for bad, message, not_said in cases:
        for name in export.ENDPOINTS:
            # noqa B023: each lambda is called within its iteration of `name`.
            for call in (getattr(loaded, name), lambda x: loaded.signatures[name](images=x)):  # noqa: B023
                with pytest.raises(tf.errors.InvalidArgumentError, match=message) as info:
                    call(bad)
                said = info.value.message.split("Received")[0]
                assert not re.search(not_said, said), (message, said)
    # The same zeros and ones as uint8 are pixel values (a black image): an attribute function
    # scores them; a signature cannot tell them from floats once TensorFlow converted them.
    assert loaded.logits(binary.astype(np.uint8))["logits"].shape == (2, NUM_CLASSES)
    with pytest.raises(tf.errors.InvalidArgumentError, match="look like floats"):
        loaded.signatures["logits"](images=binary.astype(np.uint8))


def _stale_sibling(parent, name, kind, pid=2**22 + 12345):
    path = parent / f".{name}.{kind}-{pid}-abc"
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"half")
    return path


def test_leftovers_of_a_killed_export_are_cleaned_up(tmp_path):
    """A kill during `export_model` leaves `.model.tmp-<pid>-*` (half-written) and, between its two
    renames, the previous export only as `.model.old-<pid>-*`: the next export (or
    `recover_export`) deletes the first and puts the second back; folders of live processes stay."""
    export_dir = tmp_path / "model"
    net = _network(seed=5)
    export.export_model(net, str(export_dir), IMAGE_SHAPE)
    images = _images(2)

    def logits():
        loaded = export.load_export(str(export_dir))  # kept alive while its function runs
        return loaded.logits(images)["logits"].numpy()

    expected = logits()
    # Killed between moving the previous export aside and renaming the new one in.
    dead_pid = 2**22 + 12345  # above the default pid_max: not a live process
    os.rename(export_dir, tmp_path / f".model.old-{dead_pid}-xyz")
    half = _stale_sibling(tmp_path, "model", "tmp", dead_pid)
    live = _stale_sibling(tmp_path, "model", "tmp", os.getppid())  # someone exporting right now
    touched = export.recover_export(str(export_dir))
    assert sorted(os.listdir(tmp_path)) == sorted(["model", live.name])
    assert str(half) in touched
    np.testing.assert_array_equal(logits(), expected)
    # The next export cleans its own leftovers too, and never touches a live process's folder.
    _stale_sibling(tmp_path, "model", "tmp", dead_pid)
    _stale_sibling(tmp_path, "model", "old", dead_pid)
    export.export_model(_network(seed=6), str(export_dir), IMAGE_SHAPE)
    assert sorted(os.listdir(tmp_path)) == sorted(["model", live.name])
    assert not np.allclose(logits(), expected)


@pytest.mark.parametrize("index", range(len(TRAINER_NAMES)), ids=TRAINER_NAMES)
def test_onnx_matches_the_saved_model(index, tmp_path):
    """Each trainer's export converts to ONNX (tf2onnx) and onnxruntime's outputs match the
    SavedModel's within 1e-4; grad_norm stays TensorFlow-only."""
    ort = pytest.importorskip("onnxruntime")
    model = list(every_trainer())[index]
    shape = tuple(model.image_shape)
    model(tf.zeros((1,) + shape))
    export_dir = str(tmp_path / "export")
    export.export_model(model, export_dir, shape, pixel_range=model.pixel_range, onnx=True)
    meta = export.read_export_metadata(export_dir)
    session = ort.InferenceSession(os.path.join(export_dir, meta["onnx"]["path"]))
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(uint8)", list(shape))
    images = np.random.RandomState(index).randint(0, 256, (5,) + shape).astype(np.uint8)
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == sorted(meta["onnx"]["outputs"])
    assert "grad_norm" not in names
    loaded = export.load_export(export_dir)
    expected = {**loaded.scores(images), **loaded.serving_default(images)}
    got = dict(zip(names, session.run(None, {"images": images})))
    assert set(got) <= set(expected) and {"logits", "energy"} <= set(got)
    for name, value in got.items():
        np.testing.assert_allclose(value, expected[name].numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
    # onnxruntime checks the declared input itself: rank, and dtype (no silent cast of floats).
    with pytest.raises(Exception, match="Invalid rank"):
        session.run(None, {"images": images[0]})
    with pytest.raises(Exception, match=r"data type.*tensor\(float\).*tensor\(uint8\)"):
        session.run(None, {"images": np.full(images.shape, 0.5, np.float32)})


def test_network_variables_follow_the_model_weight_order():
    """The export lists its variables in the model's weight order (reproducible exports: the traces'
    capture order changes between processes)."""
    net = tiny_network(IMAGE_SHAPE, NUM_CLASSES, widths=(4, 8), norm=True)
    module = export.ServingModule(net, IMAGE_SHAPE)
    assert [v.name for v in module.network_variables] == [w.path + ":0" for w in net.weights]


def test_evaluation_feeds_format_2_and_3_signatures(exported, tmp_path):
    """Evaluation converts its uint8 images to the signature's declared dtype: float32 (format 3)
    and uint8 (exports of format 2, written before the signatures declared float32)."""
    from keras_ebm.evaluation.adapters import uint8_logits_fn

    class Format2(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None] + list(IMAGE_SHAPE), tf.uint8, name="images")])
        def logits(self, images):
            return {"logits": tf.cast(images[:, 0, 0, :], tf.float32)}

    old = str(tmp_path / "format2")
    module = Format2()
    tf.saved_model.save(module, old, signatures={"logits": module.logits})
    images = _images(3)
    np.testing.assert_array_equal(uint8_logits_fn(tf.saved_model.load(old))(images), images[:, 0, 0, :])
    loaded = export.load_export(exported)
    np.testing.assert_array_equal(uint8_logits_fn(loaded)(images), loaded.logits(images)["logits"])
