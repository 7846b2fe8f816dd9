"""Backbones: the reference WRN's size and structure, porting traps, any input size."""

import math

import keras
import numpy as np
import pytest

from keras_ebm.backbones import TinyCNN, WideResNet, build_classifier


def test_wrn_28_10_parameter_count_matches_reference():
    # CODE_FACTS 0.1: WRN-28-10 without BN, bias on every conv, 10-class head = "36.5M".
    # Count by hand: stem 3*3*3*16+16 = 448; per group g with width w_in -> w (4 blocks):
    # first block: conv1 9*w_in*w + w, conv2 9*w*w + w, shortcut w_in*w + w; others 2*(9*w*w + w).
    def group(w_in, w):
        first = 9 * w_in * w + w + 9 * w * w + w + w_in * w + w
        return first + 3 * 2 * (9 * w * w + w)

    expected_backbone = 448 + group(16, 160) + group(160, 320) + group(320, 640)
    net = build_classifier(WideResNet(28, 10, input_shape=(32, 32, 3)), 10)
    assert net.get_layer("backbone").count_params() == expected_backbone == 36_464_928
    assert net.count_params() == expected_backbone + 640 * 10 + 10 == 36_471_338


def test_wrn_structure_stride_on_conv2_and_shortcuts():
    net = WideResNet(16, 2, input_shape=(32, 32, 3))
    convs = {l.name: l for l in net.layers if isinstance(l, keras.layers.Conv2D)}
    # Shortcut 1x1 convs only where the width or stride changes: first block of each group.
    assert sorted(n for n in convs if "shortcut" in n) == [f"group{g}_block1_shortcut" for g in (1, 2, 3)]
    assert convs["group2_block1_conv2"].strides == (2, 2) and convs["group2_block1_conv1"].strides == (1, 1)
    assert convs["group1_block1_conv2"].strides == (1, 1)
    assert all(l.negative_slope == pytest.approx(0.2) for l in net.layers if isinstance(l, keras.layers.LeakyReLU))
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in net.layers)
    assert net(np.zeros((2, 32, 32, 3), "float32")).shape == (2, 128)


def test_wrn_batchnorm_uses_pytorch_equivalent_settings():
    net = WideResNet(10, 1, norm="batch", input_shape=(16, 16, 3))
    bns = [l for l in net.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(b.momentum == pytest.approx(0.1) and b.epsilon == pytest.approx(1e-5) for b in bns)


def test_torch_init_bias_range():
    net = WideResNet(10, 1, input_shape=(8, 8, 3))
    conv = net.get_layer("group2_block1_conv1")  # fan_in = 3 * 3 * 16
    bound = 1 / math.sqrt(9 * 16)
    bias, kernel = conv.bias.numpy(), conv.kernel.numpy()
    assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.5 * bound
    assert np.abs(kernel).max() <= bound + 1e-7


def test_validation_errors():
    with pytest.raises(ValueError, match="depth"):
        WideResNet(27, 10)
    with pytest.raises(ValueError, match="norm"):
        WideResNet(10, 1, norm="layer")


@pytest.mark.parametrize("shape", [(15, 13, 3), (8, 8, 1), (33, 32, 3)])
def test_tiny_cnn_and_wrn_take_odd_sizes(shape):
    tiny = build_classifier(TinyCNN((4, 8), input_shape=shape), 7)
    assert tiny(np.zeros((2,) + shape, "float32")).shape == (2, 7)
    wrn = WideResNet(10, 1, input_shape=(None, None, shape[-1]))
    assert wrn(np.zeros((1,) + shape, "float32")).shape == (1, 64)
