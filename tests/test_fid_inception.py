"""The FID Inception network against pytorch-fid's and torch-fidelity's forward passes (recorded by
benchmarks/parity/record_fid_inception.py on deterministic random weights; no torch here), its
weight loader, its .npz conversion, the choice of feature network and the labels of the results."""

import hashlib
import importlib.util
import json
import os

import numpy as np
import pytest

from keras_ebm.evaluation import fid_inception as fi
from keras_ebm.evaluation import generative as gen
from keras_ebm.evaluation import report

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "fid_inception.npz")
RECORDER = os.path.join(HERE, "..", "benchmarks", "parity", "record_fid_inception.py")
TOL = 1e-4  # float32 round-off of ~100 layers; measured differences are about 2e-6
# which recorded forward each input pipeline reproduces
REFERENCES = {"pytorch_fid": "pytorch_fid", "tf2015": "torch_fidelity"}


_real_reader = fi.read_state_dict


def _recorder():
    spec = importlib.util.spec_from_file_location("record_fid_inception", RECORDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # NumPy only at import; torch is imported in its main()
    return module


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    out["meta"] = json.loads(str(out["meta"]))
    return out


@pytest.fixture(scope="module")
def recorder():
    return _recorder()


@pytest.fixture(scope="module")
def state_dict(golden, recorder):
    assert golden["meta"]["seed"] == recorder.SEED and golden["meta"]["recipe"] == recorder.RECIPE
    shapes = [tuple(int(v) for v in s.split(",")) if s else () for s in golden["shapes"]]
    return recorder.random_state_dict(list(zip(golden["names"], shapes)), golden["meta"]["seed"])


@pytest.fixture(scope="module")
def images(golden, recorder):
    out = recorder.test_images()
    np.testing.assert_array_equal(out["small"], golden["small_images"])
    for batch, digest in golden["meta"]["image_sha256"].items():
        assert hashlib.sha256(out[batch].tobytes()).hexdigest() == digest, batch
    return out


@pytest.fixture(scope="module")
def nets(state_dict):
    return {mode: fi.FIDInceptionFeatures(state_dict=state_dict, preprocessing=mode) for mode in REFERENCES}


@pytest.mark.parametrize("mode", sorted(REFERENCES))
def test_pool3_and_is_logits_match_the_recorded_torch_forward(nets, golden, images, mode):
    """pool3 (2048) and the IS logits (pool3 @ W, 1008) within 1e-4 of pytorch-fid's forward
    ("pytorch_fid") and of torch-fidelity's 2015-graph pipeline ("tf2015"), for 32x32 images
    (upsampled) and a 373x331 one (downsampled); the full logits (with the fc bias) too."""
    net, ref = nets[mode], REFERENCES[mode]
    for batch in ("small", "large"):
        out = net(images[batch])
        assert out["pool"].shape == (len(images[batch]), 2048) and out["logits"].shape == (len(images[batch]), 1008)
        np.testing.assert_allclose(out["pool"], golden[f"{batch}_{ref}_pool3"], rtol=0, atol=TOL, err_msg=batch)
        np.testing.assert_allclose(
            out["logits"], golden[f"{batch}_{ref}_logits_unbiased"], rtol=0, atol=TOL, err_msg=batch
        )
        bias = net.model.get_layer("fc").bias.numpy()  # the fc layer's output, as recorded
        np.testing.assert_allclose(
            out["logits"] + bias, golden[f"{batch}_{ref}_logits"], rtol=0, atol=TOL, err_msg=batch
        )
    # The two pipelines differ (resize grid and scaling), by far more than the tolerance.
    assert np.abs(golden["small_pytorch_fid_pool3"] - golden["small_torch_fidelity_pool3"]).max() > 100 * TOL


def test_grey_images_are_repeated_to_three_channels(nets, images):
    grey = images["small"][..., :1]  # the batch shape of "small": no new trace
    np.testing.assert_array_equal(nets["tf2015"](grey)["pool"], nets["tf2015"](np.repeat(grey, 3, -1))["pool"])


def test_loader_names_every_key_it_cannot_place(nets, state_dict):
    model = nets["tf2015"].model
    missing = {k: v for k, v in state_dict.items() if k != "Mixed_7c.branch_pool.bn.running_var"}
    with pytest.raises(ValueError, match=r"1 weight\(s\) are missing: \['Mixed_7c.branch_pool.bn.running_var'\]"):
        fi.load_state_dict(model, missing)
    extra = dict(state_dict, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
    with pytest.raises(ValueError, match=r"no place in the network: \['AuxLogits.fc.weight'\].*pytorch-fid"):
        fi.load_state_dict(model, extra)
    wrong = dict(state_dict, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
    with pytest.raises(ValueError, match=r"fc.weight has shape \(1000, 2048\).*expects \(2048, 1008\)"):
        fi.load_state_dict(model, wrong)
    # Keras' own InceptionV3 weights are refused by name, not silently half-loaded.
    with pytest.raises(ValueError, match="is not pytorch-fid's FID Inception state dict"):
        fi.load_state_dict(model, {"conv2d/kernel": np.zeros((3, 3, 3, 32))})


def test_npz_conversion_loads_through_the_same_path(nets, state_dict, tmp_path, monkeypatch):
    """`convert` (the .pth reader replaced by the random dict: no torch) checks the state dict by
    loading it, writes every tensor but BatchNorm's counters to an .npz, and
    `FIDInceptionFeatures(weights=npz)` reads that without torch through the same loader."""
    model = nets["tf2015"].model
    monkeypatch.setattr(fi, "build_fid_inception", lambda: model)  # the built network: no second build
    monkeypatch.setattr(fi, "read_state_dict", lambda path: dict(state_dict))
    pth = tmp_path / fi.FID_WEIGHTS_FILE
    pth.write_bytes(b"stands for the torch file")
    npz = str(tmp_path / "fid.npz")
    weights = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert fi.convert(str(pth), npz) == len(weights) == 472
    with np.load(npz) as data:
        assert sorted(data.files) == sorted(weights)
        for key in weights:
            np.testing.assert_array_equal(data[key], weights[key])
    broken = dict(state_dict)
    broken.pop("Mixed_5b.branch1x1.conv.weight")
    monkeypatch.setattr(fi, "read_state_dict", lambda path: broken)
    with pytest.raises(ValueError, match="Mixed_5b.branch1x1.conv.weight"):
        fi.convert(str(pth), str(tmp_path / "broken.npz"))
    assert not os.path.exists(tmp_path / "broken.npz")
    monkeypatch.setattr(fi, "read_state_dict", _real_reader)
    net = fi.FIDInceptionFeatures(weights=npz)
    assert net.name == "fid_inception" and net.weights_source == npz
    conv = model.get_layer("Mixed_7c.branch_pool.conv").kernel.numpy()
    np.testing.assert_array_equal(conv, np.transpose(state_dict["Mixed_7c.branch_pool.conv.weight"], (2, 3, 1, 0)))


def _no_weights_anywhere(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(fi.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(gen.WEIGHTS_ENV, raising=False)


def test_without_weights_the_error_names_the_url_and_the_option(monkeypatch, tmp_path):
    _no_weights_anywhere(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        fi.FIDInceptionFeatures()
    text = str(info.value)
    assert fi.FID_WEIGHTS_URL in text and "feature_network='fid_inception'" in text
    assert "--fid_inception_weights" in text and "--convert" in text and "keras_inception_v3" in text
    with pytest.raises(FileNotFoundError, match="/no/such.pth"):
        fi.FIDInceptionFeatures(weights="/no/such.pth")
    # "auto" with no weights at all: the FID Inception's error, not Keras'
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        gen.inception_features("auto")
    with pytest.raises(ValueError, match="network"):
        gen.inception_features("inception")


def test_auto_picks_the_fid_inception_when_its_weights_are_found(monkeypatch, tmp_path, state_dict, nets):
    _no_weights_anywhere(monkeypatch, tmp_path)
    monkeypatch.setattr(fi, "build_fid_inception", lambda: nets["tf2015"].model)  # no second build
    models = tmp_path / "keras" / "models"
    models.mkdir(parents=True)
    np.savez(models / fi.FID_WEIGHTS_NPZ, **state_dict)
    net = gen.inception_features()
    assert isinstance(net, fi.FIDInceptionFeatures) and net.name == "fid_inception" and net.note is None
    assert net.weights_source == str(models / fi.FID_WEIGHTS_NPZ)
    assert gen.inception_features(preprocessing="pytorch_fid").name == "fid_inception_pytorch_fid"
    # an explicit Keras choice is honoured, and fails without Keras' file
    with pytest.raises(FileNotFoundError, match="never uses random Inception weights"):
        gen.inception_features("keras_inception_v3")


class _FakeNet:
    """A feature network with a fixed random projection (no Inception), named like a real one."""

    metric_names = gen.ImageFeatures.metric_names

    def __init__(self, name, note):
        self.name, self.note = name, note
        self._w = np.random.RandomState(0).randn(8 * 8 * 3, 12)

    def __call__(self, images):
        flat = np.asarray(images, np.float64).reshape(len(images), -1) / 255.0
        return {"pool": flat @ self._w, "logits": flat @ self._w[:, :5]}


def test_every_fid_is_labelled_with_its_network(tmp_path):
    rng = np.random.RandomState(1)
    ref_images = rng.randint(0, 256, (60, 8, 8, 3)).astype("uint8")
    runs = []
    for net in (_FakeNet("fid_inception", None), _FakeNet("keras_inception_v3", gen.InceptionV3Features.note)):
        ref = gen.reference_statistics(net, dataset="noise", images=ref_images, use_cache=False, progress=False)
        res = gen.evaluate_generative(
            ref_images[:40], net, ref, splits=2, kid_subsets=2, kid_subset_size=20, progress=False, name="fresh"
        )
        assert res["feature_network"] == net.name and "fid" in res
        assert ("not comparable with published FID/IS" in res["note"]) == (net.name == "keras_inception_v3")
        run = tmp_path / net.name / "eval"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"generative": {f"fresh/{net.name}": res}}))
        runs.append(str(run.parent))
    report.compare_runs(runs, str(tmp_path / "report"))
    md = (tmp_path / "report" / "report.md").read_text()
    assert "fid [fresh] (fid_inception)" in md and "fid [fresh] (keras_inception_v3)" in md
    assert "inception_score [fresh] (keras_inception_v3)" in md


def test_gin_chooses_the_network_and_explicit_arguments_win(monkeypatch, tmp_path):
    """eval.py calls the gin configurable `inception_features` with only the flags it was given."""
    import gin

    from keras_ebm import configurables

    _no_weights_anywhere(monkeypatch, tmp_path)
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config("inception_features.network = 'keras_inception_v3'")
    try:
        with pytest.raises(FileNotFoundError, match="never uses random Inception weights"):
            configurables.inception_features()
        with pytest.raises(FileNotFoundError, match=r"feature_network='fid_inception'"):
            configurables.inception_features(network="fid_inception")
    finally:
        with gin.unlock_config():
            gin.clear_config()


def test_unknown_preprocessing_is_refused(state_dict):
    with pytest.raises(ValueError, match=r"preprocessing.*tf2015.*pytorch_fid.*Received: preprocessing='torch'"):
        fi.FIDInceptionFeatures(state_dict=state_dict, preprocessing="torch")
