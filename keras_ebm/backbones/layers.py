"""Layers that Keras does not provide in the form the EBM papers need.

`SpectralNormConv2D`: a `Conv2D` whose kernel is *parametrised* as W / sigma(W) (Miyato et al. 2018),
as `torch.nn.utils.parametrizations.spectral_norm` does. `keras.layers.SpectralNormalization` is not
a substitute (keras/src/layers/normalization/spectral_normalization.py):
it overwrites the wrapped kernel with W / sigma on every training call
and treats sigma as a constant, so 60 SGLD forward passes re-normalise the kernel 60 times and the
gradient ignores sigma.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


def _l2_normalize(t, eps=1e-12):
    return t / tf.maximum(tf.norm(t), eps)


@keras.saving.register_keras_serializable(package="keras_ebm")
class SpectralNormConv2D(keras.layers.Conv2D):
    """2D convolution with a spectrally normalised kernel W / sigma(W).

    The trainable variable `kernel` holds the raw W `[kh, kw, in, out]`; every call convolves with
    W / sigma(W), where sigma(W) is the largest singular value of W reshaped to the matrix
    `[out, kh * kw * in]` (PyTorch's `weight.flatten(1)` ordering of the same matrix, transposed),
    estimated by power iteration with persistent, non-trainable vectors `u` `[out]` and `v`
    `[kh * kw * in]`:

        u <- normalize(W v);  v <- normalize(W^T u)      (power_iterations times, training only)
        sigma = u^T W v                                  (u, v held constant: stop_gradient)

    in the order of `torch.nn.utils.parametrizations.spectral_norm` (`update_order="u_first"`, the
    default; hankook/CLEL uses it). The older `torch.nn.utils.spectral_norm` updates v first
    (`update_order="v_first"`); unconverged, the two give slightly different sigma (sigma = ||W^T u||
    against ||W v||), a 1e-4 relative difference in CLEL's energies after a few steps.

    so the gradient with respect to W flows through sigma (d sigma / dW = u v^T) as in
    `torch.nn.utils.parametrizations.spectral_norm`. In inference mode (`training=False`) the stored
    u, v are used unchanged, so evaluation and export are deterministic.

    Valid from the start: `build` sets u, v to the top singular pair of the freshly initialised
    kernel (an SVD of the [out, kh*kw*in] matrix), so sigma is the kernel's largest singular value,
    positive, before any training call, in inference mode too. PyTorch's `spectral_norm` runs 15
    power iterations when it is registered instead; they approach sigma from below and leave it a
    few % low on near-square kernels whose top singular values are close (3% for 3x3x16 -> 32),
    which `n_power_iterations_at_build=15` reproduces. With random u, v and nothing at build,
    u^T W v is about 0 and often negative (a blown-up, sign-flipped kernel). Every training call
    then runs `power_iterations` more. The result reads only the kernel, so it is deterministic
    given the seeds and the same on every replica.

    Power iteration in SGLD: CLEL samples with the network in train mode, so each of the 60 SGLD
    forward passes runs one more power iteration (hankook/CLEL models/ebm.py). This is not
    corrupting: u, v depend only on W (not on the input), and extra iterations only move them closer
    to the top singular pair of the current W. The update therefore does not need to be discarded;
    run the energy in `keras_ebm.stateless_scope.discard_updates()` if bit-exact reproducibility of u across
    different SGLD lengths matters.

    Distribution: u, v are mirrored variables with aggregation "none": every replica runs the same
    power iteration on the same W and writes its own mirror, so the mirrors stay identical without
    a cross-replica sync (which could not run inside the SGLD `tf.while_loop` anyway).

    Args:
        filters, kernel_size, strides, padding, use_bias, ...: see `keras.layers.Conv2D`
            (`channels_last` only).
        power_iterations: int >= 1, power-iteration steps per training call (CLEL and PyTorch: 1).
        n_power_iterations_at_build: None (default) for the exact top singular pair at build, or
            an int >= 0 of power-iteration steps run once in `build` (PyTorch: 15; 0 keeps random
            unit vectors).
        eps: float, floor of vector norms in the normalisation.
        update_order: "u_first" (default, `torch.nn.utils.parametrizations.spectral_norm`) or
            "v_first" (`torch.nn.utils.spectral_norm`).

    Example:

    ```python
    conv = SpectralNormConv2D(64, 3, padding="same")
    y = conv(x, training=True)    # one power iteration, u and v updated
    ```

    Reference:
        Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018,
        arXiv:1802.05957.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        power_iterations: int = 1,
        eps: float = 1e-12,
        n_power_iterations_at_build: int | None = None,
        update_order: str = "u_first",
        **kwargs: Any,
    ) -> None:
        if update_order not in ("u_first", "v_first"):
            raise ValueError(f"`update_order` must be 'u_first' or 'v_first'. Received: update_order={update_order!r}")
        if int(power_iterations) < 1:
            raise ValueError(
                f"`power_iterations` must be an integer >= 1. Received: power_iterations={power_iterations}"
            )
        if n_power_iterations_at_build is not None and int(n_power_iterations_at_build) < 0:
            raise ValueError(
                "`n_power_iterations_at_build` must be an integer >= 0. "
                f"Received: n_power_iterations_at_build={n_power_iterations_at_build}"
            )
        if kwargs.get("data_format") not in (None, "channels_last"):
            raise ValueError(
                "SpectralNormConv2D supports data_format='channels_last' only. "
                f"Received: data_format={kwargs.get('data_format')}"
            )
        super().__init__(filters, kernel_size, **kwargs)
        self.power_iterations = int(power_iterations)
        self.n_power_iterations_at_build = (
            None if n_power_iterations_at_build is None else int(n_power_iterations_at_build)
        )
        self.eps = float(eps)
        self.update_order = update_order

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        super().build(input_shape)
        rows = int(self.filters)
        cols = 1
        for d in self.kernel.shape[:-1]:
            cols *= int(d)
        self.sn_u = self._power_iteration_vector(rows, "sn_u")
        self.sn_v = self._power_iteration_vector(cols, "sn_v")
        # sigma valid before the first training call, in inference mode too: the exact top
        # singular pair of the initialised kernel (default), or PyTorch's 15 power iterations at
        # registration. Under a strategy this runs in cross-replica context: every mirror gets it.
        w = tf.stop_gradient(self._weight_matrix(tf.convert_to_tensor(self.kernel)))
        if self.n_power_iterations_at_build is None:
            _, left, right = tf.linalg.svd(tf.cast(w, tf.float32))
            u, v = left[:, 0], right[:, 0]
        else:
            u, v = self._power_iteration(
                w,
                _l2_normalize(tf.convert_to_tensor(self.sn_u), self.eps),
                _l2_normalize(tf.convert_to_tensor(self.sn_v), self.eps),
                self.n_power_iterations_at_build,
            )
        self.sn_u.assign(tf.cast(u, self.sn_u.dtype))
        self.sn_v.assign(tf.cast(v, self.sn_v.dtype))

    def _power_iteration_vector(self, size, name):
        """A non-trainable N(0, 1) vector of the power iteration (`sn_u` or `sn_v`)."""
        return self.add_weight(
            shape=(size,),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            trainable=False,
            aggregation="none",
            name=name,
        )

    def _power_iteration(self, w, u, v, n):
        for _ in range(n):
            if self.update_order == "u_first":
                u = _l2_normalize(tf.linalg.matvec(w, v), self.eps)
                v = _l2_normalize(tf.linalg.matvec(w, u, transpose_a=True), self.eps)
            else:
                v = _l2_normalize(tf.linalg.matvec(w, u, transpose_a=True), self.eps)
                u = _l2_normalize(tf.linalg.matvec(w, v), self.eps)
        return u, v

    def _weight_matrix(self, kernel):
        # [out, kh * kw * in], the orientation of PyTorch's weight.flatten(1).
        return tf.transpose(tf.reshape(kernel, [-1, self.filters]))

    def spectral_norm(self, training: bool = False) -> tf.Tensor:
        """sigma(W) (a scalar tensor, differentiable in W); power iteration when `training`."""
        kernel = tf.convert_to_tensor(self.kernel)
        w = self._weight_matrix(kernel)
        u = tf.convert_to_tensor(self.sn_u)
        v = tf.convert_to_tensor(self.sn_v)
        if training:
            u, v = self._power_iteration(tf.stop_gradient(w), u, v, self.power_iterations)
            self.sn_u.assign(u)
            self.sn_v.assign(v)
        u = tf.stop_gradient(u)
        v = tf.stop_gradient(v)
        return tf.tensordot(u, tf.linalg.matvec(w, v), axes=1)

    def normalized_kernel(self, training: bool = False) -> tf.Tensor:
        """W / sigma(W), shape `[kh, kw, in, out]`."""
        return self.kernel / self.spectral_norm(training=training)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        kernel = self.normalized_kernel(training=bool(training))
        outputs = self.convolution_op(inputs, tf.cast(kernel, inputs.dtype))
        if self.use_bias:
            outputs = outputs + tf.cast(self.bias, outputs.dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    # `Conv2D` saves only its kernel and bias in `.keras` files; the power-iteration vectors u, v
    # are state too (inference uses them as stored), so every variable is saved, in Layer order.
    def save_own_variables(self, store: dict[str, Any]) -> None:
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store: dict[str, Any]) -> None:
        keras.layers.Layer.load_own_variables(self, store)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "power_iterations": self.power_iterations,
                "eps": self.eps,
                "n_power_iterations_at_build": self.n_power_iterations_at_build,
                "update_order": self.update_order,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_ebm")
class LeakyReLU(keras.layers.LeakyReLU):
    """`keras.layers.LeakyReLU` whose slope is exact in float64.

    TensorFlow's `LeakyRelu` kernel takes the slope as a float32 attribute (0.2 -> 0.200000003), so
    a float64 network computes with a slope 1.5e-8 off PyTorch's `nn.LeakyReLU(0.2)` (a double):
    enough to break float64 parity at 1e-10 (tests/test_parity_jem.py). In float64 this layer
    computes `where(x > 0, x, slope * x)` (gradient `slope` at 0,
    as PyTorch) with a float64 slope; in every other dtype it is Keras'
    layer, bit for bit.
    """

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        if keras.backend.standardize_dtype(inputs.dtype) != "float64":
            return super().call(inputs)
        slope = tf.constant(self.negative_slope, tf.float64)
        return tf.where(inputs > 0, inputs, inputs * slope)


@keras.saving.register_keras_serializable(package="keras_ebm")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that can average the *unbiased* batch variance into the
    moving variance, as PyTorch's `BatchNorm2d` does.

    In training mode both normalise with the biased batch variance (1/n over the n = batch x height
    x width values of a channel), but PyTorch's `running_var` update uses the unbiased estimate
    n / (n - 1) times it, Keras' `moving_variance` the biased one. At batch 64 and 8x8 feature maps
    (n = 4096) the difference is 0.02%; at n = 512 (batch 8 on the 8x8 maps of a CIFAR WideResNet)
    0.2%, compounded over the moving average. With `unbiased_moving_variance=True` the update is
    PyTorch's (tests/test_parity_jempp.py checks it against the official JEM++ run); False is
    Keras' layer, bit for bit. Masks are not supported with the unbiased update.
    """

    def __init__(self, unbiased_moving_variance: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unbiased_moving_variance = bool(unbiased_moving_variance)

    def _moments(self, inputs, mask):
        mean, variance = super()._moments(inputs, mask)
        self._batch_variance = variance  # read by `call` in the same trace
        return mean, variance

    def call(self, inputs: tf.Tensor, training: bool | None = None, mask: tf.Tensor | None = None) -> tf.Tensor:
        if not (self.unbiased_moving_variance and training and self.trainable) or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        if mask is not None:
            raise ValueError("BatchNormalization(unbiased_moving_variance=True) does not support masks.")
        moving_variance = tf.convert_to_tensor(self.moving_variance)  # before Keras' update
        outputs = super().call(inputs, training=training)
        variance = self._batch_variance
        n = 1
        for axis, size in enumerate(inputs.shape):
            if axis not in self._reduction_axes:
                continue
            n = n * (tf.shape(inputs)[axis] if size is None else size)
        n = tf.cast(n, variance.dtype)
        if self.synchronized:  # the batch variance is over every replica's values (SyncBatchNorm)
            ctx = tf.distribute.get_replica_context()
            if ctx is not None:
                n = n * ctx.num_replicas_in_sync
        unbiased = variance * n / (n - 1.0)
        # Replaces the biased update Keras just made (its moving average, the unbiased batch term).
        self.moving_variance.assign(
            tf.cast(
                tf.cast(moving_variance, variance.dtype) * self.momentum + unbiased * (1.0 - self.momentum),
                self.moving_variance.dtype,
            )
        )
        return outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["unbiased_moving_variance"] = self.unbiased_moving_variance
        return config


@keras.saving.register_keras_serializable(package="keras_ebm")
class Normalization(keras.layers.Normalization):
    """`keras.layers.Normalization` whose given `mean` / `variance` are exact in float64.

    Keras converts a Python list through float32 before casting to the compute dtype, so a float64
    network (and every clone made from the config, e.g. `ModelEMA`) normalises with constants
    ~1e-8 off (0.4914 -> 0.49140000343). Here they are float64 arrays; a float32 network gets the
    same float32 constants as Keras' layer (float64 -> float32 rounds as Python float -> float32).
    """

    def __init__(
        self, mean: Sequence[float] | None = None, variance: Sequence[float] | None = None, **kwargs: Any
    ) -> None:
        if mean is not None:
            mean = np.asarray(mean, np.float64)
        if variance is not None:
            variance = np.asarray(variance, np.float64)
        super().__init__(mean=mean, variance=variance, **kwargs)
