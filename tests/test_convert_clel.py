"""keras_ebm.convert "clel": hankook/CLEL state dicts -> our CLEL trainer, checked against the
official forward recorded in tests/data/parity/clel_float32.npz (benchmarks/parity/record_clel.py;
no torch needed here)."""

import json
import os

import numpy as np
import pytest

from keras_ebm.backbones.clel import build_clel_ebm, build_clel_encoder, build_clel_projection
from keras_ebm.convert import convert_official
from keras_ebm.trainers.clel import CLEL

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "parity", "clel_float32.npz")


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN)
    return {k: data[k] for k in data.files}


def _last_state(golden):
    meta = json.loads(str(golden["meta/json"]))
    last = meta["steps"] - 1
    prefix = f"step/{last}/param/"
    state = {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}
    state["sampler.memory"] = golden[f"step/{last}/state/memory"]
    return state


def _trainer(golden):
    meta = json.loads(str(golden["meta/json"]))
    (w0, _), (w1, _), (w2, _), (w3, _) = meta["architecture"]["ebm_layers"]
    hidden = meta["architecture"]["mlp_hidden"]
    network = build_clel_ebm(widths=(w0, w1, w2, w3), blocks_per_stage=1, head_units=hidden, feature_dim=16)
    projection = build_clel_projection(16, hidden, 16)
    encoder = build_clel_encoder(
        widths=(16, 16, 16, 16), blocks_per_stage=(1, 1, 1, 1), head_units=hidden, output_dim=16, stem_width=64
    )
    return CLEL(network, projection, encoder, image_shape=(32, 32, 3), buffer_size=golden["init_state/memory"].shape[0])


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_converted_clel_matches_official_forward(golden):
    trainer = _trainer(golden)
    convert_official("clel", _last_state(golden), trainer)
    x = np.transpose(golden["eval/x"], (0, 2, 3, 1))
    f = np.asarray(trainer.network(x, training=False))
    np.testing.assert_allclose(f, golden["eval/ebm_f"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(0.5 * (f**2).sum(-1), golden["eval/energy"], rtol=1e-5, atol=1e-5)
    # Our latent is g(f / ||f||), the official one g(f): same direction (g is positively homogeneous).
    z = np.asarray(trainer.latent(f, trainer.projection))
    np.testing.assert_allclose(_unit(z), _unit(golden["eval/ebm_z"]), atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(trainer.encoder(x, training=False)), golden["eval/encoder_y"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(trainer.ema_network(x)), golden["eval/ema_ebm_f"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(trainer.ema_encoder(x)), golden["eval/ema_encoder_y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(trainer.buffer.buffer), np.transpose(_last_state(golden)["sampler.memory"], (0, 2, 3, 1))
    )


def test_converted_initial_weights_are_the_official_ones(golden):
    # Spectral-norm vectors: PyTorch flattens v as (in, kh, kw), we as (kh, kw, in).
    trainer = _trainer(golden)
    init = {k[len("init/") :]: v for k, v in golden.items() if k.startswith("init/")}
    convert_official("clel", init, trainer)
    layer = trainer.network.get_layer(f"{trainer.network.name}_x1_s2b0_conv2")
    key = "ebm.stages.2.1.conv2.parametrizations.weight"
    w = init[f"{key}.original"]
    np.testing.assert_array_equal(np.asarray(layer.kernel), np.transpose(w, (2, 3, 1, 0)))
    v = init[f"{key}.0._v"]
    np.testing.assert_array_equal(np.asarray(layer.sn_v), np.transpose(v.reshape(w.shape[1:]), (1, 2, 0)).ravel())
    # With the stored u, v both frameworks compute the same sigma = u^T W v.
    sigma = init[f"{key}.0._u"] @ w.reshape(w.shape[0], -1) @ v
    np.testing.assert_allclose(float(layer.spectral_norm(training=False)), sigma, rtol=1e-5)


def test_unplaced_and_missing_keys_are_named(golden):
    trainer = _trainer(golden)
    state = _last_state(golden)
    state["ebm.extra.weight"] = np.zeros(3, np.float32)
    del state["encoder.fc.3.bias"]
    with pytest.raises(ValueError) as err:
        convert_official("clel", state, trainer)
    assert "ebm.extra.weight" in str(err.value)
    assert "fc.3.bias" in str(err.value)
    with pytest.raises(ValueError, match="No CLEL weights"):
        convert_official("clel", {"model.conv.weight": np.zeros(3)}, trainer)
