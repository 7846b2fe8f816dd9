"""`build_classifier`: a backbone plus a linear head, the logits network every trainer uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

from keras_ebm.backbones.wide_resnet import torch_bias_initializer, torch_kernel_initializer

if TYPE_CHECKING:
    from collections.abc import Callable

BACKBONE_NAME = "backbone"


def build_classifier(
    backbone: keras.Model,
    num_classes: int,
    input_shape: tuple[int | None, int | None, int] | None = None,
    torch_init: bool = True,
    head: Callable[[int], keras.layers.Layer] | None = None,
    name: str = "classifier",
) -> keras.Model:
    """Images -> logits `[batch, num_classes]`: a backbone and a Dense head (JEM's `class_output`).

    The logits model is what trainers take as `network`; the energy is read from its logits
    (`keras_ebm.energy`). The reference's unused `energy_output` Linear(features, 1) is not built.
    The feature extractor stays reachable as `classifier.get_layer("backbone")` (or
    `feature_extractor(classifier)`) for methods that use the features (GMMC, CLEL); its weights
    are the classifier's weights, not a copy.

    Args:
        backbone: a `keras.Model` (or layer) mapping images `[batch, height, width, channels]` to
            features `[batch, dim]`, e.g. `WideResNet(...)` or `TinyCNN(...)`. It is renamed in place
            to `"backbone"`, so one backbone object belongs to one classifier.
        num_classes: number of classes (logits).
        input_shape: `(height, width, channels)` of the classifier's input; default the
            backbone's own input shape.
        torch_init: PyTorch default init of the head (weights and bias U(+-1/sqrt(dim))); `False`
            keeps Keras defaults (glorot_uniform, zero bias).
        head: optional `fn(dim) -> layer` building another head on the `dim`-d features (GMMC's
            max-Mahalanobis head); default a Dense layer named "logits".
        name: model name.

    Returns:
        A functional `keras.Model` mapping images to logits `[batch, num_classes]`, with layers
        `images`, `backbone`, `logits`.

    Example:
    ```python
    network = build_classifier(TinyCNN((8, 16), input_shape=(8, 8, 1)), num_classes=10)
    logits = network(np.zeros((4, 8, 8, 1), "float32"))  # [4, 10]
    features = feature_extractor(network)(np.zeros((4, 8, 8, 1), "float32"))  # [4, 16]
    ```
    """
    if int(num_classes) < 1:
        raise ValueError(f"`num_classes` must be a positive integer. Received: num_classes={num_classes}")
    if input_shape is None:
        try:
            input_shape = backbone.input_shape[1:]
        except (AttributeError, ValueError) as e:
            raise ValueError(
                "`input_shape` is required when the backbone has no input shape of its own (a "
                f"subclassed model or layer). Received: input_shape=None, backbone={backbone.name!r}"
            ) from e
    input_shape = tuple(input_shape)
    inputs = keras.Input(input_shape, name="images")
    features = backbone(inputs)
    if len(features.shape) != 2 or features.shape[-1] is None:
        raise ValueError(
            "The backbone must return features of shape [batch, dim] with a known dim (end it with a "
            f"global pool or Flatten). Received: features.shape={tuple(features.shape)}"
        )
    dim = int(features.shape[-1])
    # A fixed name gives every trainer, config and checkpoint one handle on the features, whatever
    # backbone was injected (the functional graph reads layer names when the model is built below).
    backbone.name = BACKBONE_NAME
    if head is not None:
        return keras.Model(inputs, head(dim)(features), name=name)
    initializers = {}
    if torch_init:
        initializers = {
            "kernel_initializer": torch_kernel_initializer(),
            "bias_initializer": torch_bias_initializer(dim),
        }
    logits = keras.layers.Dense(int(num_classes), name="logits", **initializers)(features)
    return keras.Model(inputs, logits, name=name)


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """The feature model `images -> [batch, dim]` inside a `build_classifier` model (shared weights)."""
    try:
        return classifier.get_layer(BACKBONE_NAME)
    except ValueError as e:
        raise ValueError(
            f"`classifier` has no layer named {BACKBONE_NAME!r}; build it with `build_classifier`. "
            f"Received: classifier={classifier.name!r}"
        ) from e
