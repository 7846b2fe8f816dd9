"""Backbones: the reference WRN's size and structure, porting traps, any input size."""

import math

import keras
import numpy as np
import pytest

from keras_ebm.backbones import TinyCNN, WideResNet, build_classifier, feature_extractor


def _layers(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def test_wrn_28_10_parameter_count_matches_reference():
    # CODE_FACTS 0.1: WRN-28-10 without BN, bias on every conv; "~36.5M" parameters. By hand:
    # stem 3*3*3*16 + 16 = 448. A group of 4 blocks from width w_in to w: the first block has
    # conv1 9*w_in*w + w, conv2 9*w*w + w and a 1x1 shortcut w_in*w + w; 3 more blocks 2*(9*w*w + w).
    def group(w_in, w):
        first = (9 * w_in * w + w) + (9 * w * w + w) + (w_in * w + w)
        return first + 3 * 2 * (9 * w * w + w)

    backbone_params = 448 + group(16, 160) + group(160, 320) + group(320, 640)
    head_params = 640 * 10 + 10  # class_output Linear(640, 10)
    unused_energy_output = 640 + 1  # the reference's unused energy_output Linear(640, 1)
    assert backbone_params == 36_464_928

    net = build_classifier(WideResNet(28, 10, input_shape=(32, 32, 3)), 10)
    assert feature_extractor(net).count_params() == backbone_params
    assert net.count_params() == backbone_params + head_params == 36_471_338
    # PyTorch's count over the reference CCF includes energy_output: 36,471,979. Both are "36.5M".
    reference_count = net.count_params() + unused_energy_output
    assert reference_count == 36_471_979
    assert round(net.count_params() / 1e6, 1) == round(reference_count / 1e6, 1) == 36.5
    # Exactly three 1x1 convs (one shortcut per group: the width changes in group 1, stride in 2, 3).
    backbone = feature_extractor(net)
    one_by_one = [l for l in _layers(backbone, keras.layers.Conv2D) if l.kernel_size == (1, 1)]
    assert [l.name for l in one_by_one] == [f"group{g}_block1_shortcut" for g in (1, 2, 3)]
    assert len(_layers(backbone, keras.layers.Conv2D)) == 1 + 3 * 4 * 2 + 3


def test_wrn_batchnorm_parameter_count():
    # Per BN channel: gamma, beta trainable (PyTorch parameters) + 2 moving statistics (buffers).
    # BN channels: each block norm1 (input width) + norm2 (output width), plus the final norm (640):
    # group 1: 16 + 160 + 3*(160 + 160); group 2: 160 + 320 + 3*640; group 3: 320 + 640 + 3*1280.
    bn_channels = (16 + 160 + 960) + (160 + 320 + 1920) + (320 + 640 + 3840) + 640
    assert bn_channels == 8976
    net = build_classifier(WideResNet(28, 10, norm="batch", input_shape=(32, 32, 3)), 10)
    trainable = sum(int(np.prod(w.shape)) for w in net.trainable_weights)
    assert trainable == 36_471_338 + 2 * bn_channels == 36_489_290
    assert net.count_params() == trainable + 2 * bn_channels


def test_wrn_structure_stride_on_conv2_and_raw_input_shortcut():
    net = WideResNet(10, 2, input_shape=(32, 32, 3))  # n = 1 block per group, widths 32, 64, 128
    # The stride sits on conv2, never conv1.
    for g, stride in zip((1, 2, 3), (1, 2, 2)):
        assert net.get_layer(f"group{g}_block1_conv1").strides == (1, 1)
        assert net.get_layer(f"group{g}_block1_conv2").strides == (stride, stride)
        assert net.get_layer(f"group{g}_block1_shortcut").strides == (stride, stride)
    # The shortcut reads the raw block input (the previous block's sum), not the activated one.
    assert net.get_layer("group1_block1_shortcut").input is net.get_layer("stem_conv").output
    assert net.get_layer("group2_block1_shortcut").input is net.get_layer("group1_block1_add").output
    assert net.get_layer("group2_block1_norm1").input is net.get_layer("group1_block1_add").output
    # Final norm -> LeakyReLU -> global average pool.
    assert net.get_layer("pool").input is net.get_layer("final_act").output
    # norm=None: every norm is an identity, no BN anywhere, no dropout layers at rate 0.
    assert not _layers(net, keras.layers.BatchNormalization) and not _layers(net, keras.layers.Dropout)
    assert len(_layers(net, keras.layers.Identity)) == 3 * 2 + 1
    assert net(np.zeros((2, 32, 32, 3), "float32")).shape == (2, 128)


def test_wrn_dropout_sits_between_the_convs():
    net = WideResNet(10, 1, dropout=0.3, input_shape=(8, 8, 3))
    dropout = net.get_layer("group2_block1_dropout")
    assert dropout.rate == pytest.approx(0.3)
    assert dropout.input is net.get_layer("group2_block1_conv1").output
    assert net.get_layer("group2_block1_norm2").input is dropout.output


def test_wrn_leaky_relu_slope_is_0_2_not_keras_default():
    net = WideResNet(10, 1, input_shape=(8, 8, 3))
    acts = _layers(net, keras.layers.LeakyReLU)
    assert len(acts) == 3 * 2 + 1
    assert all(a.get_config()["negative_slope"] == pytest.approx(0.2) for a in acts)
    x = np.array([[[[-1.0, 2.0, -3.0]]]], "float32")
    assert np.allclose(acts[0](x), [[[[-0.2, 2.0, -0.6]]]])


def test_wrn_16_4_and_10_2_forward_shapes():
    assert WideResNet(16, 4, input_shape=(16, 16, 3))(np.zeros((2, 16, 16, 3), "float32")).shape == (2, 256)
    assert WideResNet(10, 2, input_shape=(12, 12, 3))(np.zeros((3, 12, 12, 3), "float32")).shape == (3, 128)


def test_wrn_batchnorm_uses_pytorch_equivalent_settings():
    net = WideResNet(10, 1, norm="batch", input_shape=(16, 16, 3))
    bns = _layers(net, keras.layers.BatchNormalization)
    assert len(bns) == 3 * 2 + 1
    for bn in bns:
        config = bn.get_config()
        assert config["momentum"] == pytest.approx(0.1) and config["epsilon"] == pytest.approx(1e-5)
    # PyTorch momentum 0.9 semantics: after one training batch the moving mean is 0.9 * batch mean
    # (Keras: new = momentum * old + (1 - momentum) * batch = 0.1 * 0 + 0.9 * batch).
    bn = keras.layers.BatchNormalization(momentum=0.1, epsilon=1e-5)
    x = np.full((4, 2, 2, 3), 5.0, "float32")
    bn(x, training=True)
    assert np.allclose(bn.moving_mean.numpy(), 4.5)


def test_torch_init_ranges():
    keras.utils.set_random_seed(3)
    net = build_classifier(WideResNet(10, 1, input_shape=(8, 8, 3)), 5)
    backbone = feature_extractor(net)
    cases = {
        backbone.get_layer("stem_conv"): 3 * 3 * 3,
        backbone.get_layer("group2_block1_conv1"): 3 * 3 * 16,
        backbone.get_layer("group2_block1_conv2"): 3 * 3 * 32,
        backbone.get_layer("group2_block1_shortcut"): 16,
        net.get_layer("logits"): 64,
    }
    for layer, fan_in in cases.items():
        bound = 1 / math.sqrt(fan_in)
        for values in (layer.bias.numpy(), layer.kernel.numpy()):
            # Within the bound, and spread over it (not zeros, not a narrower glorot range).
            assert np.abs(values).max() <= bound + 1e-7, layer.name
            assert np.abs(values).max() > 0.5 * bound, layer.name
    # torch_init=False keeps Keras defaults: zero biases.
    plain = WideResNet(10, 1, torch_init=False, input_shape=(8, 8, 3))
    assert not np.any(plain.get_layer("stem_conv").bias.numpy())


def test_validation_errors():
    with pytest.raises(ValueError, match="depth=27"):
        WideResNet(27, 10)
    with pytest.raises(ValueError, match="depth=4"):
        WideResNet(4, 1)
    with pytest.raises(ValueError, match="norm='layer'"):
        WideResNet(10, 1, norm="layer")
    with pytest.raises(ValueError, match="width=0"):
        WideResNet(10, 0)
    with pytest.raises(ValueError, match="input_shape"):
        WideResNet(10, 1, input_shape=(None, None, None))
    with pytest.raises(ValueError, match="norm="):
        TinyCNN(norm="group")
    with pytest.raises(ValueError, match="features.shape"):
        build_classifier(keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 1)]), 3)


@pytest.mark.parametrize("shape", [(15, 13, 3), (8, 8, 1), (33, 32, 3)])
def test_tiny_cnn_and_wrn_take_odd_sizes(shape):
    tiny = build_classifier(TinyCNN((4, 8), input_shape=shape), 7)
    assert tiny(np.zeros((2,) + shape, "float32")).shape == (2, 7)
    assert feature_extractor(tiny)(np.zeros((2,) + shape, "float32")).shape == (2, 8)
    wrn = WideResNet(10, 1, input_shape=(None, None, shape[-1]))
    assert wrn(np.zeros((1,) + shape, "float32")).shape == (1, 64)


def test_classifier_shares_backbone_weights_and_round_trips_config():
    backbone = TinyCNN((4, 8), norm="batch", input_shape=(8, 8, 1))
    net = build_classifier(backbone, 3)
    assert feature_extractor(net) is backbone and backbone.name == "backbone"
    x = np.random.RandomState(0).rand(2, 8, 8, 1).astype("float32")
    # The logits are the Dense head applied to the backbone features.
    head = net.get_layer("logits")
    expected = backbone(x).numpy() @ head.kernel.numpy() + head.bias.numpy()
    assert np.allclose(net(x).numpy(), expected, atol=1e-5)
    # Functional config round trip rebuilds the same architecture; same weights -> same logits.
    clone = keras.Model.from_config(net.get_config())
    clone.set_weights(net.get_weights())
    assert [l.name for l in clone.layers] == ["images", "backbone", "logits"]
    assert np.allclose(clone(x).numpy(), net(x).numpy(), atol=1e-6)
    wrn = WideResNet(10, 1, input_shape=(8, 8, 3))
    wrn_clone = keras.Model.from_config(wrn.get_config())
    assert wrn_clone.count_params() == wrn.count_params()
    assert wrn_clone.get_layer("group2_block1_conv2").strides == (2, 2)


def _explicit_torch_conv(x, conv, stride):
    """PyTorch's Conv2d(k=3, stride, padding=1): pad 1 on every side, then a valid convolution."""
    import tensorflow as tf

    y = tf.nn.conv2d(x, conv.kernel, strides=stride, padding=[[0, 0], [1, 1], [1, 1], [0, 0]])
    return y + conv.bias if conv.use_bias else y


@pytest.mark.parametrize("size", [8, 9])
def test_wrn_stride2_conv_pads_like_pytorch(size):
    # Keras "same" pads an even input only at the bottom/right, which shifts the strided residual
    # branch one pixel against the 1x1 shortcut; the port pads 1 on every side like PyTorch.
    net = WideResNet(10, 1, input_shape=(size, size, 3))
    conv = net.get_layer("group2_block1_conv2")
    branch_in = keras.Model(net.input, net.get_layer("group2_block1_act2").output)
    branch_out = keras.Model(net.input, conv.output)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    expected = _explicit_torch_conv(branch_in(x), conv, 2)
    np.testing.assert_allclose(branch_out(x), expected, rtol=1e-5, atol=1e-5)
    # The 1x1 shortcut reads input pixel 2i: the centre of the branch's window.
    assert branch_out(x).shape[1] == math.ceil(size / 2)


def test_clel_encoder_stride2_conv_pads_like_pytorch():
    from keras_ebm.backbones import build_clel_encoder

    net = build_clel_encoder(input_shape=(8, 8, 3), widths=(4, 8), blocks_per_stage=(1, 1), head_units=8, output_dim=4)
    conv = net.get_layer("clel_encoder_s1b0_conv1")
    inp = keras.Model(net.input, conv.input)
    out = keras.Model(net.input, conv.output)
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    # conv.input is the padded tensor; rebuild the unpadded one from the layer feeding the pad.
    pad = net.get_layer("clel_encoder_s1b0_conv1_pad")
    unpadded = keras.Model(net.input, pad.input)(x)
    np.testing.assert_allclose(out(x), _explicit_torch_conv(unpadded, conv, 2), rtol=1e-5, atol=1e-5)
    assert inp(x).shape[1] == 10  # padded 1 on each side
