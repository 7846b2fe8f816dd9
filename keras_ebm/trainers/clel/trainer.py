"""CLEL: an EBM guided by contrastive latent variables (Lee et al., ICLR 2023, arXiv:2303.03023).

Spherical latent-variable EBM (section 2.2):
    E(x, z) = 0.5 ||f(x)||^2 - beta * g(f(x) / ||f(x)||)^T z,     z = h(x) / ||h(x)||
trained jointly with a SimCLR encoder h. Per step (hankook/CLEL models/ebm.py, train.py):
1. SGLD negatives x~ from a replay buffer (chain starts strongly augmented) on E(x) = 0.5 ||f(x)||^2.
2. EBM loss (eq. 3): mean E(x, z) - mean E(x~) + alpha * mean(E(x)^2 + E(x~)^2), with z the
   detached encoder latent of an augmented view of x.
3. Encoder loss (eq. 4): NT-Xent over two augmented views, the EBM latents of x~ as extra negatives.
Two optimizers (EBM: Adam, betas (0, 0.999), warm-up; encoder: SGD + momentum + cosine), EMA copies of
both networks for evaluation; OOD score eq. 5 with the EMA networks. The encoder's objective is always
NT-Xent (eq. 4); any network mapping images to `[batch, k]` can serve as h, but the paper's BYOL and
MAE variants (Table 5) use other objectives and are not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from keras_ebm import distribute, random_draws, run_settings
from keras_ebm.data.augment import simclr_augment
from keras_ebm.energy import wide_dtype
from keras_ebm.losses.contrastive import nt_xent_loss
from keras_ebm.optim.gradients import add_weight_decay
from keras_ebm.optim.torch_sgd import TorchSGD
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers.base import EBMTrainer
from keras_ebm.trainers.clel.ema import ModelEMA

if TYPE_CHECKING:
    from tensorflow.types.experimental import TensorLike

    from keras_ebm.sampling import ReplayBuffer, SGLDSampler


class _Untracked:
    # Keeps an object out of Keras' attribute tracking (its variables are checkpointed elsewhere).
    def __init__(self, value):
        self.value = value


def _energy(features):
    # float32 (also for bfloat16 features); float64 in a float64 run
    return 0.5 * tf.reduce_sum(tf.square(tf.cast(features, wide_dtype(features.dtype))), axis=-1)


def _wide(x):
    return tf.cast(x, wide_dtype(x.dtype))


def _choice(*options):
    def normalize(value):
        if value not in options:
            raise ValueError(f"Expected one of {options}. Received: {value!r}")
        return value

    return normalize


def _check_sweeps(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"`{name}` must be None or a positive int. Received: {name}={value!r}")
    return int(value)


@keras.saving.register_keras_serializable(package="keras_ebm")
class CLEL(EBMTrainer):
    """Contrastive Latent-guided Energy Learning trainer (two networks, two optimizers).

    Args:
        network: the EBM feature network f_theta, images in [0, 1] -> `[batch, d]`
            (`keras_ebm.backbones.clel.build_clel_ebm`).
        projection: g_theta, `[batch, d] -> [batch, k]`, bias-free (`build_clel_projection`).
        encoder: h_phi, images -> `[batch, k]` (`build_clel_encoder`).
        image_shape: `(height, width, channels)`.
        num_classes: unused by the objective (CLEL is unsupervised); defaults to k, the width of
            `call`'s output.
        encoder_weight_decay: L2 coefficient added to the encoder's gradients (PyTorch SGD's
            coupled weight decay, 5e-4; Keras' `weight_decay` is decoupled, hence this argument).
        weight_decay: coupled L2 coefficient added to the EBM's gradients (f_theta and g_theta),
            `keras_ebm.optim.add_weight_decay`. Default 0: hankook/CLEL's EBM optimizer (Adam) has
            none; the encoder's decay is `encoder_weight_decay`.
        sampler: `SGLDSampler`; default CLEL's: 60 steps, step size 100, noise 0.001, gradient clamp
            100 (the code's `step_clip=step_size`), x clamped to [0, 1], train mode.
        buffer: a `ReplayBuffer`; default built from `buffer_size` (10,000) and `reinit_prob`
            (0.001) with U(0, 1) initialisation.
        augment_chain_starts: apply the strong (SimCLR) augmentation to chain starts (CLEL does).
        alpha: energy L2 coefficient of eq. 3 (1.0).
        beta: latent guidance weight of eq. 3 (0.01).
        ood_beta: beta of the OOD score eq. 5 (the code's OOD runs use 0.1).
        temperature: NT-Xent temperature (0.2).
        ebm_batch_fraction: fraction of each (per-replica) batch used by the EBM terms and SGLD
            (CLEL large: 64 of the encoder's 256, i.e. 0.25); the encoder sees the whole batch.
        ema_decay: EMA decay per step (CLEL: 0.5 ** (64 / 20000)).
        ema_start_step: the EMA copies the weights (decay 0) before this step (CLEL: 20000 // 64;
            with `ema_timing="before_step"` the official `iteration < halflife / batch`, i.e.
            `ceil(halflife / batch) - 1` in 0-based steps: 312 for 20000 / 64).
        ema_timing: "before_step" (default, hankook/CLEL train.py: the EMA is updated at the start
            of each step, with the weights that enter it) or "after_step" (with the weights the
            step produced; the EMA then leads the official one by one step).
        guidance_view: the view whose encoder latent z guides the EBM (eq. 3, Algorithm 1 line 5).
            "augmented" (default; the paper and the code): a strongly augmented view of its own,
            one more encoder pass (training mode, so its BatchNorm statistics enter the moving
            averages first, as in the code). "first_view": the first SimCLR view of eq. 4, which
            saves that pass (the choice of keras_ebm <= 0.x; it couples z to the contrastive pair).
        buffer_replacement: draw buffer rows with replacement (JEM's randint); default False,
            CLEL's `random.sample` (distinct rows per step).
        sample_sweeps: default `sweeps` of `generate` (None: plain chains). The official FID
            protocol (`test_fid.py`, Appendix B) is 10 sweeps of 60 steps (base, 600 steps) or 20
            (large, 1200 steps); `eval.py --sample_sweeps` sets it.
        pixel_range, seed: see `EBMTrainer` (`pixel_range` must be (0, 1) for the default
            augmentation and sampler clamps to match).
        gradients: the gradient function, `PlainGradients()` (default) or `SAMGradients(...)`
            (see `EBMTrainer`). CLEL calls it with two variable groups (EBM, encoder), one per
            optimizer; SAM's perturbation is taken over both groups together.

    `call(x)` returns the EMA networks' EBM latent direction g(f/||f||) normalised, `[batch, k]`
    (exported as "logits"; it is not a classifier). For the export (`keras_ebm.export`):
    `energy(x)` is the marginal energy 0.5 ||f(x)||^2 of the EMA EBM, and `serving_scores(x)` returns
    "clel" = -s(x) with s of eq. 5 at `ood_beta` (CLEL's `default_ood_score`), "neg_energy" =
    -0.5 ||f(x)||^2 (beta = 0) and "cosine" = cos(h(x), g(f/||f||)), so that
    clel = neg_energy + ood_beta * cosine and any beta is neg_energy + beta * cosine (all higher =
    more in-distribution).
    """

    tracked_names = (
        "loss",
        "ebm_loss",
        "contrastive_loss",
        "energy_data",
        "energy_sample",
        "energy_gap",
        "cosine",
        "sgld_grad_norm",
    )
    default_ood_score = "clel"
    is_classifier = False  # `call` returns a latent, not class logits (see keras_ebm.export)
    conditions_on_latents = True  # class-conditional samples need `set_class_latents` (Appendix D)
    uses_labels = False  # unsupervised: batch labels are ignored, so fit does not range-check them
    score_names = ("clel", "neg_energy", "cosine")
    config_attributes = EBMTrainer.config_attributes + (
        "projection",
        "encoder",
        "encoder_weight_decay",
        "augment_chain_starts",
        "alpha",
        "beta",
        "ood_beta",
        "temperature",
        "ebm_batch_fraction",
        "ema_decay",
        "ema_start_step",
        "sample_sweeps",
        "ema_timing",
        "guidance_view",
    )
    # Run-time settings (keras_ebm.run_settings): the objective's weights, the EMA schedule and the
    # encoder's decay are variables the compiled step reads; the temperature (a Python number of
    # NT-Xent), the EBM batch slice and the chain-start augmentation decide the graph (a change
    # rebuilds the step). `ood_beta` and `sample_sweeps` are evaluation settings, read eagerly.
    alpha = run_settings.Setting()
    beta = run_settings.Setting()
    temperature = run_settings.TraceSetting(float)
    ebm_batch_fraction = run_settings.TraceSetting(float)
    ema_decay = run_settings.Setting(minimum=0.0, maximum=1.0)
    ema_start_step = run_settings.Setting("int64")
    encoder_weight_decay = run_settings.Setting(minimum=0.0)
    augment_chain_starts = run_settings.TraceSetting(bool)
    ema_timing = run_settings.TraceSetting(_choice("before_step", "after_step"))
    guidance_view = run_settings.TraceSetting(_choice("augmented", "first_view"))

    def __init__(
        self,
        network: keras.Model,
        projection: keras.Model,
        encoder: keras.Model,
        image_shape: tuple[int, int, int],
        num_classes: int | None = None,
        encoder_weight_decay: float = 5e-4,
        sampler: SGLDSampler | None = None,
        buffer: ReplayBuffer | None = None,
        buffer_size: int = 10000,
        reinit_prob: float = 0.001,
        augment_chain_starts: bool = True,
        alpha: float = 1.0,
        beta: float = 0.01,
        ood_beta: float = 0.1,
        temperature: float = 0.2,
        ebm_batch_fraction: float = 1.0,
        ema_decay: float = 0.5 ** (64 / 20000),
        ema_start_step: int = 20000 // 64,
        sample_sweeps: int | None = None,
        ema_timing: str = "before_step",
        guidance_view: str = "augmented",
        buffer_replacement: bool = False,
        pixel_range: tuple[float, float] = (0.0, 1.0),
        **kwargs: Any,
    ) -> None:
        latent_dim = int(projection.outputs[0].shape[-1]) if hasattr(projection, "outputs") else 128
        super().__init__(
            network,
            image_shape,
            num_classes if num_classes is not None else latent_dim,
            pixel_range=pixel_range,
            **kwargs,
        )
        if not 0.0 < float(ebm_batch_fraction) <= 1.0:
            raise ValueError(
                f"`ebm_batch_fraction` must be in (0, 1]. Received: ebm_batch_fraction={ebm_batch_fraction}"
            )
        if not 0.0 <= float(ema_decay) <= 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1]. Received: ema_decay={ema_decay}")
        self.projection = projection
        self.encoder = encoder
        self._encoder_optimizer = _Untracked(None)  # set by `compile`
        self.encoder_weight_decay = encoder_weight_decay
        self.sampler = (
            sampler
            if sampler is not None
            else SGLDSampler(
                n_steps=60,
                step_size=100.0,
                noise_std=0.001,
                grad_clip=100.0,
                x_clip=self.pixel_range,
                energy_training=True,
            )
        )
        # Tracked so that the SGLD noise state enters checkpoints (as in JEM).
        self.sampler_seed_generator = self.sampler.seed_generator
        self.track_sampler_logs()
        if buffer is None:
            buffer = self.default_buffer(buffer_size, reinit_prob=reinit_prob, replacement=buffer_replacement)
        self.buffer = buffer
        self.augment_chain_starts = bool(augment_chain_starts)
        self.alpha = alpha
        self.beta = beta
        self.ood_beta = float(ood_beta)
        self.temperature = float(temperature)
        self.ebm_batch_fraction = float(ebm_batch_fraction)
        self.ema_decay = ema_decay
        self.ema_start_step = ema_start_step
        self.sample_sweeps = _check_sweeps(sample_sweeps, "sample_sweeps")
        self.ema_timing = ema_timing
        self.guidance_view = guidance_view
        for model in (network, projection, encoder):
            if not model.built:
                raise ValueError(f"CLEL needs built networks. Received: {model.name}.built=False")
        self.ema_network = ModelEMA(network, name="ema_network")
        self.ema_projection = ModelEMA(projection, name="ema_projection")
        self.ema_encoder = ModelEMA(encoder, name="ema_encoder")
        self.class_latents = None  # [num_classes, k] after `set_class_latents` (not checkpointed)

    # ------------------------------------------------------------------ optimizers
    def compile(
        self,
        optimizer: str | keras.optimizers.Optimizer = "adam",
        encoder_optimizer: str | keras.optimizers.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """`keras.Model.compile` with CLEL's second optimizer.

        Args:
            optimizer: the EBM's optimizer (f_theta and g_theta; the paper's Adam, `run_training.optimizer`).
            encoder_optimizer: the encoder's optimizer, or a zero-argument callable building it
                (gin: `run_training.encoder_optimizer = @encoder/TorchSGD`). Default
                `TorchSGD(0.03, momentum=0.9)`, the official code's SimCLR optimizer (PyTorch's
                momentum form).
            **kwargs: the rest of `keras.Model.compile`.
        """
        super().compile(optimizer=optimizer, **kwargs)
        if encoder_optimizer is None:
            encoder_optimizer = TorchSGD(0.03, momentum=0.9)
        elif not isinstance(encoder_optimizer, keras.optimizers.Optimizer):
            encoder_optimizer = encoder_optimizer()
        self._encoder_optimizer = _Untracked(encoder_optimizer)

    def get_compile_config(self) -> dict[str, Any] | None:
        """`keras.Model`'s compile config plus the encoder's optimizer."""
        config = super().get_compile_config()
        if config and self._encoder_optimizer.value is not None:
            config["encoder_optimizer"] = keras.saving.serialize_keras_object(self._encoder_optimizer.value)
        return config

    @property
    def encoder_optimizer(self) -> keras.optimizers.Optimizer | None:
        """The encoder's optimizer (from `compile`)."""
        if self._encoder_optimizer.value is None:
            raise ValueError("Compile CLEL first: `model.compile(optimizer=..., encoder_optimizer=...)`.")
        return self._encoder_optimizer.value

    @property
    def optimizers(self) -> dict[str, keras.optimizers.Optimizer]:
        return {"ebm_optimizer": self.optimizer, "encoder_optimizer": self.encoder_optimizer}

    def ebm_variables(self) -> list[tf.Variable]:
        return self.network.trainable_variables + self.projection.trainable_variables

    def encoder_variables(self) -> list[tf.Variable]:
        return self.encoder.trainable_variables

    def build_optimizers(self) -> None:
        """Build both optimizers on their variables (before a checkpoint restores their slots)."""
        if self.optimizer is None:
            raise ValueError(
                "Compile the trainer first (the EBM optimizer comes from `compile`). Received: optimizer=None"
            )
        self.optimizer.build(self.ebm_variables())
        self.encoder_optimizer.build(self.encoder_variables())

    # ------------------------------------------------------------------ networks
    def latent(self, features: tf.Tensor, projection: keras.Model) -> tf.Tensor:
        """g(f / ||f||), the EBM's latent, `[batch, k]` (not normalised)."""
        features = _wide(features)
        return tf.cast(projection(tf.math.l2_normalize(features, axis=-1)), features.dtype)

    def _energy(self, x, y=None, training=False):
        return _energy(self.network(x, training=training))

    def call(self, x: TensorLike, training: bool = False) -> tf.Tensor:
        features = self.ema_network(x)
        return tf.math.l2_normalize(self.latent(features, self.ema_projection), axis=-1)

    def build(self, input_shape: tuple[int | None, ...] | None = None) -> None:
        self.built = True

    def energy(self, x: TensorLike, training: bool = False) -> tf.Tensor:
        """E(x) = 0.5 ||f(x)||^2 of the EMA EBM, the marginal energy (section 2.2), shape [batch]."""
        del training  # the EMA networks run in inference mode
        return _energy(self.ema_network(x))

    def scores(
        self, x: TensorLike, names: Sequence[str] | None = None, encoder_x: TensorLike | None = None
    ) -> dict[str, tf.Tensor]:
        """Eq. 5 and its two parts on the EMA networks, each `[batch]`, higher = more in-distribution.

        "clel": -s(x) = -(0.5 ||f||^2 - ood_beta * cos(h(x), g(f/||f||))); "neg_energy": -0.5 ||f||^2
        (beta = 0); "cosine": cos(h(x), g(f/||f||)). Any beta: neg_energy + beta * cosine.
        `encoder_x`: the images h sees (default `x`). hankook/CLEL's `compute_ood_scores` encodes a
        strongly augmented view, `simclr_augment(x, seed, pixel_range=(0, 1))` (a random score);
        the default scores x itself (deterministic, the export's score).
        """
        features = self.ema_network(x)
        z = tf.math.l2_normalize(self.latent(features, self.ema_projection), axis=-1)
        h = tf.math.l2_normalize(_wide(self.ema_encoder(x if encoder_x is None else encoder_x)), axis=-1)
        neg_energy = -_energy(features)
        cosine = tf.reduce_sum(z * h, axis=-1)
        out = {"clel": neg_energy + self.ood_beta * cosine, "neg_energy": neg_energy, "cosine": cosine}
        return out if names is None else {n: out[n] for n in names}

    # ------------------------------------------------------------------ generation (Appendix C-E)
    def encode(self, x: TensorLike) -> tf.Tensor:
        """Instance latents z = h(x) / ||h(x)|| of the EMA encoder, `[batch, k]` (Appendix D)."""
        return tf.math.l2_normalize(_wide(self.ema_encoder(x)), axis=-1)

    def mean_latent(self, x: TensorLike) -> tf.Tensor:
        """The shared latent of a set of instances, z_bar = sum_i z_i / ||sum_i z_i|| (Appendix D)."""
        return tf.math.l2_normalize(tf.reduce_sum(self.encode(x), axis=0), axis=-1)

    def set_class_latents(self, x: TensorLike, y: TensorLike, num_classes: int | None = None) -> tf.Tensor:
        """Store one z_bar_y per class from labelled images (Appendix D); `generate(y=...)` uses them.

        CLEL is trained without labels; class-conditional sampling conditions p(x | z_bar_y) on the
        aggregated encoder latent of the class's images. Returns the `[num_classes, k]` table.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        num_classes = int(num_classes or int(tf.reduce_max(y)) + 1)
        z = self.encode(x)
        sums = tf.math.unsorted_segment_sum(z, y, num_classes)
        if bool(tf.reduce_any(tf.math.bincount(y, minlength=num_classes) == 0)):
            raise ValueError(
                f"set_class_latents needs images of every class 0..{num_classes - 1}. "
                f"Received: labels {sorted(set(y.numpy().tolist()))}"
            )
        self.class_latents = tf.math.l2_normalize(sums, axis=-1)
        return self.class_latents

    def conditional_energy(
        self, x: TensorLike, latents: tf.Tensor, training: bool = False, beta: float | None = None
    ) -> tf.Tensor:
        """E(x | z_bar_1..z_bar_A) = 0.5 ||f(x)||^2 - beta * sum_a cos(g(f/||f||), z_bar_a) on the EMA networks.

        Eq. 6 (compositional sampling); with one latent per sample, the joint energy E(x, z) of
        section 2.2 used for instance- and class-conditional sampling (Appendix D).

        Args:
            x: images `[batch, H, W, C]` in `pixel_range`.
            latents: `[batch, k]` (one latent per sample) or `[batch, A, k]` (A concepts, summed).
            beta: guidance weight (default the trainer's `beta`, 0.01).
        """
        del training  # the EMA networks run in inference mode
        beta = self.beta if beta is None else float(beta)
        features = self.ema_network(x)
        z = tf.math.l2_normalize(self.latent(features, self.ema_projection), axis=-1)
        latents = tf.math.l2_normalize(tf.cast(latents, tf.float32), axis=-1)
        if latents.shape.rank == 2:
            latents = latents[:, None, :]
        similarity = tf.reduce_sum(z[:, None, :] * latents, axis=[1, 2])
        return _energy(features) - beta * similarity

    def run_chains(
        self,
        x0: tf.Tensor,
        y: tf.Tensor | None,
        n_steps: int | None = None,
        latents: TensorLike | None = None,
        beta: float | None = None,
        sweeps: int | None = None,
    ) -> tf.Tensor:
        """`generate`'s chains, with the EMA EBM (the networks the paper evaluates with `use_ema`).

        `generate(num_samples, y=None, n_steps=None, from_buffer=False, latents=None, beta=None,
        sweeps=None)` passes its last three here:

        Args:
            x0: the chain starts, U(pixel range) noise or (`from_buffer`) the replay buffer's rows
                (CLEL's training-time FID is computed on the buffer).
            y: optional class labels `[num_samples]`: class-conditional chains on p(x | z_bar_y), with
                the z_bar of `set_class_latents` (Appendix D).
            n_steps: SGLD steps (per sweep when `sweeps` is set; default the sampler's, 60).
            latents: optional `[num_samples, k]` (instance-conditional, e.g. `encode(x)`) or
                `[num_samples, A, k]` (compositional, eq. 6) conditioning latents.
            beta: guidance weight of the conditional energies (default the trainer's `beta`).
            sweeps: None (default `self.sample_sweeps`, itself None by default): one plain chain of
                `n_steps`. An int K: the official FID protocol (`test_fid.py`; Appendix B "a random
                augmentation for every 60 steps"): K sampler calls in a row, each as at training time:
                every chain re-initialised to U(pixel range) with the buffer's `reinit_prob`, then
                strongly augmented (`simclr_augment`, if `augment_chain_starts`), then `n_steps` SGLD
                steps. K = 10 with 60 steps is the base model's 600 steps, K = 20 the large one's 1200.

        Returns:
            float images `[num_samples, H, W, C]` in `pixel_range`.
        """
        if y is not None:
            if latents is not None:
                raise ValueError("Pass either `y` or `latents`, not both.")
            if self.class_latents is None:
                raise ValueError(
                    "CLEL is unsupervised: class-conditional sampling needs class latents. Call "
                    "`model.set_class_latents(x, y)` with labelled images first (Appendix D). "
                    "Received: y without class latents"
                )
            latents = tf.gather(self.class_latents, tf.cast(y, tf.int32))
        sweeps = self.sample_sweeps if sweeps is None else _check_sweeps(sweeps, "sweeps")
        if latents is None:

            def energy_fn(x, _, training=False):
                return _energy(self.ema_network(x))
        else:

            def energy_fn(x, z, training=False):
                return self.conditional_energy(x, z, beta=beta)

        if sweeps is None:
            return self.sampler(energy_fn, x0, latents, n_steps=n_steps)
        x = x0
        for _ in range(sweeps):
            x = self.sampler(energy_fn, self._restart_chains(x), latents, n_steps=n_steps)
        return x

    def _restart_chains(self, x):
        """One training-style chain restart: re-initialise with `reinit_prob`, strong augmentation."""
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        mask_seed, init_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
        reinit_prob = float(self.buffer.reinit_prob)
        if reinit_prob > 0.0:
            fresh = tf.cast(self.buffer.initializer.init(tf.shape(x), init_seed), x.dtype)
            reinit = tf.random.stateless_uniform([tf.shape(x)[0]], seed=mask_seed) < reinit_prob
            x = tf.where(reinit[:, None, None, None], fresh, x)
        if self.augment_chain_starts:
            x = simclr_augment(x, augment_seed, pixel_range=self.pixel_range)
        return x

    # ------------------------------------------------------------------ train step hooks
    def _ebm_rows(self, x):
        n = tf.shape(x)[0]
        if self.ebm_batch_fraction >= 1.0:
            return x
        rows = tf.maximum(1, tf.cast(tf.math.ceil(tf.cast(n, tf.float32) * self.ebm_batch_fraction), tf.int32))
        return x[:rows]

    def sample_negatives(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        x_data = self._ebm_rows(batch["x"])
        x0, idx = self.buffer.sample(tf.shape(x_data)[0])
        if self.augment_chain_starts:
            seed = distribute.replica_seed(self.seed_generator)
            x0 = random_draws.augmented(
                "augment_chain_start", x0, lambda: simclr_augment(x0, seed, pixel_range=self.pixel_range)
            )
        x, stats = self.sampler.sample_with_stats(self._energy, x0)
        self.buffer.update(idx, x)
        return {"x": x, "sgld_grad_norm": stats["grad_norm"]}

    def compute_losses(
        self, batch: dict[str, tf.Tensor], negatives: dict[str, tf.Tensor], training: bool = True
    ) -> dict[str, tf.Tensor]:
        """EBM loss (eq. 3) + NT-Xent (eq. 4), in Algorithm 1's order (hankook/CLEL models/ebm.py):
        f of the data, f of the samples, the guidance latent z of an augmented view (detached), then
        the encoder's two SimCLR views. The views use `batch["views_seed"]` when present (`optimize`
        draws it once per step, so that both passes of SAM see the same views), else a fresh draw
        of the trainer's seed generator."""
        x = batch["x"]
        x_data = self._ebm_rows(x)
        views_seed = batch.get("views_seed")
        if views_seed is None:
            views_seed = distribute.replica_seed(self.seed_generator)
        seed1, seed2 = tf.unstack(tf.random.experimental.stateless_split(views_seed, num=2))

        def view(images, kind, seed):
            return random_draws.augmented(
                kind, images, lambda: simclr_augment(images, seed, pixel_range=self.pixel_range)
            )

        f_data = self.network(x_data, training=training)
        f_sample = self.network(negatives["x"], training=training)
        e_data, e_sample = _energy(f_data), _energy(f_sample)
        z_data = tf.math.l2_normalize(self.latent(f_data, self.projection), axis=-1)
        z_sample = self.latent(f_sample, self.projection)
        if self.guidance_view == "augmented":
            # Algorithm 1 line 5: z = sg(h(t(x)) / ||h(t(x))||), its own view and encoder pass.
            guide_seed = tf.random.experimental.stateless_fold_in(views_seed, 2)
            h_guide = self.encoder(view(x_data, "augment_guidance", guide_seed), training=training)
        views = tf.concat([view(x, "augment_views", seed1), view(x, "augment_views", seed2)], axis=0)
        # One encoder pass over both views: BatchNorm statistics over 2n images, as in SimCLR.
        h1, h2 = tf.split(_wide(self.encoder(views, training=training)), 2, axis=0)
        if self.guidance_view == "first_view":
            h_guide = h1[: tf.shape(x_data)[0]]
        target = tf.stop_gradient(tf.math.l2_normalize(_wide(h_guide), axis=-1))
        cosine = tf.reduce_mean(tf.reduce_sum(z_data * target, axis=-1))
        ebm_loss = (
            tf.reduce_mean(e_data)
            - tf.reduce_mean(e_sample)
            + self.alpha * tf.reduce_mean(tf.square(e_data) + tf.square(e_sample))
            - self.beta * cosine
        )
        contrastive = nt_xent_loss(h1, h2, extra_negatives=tf.stop_gradient(z_sample), temperature=self.temperature)
        return {
            "loss": ebm_loss + contrastive,
            "ebm_loss": ebm_loss,
            "contrastive_loss": contrastive,
            "energy_data": tf.reduce_mean(e_data),
            "energy_sample": tf.reduce_mean(e_sample),
            "energy_gap": tf.reduce_mean(e_sample) - tf.reduce_mean(e_data),
            "cosine": cosine,
            "sgld_grad_norm": negatives["sgld_grad_norm"],
        }

    def optimize(self, batch: dict[str, tf.Tensor], negatives: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """One step of both optimizers through the trainer's gradient function (`gradients`).

        `self.gradients(loss_fn, [ebm_variables, encoder_variables])` differentiates the total
        loss once (plain) or twice (SAM / ASAM, one perturbation over both networks together) and
        returns the gradients grouped per optimizer; the EBM group, plus the coupled `weight_decay`
        (0 by default), goes to `self.optimizer` (Adam), the encoder group, plus the encoder's
        coupled `encoder_weight_decay`, to `encoder_optimizer` (SGD).
        The augmentation seed is drawn here, once, so that SAM's two passes see the same views.
        """
        ebm_vars = self.ebm_variables()
        enc_vars = self.encoder_variables()
        batch = dict(batch, views_seed=distribute.replica_seed(self.seed_generator))
        # The targets are detached both ways, so the EBM variables only see the EBM terms and
        # the encoder only the contrastive term: one backward pass serves both optimizers.
        (ebm_grads, enc_grads), logs = self.gradients(
            lambda: self.compute_losses(batch, negatives, training=True), [ebm_vars, enc_vars]
        )
        # Coupled decay, one coefficient per network: the encoder's is PyTorch SGD's 5e-4; the
        # EBM's Adam has none in the official code (weight_decay 0 by default).
        ebm_grads = add_weight_decay(ebm_grads, ebm_vars, self.weight_decay)
        enc_grads = add_weight_decay(enc_grads, enc_vars, self.encoder_weight_decay)
        self.optimizer.apply(ebm_grads, ebm_vars)
        self.encoder_optimizer.apply(enc_grads, enc_vars)
        return logs

    def before_step(self, batch: dict[str, tf.Tensor]) -> None:
        del batch
        if self.ema_timing == "before_step":
            self._update_ema()

    def after_step(
        self, batch: dict[str, tf.Tensor], negatives: dict[str, tf.Tensor], logs: dict[str, tf.Tensor]
    ) -> None:
        del batch, negatives, logs
        if self.ema_timing == "after_step":
            self._update_ema()

    def _update_ema(self):
        """EMA of both networks (trainable weights averaged, BN statistics and spectral-norm vectors
        copied): decay 0 before `ema_start_step` optimizer steps, `ema_decay` after."""
        decay = tf.where(
            self.optimizer.iterations < tf.cast(self.ema_start_step, tf.int64),
            tf.zeros([], run_settings.read_dtype()),
            run_settings.as_tensor(self.ema_decay, run_settings.read_dtype()),
        )
        for ema in (self.ema_network, self.ema_projection, self.ema_encoder):
            ema.update(decay)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        batch = self.unpack_batch(data, training=False)
        energies = _energy(self.ema_network(batch["x"]))
        return self.update_trackers({"energy_data": tf.reduce_mean(energies)})
