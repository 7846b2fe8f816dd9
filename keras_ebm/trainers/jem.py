"""JEM, JEM++ and SADA-JEM: a classifier trained as an energy-based model of p(x) (and p(x, y)).

JEM (Grathwohl et al. 2020, arXiv:1912.03263, eq. 7-8): maximise
    log p(y|x) + log p(x) [+ log p(x, y)],
where the gradient of log p(x) is estimated by contrastive divergence with SGLD samples x~ drawn from
a replay buffer (section 4; wgrathwohl/JEM train_wrn_ebm.py):
    L_px = mean E(x_data) - mean E(x~)          (E(x) = -logsumexp f(x), keras_ebm.energy)
JEM++ (Yang & Ji 2021, arXiv:2109.09032): "proximal" SGLD (elementwise gradient clamp + x clamp),
informative initialisation of the buffer from per-class Gaussians, BatchNorm.
SADA-JEM (Yang, Su & Ji 2023, arXiv:2209.07959, Algorithm 1): JEM++ trained with SAM on the whole
hybrid loss, data augmentation only in the classifier branch (two loaders), BN on.

All three are one trainer with different components and defaults: no train_step of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from keras_ebm import energy as energy_lib
from keras_ebm import run_settings
from keras_ebm.optim.gradients import SAMGradients
from keras_ebm.sampling import SGLDSampler
from keras_ebm.stateless_scope import discard_updates
from keras_ebm.trainers.base import EBMTrainer

if TYPE_CHECKING:
    from keras_ebm.optim.gradients import PlainGradients, SAMGradients
    from keras_ebm.sampling import InformativeInitializer, ReplayBuffer, SGLDSampler, UniformInitializer


class DeferredNegatives(dict):
    """The negatives of one step, drawn by `draw()` when the loss first reads a key, then kept.

    Drawing inside the loss lets the official order of forward passes hold (p(x) data batch,
    SGLD, samples, classifier batch), which decides BatchNorm's moving statistics; keeping them
    lets SAM's second pass (which calls the loss again at w + e) reuse the same samples, as the
    SADA-JEM code does. The samples carry no gradient (`SGLDSampler` stops it).
    """

    def __init__(self, draw: Callable[[], dict[str, tf.Tensor]]) -> None:
        super().__init__()
        self._draw = draw

    def __missing__(self, key):
        if self._draw is None:
            raise KeyError(key)
        draw, self._draw = self._draw, None
        self.update(draw())
        return self[key]


@keras.saving.register_keras_serializable(package="keras_ebm")
class JEM(EBMTrainer):
    """Joint Energy-based Model trainer (JEM / JEM++ / SADA-JEM).

    Args:
        network, image_shape, num_classes, pixel_range, gradients, seed: see `EBMTrainer`.
        sampler: `SGLDSampler`; default JEM's (20 steps, step size 1, noise 0.01, no clamps, BN in
            inference mode while sampling).
        buffer: a `ReplayBuffer`; default one is built from `buffer_size`, `reinit_prob` and
            `initializer` (class-partitioned when `pxy_weight > 0`); none when nothing is sampled
            (`px_weight = pxy_weight = 0`).
        buffer_size: replay buffer size (JEM 10,000).
        reinit_prob: probability of restarting a chain from the initialiser (JEM 0.05).
        initializer: chain initialiser; default `UniformInitializer(pixel_range)`. JEM++/SADA-JEM use
            `InformativeInitializer` (see `keras_ebm.sampling.informative_initializer`).
        clf_weight: weight of log p(y|x) (cross-entropy).
        px_weight: weight of the log p(x) contrastive-divergence term (JEM `--p_x_weight`).
        pxy_weight: weight of the optional log p(x, y) term with class-conditional SGLD chains
            (JEM `--p_x_y_weight`, default 0).
        energy_l2: coefficient of an L2 penalty on the energies of data and samples, which the JEM
            authors suggest against divergence (~0.1, JEM issue #4). `energy_l2_mode="samples"`
            penalises mean E^2 over samples (default); `"means"` squares the batch means, as the
            SADA-JEM code does (`l2_coeff * (fp^2 + fq^2)`).
        energy_l2_second_pass: with SAM (`gradients=SAMGradients(...)`), whether the second pass's
            loss (at w + e, the gradient the optimizer applies) includes the `energy_l2` penalty.
            True (default) differentiates the same loss twice; False is the SADA-JEM code, whose
            second pass recomputes only `-(fp - fq)` and the cross-entropy, so the penalty shapes
            only the perturbation (sndnyang/SADAJEM train_sadajem.py; `SADAJEM`'s default).
        bn_stats_from_samples: whether the loss's forward pass on SGLD samples (BN in train mode)
            updates BatchNorm moving statistics. True reproduces the JEM++/SADA-JEM code, whose
            evaluation-time statistics then mix data and sample statistics (about 90% the labelled
            batch's and 9% the samples', since the classifier batch comes last, see
            `compute_losses`); False keeps them data-only (the samples are still normalised
            with their own batch statistics). Pair it with `SGLDSampler(freeze_bn_stats=True)`.

    Batches: `(x, y)` (one loader: the p(x) term uses the classifier batch) or
    `((x, y), (x_px, y_px))` (two loaders, `keras_ebm.data.make_two_branch_dataset`).

    Reported: loss, clf_loss, clf_acc, px_loss, energy_data (mean E of the p(x) batch),
    energy_sample (mean E of the SGLD samples), energy_gap (sample - data; > 0 when the model
    puts more mass on data than on its samples), sgld_grad_norm.
    """

    tracked_names = (
        "loss",
        "clf_loss",
        "clf_acc",
        "px_loss",
        "pxy_loss",
        "energy_data",
        "energy_sample",
        "energy_gap",
        "sgld_grad_norm",
    )
    config_attributes = EBMTrainer.config_attributes + (
        "clf_weight",
        "px_weight",
        "pxy_weight",
        "energy_l2",
        "energy_l2_mode",
        "bn_stats_from_samples",
        "energy_l2_second_pass",
    )
    # Run-time settings (keras_ebm.run_settings): the loss weights and the energy L2 coefficient
    # are variables the compiled step reads (the divergence guard's energy L2 remedy, schedules);
    # px_weight / pxy_weight turning on or off (0) and the two flags rebuild the step.
    clf_weight = run_settings.Setting()
    px_weight = run_settings.Setting(minimum=0.0, structure=lambda v: v > 0)
    pxy_weight = run_settings.Setting(minimum=0.0, structure=lambda v: v > 0)
    energy_l2 = run_settings.Setting(minimum=0.0)
    energy_l2_mode = run_settings.TraceSetting()
    bn_stats_from_samples = run_settings.TraceSetting(bool)
    energy_l2_second_pass = run_settings.TraceSetting(bool)

    def __init__(
        self,
        network: keras.Model,
        image_shape: tuple[int, int, int],
        num_classes: int,
        sampler: SGLDSampler | None = None,
        buffer: ReplayBuffer | None = None,
        buffer_size: int = 10000,
        reinit_prob: float = 0.05,
        initializer: UniformInitializer | InformativeInitializer | None = None,
        clf_weight: float = 1.0,
        px_weight: float = 1.0,
        pxy_weight: float = 0.0,
        energy_l2: float = 0.0,
        energy_l2_mode: str = "samples",
        bn_stats_from_samples: bool = True,
        energy_l2_second_pass: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(network, image_shape, num_classes, **kwargs)
        if energy_l2_mode not in ("samples", "means"):
            raise ValueError(
                f"`energy_l2_mode` must be 'samples' or 'means'. Received: energy_l2_mode={energy_l2_mode!r}"
            )
        self.sampler = sampler if sampler is not None else SGLDSampler(n_steps=20, step_size=1.0, noise_std=0.01)
        # The sampler is a plain object; tracking its seed generator puts the SGLD noise state in
        # checkpoints, so a resumed run continues the noise sequence instead of replaying it.
        self.sampler_seed_generator = self.sampler.seed_generator
        self.track_sampler_logs()
        if buffer is None and (px_weight > 0 or pxy_weight > 0):
            buffer = self.default_buffer(buffer_size, initializer, reinit_prob, class_conditional=pxy_weight > 0)
        self.buffer = buffer
        self.clf_weight = clf_weight
        self.px_weight = px_weight
        self.pxy_weight = pxy_weight
        self.energy_l2 = energy_l2
        self.energy_l2_mode = energy_l2_mode
        self.bn_stats_from_samples = bool(bn_stats_from_samples)
        self.energy_l2_second_pass = bool(energy_l2_second_pass)

    # The energies the sampler descends; the training flag is the sampler's (explicit) choice.
    def _energy(self, x, y=None, training=False):
        return energy_lib.energy_from_logits(self.network(x, training=training))

    def _class_energy(self, x, y, training=False):
        return energy_lib.class_energy(self.network(x, training=training), y)

    def sample_negatives(self, batch: dict[str, tf.Tensor]) -> DeferredNegatives:
        """SGLD samples, drawn when the loss first reads them (see `DeferredNegatives`)."""
        return DeferredNegatives(lambda: self._draw_negatives(batch))

    def _terms(self):
        """`(p(x) term on, p(x, y) term on)`: Python booleans the trace decides the graph with."""
        return run_settings.structure_of(self, "px_weight"), run_settings.structure_of(self, "pxy_weight")

    def _draw_negatives(self, batch):
        negatives = {}
        px_on, pxy_on = self._terms()
        if (px_on or pxy_on) and self.buffer is None:
            raise ValueError(
                f"{type(self).__name__} was built without a replay buffer (px_weight = pxy_weight = 0), "
                "so the p(x) terms cannot be turned on during the run: build it with the weights "
                "positive (or pass `buffer=`). Received: a positive px_weight or pxy_weight, no buffer"
            )
        if px_on:
            x0, idx = self.buffer.sample(tf.shape(batch["x_px"])[0])
            x, stats = self.sampler.sample_with_stats(self._energy, x0)
            self.buffer.update(idx, x)
            negatives["x"] = x
            negatives["sgld_grad_norm"] = stats["grad_norm"]
        if pxy_on:
            y = batch["y_px"]
            x0, idx = self.buffer.sample(tf.shape(y)[0], y=y)
            x = self.sampler(self._class_energy, x0, y)
            self.buffer.update(idx, x)
            negatives["x_y"] = x
        return negatives

    def _sample_logits(self, x, training):
        if self.bn_stats_from_samples or not training:
            return self(x, training=training)
        with discard_updates():
            return self(x, training=training)

    def loss_closure(
        self, batch: dict[str, tf.Tensor], negatives: DeferredNegatives
    ) -> Callable[[], dict[str, tf.Tensor]]:
        """`EBMTrainer.loss_closure`; without `energy_l2_second_pass`, calls after the first (SAM's
        second pass) leave out the energy L2 penalty (traced in call order: first pass, second)."""
        if self.energy_l2_second_pass:  # (energy_l2 is a variable: 0 leaves 0 out of both passes)
            return super().loss_closure(batch, negatives)
        calls = []

        def loss_fn():
            calls.append(None)
            return self.compute_losses(batch, negatives, training=True, energy_l2=len(calls) == 1)

        return loss_fn

    def compute_losses(
        self, batch: dict[str, tf.Tensor], negatives: DeferredNegatives, training: bool = True, energy_l2: bool = True
    ) -> dict[str, tf.Tensor]:
        # Forward passes in the official loops' order (JEM, JEM++, SADA-JEM train scripts): the
        # p(x) data batch, then SGLD (reading `negatives` draws it), then the samples, then the
        # classifier batch last. With BN in train mode and PyTorch momentum 0.9 (Keras 0.1) the
        # moving statistics end ~90% the labelled batch's, ~9% the samples'.
        px_on, pxy_on = self._terms()
        sampling = px_on or pxy_on
        one_loader = batch["x_px"] is batch["x"]
        logits = logits_px = None
        if sampling:
            # One loader: the p(x) batch is the classifier batch, so its forward pass is shared.
            logits_px = self(batch["x_px"], training=training)
            if one_loader:
                logits = logits_px
        logs, generative = {}, 0.0
        if px_on:
            e_data = energy_lib.energy_from_logits(logits_px)
            e_sample = energy_lib.energy_from_logits(self._sample_logits(negatives["x"], training))
            px_loss = tf.reduce_mean(e_data) - tf.reduce_mean(e_sample)
            logs.update(
                px_loss=px_loss,
                energy_data=tf.reduce_mean(e_data),
                energy_sample=tf.reduce_mean(e_sample),
                energy_gap=tf.reduce_mean(e_sample) - tf.reduce_mean(e_data),
                sgld_grad_norm=negatives["sgld_grad_norm"],
            )
            generative = run_settings.as_tensor(self.px_weight, px_loss.dtype) * px_loss + (
                self._l2(e_data, e_sample) if energy_l2 else 0.0
            )
        if pxy_on:
            y = batch["y_px"]
            e_data_y = energy_lib.class_energy(logits_px, y)
            e_sample_y = energy_lib.class_energy(self._sample_logits(negatives["x_y"], training), y)
            pxy_loss = tf.reduce_mean(e_data_y) - tf.reduce_mean(e_sample_y)
            logs["pxy_loss"] = pxy_loss
            generative = (
                generative
                + run_settings.as_tensor(self.pxy_weight, pxy_loss.dtype) * pxy_loss
                + (self._l2(e_data_y, e_sample_y) if energy_l2 else 0.0)
            )
        if logits is None:
            logits = self(batch["x"], training=training)
        clf_logs = self.classifier_logs(logits, batch["y"])
        # With a p(x) term, energy_data is the p(x) batch's (it overrides the classifier batch's).
        logs = {**clf_logs, **logs}
        logs["loss"] = (
            run_settings.as_tensor(self.clf_weight, clf_logs["clf_loss"].dtype) * clf_logs["clf_loss"] + generative
        )
        return logs

    def _l2(self, e_data, e_sample):
        # Always in the graph, times the coefficient the step reads (0 adds exactly 0): the energy
        # L2 remedy of the divergence guard changes it between steps without a retrace.
        coefficient = run_settings.as_tensor(self.energy_l2, e_data.dtype)
        if self.energy_l2_mode == "means":
            return coefficient * (tf.reduce_mean(e_data) ** 2 + tf.reduce_mean(e_sample) ** 2)
        return coefficient * (tf.reduce_mean(e_data**2) + tf.reduce_mean(e_sample**2))

    def run_chains(self, x0: tf.Tensor, y: tf.Tensor | None, n_steps: int | None = None) -> tf.Tensor:
        """`generate`'s chains: on E(x), or on E(x, y) when labels are given."""
        if y is None:
            return self.sampler(self._energy, x0, n_steps=n_steps)
        return self.sampler(self._class_energy, x0, y, n_steps=n_steps)


@keras.saving.register_keras_serializable(package="keras_ebm")
class JEMPP(JEM):
    """JEM++ (Yang & Ji 2021): proximal SGLD (gradient clamp 1, x clamp), BN in train mode while
    sampling, informative initialisation. Configure the initialiser with
    `JEMPP.initializer = @informative_initializer()` (gin) or pass an `InformativeInitializer`.
    """

    def __init__(
        self,
        network: keras.Model,
        image_shape: tuple[int, int, int],
        num_classes: int,
        sampler: SGLDSampler | None = None,
        pixel_range: tuple[float, float] = (-1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        if sampler is None:
            sampler = _proximal_sgld(10, pixel_range)
        super().__init__(network, image_shape, num_classes, sampler=sampler, pixel_range=pixel_range, **kwargs)


@keras.saving.register_keras_serializable(package="keras_ebm")
class SADAJEM(JEMPP):
    """SADA-JEM (Yang, Su & Ji 2023, Algorithm 1; Table 7): JEM++ + SAM on the hybrid loss.

    Defaults: SGLD K=5, step size 1, noise 0, gradient clamp 1 and x clamp (the code's proximal
    SGLD), BN in train mode while sampling, buffer 10,000 with reinit 5%, `SAMGradients(rho=0.2)`
    (paper Table 6; the official code defaults to rho=2 with ASAM: `SAMGradients(rho=2.0,
    adaptive=True, eta=0.0)`). Feed it two loaders (augmented classifier batch, un-augmented p(x)
    batch) with `keras_ebm.data.make_two_branch_dataset`; use a BN backbone
    (`WideResNet(norm="batch")`). The second SAM pass reuses the same SGLD samples and does not
    update BN moving statistics, and leaves out the `energy_l2` penalty (`energy_l2_second_pass=False`;
    sndnyang/SADAJEM train_sadajem.py).
    """

    def __init__(
        self,
        network: keras.Model,
        image_shape: tuple[int, int, int],
        num_classes: int,
        sampler: SGLDSampler | None = None,
        gradients: PlainGradients | SAMGradients | None = None,
        pixel_range: tuple[float, float] = (-1.0, 1.0),
        energy_l2_second_pass: bool = False,
        **kwargs: Any,
    ) -> None:
        if sampler is None:
            sampler = _proximal_sgld(5, pixel_range)
        super().__init__(
            network,
            image_shape,
            num_classes,
            sampler=sampler,
            pixel_range=pixel_range,
            gradients=gradients if gradients is not None else SAMGradients(rho=0.2),
            energy_l2_second_pass=energy_l2_second_pass,
            **kwargs,
        )


def _proximal_sgld(n_steps, pixel_range):
    """The default sampler of JEM++ and SADA-JEM: proximal SGLD (step 1, no noise, gradient clamp 1,
    x clamped to the pixel range) with BatchNorm in train mode while sampling."""
    return SGLDSampler(
        n_steps=n_steps,
        step_size=1.0,
        noise_std=0.0,
        grad_clip=1.0,
        x_clip=tuple(pixel_range),
        energy_training=True,
    )
