"""GMMC: the generative max-Mahalanobis classifier (Yang, Ye, Ye, Li & Ji, arXiv:2010.03759).

The network is a backbone phi and a `keras_ebm.trainers.gmmc.MaxMahalanobisHead` with fixed centres mu_y.
p(x, y) is modelled as N(phi(x); mu_y, sigma^2 I) up to the partition function, i.e. an EBM with
energy E(x, y) = 0.5 ||phi(x) - mu_y||^2 (sigma = 1 during training, eq. 6). Three ways to train:

* discriminative (section 3.1, eq. 5): minimise mean_batch E(x, y), the MMC centre regression
  loss; there is no softmax cross-entropy (paper and code agree).
* generative (section 3.2, eq. 7):  mean E(x_data, y) - beta * mean E(x~, y~), with class-
  conditional samples x~ of the labels y~ = y of the batch, and balance factor beta = 0.5.
* joint (section 3.3, Appendix 0.E): discriminative until `switch_step`, then generative, the
  balance factor rising linearly from 0 to beta over `ramp_steps` (0 = the reference code's
  abrupt switch). Since the discriminative loss is the data term of eq. 7, the joint loss is
  always `data - beta(step) * sample`.

Sampling (eq. 8-10), from a class-conditional replay buffer (Algorithm 1, Table 8):
* staged: draw z ~ N(mu_y, latent_std^2 I) once, then descend 0.5 ||phi(x) - z||^2 in x with the
  shared `SGLDSampler` (no Langevin noise, x clamped to the pixel range);
* noise-injected: redraw z at every step (eq. 10: a gradient-modulated noise).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from keras_ebm import distribute, random_draws, run_settings
from keras_ebm import energy as energy_lib
from keras_ebm.backbones.classifier import feature_extractor
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers.base import EBMTrainer
from keras_ebm.trainers.gmmc.head import mmc_head

if TYPE_CHECKING:
    from tensorflow.types.experimental import TensorLike

    from keras_ebm.sampling import InformativeInitializer, ReplayBuffer, SGLDSampler, UniformInitializer
    from keras_ebm.trainers.gmmc.head import MaxMahalanobisHead

MODES = ("discriminative", "generative", "joint")
SAMPLINGS = ("staged", "noise_injected")


@keras.saving.register_keras_serializable(package="keras_ebm")
class GMMC(EBMTrainer):
    """Generative max-Mahalanobis classifier trainer (discriminative, generative or joint).

    Args:
        network: a `keras_ebm.trainers.gmmc.build_mmc_classifier` network (layers `backbone` and
            `mmc_head`).
        image_shape, num_classes, pixel_range, gradients, seed: see `EBMTrainer`.
        mode: `"discriminative"` (eq. 5), `"generative"` (eq. 7) or `"joint"` (section 3.3).
        sampler: the shared `SGLDSampler`. Default GMMC's (Table 8 and the reference code):
            20 steps, step size 1, no noise, x clamped to `pixel_range`, batch-*mean* energy
            (`energy_reduction="mean"`: the per-sample step is step_size / batch, the batch being
            the global one under a distribution strategy).
        sampling: `"staged"` (eq. 8; the paper's reported setting) or `"noise_injected"` (eq. 10).
        latent_std: standard deviation of the latent targets z ~ N(mu_y, latent_std^2 I). The
            paper draws z with the model's sigma, which is only estimated after training; the
            reference code uses a fixed gamma = 0.001 (default). `None` uses the head's `sigma`.
        buffer: a class-conditional `ReplayBuffer`; default one is built from `buffer_size`,
            `reinit_prob` and `initializer` unless `mode="discriminative"`.
        buffer_size: replay buffer size, divisible by `num_classes` (Table 8: 100,000).
        reinit_prob: chain re-initialisation probability (Table 8: 0.025).
        initializer: chain initialiser; default `UniformInitializer(pixel_range)`.
        balance: beta, the weight of the sample term in eq. 7 (paper: 0.5).
        switch_step: joint mode, the optimizer step at which generative training starts (the
            step counter is `optimizer.iterations`, so it survives a checkpoint resume).
        ramp_steps: joint mode, steps over which beta rises linearly from 0 to `balance`
            (beta = balance * min(1, (step - switch_step + 1) / ramp_steps)); 0 switches at once.
        sigma_batches: if set, `after_training(train_data)` estimates sigma from this many
            batches (section 3.1); None leaves sigma at its value (1 unless set).
        sigma_data: where `after_training` reads those batches: a `tf.data.Dataset` of `(x, y)`
            batches or a dataset function `fn(input_context=None)` (`make_dataset_fn`). Default
            None: the `train_data` given to `after_training`, i.e. `run_training`'s training
            loader, which is *augmented* (pad-crop-flip + 0.03 noise in the configs) and so gives
            a larger sigma than clean images. The paper only says sigma is estimated "from the
            training set"; the reference code's end-of-training estimate reads its augmented +
            noise training loader. The gmmc_*.gin configs pass un-augmented training images.

    Batches: `(x, y)`; the data term, the accuracy and the labels of the chains all use it (a
    two-loader batch `((x, y), (x_px, y_px))` is accepted and its p(x) part ignored).

    Reported: loss, clf_acc, center_loss (mean 0.5 ||phi(x) - mu_y||^2 of the batch, eq. 5),
    sample_loss (the same for the samples), energy_gap (sample_loss - center_loss), balance (the
    beta of the step), sgld_grad_norm (last step of the chains). In discriminative mode the sample
    terms stay 0.

    Example:
    ```python
    network = build_mmc_classifier(TinyCNN((16, 32), input_shape=(32, 32, 3)), num_classes=10)
    trainer = GMMC(network, image_shape=(32, 32, 3), num_classes=10, buffer_size=1000)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4))
    trainer.fit(dataset, epochs=1)
    trainer.estimate_sigma(dataset.take(100))   # section 3.1, after training
    ```

    Reference:
        - [Yang et al., 2021 (GMMC)](https://arxiv.org/abs/2010.03759), eq. 5-11, Algorithm 1,
          Table 8, Appendix 0.B and 0.E.
    """

    tracked_names = (
        "loss",
        "clf_acc",
        "center_loss",
        "sample_loss",
        "energy_gap",
        "balance",
        "sgld_grad_norm",
    )
    default_ood_score = "log_px"
    config_attributes = EBMTrainer.config_attributes + (
        "mode",
        "sampling",
        "latent_std",
        "switch_step",
        "ramp_steps",
        "sigma_batches",
    )
    # Run-time settings (keras_ebm.run_settings): beta and the joint schedule are variables the
    # compiled step reads (arithmetic on optimizer.iterations); the mode, the sampling scheme and
    # latent_std decide the graph (a change rebuilds the step).
    mode = run_settings.TraceSetting()
    sampling = run_settings.TraceSetting()
    latent_std = run_settings.TraceSetting(lambda v: None if v is None else float(v))
    balance_factor = run_settings.Setting()
    switch_step = run_settings.Setting("int64", minimum=0)
    ramp_steps = run_settings.Setting("int64", minimum=0)

    def __init__(
        self,
        network: keras.Model,
        image_shape: tuple[int, int, int],
        num_classes: int,
        mode: str = "generative",
        sampler: SGLDSampler | None = None,
        sampling: str = "staged",
        latent_std: float = 0.001,
        buffer: ReplayBuffer | None = None,
        buffer_size: int = 100000,
        reinit_prob: float = 0.025,
        initializer: UniformInitializer | InformativeInitializer | None = None,
        balance: float = 0.5,
        switch_step: int = 0,
        ramp_steps: int = 0,
        sigma_batches: int | None = None,
        sigma_data: Any = None,
        pixel_range: tuple[float, float] = (-1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(network, image_shape, num_classes, pixel_range=pixel_range, **kwargs)
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"`sampling` must be one of {SAMPLINGS}. Received: sampling={sampling!r}")
        if latent_std is not None and float(latent_std) < 0:
            raise ValueError(
                f"`latent_std` must be >= 0, or None to use the head's sigma. Received: latent_std={latent_std}"
            )
        if float(balance) < 0:
            raise ValueError(f"`balance` must be >= 0. Received: balance={balance}")
        if int(switch_step) < 0 or int(ramp_steps) < 0:
            raise ValueError(
                "`switch_step` and `ramp_steps` must be >= 0. "
                f"Received: switch_step={switch_step}, ramp_steps={ramp_steps}"
            )
        mmc_head(network)  # validates the network early, with a readable error
        if self.head.num_classes != self.num_classes:
            raise ValueError(
                f"The network's MMC head has {self.head.num_classes} classes but the trainer "
                f"{self.num_classes}. Received: num_classes={num_classes}"
            )
        self.mode = mode
        self.sampling = sampling
        self.latent_std = latent_std
        self.balance_factor = balance
        self.switch_step = switch_step
        self.ramp_steps = ramp_steps
        if sigma_batches is not None and int(sigma_batches) < 1:
            raise ValueError(f"`sigma_batches` must be a positive int or None. Received: sigma_batches={sigma_batches}")
        self.sigma_batches = None if sigma_batches is None else int(sigma_batches)
        if sigma_data is not None and not (isinstance(sigma_data, tf.data.Dataset) or callable(sigma_data)):
            raise ValueError(
                "`sigma_data` must be a tf.data.Dataset, a dataset function fn(input_context=None) "
                f"or None. Received: sigma_data={sigma_data!r}"
            )
        # Kept as a plain function: a Dataset attribute would be tracked (and checkpointed) by Keras.
        if isinstance(sigma_data, tf.data.Dataset):
            dataset = sigma_data
            sigma_data = lambda input_context=None: dataset  # noqa: E731
        self._sigma_data_fn = sigma_data
        if sampler is None:
            sampler = SGLDSampler(
                n_steps=20,
                step_size=1.0,
                noise_std=0.0,
                x_clip=tuple(self.pixel_range),
                energy_reduction="mean",
            )
        self.sampler = sampler
        # Tracked so that the sampler's RNG state is checkpointed with the trainer (as in JEM).
        self.sampler_seed_generator = self.sampler.seed_generator
        self.track_sampler_logs()
        if buffer is None and mode != "discriminative":
            if int(buffer_size) % self.num_classes:
                raise ValueError(
                    "GMMC's class-conditional buffer holds buffer_size // num_classes chains per "
                    f"class: `buffer_size` must be divisible by num_classes={self.num_classes}. "
                    f"Received: buffer_size={buffer_size}"
                )
            buffer = self.default_buffer(buffer_size, initializer, reinit_prob, class_conditional=True)
        if buffer is not None and not buffer.class_conditional:
            raise ValueError(
                "GMMC samples class-conditional chains: pass a ReplayBuffer with "
                "class_conditional=True. Received: buffer.class_conditional=False"
            )
        self.buffer = buffer

    def get_config(self) -> dict[str, Any]:
        # `sigma_data` is a data source, not a setting: None here; pass it to `from_config` if needed.
        return {**super().get_config(), "balance": self.balance_factor, "sigma_data": None}

    # ------------------------------------------------------------------ energies and latents
    # Looked up, not stored: attributes would make Keras track the layers a second time.
    @property
    def head(self) -> MaxMahalanobisHead:
        """The network's `MaxMahalanobisHead`."""
        return mmc_head(self.network)

    @property
    def backbone(self) -> keras.Model:
        """The network's feature extractor phi."""
        return feature_extractor(self.network)

    def features(self, x: TensorLike, training: bool = False) -> tf.Tensor:
        """phi(x): backbone features `[batch, dim]`."""
        return self.backbone(x, training=training)

    def latent_energy(self, x: TensorLike, z: tf.Tensor, training: bool = False) -> tf.Tensor:
        """0.5 ||phi(x) - z||^2 per sample `[batch]`, float32: the energy the chains descend
        (eq. 8-9). Computed in float32 whatever the backbone's dtype policy, as the MMC head
        (under mixed_float16, squares of float16 differences overflow beyond 256)."""
        phi = self.features(x, training=training)
        dtype = energy_lib.wide_dtype(phi.dtype)  # float32; float64 under a float64 policy
        phi = tf.cast(phi, dtype)
        return 0.5 * tf.reduce_sum(tf.square(phi - tf.cast(z, dtype)), axis=-1)

    def draw_latents(self, y: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
        """z = mu_y + latent_std * N(0, I), `[batch, dim]` (the seed defaults to a replica-distinct
        draw of the trainer's seed generator)."""
        mu = self.head.class_centers(y)
        std = self.head.sigma if self.latent_std is None else self.latent_std
        if self.latent_std == 0.0:
            return mu
        seed = distribute.replica_seed(self.seed_generator) if seed is None else seed
        noise = random_draws.normal("latent_normal", tf.shape(mu), seed=seed, dtype=mu.dtype)
        std = tf.constant(std, mu.dtype) if isinstance(std, float) else tf.cast(std, mu.dtype)
        return mu + std * noise

    def _sampler_energy(self, x, z, training=False):
        # The sampler's `y` argument carries the latent target z: fixed across the steps of one
        # call, which is exactly staged sampling.
        energies = self.latent_energy(x, z, training=training)
        if self.sampler.energy_reduction == "mean":
            # The sampler averages over the per-replica batch; GMMC's step is step_size / batch
            # for the *global* batch (one GPU, batch 64), so divide by the replicas as well: one
            # device and N replicas with the same global batch then take the same step.
            energies = energies / tf.cast(distribute.num_replicas(), energies.dtype)
        return energies

    def sample_chains(
        self, x_init: tf.Tensor, y: tf.Tensor, n_steps: int | tf.Tensor | None = None
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Run GMMC's class-conditional chains from `x_init` for labels `y`.

        Staged: one z per chain for the whole call. Noise-injected: a new z at every step; the
        shared sampler is run one step at a time inside a `tf.while_loop`, z being drawn
        statelessly from (call seed, step), so the draws do not depend on variable updates inside
        the energy function (e.g. `SGLDSampler(freeze_bn_stats=True)`).

        Returns:
            `(x, stats)`: samples `[batch, H, W, C]` (no gradient) and the sampler's diagnostics.
        """
        n_steps = tf.cast(self.sampler.n_steps if n_steps is None else n_steps, tf.int32)
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        if self.sampling == "staged":
            z = self.draw_latents(y)
            return self.sampler.sample_with_stats(self._sampler_energy, x_init, z, n_steps=n_steps)
        seed = distribute.replica_seed(self.seed_generator)

        def body(step, x, grad_norm):
            z = self.draw_latents(y, seed=tf.random.experimental.stateless_fold_in(seed, step))
            x, stats = self.sampler.sample_with_stats(self._sampler_energy, x, z, n_steps=1)
            return step + 1, x, stats["grad_norm"]

        _, x, grad_norm = tf.while_loop(
            lambda step, *_: step < n_steps,
            body,
            (tf.constant(0, tf.int32), tf.stop_gradient(tf.convert_to_tensor(x_init)), tf.constant(0.0)),
            parallel_iterations=1,
        )
        return tf.stop_gradient(x), {"grad_norm": grad_norm}

    # ------------------------------------------------------------------ schedule
    def current_step(self) -> tf.Tensor:
        """The optimizer's iteration counter (int64 scalar): checkpointed, so resumes continue it."""
        if getattr(self, "optimizer", None) is None:
            return tf.constant(0, tf.int64)
        return tf.cast(self.optimizer.iterations, tf.int64)

    def balance(self, step: int | tf.Tensor | None = None) -> tf.Tensor:
        """beta of the step `step` (default the current one): float32 scalar tensor."""
        if self.mode == "discriminative":
            return tf.constant(0.0)
        if self.mode == "generative":
            return tf.cast(self.balance_factor, tf.float32)
        step = self.current_step() if step is None else tf.cast(step, tf.int64)
        # Arithmetic, not Python control flow, on variables: one trace serves the whole run, and
        # a changed switch step, ramp or beta applies at the next step.
        since = tf.cast(step - tf.cast(self.switch_step, tf.int64) + 1, tf.float32)
        ramp = tf.cast(tf.maximum(tf.cast(self.ramp_steps, tf.int64), 1), tf.float32)
        frac = tf.clip_by_value(since / ramp, 0.0, 1.0)
        return tf.cast(self.balance_factor, tf.float32) * frac

    # ------------------------------------------------------------------ EBMTrainer hooks
    def sample_negatives(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if self.mode == "discriminative":
            return {}
        y = batch["y"]
        x0, idx = self.buffer.sample(tf.shape(y)[0], y=y)
        n_steps = self.sampler.n_steps
        active = None
        if self.mode == "joint":
            # Before the switch the chains are not advanced (0 steps), so the discriminative phase
            # costs no SGLD; buffer sampling and write-back still run and keep the graph static.
            active = self.balance() > 0.0
            n_steps = tf.where(active, n_steps, 0)
        x, stats = self.sample_chains(x0, y, n_steps=n_steps)
        written = x
        if active is not None:
            # Before the switch the reference code never touches the buffer: write the rows back
            # as they were (x0 would re-initialise about reinit_prob of them).
            written = tf.where(active, x, tf.gather(self.buffer.buffer.value, idx))
        self.buffer.update(idx, written)
        negatives = {"x": x, "y": y, "sgld_grad_norm": stats["grad_norm"]}
        if active is not None:
            negatives["active"] = active
        return negatives

    def compute_losses(
        self, batch: dict[str, tf.Tensor], negatives: dict[str, tf.Tensor], training: bool = True
    ) -> dict[str, tf.Tensor]:
        x, y = batch["x"], batch["y"]
        phi = self.features(x, training=training)
        center_loss = tf.reduce_mean(self.head.center_loss(phi, y))
        logits = self.head(phi)
        clf_acc = tf.reduce_mean(
            tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y), center_loss.dtype)
        )
        zero = tf.zeros_like(center_loss)
        logs = {
            "center_loss": center_loss,
            "clf_acc": clf_acc,
            "sample_loss": zero,
            "energy_gap": zero,
            "balance": zero,
            "sgld_grad_norm": zero,
        }
        total = center_loss
        if self.mode != "discriminative":
            beta = tf.cast(self.balance(), center_loss.dtype)

            def sample_term():
                phi_s = self.features(negatives["x"], training=training)
                return tf.reduce_mean(self.head.center_loss(phi_s, negatives["y"]))

            if "active" in negatives:
                # Skip the forward and backward pass on the samples before the switch.
                sample_loss = tf.cond(negatives["active"], sample_term, lambda: zero)
            else:
                sample_loss = sample_term()
            total = center_loss - beta * sample_loss
            logs.update(
                sample_loss=sample_loss,
                # 0 while the sample term is off (joint mode before the switch).
                energy_gap=tf.where(beta > 0, sample_loss - center_loss, zero),
                balance=beta,
                sgld_grad_norm=negatives["sgld_grad_norm"],
            )
        logs["loss"] = total
        return logs

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        batch = self.unpack_batch(data, training=False)
        phi = self.features(batch["x"], training=False)
        center_loss = tf.reduce_mean(self.head.center_loss(phi, batch["y"]))
        pred = tf.argmax(self.head(phi), axis=-1, output_type=tf.int32)
        return self.update_trackers(
            {
                "loss": center_loss,
                "center_loss": center_loss,
                "clf_acc": tf.reduce_mean(tf.cast(tf.equal(pred, batch["y"]), tf.float32)),
            }
        )

    # ------------------------------------------------------------------ after training
    def estimate_sigma(
        self,
        data: tuple[TensorLike, TensorLike] | Iterable[tuple[TensorLike, TensorLike]],
        max_batches: int | None = None,
        assign: bool = True,
    ) -> float:
        """Estimate the head's sigma from labelled training data (section 3.1), after training.

        sigma^2 = mean ||phi(x) - mu_y||^2 / dim over the data (features in inference mode), the
        maximum-likelihood estimate with the fixed centres.

        Args:
            data: `(x, y)` numpy arrays / tensors, or an iterable (`tf.data.Dataset`) of `(x, y)`
                batches of float images in `pixel_range`.
            max_batches: optional cap on the batches read from an iterable (a repeated training
                dataset never ends).
            assign: write the estimate into the head (`head.sigma`).

        Returns:
            The estimate, a Python float.
        """
        if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
            batches = [data]
        else:
            batches = data
        if (
            max_batches is None
            and isinstance(data, tf.data.Dataset)
            and (data.cardinality() == tf.data.INFINITE_CARDINALITY)
        ):
            raise ValueError(
                "`data` is an infinite dataset: pass `max_batches` (or a finite dataset). Received: max_batches=None"
            )
        total, count, dim = 0.0, 0, None
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= int(max_batches):
                break
            x, y = batch[0], batch[1]
            x = tf.cast(tf.convert_to_tensor(x), tf.float32)
            for start in range(0, int(x.shape[0]), 256):
                phi = self.features(x[start : start + 256], training=False)
                sq = 2.0 * self.head.center_loss(phi, tf.convert_to_tensor(y)[start : start + 256])
                total += float(tf.reduce_sum(sq))
                count += int(phi.shape[0])
                dim = int(phi.shape[-1])
        if not count:
            raise ValueError("`data` yielded no examples to estimate sigma from. Received: 0 examples")
        sigma = (total / count / dim) ** 0.5
        if assign:
            self.head.set_sigma(max(sigma, 1e-12))
        return sigma

    def after_training(self, train_data: Any) -> float | None:
        """End-of-training hook: estimate sigma from `sigma_batches` batches (section 3.1).

        The batches come from `sigma_data` when it is set, else from `train_data`: with
        `run_training` that is the training loader, augmented as configured (see `sigma_data`).

        Args:
            train_data: a `tf.data.Dataset` of `(x, y)` batches, or a dataset function
                `fn(input_context=None)` as `run_training` takes.

        Returns:
            The estimated sigma (also assigned to the head), or None when `sigma_batches` is None
            (nothing is done).
        """
        if self.sigma_batches is None:
            return None
        source = self._sigma_data_fn if self._sigma_data_fn is not None else train_data
        data = source if isinstance(source, tf.data.Dataset) else source(None)
        return self.estimate_sigma(data, max_batches=self.sigma_batches)

    def generation_labels(self, num_samples: int, y: TensorLike | None, seed: tf.Tensor) -> tf.Tensor:
        """Class-conditional samples (section 3.2): `y`, or uniformly random classes."""
        if y is None:
            y = tf.random.stateless_uniform([num_samples], seed=seed, minval=0, maxval=self.num_classes, dtype=tf.int32)
        return tf.cast(tf.reshape(y, [-1]), tf.int32)

    def run_chains(self, x0: tf.Tensor, y: tf.Tensor | None, n_steps: int | None = None) -> tf.Tensor:
        """`generate`'s chains: GMMC's class-conditional sampling (`sample_chains`)."""
        return self.sample_chains(x0, y, n_steps=n_steps)[0]
