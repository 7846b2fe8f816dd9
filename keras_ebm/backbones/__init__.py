"""Backbones: the JEM-family WideResNet, a tiny CNN, and the classifier (backbone + logits head)."""

from keras_ebm.backbones.classifier import build_classifier, feature_extractor
from keras_ebm.backbones.tiny_cnn import TinyCNN
from keras_ebm.backbones.wide_resnet import WideResNet, torch_bias_initializer, torch_kernel_initializer

__all__ = [
    "TinyCNN",
    "WideResNet",
    "build_classifier",
    "feature_extractor",
    "torch_bias_initializer",
    "torch_kernel_initializer",
]
