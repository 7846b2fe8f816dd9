"""Gradient functions: how a trainer turns a loss closure into gradients (plain or SAM / ASAM).

A trainer calls `grads, losses = gradient_fn(loss_fn, variables)`, where `loss_fn()` returns a dict
of scalar per-replica mean losses holding the total under `"total"` (or `"loss"`, the key of
`EBMTrainer.compute_losses`). The total is divided by the number of replicas
(`keras_ebm.distribute.scale_loss`) before it is differentiated, because Keras optimizers sum the
gradients of the replicas; the returned losses are the unscaled values.

`variables` is either a flat list of variables (one optimizer: JEM, GMMC, HDGE, softmax) or a list
of groups, each a list of variables applied by its own optimizer (CLEL: the EBM's Adam and the
encoder's SGD). With groups, the gradients come back with the same nesting, `[[g, ...], [g, ...]]`,
and are exactly the flat result re-nested: the groups only say which optimizer applies which
gradient, they do not change what is computed (one backward pass of the one total loss; for SAM,
one perturbation over the variables of all groups together, see `SAMGradients`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_ebm import distribute, run_settings

_TOTAL_KEYS = ("total", "loss")


def _total(losses):
    for key in _TOTAL_KEYS:
        if key in losses:
            return losses[key]
    raise ValueError(
        "`loss_fn()` must return a dict holding the total loss under 'total' (or 'loss'). "
        f"Received: keys={sorted(losses)}"
    )


def _flatten(variables):
    """`(flat_variables, group_sizes)`; `group_sizes` is None for a flat list of variables."""
    variables = list(variables)
    grouped = [isinstance(v, (list, tuple)) for v in variables]
    if not any(grouped):
        return variables, None
    if not all(grouped):
        raise ValueError(
            "`variables` must be a list of variables or a list of groups (lists of variables), not "
            f"a mix of both. Received: {[type(v).__name__ for v in variables]}"
        )
    groups = [list(group) for group in variables]
    return [v for group in groups for v in group], [len(group) for group in groups]


def _nest(flat, sizes):
    """Inverse of `_flatten` for a list aligned with the flat variables."""
    flat = list(flat)
    if sizes is None:
        return flat
    nested, start = [], 0
    for size in sizes:
        nested.append(flat[start : start + size])
        start += size
    return nested


def _backward(loss_fn, variables):
    """One backward pass of `loss_fn()`'s (replica-scaled) total: `(gradients of the flat
    variables, losses, flat variables, group sizes)`."""
    variables, sizes = _flatten(variables)
    with tf.GradientTape() as tape:
        losses = loss_fn()
        total = distribute.scale_loss(_total(losses))
    return tape.gradient(total, variables), losses, variables, sizes


def _dense_or_zeros(grads, variables):
    # Sparse (IndexedSlices) gradients are densified: ε is a dense perturbation of the weights.
    return [
        tf.zeros_like(tf.convert_to_tensor(v)) if g is None else tf.convert_to_tensor(g)
        for g, v in zip(grads, variables)
    ]


def add_weight_decay(
    grads: Sequence[tf.Tensor | None], variables: Sequence[tf.Variable], weight_decay: float | tf.Tensor
) -> list[tf.Tensor | None]:
    """Coupled L2 weight decay, PyTorch `SGD(weight_decay=wd)` style: `g + wd * w` before the optimizer.

    The official JEM++, SADA-JEM and CLEL code (and the softmax baselines) use PyTorch SGD with
    momentum 0.9, whose decay goes through the momentum buffer; Keras' `weight_decay` is decoupled
    (`w -= lr * wd * w`), about 10x weaker at momentum 0.9. Scaled like the loss: the optimizer sums
    the gradients of the replicas, so each replica adds `wd / num_replicas`.

    `weight_decay` may be a tensor (a trainer's run-time setting read in the step: applied always,
    0 adds exactly 0); a Python 0 adds nothing to the graph.
    """
    if not tf.is_tensor(weight_decay) and not weight_decay:
        return list(grads)
    wd = weight_decay / distribute.num_replicas()
    return [
        g if g is None else g + run_settings.as_tensor(wd, g.dtype) * tf.cast(v, g.dtype)
        for g, v in zip(grads, variables)
    ]


@keras.saving.register_keras_serializable(package="keras_ebm")
class PlainGradients:
    """One gradient-tape pass: the gradients of the (replica-scaled) total loss.

    Call args:
        loss_fn: zero-argument callable returning a dict of scalar tensors with the total under
            `"total"` (or `"loss"`).
        variables: list of trainable variables, or a list of groups (lists of variables), one
            per optimizer.

    Returns:
        `(grads, losses)`: gradients aligned with `variables` and nested like it (None for a
        variable the loss does not depend on) and the dict returned by `loss_fn`.

    Example (two optimizers, one backward pass):

    ```python
    (grads_a, grads_b), losses = PlainGradients()(loss_fn, [vars_a, vars_b])
    optimizer_a.apply(grads_a, vars_a)
    optimizer_b.apply(grads_b, vars_b)
    ```
    """

    def __call__(
        self, loss_fn: Callable[[], dict[str, tf.Tensor]], variables: Sequence[Any]
    ) -> tuple[list[Any], dict[str, tf.Tensor]]:
        grads, losses, _, sizes = _backward(loss_fn, variables)
        return _nest(grads, sizes), losses

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PlainGradients:
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_ebm")
class SAMGradients:
    """Sharpness-aware minimisation (SAM) and adaptive SAM (ASAM) as a gradient function.

    First pass: g = ∇L(w). Perturbation:

        SAM:   ε = ρ g / ||g||
        ASAM:  ε = ρ T² g / ||T g||,   T = |w| + η  (elementwise)

    with norms over all variables together. Second pass: the gradient ∇L(w + ε), which the
    optimizer then applies at w. The second pass evaluates `loss_fn` inside a
    `keras.StatelessScope` that maps each variable to w + ε: the variables are never modified,
    and every assignment made during the second pass (BatchNorm moving statistics, seed
    generator states) is discarded, so only the first pass updates the moving statistics (as in
    Google's SAM; SADA-JEM's PyTorch code gets the same effect by zeroing the BN momentum for its
    second pass). Both passes see the same batch and the same SGLD samples, since `loss_fn`
    closes over them. Randomness that `loss_fn` itself draws from a stateful seed generator would
    differ between the passes (the first pass advances the state that the second reads), so a
    trainer draws its per-step seeds before calling the gradient function (CLEL's augmentation
    seed, see `CLEL.optimize`).

    Under a distribution strategy, the default (`sync_perturbation=False`) perturbs each replica
    with its own first-pass gradient: m-sharpness with m = the per-replica batch, as the SAM
    paper recommends and as a single-GPU run of the reference code behaves. With
    `sync_perturbation=True` the first-pass gradients are summed over replicas before ε is
    formed, so every replica uses the global ε of the whole batch.

    Only variables listed in `variables` are perturbed; variables with no gradient get ε = 0.

    Groups (`variables` as a list of lists, one per optimizer, e.g. CLEL's EBM and encoder): one
    perturbation over the variables of all groups together, ||ε|| = ρ over the concatenated
    parameter vector, and the result is the flat one re-nested. SAM (Foret et al., eq. 1-2) is
    min_w max_{||ε||₂ ≤ ρ} L(w + ε) for *the* training loss over *all* its parameters w; the groups
    only decide which optimizer applies which gradient, so they must not change the neighbourhood.
    A per-group ball (ρ for each group) would be a different, larger neighbourhood (a product of
    balls, radius ρ√groups overall) that depends on how the variables happen to be split among
    optimizers. Note that with a joint norm the share of ρ each group gets follows its share of the
    gradient norm (CLEL: EBM terms vs NT-Xent).

    Args:
        rho: float, the neighbourhood radius ρ (SAM 0.05; ASAM needs about 10× larger, and the
            SADA-JEM code default is ρ = 2 with ASAM).
        adaptive: bool, use ASAM's scale-invariant perturbation.
        eta: float, η of ASAM's T = |w| + η (Kwon et al. use 0.01; davda54/sam and the SADA-JEM
            code use T = |w|, i.e. `eta=0`). Ignored without `adaptive`.
        sync_perturbation: bool, see above.
        epsilon: float added to the gradient norm to avoid a division by zero.

    `rho`, `eta` and `epsilon` are variables the compiled step reads (change them between steps;
    no retrace); `adaptive` and `sync_perturbation` shape the graph (a change rebuilds the step).
    See `keras_ebm.run_settings`.

    Call args:
        loss_fn: zero-argument callable returning a dict of scalar tensors with the total under
            `"total"` (or `"loss"`). It is called twice.
        variables: list of trainable Keras variables, or a list of groups (lists of variables),
            one per optimizer (see above).

    Returns:
        `(grads, losses)`: the second-pass gradients (at w + ε, aligned with `variables` and
        nested like it, None for a variable the loss does not depend on, as with
        `PlainGradients`) and the first-pass losses (at w).

    Example:

    ```python
    gradients = SAMGradients(rho=0.05)
    grads, losses = gradients(lambda: {"total": loss(model(x, training=True), y)},
                              model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    ```

    Reference:
        - [Foret et al., 2021 (SAM)](https://arxiv.org/abs/2010.01412)
        - [Kwon et al., 2021 (ASAM)](https://arxiv.org/abs/2102.11600)
        - [Yang, Su and Ji, 2023 (SADA-JEM)](https://arxiv.org/abs/2209.07959), Algorithm 1.
    """

    rho = run_settings.Setting(minimum=0.0)
    eta = run_settings.Setting(minimum=0.0)
    epsilon = run_settings.Setting(minimum=0.0)
    adaptive = run_settings.TraceSetting(bool)
    sync_perturbation = run_settings.TraceSetting(bool)

    def __init__(
        self,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        sync_perturbation: bool = False,
        epsilon: float = 1e-12,
    ) -> None:
        if not float(rho) >= 0:
            raise ValueError(f"`rho` must be non-negative. Received: rho={rho}")
        if not float(eta) >= 0:
            raise ValueError(f"`eta` must be non-negative. Received: eta={eta}")
        self.rho = float(rho)
        self.adaptive = bool(adaptive)
        self.eta = float(eta)
        self.sync_perturbation = bool(sync_perturbation)
        self.epsilon = float(epsilon)

    def __call__(
        self, loss_fn: Callable[[], dict[str, tf.Tensor]], variables: Sequence[Any]
    ) -> tuple[list[Any], dict[str, tf.Tensor]]:
        grads, losses, variables, sizes = _backward(loss_fn, variables)
        grads = _dense_or_zeros(grads, variables)
        if self.sync_perturbation:
            ctx = tf.distribute.get_replica_context()
            if ctx is not None and ctx.num_replicas_in_sync > 1:
                grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        perturbation = self.perturbation(grads, variables)

        perturbed = [tf.convert_to_tensor(v) + tf.cast(e, v.dtype) for v, e in zip(variables, perturbation)]
        with tf.GradientTape() as tape:
            tape.watch(perturbed)
            with keras.StatelessScope(state_mapping=list(zip(variables, perturbed))):
                second_total = distribute.scale_loss(_total(loss_fn()))
        return _nest(tape.gradient(second_total, perturbed), sizes), losses

    def perturbation(
        self, grads: Sequence[tf.Tensor | None], variables: Sequence[tf.Variable]
    ) -> list[tf.Tensor | None]:
        """ε for first-pass gradients `grads` at `variables` (a list aligned with them)."""
        # float32 arithmetic (float16 gradients are widened), float64 when the gradients are float64.
        dtype = tf.float64 if any(g.dtype == tf.float64 for g in grads) else tf.float32
        grads = [tf.cast(g, dtype) for g in grads]
        if self.adaptive:
            scales = [
                tf.abs(tf.cast(tf.convert_to_tensor(v), dtype)) + run_settings.as_tensor(self.eta, dtype)
                for v in variables
            ]
        else:
            scales = [None] * len(grads)
        scaled = [g if t is None else t * g for g, t in zip(grads, scales)]
        norm = tf.linalg.global_norm(scaled)
        factor = run_settings.as_tensor(self.rho, dtype) / (norm + run_settings.as_tensor(self.epsilon, dtype))
        # ASAM: ε = ρ T (T g) / ||T g||, the SAM step taken in the rescaled weights T⁻¹w.
        return [factor * (s if t is None else t * s) for s, t in zip(scaled, scales)]

    def get_config(self) -> dict[str, Any]:
        return {
            "rho": self.rho,
            "adaptive": self.adaptive,
            "eta": self.eta,
            "sync_perturbation": self.sync_perturbation,
            "epsilon": self.epsilon,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SAMGradients:
        return cls(**config)
