"""`build_classifier`: a backbone plus a linear head = the logits network every trainer uses."""

import keras

from keras_ebm.backbones.wide_resnet import TorchBiasInitializer, torch_kernel_initializer


def build_classifier(backbone, num_classes, input_shape=None, torch_init=True, name="classifier"):
    """Images -> logits `[batch, num_classes]` (JEM's `class_output` head on the features).

    Args:
        backbone: a `keras.Model` mapping images to features `[batch, dim]`; it stays reachable as
            `classifier.get_layer("backbone")` (GMMC and CLEL use the features).
        num_classes: number of classes (logits).
        input_shape: `(height, width, channels)`; default the backbone's input shape.
        torch_init: PyTorch default initialisation of the head.
        name: model name.

    Returns:
        A functional `keras.Model`.
    """
    if int(num_classes) < 1:
        raise ValueError(f"`num_classes` must be >= 1. Received: num_classes={num_classes}")
    input_shape = tuple(input_shape) if input_shape is not None else tuple(backbone.input_shape[1:])
    backbone.name = "backbone"  # a stable handle on the feature extractor
    inputs = keras.Input(input_shape, name="images")
    features = backbone(inputs)
    dim = int(features.shape[-1])
    kwargs = {}
    if torch_init:
        kwargs = {"kernel_initializer": torch_kernel_initializer(),
                  "bias_initializer": TorchBiasInitializer(dim)}
    logits = keras.layers.Dense(int(num_classes), name="logits", **kwargs)(features)
    return keras.Model(inputs, logits, name=name)
