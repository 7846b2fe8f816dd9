"""Backbones: the JEM-family WideResNet, a tiny CNN, the classifier (backbone + logits head), CLEL's networks."""

from keras_ebm.backbones.classifier import build_classifier, feature_extractor
from keras_ebm.backbones.clel import build_clel_ebm, build_clel_encoder, build_clel_projection
from keras_ebm.backbones.tiny_cnn import TinyCNN
from keras_ebm.backbones.wide_resnet import WideResNet, torch_bias_initializer, torch_kernel_initializer

__all__ = [
    "TinyCNN",
    "WideResNet",
    "build_classifier",
    "build_clel_ebm",
    "build_clel_encoder",
    "build_clel_projection",
    "feature_extractor",
    "torch_bias_initializer",
    "torch_kernel_initializer",
]
