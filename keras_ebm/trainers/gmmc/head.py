"""The max-Mahalanobis classifier (MMC) head of GMMC: fixed class centres, Gaussian logits.

GMMC (Yang, Ye, Ye, Li & Ji, arXiv:2010.03759, section 3) models the features phi(x) of a CNN as a
mixture of Gaussians N(mu_y, sigma^2 I) with pre-designed "max-Mahalanobis" centres mu_y (Pang et
al. 2018, arXiv:1802.09308; Appendix 0.C, Algorithm 2): the C centres form a regular simplex of
radius `scale`, the arrangement that maximises the minimal distance between the classes. Then

    logits_k(x) = -||phi(x) - mu_k||^2 / (2 sigma^2)           (eq. 11: p(y|x) = softmax(logits))
    log p(x)    = logsumexp_k logits_k(x) + const              (the `keras_ebm.energy` convention)

so every score of the library (log p(x) = logsumexp(logits), max-softmax, gradient norm) applies
to an MMC network unchanged.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_ebm import energy as energy_lib
from keras_ebm.backbones.classifier import build_classifier

HEAD_NAME = "mmc_head"


def max_mahalanobis_centers(num_classes: int, dim: int, scale: float = 10.0) -> np.ndarray:
    """The max-Mahalanobis class centres of GMMC's Algorithm 2 (Appendix 0.C; Pang et al. 2018).

    Construction (in float64): mu_1 = e_1; for k = 2..C, the first k-1 coordinates of mu_k are
    solved one by one from <mu_k, mu_j> = -1/(C-1) for j < k, and coordinate k takes the rest of
    the unit norm, sqrt(1 - ||mu_k||^2); all centres are finally multiplied by `scale`. The result
    is a regular simplex: every centre has norm `scale` and every pair has inner product
    -scale^2 / (C - 1), i.e. squared distance 2 scale^2 C / (C - 1). It needs C - 1 <= dim: with
    C = dim + 1 the last centre is fully determined by the others (its k-th coordinate would be 0).

    Args:
        num_classes: int C >= 2, the number of centres.
        dim: int, the feature dimension d; `num_classes <= dim + 1`.
        scale: float, the norm of every centre (the paper's C_MM = 10 in all experiments).

    Returns:
        float32 numpy array `[num_classes, dim]`.

    Example:
    ```python
    mu = max_mahalanobis_centers(10, 640)
    mu @ mu.T  # 100 on the diagonal, -100/9 elsewhere
    ```
    """
    num_classes, dim = int(num_classes), int(dim)
    if num_classes < 2:
        raise ValueError(f"Max-Mahalanobis centres need at least 2 classes. Received: num_classes={num_classes}")
    if dim < 1:
        raise ValueError(f"`dim` must be a positive integer. Received: dim={dim}")
    if num_classes > dim + 1:
        raise ValueError(
            f"{num_classes} equidistant centres need a feature dimension of at least "
            f"num_classes - 1 = {num_classes - 1}; use a backbone with wider features (or a "
            f"projection layer) or fewer classes. Received: num_classes={num_classes}, dim={dim}"
        )
    if not float(scale) > 0:
        raise ValueError(f"`scale` must be positive. Received: scale={scale}")
    mu = np.zeros((num_classes, dim), np.float64)
    mu[0, 0] = 1.0
    for k in range(1, num_classes):
        for j in range(k):
            mu[k, j] = -(1.0 / (num_classes - 1) + mu[k] @ mu[j]) / mu[j, j]
        if k < dim:
            # abs(): round-off can push 1 - ||mu_k||^2 a hair below 0 for the last centres.
            mu[k, k] = np.sqrt(abs(1.0 - mu[k] @ mu[k]))
    return (float(scale) * mu).astype(np.float32)


@keras.saving.register_keras_serializable(package="keras_ebm")
class MaxMahalanobisHead(keras.layers.Layer):
    """Gaussian class logits around fixed max-Mahalanobis centres (the MMC / GMMC head).

    `logits_k = -||phi - mu_k||^2 / (2 sigma^2)` for features phi `[batch, dim]`. The centres
    (`centers`, `[num_classes, dim]`, `max_mahalanobis_centers`) and the shared standard deviation
    sigma (`sigma`, a scalar) are non-trainable weights: they are saved in checkpoints and read by
    the export. GMMC trains with sigma = 1 (eq. 5: the constant is absorbed into the learning rate)
    and estimates sigma from the training features after training (section 3.1,
    `estimate_sigma`); sigma changes the probabilities and log p(x), never the predicted class.

    The squared distances are expanded as ||phi||^2 - 2 phi.mu + ||mu||^2 (one matmul instead of a
    `[batch, classes, dim]` difference tensor) and clamped at 0 against round-off. The head always
    computes in float32: its dtype policy defaults to "float32" (so under a global
    `mixed_float16` policy Keras casts the float16 backbone features up on call), and `call`,
    `squared_distances` and `center_loss` cast their input to float32 as well: in float16,
    ||phi||^2 overflows (max 65504) once ||phi|| > 256, and the difference of the large terms
    ||phi||^2 - 2 phi.mu + ||mu||^2 keeps only 11 significant bits. Logits, log p(x) and the centre
    loss are float32. log p(x) is a
    `reduce_logsumexp`, which stays finite however far the features are from every centre (the
    reference computes log(sum(exp(...))) and returns -inf beyond squared distances of ~200).

    Args:
        num_classes: int, number of classes C.
        scale: float, the norm of the centres (paper: 10).
        sigma: float, the initial standard deviation of the class Gaussians.

    Call args:
        features: float tensor `[batch, dim]`, with `dim >= num_classes - 1`.

    Returns:
        logits `[batch, num_classes]`.

    Example:
    ```python
    head = MaxMahalanobisHead(num_classes=10)
    logits = head(features)                       # [batch, 10]
    head.set_sigma(head.estimate_sigma(train_features, train_labels))
    ```

    Reference:
        - [Yang et al., 2021 (GMMC)](https://arxiv.org/abs/2010.03759), eq. 4-5, 11 and Appendix 0.C.
        - [Pang et al., 2020 (MMC)](https://arxiv.org/abs/1905.10626).
    """

    def __init__(self, num_classes: int, scale: float = 10.0, sigma: float = 1.0, **kwargs: Any) -> None:
        # Not the global policy: see "computes in float32" above (float64 under a float64 policy,
        # `energy.wide_dtype`: the parity tests).
        self._wide = energy_lib.wide_dtype(keras.config.floatx())
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = self._wide.name
        super().__init__(**kwargs)
        if int(num_classes) < 2:
            raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={num_classes}")
        if not float(scale) > 0:
            raise ValueError(f"`scale` must be positive. Received: scale={scale}")
        if not float(sigma) > 0:
            raise ValueError(f"`sigma` must be positive. Received: sigma={sigma}")
        self.num_classes = int(num_classes)
        self.scale = float(scale)
        self.initial_sigma = float(sigma)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                f"MaxMahalanobisHead needs a known feature dimension. Received: input_shape={tuple(input_shape)}"
            )
        centers = max_mahalanobis_centers(self.num_classes, int(dim), self.scale)
        self.centers = self.add_weight(
            shape=centers.shape,
            initializer=keras.initializers.Constant(centers),
            trainable=False,
            name="centers",
        )
        self.sigma = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_sigma),
            trainable=False,
            name="sigma",
        )

    def call(self, features: tf.Tensor) -> tf.Tensor:
        sigma = tf.cast(self.sigma, self._wide)
        return -0.5 * self.squared_distances(features) / tf.square(sigma)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def squared_distances(self, features: tf.Tensor) -> tf.Tensor:
        """||phi - mu_k||^2, `[batch, dim]` -> `[batch, num_classes]`, computed in float32."""
        features = tf.cast(features, self._wide)
        centers = tf.cast(self.centers, self._wide)
        sq = (
            tf.reduce_sum(tf.square(features), axis=-1, keepdims=True)
            - 2.0 * tf.matmul(features, centers, transpose_b=True)
            + tf.reduce_sum(tf.square(centers), axis=-1)[None, :]
        )
        return tf.maximum(sq, 0.0)

    def log_px(self, features: tf.Tensor) -> tf.Tensor:
        """log p(x) up to a constant: logsumexp of the logits, `[batch]` float32 (never exp then
        log)."""
        return tf.reduce_logsumexp(self(features), axis=-1)

    def class_centers(self, y: tf.Tensor) -> tf.Tensor:
        """The centres mu_y of int labels `y` `[batch]` -> `[batch, dim]`."""
        return tf.gather(self.centers, tf.cast(tf.reshape(y, [-1]), tf.int32))

    def center_loss(self, features: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Per-sample 0.5 ||phi - mu_y||^2 `[batch]`, float32: the energy E(x, y) of eq. 6 at
        sigma = 1 (eq. 5's centre regression loss, Pang et al. 2020)."""
        features = tf.cast(features, self._wide)
        return 0.5 * tf.reduce_sum(tf.square(features - tf.cast(self.class_centers(y), self._wide)), axis=-1)

    def estimate_sigma(self, features: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Maximum-likelihood sigma of N(mu_y, sigma^2 I) for features of known classes.

        sigma^2 = mean over samples of ||phi - mu_y||^2 / dim, the estimator of section 3.1 with the
        pre-designed centres (the reference prints gamma^2 = 2 mean(0.5 ||phi - mu_y||^2) / dim at the
        end of training). It does not assign: pass the result to `set_sigma`.

        Args:
            features: float `[n, dim]` training features.
            y: int labels `[n]`.

        Returns:
            float32 scalar tensor.
        """
        features = tf.cast(features, self._wide)
        sq = 2.0 * self.center_loss(features, y)
        dim = tf.cast(tf.shape(features)[-1], self._wide)
        return tf.sqrt(tf.reduce_mean(sq) / dim)

    def set_sigma(self, sigma: float | tf.Tensor) -> None:
        """Assign sigma (a positive float or scalar tensor)."""
        if not tf.is_tensor(sigma) and not float(sigma) > 0:
            raise ValueError(f"`sigma` must be positive. Received: sigma={sigma}")
        self.sigma.assign(tf.cast(sigma, self.sigma.dtype))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "scale": self.scale, "sigma": self.initial_sigma})
        return config


def build_mmc_classifier(
    backbone: keras.Model,
    num_classes: int,
    input_shape: tuple[int, int, int] | None = None,
    scale: float = 10.0,
    sigma: float = 1.0,
    name: str = "mmc_classifier",
) -> keras.Model:
    """Images -> MMC logits `[batch, num_classes]`: a backbone and a `MaxMahalanobisHead`.

    GMMC puts the centres directly in the backbone's feature space (WRN-28-10: 640-d, no linear
    layer), so `dim >= num_classes - 1` is required (CIFAR-100: 99). The feature extractor is
    reachable as `network.get_layer("backbone")` (`keras_ebm.backbones.feature_extractor`), the
    head as `network.get_layer("mmc_head")` (`mmc_head(network)`).

    Args:
        backbone: a `keras.Model` mapping images to features `[batch, dim]` (`WideResNet`,
            `TinyCNN`); renamed in place to `"backbone"`.
        num_classes: number of classes C.
        input_shape: `(height, width, channels)`; default the backbone's input shape.
        scale: norm of the centres (paper: 10).
        sigma: initial sigma of the head (training uses 1; estimate it afterwards).
        name: model name.

    Returns:
        A functional `keras.Model` with layers `images`, `backbone`, `mmc_head`.

    Example:
    ```python
    network = build_mmc_classifier(TinyCNN((8, 16), input_shape=(8, 8, 1)), num_classes=10)
    logits = network(np.zeros((4, 8, 8, 1), "float32"))                  # [4, 10]
    features = feature_extractor(network)(np.zeros((4, 8, 8, 1), "float32"))  # [4, 16]
    ```
    """

    def head(dim):
        if int(num_classes) > dim + 1:
            raise ValueError(
                f"{int(num_classes)} max-Mahalanobis centres need features of dim >= "
                f"{int(num_classes) - 1}; the backbone gives {dim}. Use a wider backbone. "
                f"Received: num_classes={num_classes}, dim={dim}"
            )
        # float32 under mixed precision: squared distances to the centres lose too much in bf16
        # (the head's default dtype; float64 under a float64 policy).
        return MaxMahalanobisHead(int(num_classes), scale=scale, sigma=sigma, name=HEAD_NAME)

    return build_classifier(backbone, num_classes, input_shape=input_shape, head=head, name=name)


def mmc_head(network: keras.Model) -> MaxMahalanobisHead:
    """The `MaxMahalanobisHead` of a `build_mmc_classifier` network."""
    try:
        head = network.get_layer(HEAD_NAME)
    except ValueError:
        head = None
    if not isinstance(head, MaxMahalanobisHead):
        raise ValueError(
            f"`network` has no MaxMahalanobisHead named {HEAD_NAME!r}; build it with "
            f"`keras_ebm.trainers.gmmc.build_mmc_classifier`. Received: network={getattr(network, 'name', network)!r}"
        )
    return head
