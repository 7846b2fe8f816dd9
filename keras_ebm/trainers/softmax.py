"""The softmax cross-entropy classifier: the baseline every keras_ebm method is compared against.

It is an `EBMTrainer` with no sampler, so its logits define the same energy E(x) = -logsumexp(f(x))
as the EBMs (JEM, Grathwohl et al. 2020, section 3) and it is evaluated with the same OOD scores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras

from keras_ebm.trainers.base import EBMTrainer

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_ebm")
class SoftmaxClassifier(EBMTrainer):
    """Cross-entropy training of `network` (the "Softmax"/"cross-entropy" rows of every paper's table).

    Args: see `EBMTrainer`.

    Example:
        trainer = SoftmaxClassifier(network, image_shape=(32, 32, 3), num_classes=10)
        trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
        trainer.fit(keras_ebm.data.make_dataset("cifar10", "train", 128), steps_per_epoch=100)
    """

    def compute_losses(
        self, batch: dict[str, tf.Tensor], negatives: Any, training: bool = True
    ) -> dict[str, tf.Tensor]:
        logits = self(batch["x"], training=training)
        return self.classifier_logs(logits, batch["y"])
