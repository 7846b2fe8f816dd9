"""Backbones: the JEM-family WideResNet, a tiny CNN, and the classifier head."""

from keras_ebm.backbones.classifier import build_classifier
from keras_ebm.backbones.tiny_cnn import TinyCNN
from keras_ebm.backbones.wide_resnet import WideResNet

__all__ = ["TinyCNN", "WideResNet", "build_classifier"]
