"""Adversarial robustness: white-box PGD (L-inf, L2), BPDA + EOT against the SGLD-refinement
defence, and C&W L2, with the settings of the papers.

Units. Images are attacked as floats in the model's `pixel_range` (`(lo, hi)`, e.g. (-1, 1)), but
every epsilon and step size is given in **[0, 255] pixel units**, as the papers write them: an
L-inf epsilon of 8 is a change of 8 grey levels, 8 / 255 * (hi - lo) in the model's range; an L2
epsilon e bounds the Euclidean norm of the perturbation measured in grey levels, ||delta||_2 <= e
/ 255 * (hi - lo) in the model's range (SADA-JEM's `bpda_eot_attack.py` scales both norms by
2 / 255 for the range (-1, 1)). C&W norms are reported in [0, 1] pixel units (GMMC Table 7).

What is attacked. The attacks take a `logits_fn(x_float)` and differentiate it; build one from an
in-memory keras model with `keras_ebm.evaluation.adapters.logits_fn(model)`. A loaded export is
refused: its signatures take pixel values 0..255 and quantise them to uint8, so no gradient flows,
and it stores no entry point in the model's float pixel range (see `adapters.py`).
Attack the in-memory model (the trainer restored from its checkpoint)
instead. A `RefinementDefense` wraps a classifier with K steps of SGLD on its own energy
(E(x) = -logsumexp f(x), `keras_ebm.energy`) before classifying (JEM's `refined_logits`, Hill et
al.'s purification) and is attacked with BPDA + EOT.

Attack loop (as SADA-JEM's `bpda_eot_attack.py`): images misclassified before the attack count as
broken; after the (random) start and after every step the current images are classified, and an
image counts as broken from the first step at which it is misclassified (for a stochastic
defence the break is confirmed with the defence's own many-sample prediction). Robust accuracy is
the fraction never broken. With `restarts > 1`, still unbroken images are attacked again from a
new random start (JEM: 20 restarts).

Paper settings (named constants below; epsilons in [0, 255] units):

* GMMC (Yang et al. 2020) sec. 4.4, Table 5: L-inf PGD-40 "with different eps's as the settings
  of JEM". The column headers (the epsilons) are lost in our text copy of the paper; the grid
  (1, 2, 4, 8) is inferred from the reported accuracies (softmax 19.1 / 5.0 / 0.6 / 0.1%) and must
  be checked against the PDF before quoting. Step size: JEM's (below).
* JEM (Grathwohl et al. 2020, robustness section; `attack_model.py`): foolbox 2
  `RandomStartProjectedGradientDescentAttack` (L-inf) and `L2BasicIterativeAttack` (L2), 40
  iterations, random start, 20 restarts. foolbox keeps stepsize / epsilon fixed at its defaults:
  0.01 / 0.3 (step = eps / 30) for L-inf PGD, 0.05 / 0.3 (step = eps / 6) for L2. foolbox then
  binary-searches the smallest epsilon per image; here the epsilon grid is fixed instead.
  Refinement: JEM-0/1/10 (steps of SGLD before classifying; 5 chains per image started at
  x + N(0, 0.03^2), step 1, noise 0.01, logits averaged).
* HDGE (Liu and Abbeel 2020) sec. 4.4, Figure 3: the L-inf axis spans eps 1..31 (ticks 1, 6, ...,
  31) and the L2 axis 0..500; the paper does not list its points or steps (it follows JEM).
* SADA-JEM (Yang, Su and Ji 2023) sec. 4.4, Figure 5 (official `bpda_eot_attack_jem.json` and
  `scripts/bpda_attack.sh`): L-inf eps in (1, 2, 4, 8, 12, 16, 22, 30), 50 steps of size 2,
  random start, 1000 test images (100 shuffled batches of 10), cross-entropy on logits. BPDA + EOT
  (Hill et al. 2021): 15 refinement chains averaged (logits) for each attack gradient, 150 chains
  to confirm a break; Langevin noise 0.01. The shipped configuration runs 0 refinement steps, i.e.
  Figure 5 attacks the classifier itself; K > 0 is the purification defence. The script's L2
  setting is not published; `SADAJEM_FIG5_L2` uses its step size on the HDGE/JEM L2 axis.
  Its `purify` differentiates `ebm(X)[0].sum()`, the energy of the first image of the batch
  only; `sgld_refinement` descends every image's own energy, as Hill et al. describe.

Why not foolbox / ART / cleverhans: BPDA + EOT needs control of the backward pass through the
refinement (one `tf.stop_gradient` here), and the closed-form tests need the exact update rules;
a PGD step is a few lines on top of `tf.GradientTape`, so no dependency is added for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from keras_ebm import energy as energy_lib
from keras_ebm.evaluation import adapters, plots
from keras_ebm.sampling.sgld import SGLDSampler

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

LINF = "linf"
L2 = "l2"
_NORMS = (LINF, L2)
_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class PGDSettings:
    """A PGD protocol: norm, epsilon grid and step rule, all in [0, 255] pixel units.

    Exactly one of `step_size` (absolute) and `relative_step_size` (fraction of each epsilon) is set.
    """

    norm: str
    epsilons: tuple
    steps: int
    step_size: float = None
    relative_step_size: float = None
    random_start: bool = True
    restarts: int = 1
    source: str = ""

    def __post_init__(self):
        if self.norm not in _NORMS:
            raise ValueError(f"`norm` must be one of {_NORMS}. Received: norm={self.norm!r}")
        if (self.step_size is None) == (self.relative_step_size is None):
            raise ValueError(
                "Set exactly one of `step_size` ([0, 255] units) and `relative_step_size` (fraction "
                f"of epsilon). Received: step_size={self.step_size}, relative_step_size={self.relative_step_size}"
            )
        if int(self.steps) < 0 or int(self.restarts) < 1:
            raise ValueError(
                f"`steps` >= 0 and `restarts` >= 1. Received: steps={self.steps}, restarts={self.restarts}"
            )
        if any(float(e) < 0 for e in self.epsilons) or not len(self.epsilons):
            raise ValueError(f"`epsilons` must be non-negative. Received: epsilons={self.epsilons}")

    def step_for(self, epsilon: float) -> float:
        """The step size ([0, 255] units) used at `epsilon`."""
        if self.step_size is not None:
            return float(self.step_size)
        return float(self.relative_step_size) * float(epsilon)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# JEM attack_model.py: foolbox 2 defaults stepsize/epsilon 0.01/0.3 (L-inf PGD), 0.05/0.3 (L2 BIM),
# 40 iterations, random start, 20 restarts. Grid: the HDGE/JEM figure axes.
JEM_LINF = PGDSettings(
    LINF,
    (1, 2, 4, 8, 12, 16, 22, 30),
    steps=40,
    relative_step_size=1 / 30,
    restarts=20,
    source="JEM attack_model.py (foolbox 2 RandomStartPGD, 40 it., 20 restarts)",
)
JEM_L2 = PGDSettings(
    L2,
    (50, 100, 150, 200, 250, 300, 350, 400, 450, 500),
    steps=40,
    relative_step_size=1 / 6,
    restarts=20,
    source="JEM attack_model.py (foolbox 2 L2BasicIterative, 40 it., 20 restarts)",
)
# JEM's refinement steps (JEM-0, JEM-1, JEM-10) and chains per image.
JEM_REFINE_STEPS = (0, 1, 10)
# In the range (-1, 1): RefinementDefense(defense_reps=n_chains) and sgld_refinement(the rest).
JEM_REFINE = {"n_chains": 5, "init_noise_std": 0.03, "step_size": 1.0, "noise_std": 0.01}
# GMMC sec. 4.4, Table 5: PGD-40, L-inf, JEM's step rule; grid inferred (see module docstring).
GMMC_TABLE5 = PGDSettings(
    LINF,
    (1, 2, 4, 8),
    steps=40,
    relative_step_size=1 / 30,
    restarts=1,
    source="GMMC sec. 4.4 Table 5 (PGD-40; epsilons inferred, check the PDF)",
)
# HDGE sec. 4.4, Figure 3: the axes' ranges; steps as JEM.
HDGE_FIG3_LINF = PGDSettings(
    LINF,
    (1, 6, 11, 16, 21, 26, 31),
    steps=40,
    relative_step_size=1 / 30,
    source="HDGE sec. 4.4 Figure 3a axis (eps 1..31), JEM steps",
)
HDGE_FIG3_L2 = PGDSettings(
    L2,
    (50, 100, 150, 200, 250, 300, 350, 400, 450, 500),
    steps=40,
    relative_step_size=1 / 6,
    source="HDGE sec. 4.4 Figure 3b axis (eps 0..500), JEM steps",
)
# SADA-JEM sec. 4.4, Figure 5: bpda_eot_attack_jem.json + scripts/bpda_attack.sh.
SADAJEM_FIG5_LINF = PGDSettings(
    LINF,
    (1, 2, 4, 8, 12, 16, 22, 30),
    steps=50,
    step_size=2.0,
    source="SADA-JEM sec. 4.4 Figure 5a (bpda_eot_attack.py: 50 steps of 2)",
)
SADAJEM_FIG5_L2 = PGDSettings(
    L2,
    (50, 100, 150, 200, 250, 300, 350, 400, 450, 500),
    steps=50,
    step_size=2.0,
    source="SADA-JEM Figure 5b: L2 grid not published; HDGE/JEM axis, SADA-JEM steps",
)
# SADA-JEM / Hill et al. BPDA + EOT: chains per attack gradient, chains per confirmed break.
SADAJEM_EOT = {
    "eot_reps": 15,
    "defense_reps": 150,
    "langevin_step_size": 1.0,
    "langevin_noise_std": 0.01,
    "num_examples": 1000,
    "batch_size": 10,
}
PAPER_SETTINGS = {
    "jem_linf": JEM_LINF,
    "jem_l2": JEM_L2,
    "gmmc_table5": GMMC_TABLE5,
    "hdge_fig3_linf": HDGE_FIG3_LINF,
    "hdge_fig3_l2": HDGE_FIG3_L2,
    "sadajem_fig5_linf": SADAJEM_FIG5_LINF,
    "sadajem_fig5_l2": SADAJEM_FIG5_L2,
}
# GMMC sec. 4.4, Table 7: C&W L2, untargeted 100 iterations, targeted 1000.
GMMC_TABLE7_CW_STEPS = {"untargeted": 100, "targeted": 1000}


def _log(msg):
    print(f"[keras_ebm.robustness] {msg}", flush=True)


# ---------------------------------------------------------------------------------- targets
class WhiteBox:
    """An undefended classifier as an attack target: exact gradients of the cross-entropy.

    Args:
        logits_fn: differentiable `fn(x_float) -> logits` (a keras model is wrapped with
            `adapters.logits_fn`). Exports are refused (their signatures quantise to uint8: no gradient).
    """

    stochastic = False
    name = "pgd"

    def __init__(self, logits_fn: Callable[[tf.Tensor], tf.Tensor]) -> None:
        self.logits_fn = _differentiable(logits_fn)
        self._gradient = tf.function(self._gradient_impl, reduce_retracing=True)

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        return self.logits_fn(x)

    def gradient(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`(d CE / dx, logits at x)`; the gradient is 0 where the logits ignore x."""
        return self._gradient(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.int32))

    def _gradient_impl(self, x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = tf.cast(self.logits_fn(x), tf.float32)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grad, logits


def _differentiable(fn):
    if adapters.is_export(fn):
        fn = adapters.ExportLogits(fn)
    if not getattr(fn, "differentiable", True):
        raise ValueError(
            "This classifier is a SavedModel export: its signatures take pixel values quantised to uint8 "
            "images, which have no gradient, so it cannot be attacked white-box. "
            "Attack the in-memory model instead (the "
            "trainer restored from its checkpoint, or trainer.network, through "
            "keras_ebm.evaluation.adapters.logits_fn), and classify the adversarial images with "
            "the export if the deployed model's accuracy on them is wanted."
        )
    if not callable(fn):
        raise ValueError(f"`logits_fn` must be callable. Received: {type(fn).__name__}")
    return adapters.logits_fn(fn)


def sgld_refinement(
    logits_fn: Callable[[tf.Tensor], tf.Tensor],
    n_steps: int,
    step_size: float = 1.0,
    noise_std: float = 0.01,
    init_noise_std: float = 0.0,
    x_clip: tuple[float, float] | None = None,
    seed: int | None = None,
) -> Callable[[tf.Tensor], tf.Tensor]:
    """`refine(x)`: K steps of SGLD on the classifier's own energy, with `SGLDSampler`.

    x <- x - step_size * dE/dx + noise_std * N(0, I), E(x) = -logsumexp f(x) summed over the batch
    (JEM's `refine`: x += f'(x) + 0.01 N; Hill et al.'s purification). The network runs in
    inference mode and no variable is changed (`SGLDSampler.frozen`). The sampler stops the
    gradient at its output, so differentiating through `refine` gives 0: attack it with BPDA.

    Args:
        logits_fn: `fn(x_float) -> logits` of the classifier.
        n_steps: K, the refinement steps (JEM-0/1/10).
        step_size, noise_std: SGLD step and noise, model pixel units (JEM: 1.0 and 0.01).
        init_noise_std: Gaussian noise added before refining, model pixel units (JEM's
            `refined_logits`: 0.03, added after its wrapper maps the images to (-1, 1)).
        x_clip: optional `(lo, hi)` clamp after every step.
        seed: seed of the sampler's noise.
    """
    fn = adapters.logits_fn(logits_fn)
    sampler = SGLDSampler(
        n_steps=int(n_steps),
        step_size=step_size,
        noise_std=noise_std,
        x_clip=x_clip,
        energy_reduction="sum",
        energy_training=False,
        freeze_bn_stats=True,
        seed=seed,
    )
    noise_seed = keras.random.SeedGenerator(None if seed is None else int(seed) + 1)

    def energy_fn(x, y, training=False):
        del y, training
        return energy_lib.energy_from_logits(fn(x))

    def refine(x):
        if init_noise_std > 0:
            x = x + float(init_noise_std) * keras.random.normal(tf.shape(x), seed=noise_seed, dtype=x.dtype)
        return sampler(energy_fn, x)

    refine.sampler = sampler
    return refine


class RefinementDefense:
    """A classifier defended by a stochastic refinement of its input, attacked with BPDA + EOT.

    Prediction (`logits`): the input is tiled `defense_reps` times, each copy refined, and the
    logits averaged over the copies (SADA-JEM's `eot_defense_ave="logits"`; JEM's
    `refined_logits` with 5 chains).

    Attack gradient (`gradient`), `gradient_mode`:
    - `"bpda"`: BPDA + EOT (Athalye et al. 2018; Hill et al. 2021): `eot_reps` refined copies,
      logits averaged, cross-entropy, and the backward pass treats the refinement as the identity
      (refined = x + stop_gradient(refine(x) - x)); `eot_reps = 1` is BPDA alone.
    - `"through"`: plain PGD, autodiff through the refinement as implemented (0 for
      `sgld_refinement`, whose sampler stops the gradient): the naive attack BPDA corrects.
    - `"classifier"`: the gradient of the undefended classifier at x (SADA-JEM's
      `use_bpda_eot=false`), breaks judged on the defended prediction.

    Args:
        logits_fn: differentiable `fn(x_float) -> logits` of the classifier.
        refine_fn: `refine(x) -> x` (batch in, batch out), e.g. `sgld_refinement(...)`; it
            receives the tiled batch `[reps * N, ...]` (copy r of image i at row r * N + i).
        gradient_mode: "bpda", "through" or "classifier".
        eot_reps: refined copies per attack gradient (SADA-JEM: 15).
        defense_reps: refined copies per prediction (SADA-JEM: 150 to confirm a break; JEM: 5).
        chunk_size: at most this many images per refinement call of the prediction.
    """

    stochastic = True

    def __init__(
        self,
        logits_fn: Callable[[tf.Tensor], tf.Tensor],
        refine_fn: Callable[[tf.Tensor], tf.Tensor],
        gradient_mode: str = "bpda",
        eot_reps: int = 15,
        defense_reps: int = 150,
        chunk_size: int = 1000,
    ) -> None:
        if gradient_mode not in ("bpda", "through", "classifier"):
            raise ValueError(
                f"`gradient_mode` must be 'bpda', 'through' or 'classifier'. Received: gradient_mode={gradient_mode!r}"
            )
        if int(eot_reps) < 1 or int(defense_reps) < 1:
            raise ValueError(f"`eot_reps` and `defense_reps` must be >= 1. Received: {eot_reps}, {defense_reps}")
        self.logits_fn = _differentiable(logits_fn)
        self.refine_fn = refine_fn
        self.gradient_mode = gradient_mode
        self.eot_reps = int(eot_reps)
        self.defense_reps = int(defense_reps)
        self.chunk_size = int(chunk_size)
        self.name = {"bpda": "bpda_eot", "through": "pgd_through_refinement", "classifier": "pgd_classifier"}[
            gradient_mode
        ]
        self._gradient = tf.function(self._gradient_impl, reduce_retracing=True)
        self._refined_logits = tf.function(self._refined_logits_impl, reduce_retracing=True)

    def _refined_logits_impl(self, x):
        return tf.cast(self.logits_fn(self.refine_fn(x)), tf.float32)

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        """Logits averaged over `defense_reps` refinements of each image."""
        x = tf.convert_to_tensor(x, tf.float32)
        n = int(x.shape[0])
        reps_per_call = max(1, self.chunk_size // max(n, 1))
        total, done = None, 0
        while done < self.defense_reps:
            reps = min(reps_per_call, self.defense_reps - done)
            logits = self._refined_logits(tf.tile(x, [reps, 1, 1, 1]))
            summed = tf.reduce_sum(tf.reshape(logits, [reps, n, -1]), axis=0)
            total = summed if total is None else total + summed
            done += reps
        return total / float(self.defense_reps)

    def gradient(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self._gradient(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.int32))

    def _gradient_impl(self, x, y):
        n = tf.shape(x)[0]
        with tf.GradientTape() as tape:
            tape.watch(x)
            if self.gradient_mode == "classifier":
                logits = tf.cast(self.logits_fn(x), tf.float32)
            else:
                tiled = tf.tile(x, [self.eot_reps, 1, 1, 1])
                refined = self.refine_fn(tiled)
                if self.gradient_mode == "bpda":
                    refined = tiled + tf.stop_gradient(refined - tiled)
                logits = tf.cast(self.logits_fn(refined), tf.float32)
                logits = tf.reduce_mean(tf.reshape(logits, [self.eot_reps, n, -1]), axis=0)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grad, logits


def _as_target(model):
    if isinstance(model, (WhiteBox, RefinementDefense)) or (
        hasattr(model, "gradient") and hasattr(model, "logits") and hasattr(model, "stochastic")
    ):
        return model
    return WhiteBox(model)


# ---------------------------------------------------------------------------------- PGD
def _per_sample_norm(t):
    return tf.norm(tf.reshape(t, [tf.shape(t)[0], -1]), axis=-1)


def _expand(v, like):
    return tf.reshape(v, [-1] + [1] * (like.shape.rank - 1))


def _random_start(x0, eps, norm, seed):
    if norm == LINF:
        delta = tf.random.stateless_uniform(tf.shape(x0), seed, -1.0, 1.0) * eps
    else:  # SADA-JEM's rand_init_l_p: a random direction, radius eps * U(0, 1)
        direction = tf.random.stateless_normal(tf.shape(x0), seed)
        direction = direction / _expand(_per_sample_norm(direction) + _TINY, x0)
        radius = tf.random.stateless_uniform([tf.shape(x0)[0]], seed + 1, 0.0, 1.0) * eps
        delta = direction * _expand(radius, x0)
    return delta


def _project(x, x0, eps, norm, lo, hi):
    delta = x - x0
    if norm == LINF:
        delta = tf.clip_by_value(delta, -eps, eps)
    else:
        norms = _per_sample_norm(delta)
        delta = delta * _expand(tf.minimum(1.0, eps / (norms + _TINY)), x0)
    # x0 lies in the box, so clipping moves every coordinate toward x0: the norm only shrinks.
    return tf.clip_by_value(x0 + delta, lo, hi)


def _step(x, grad, alpha, norm):
    if norm == LINF:
        return x + alpha * tf.sign(grad)
    return x + alpha * grad / _expand(_per_sample_norm(grad) + _TINY, x)


def pgd_attack(
    model: WhiteBox | RefinementDefense,
    x: np.ndarray,
    y: np.ndarray,
    epsilon: float,
    norm: str = LINF,
    steps: int = 40,
    step_size: float | None = None,
    pixel_range: tuple[float, float] = (-1.0, 1.0),
    random_start: bool = True,
    restarts: int = 1,
    seed: int = 0,
    clean_correct: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Untargeted PGD on one batch; epsilon and step size in [0, 255] pixel units.

    Maximises the cross-entropy of the true label: x <- Proj(x + a * sign(g)) (L-inf) or
    x <- Proj(x + a * g / ||g||_2) (L2), Proj onto the epsilon ball around x and the pixel range.

    Args:
        model: a differentiable `logits_fn`, a keras model, or a target (`WhiteBox`,
            `RefinementDefense`).
        x: float images `[N, H, W, C]` in `pixel_range`.
        y: int labels `[N]`.
        epsilon: ball radius, [0, 255] units.
        norm: "linf" or "l2".
        steps: PGD steps.
        step_size: step, [0, 255] units (default 2.5 * epsilon / steps, Madry et al.).
        pixel_range: `(lo, hi)` of `x`.
        random_start: start uniformly in the L-inf ball / at a random L2 direction and radius.
        restarts: attacks from new random starts on the images still unbroken.
        seed: int seed of the random starts.
        clean_correct: optional bool `[N]`, the clean predictions' correctness (else computed).

    Returns:
        `(x_adv, broken)`: numpy float32 images (for a broken image the first image that fooled
        the model, else the last iterate) and bool `[N]`, True where the model was fooled
        (misclassified clean images included).
    """
    target = _as_target(model)
    if norm not in _NORMS:
        raise ValueError(f"`norm` must be one of {_NORMS}. Received: norm={norm!r}")
    lo, hi = (float(v) for v in pixel_range)
    scale = (hi - lo) / 255.0
    eps = float(epsilon) * scale
    if step_size is None:
        step_size = 2.5 * float(epsilon) / max(int(steps), 1)
    alpha = float(step_size) * scale
    x0_all = np.asarray(x, np.float32)
    y_all = np.asarray(y).astype(np.int32).reshape(-1)
    if x0_all.shape[0] != y_all.shape[0]:
        raise ValueError(f"`x` and `y` must have the same length. Received: {x0_all.shape[0]} and {y_all.shape[0]}")
    if x0_all.size and (x0_all.min() < lo - 1e-5 or x0_all.max() > hi + 1e-5):
        raise ValueError(
            f"`x` must be float images in pixel_range {(lo, hi)} (map uint8 with "
            f"keras_ebm.data.to_pixel_range). Received: x in [{x0_all.min():.4g}, {x0_all.max():.4g}]"
        )
    if clean_correct is None:
        clean_correct = np.argmax(np.asarray(target.logits(tf.constant(x0_all))), -1) == y_all
    broken = ~np.asarray(clean_correct, bool)
    x_adv_all = x0_all.copy()
    for restart in range(int(restarts)):
        todo = np.flatnonzero(~broken)
        if todo.size == 0:
            break
        x0 = tf.constant(x0_all[todo])
        yb = tf.constant(y_all[todo])
        xk = x0
        if random_start and eps > 0:
            start_seed = tf.constant([int(seed), restart], tf.int32)
            xk = _project(x0 + _random_start(x0, eps, norm, start_seed), x0, eps, norm, lo, hi)
        found = np.zeros(todo.size, bool)
        found_x = x0_all[todo].copy()
        for step in range(int(steps) + 1):
            grad, logits = target.gradient(xk, yb)
            candidate = (np.argmax(np.asarray(logits), -1) != y_all[todo]) & ~found
            if target.stochastic and candidate.any():
                idx = np.flatnonzero(candidate)
                confirm = np.asarray(target.logits(tf.gather(xk, idx)))
                candidate[idx] = np.argmax(confirm, -1) != y_all[todo][idx]
            if candidate.any():
                found_x[candidate] = np.asarray(xk)[candidate]
                found |= candidate
            if step < int(steps):
                xk = _project(_step(xk, grad, alpha, norm), x0, eps, norm, lo, hi)
        last = np.asarray(xk)
        found_x[~found] = last[~found]
        x_adv_all[todo] = found_x
        broken[todo] = found
    return x_adv_all, broken


# ---------------------------------------------------------------------------------- evaluation
def evaluate_robustness(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    settings: PGDSettings = SADAJEM_FIG5_LINF,
    pixel_range: tuple[float, float] | None = None,
    batch_size: int = 100,
    max_examples: int | None = None,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    name: str | None = None,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Robust accuracy of a classifier (or a defended one) over an epsilon grid.

    Args:
        model: a keras model / trainer, a differentiable `logits_fn`, `WhiteBox` or
            `RefinementDefense` (exports are refused, see the module docstring).
        images: uint8 test images `[N, H, W, C]`; mapped to `pixel_range`.
        labels: int labels `[N]`.
        settings: a `PGDSettings` (e.g. `SADAJEM_FIG5_LINF`, `JEM_L2`, `GMMC_TABLE5`).
        pixel_range: the model's float range (default: the model's `pixel_range`).
        batch_size: images per attack batch (SADA-JEM: 10 with BPDA + EOT).
        max_examples: attack only the first `max_examples` images (papers: 1000 or 10k).
        seed: random-start seed.
        output_dir: if given, writes `robustness_<name>.json` and `robustness_<name>.png`.
        name: name of the run in file names and plots (default "<attack>_<norm>").
        progress: a progress bar over epsilons x batches.
        **overrides: fields of `settings` to replace (epsilons, steps, step_size, restarts, ...).

    Returns:
        dict: `robust_accuracy` (one per epsilon), `clean_accuracy`, `epsilons` ([0, 255]
        units), `step_sizes`, `num_examples`, the settings and the attack name.
    """
    if overrides:
        if "step_size" in overrides and "relative_step_size" not in overrides:
            overrides["relative_step_size"] = None
        if (
            "relative_step_size" in overrides
            and overrides["relative_step_size"] is not None
            and "step_size" not in overrides
        ):
            overrides["step_size"] = None
        settings = dataclasses.replace(settings, **overrides)
    target = _as_target(model)
    lo, hi = adapters.model_pixel_range(model, pixel_range)
    x, y = adapters.float_images(images, labels, (lo, hi), max_examples)
    n = len(x)
    epsilons = [float(e) for e in settings.epsilons]
    name = name or f"{target.name}_{settings.norm}"
    clean = np.concatenate(
        [
            np.argmax(np.asarray(target.logits(tf.constant(x[s : s + batch_size]))), -1) == y[s : s + batch_size]
            for s in range(0, n, batch_size)
        ]
    )
    _log(
        f"{name}: {n} images, clean accuracy {clean.mean():.4f}, epsilons {epsilons} (/255), "
        f"{settings.steps} steps, {settings.restarts} restart(s)"
    )
    bar = keras.utils.Progbar(len(epsilons) * n, unit_name="image") if progress else None
    robust, done = [], 0
    for eps in epsilons:
        survived = 0
        for s in range(0, n, batch_size):
            _, broken = pgd_attack(
                target,
                x[s : s + batch_size],
                y[s : s + batch_size],
                eps,
                norm=settings.norm,
                steps=settings.steps,
                step_size=settings.step_for(eps),
                pixel_range=(lo, hi),
                random_start=settings.random_start,
                restarts=settings.restarts,
                seed=seed + s,
                clean_correct=clean[s : s + batch_size],
            )
            survived += int(np.sum(~broken))
            done += len(broken)
            if bar is not None:
                bar.update(done)
        robust.append(survived / n)
        _log(f"{name}: eps {eps:g}/255 -> robust accuracy {robust[-1]:.4f}")
    results = {
        "name": name,
        "attack": target.name,
        "norm": settings.norm,
        "epsilons": epsilons,
        "epsilon_units": "[0, 255] pixel units (model range: eps / 255 * (hi - lo))",
        "robust_accuracy": robust,
        "clean_accuracy": float(clean.mean()),
        "num_examples": int(n),
        "steps": int(settings.steps),
        "step_sizes": [settings.step_for(e) for e in epsilons],
        "random_start": bool(settings.random_start),
        "restarts": int(settings.restarts),
        "pixel_range": [lo, hi],
        "seed": int(seed),
        "settings_source": settings.source,
    }
    if isinstance(target, RefinementDefense):
        results.update(eot_reps=target.eot_reps, defense_reps=target.defense_reps, gradient_mode=target.gradient_mode)
    if output_dir:
        write_results(results, output_dir)
    return results


def write_results(results: Mapping[str, Any], output_dir: str | os.PathLike) -> tuple[str, str]:
    """Writes `robustness_<name>.json` and the curve `robustness_<name>.png`; returns both paths."""
    json_path = _write_json(results, output_dir)
    png_path = robustness_curve([results], os.path.join(output_dir, f"robustness_{results['name']}.png"))
    return json_path, png_path


def _write_json(results, output_dir):
    """Writes `robustness_<name>.json` (creating `output_dir`); returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, f"robustness_{results['name']}.json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2)
    return json_path


def robustness_curve(
    results_list: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> str:
    """Robust accuracy (%) against epsilon for one or more `evaluate_robustness` results (PNG).

    Results of different norms go to separate panels, L-inf left (as the papers' figures).
    """
    norms = [n for n in _NORMS if any(r["norm"] == n for r in results_list)]
    if not norms:
        raise ValueError("`results_list` must hold at least one result of evaluate_robustness.")
    fig = plots._figure(figsize=(4.5 * len(norms), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(norms)))
    colors = plots.colors_by_name([r["name"] for r in results_list])  # one colour per series, by name
    for ax, norm in zip(axes, norms):
        for r in sorted((r for r in results_list if r["norm"] == norm), key=lambda r: r["name"]):
            eps = [0.0] + list(r["epsilons"])
            acc = [100 * r["clean_accuracy"]] + [100 * a for a in r["robust_accuracy"]]
            ax.plot(eps, acc, marker="o", ms=3, color=colors[r["name"]], label=f"{r['name']} (n={r['num_examples']})")
        ax.set_xlabel(f"epsilon ({'L-inf' if norm == LINF else 'L2'}, /255)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.18), frameon=False)  # off the curves
        ax.set_title(title or f"{'L-inf' if norm == LINF else 'L2'} robustness")
    return plots._save(fig, path)


# ---------------------------------------------------------------------------------- C&W L2
def carlini_wagner_l2(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    pixel_range: tuple[float, float] = (-1.0, 1.0),
    targets: np.ndarray | None = None,
    steps: int = 100,
    binary_search_steps: int = 9,
    learning_rate: float = 0.01,
    initial_const: float = 1e-3,
    confidence: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Carlini and Wagner's L2 attack (2017) on one batch.

    Minimises ||x' - x||_2^2 + c * f(x') over x' = lo + (hi - lo) * (tanh(w) + 1) / 2 with Adam,
    f = max(Z_y - max_{j != y} Z_j, -kappa) (untargeted) or max(max_{j != t} Z_j - Z_t, -kappa)
    (targeted), and a binary search on c per image (x10 until a success, then bisection). The
    distance is measured in [0, 1] pixel units, so the constants do not depend on the range.

    Args:
        model: differentiable `logits_fn` or keras model.
        x: float images in `pixel_range`; y: int labels.
        targets: optional int target classes (targeted attack).
        steps: Adam steps per binary-search step (GMMC Table 7: 100 untargeted, 1000 targeted).
        binary_search_steps, learning_rate, initial_const, confidence: C&W's parameters.

    Returns:
        `(x_adv, success, l2)`: numpy adversarial images (the smallest successful one; the input
        where the attack failed), bool success `[N]`, and the L2 norm of x_adv - x in [0, 1]
        pixel units (NaN where it failed).
    """
    fn = _differentiable(model)
    lo, hi = (float(v) for v in pixel_range)
    x0 = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32).reshape(-1)
    n = len(x0)
    targeted = targets is not None
    label = np.asarray(targets).astype(np.int32).reshape(-1) if targeted else y
    x01 = np.clip((x0 - lo) / (hi - lo), 0.0, 1.0)
    w0 = np.arctanh(np.clip(x01 * 2 - 1, -1 + 1e-6, 1 - 1e-6)).astype(np.float32)
    w = tf.Variable(w0)
    const = tf.Variable(np.full(n, initial_const, np.float32))
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build([w])
    fresh_state = [v.numpy() for v in optimizer.variables]  # step 0, zero moments, the learning rate
    x01_t = tf.constant(x01)
    onehot = tf.one_hot(label, depth=int(np.asarray(fn(tf.constant(x0[:1]))).shape[-1]))

    def images_of(w_value):
        return (tf.tanh(w_value) + 1.0) / 2.0

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            x_unit = images_of(w)
            logits = tf.cast(fn(lo + (hi - lo) * x_unit), tf.float32)
            dist = tf.reduce_sum(tf.square(tf.reshape(x_unit - x01_t, [n, -1])), axis=-1)
            real = tf.reduce_sum(onehot * logits, -1)
            other = tf.reduce_max(logits - 1e9 * onehot, -1)
            margin = (other - real) if targeted else (real - other)
            loss = tf.reduce_sum(dist + const * tf.maximum(margin, -confidence))
        optimizer.apply([tape.gradient(loss, w)], [w])
        return x_unit, logits, dist

    best_l2 = np.full(n, np.inf, np.float32)
    best_x = x01.copy()
    lower = np.zeros(n, np.float32)
    upper = np.full(n, np.inf, np.float32)
    for _ in range(int(binary_search_steps)):
        w.assign(w0)
        for v, value in zip(optimizer.variables, fresh_state):
            v.assign(value)
        succeeded = np.zeros(n, bool)
        for _ in range(int(steps)):
            x_unit, logits, dist = step()
            pred = np.argmax(logits.numpy(), -1)
            ok = (pred == label) if targeted else (pred != label)
            l2 = np.sqrt(dist.numpy())
            better = ok & (l2 < best_l2)
            if better.any():
                best_l2[better] = l2[better]
                best_x[better] = x_unit.numpy()[better]
            succeeded |= ok
        c = const.numpy()
        upper = np.where(succeeded, np.minimum(upper, c), upper)
        lower = np.where(succeeded, lower, np.maximum(lower, c))
        c = np.where(np.isfinite(upper), (lower + upper) / 2, c * 10)
        const.assign(c.astype(np.float32))
    success = np.isfinite(best_l2)
    l2 = np.where(success, best_l2, np.nan)
    return (lo + (hi - lo) * best_x).astype(np.float32), success, l2


def evaluate_cw(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    targeted: bool = False,
    steps: int | None = None,
    pixel_range: tuple[float, float] | None = None,
    batch_size: int = 100,
    max_examples: int | None = None,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    name: str | None = None,
    progress: bool = True,
    **cw_kwargs: Any,
) -> dict[str, Any]:
    """C&W L2 over a test set: success rate and the mean / median noise norm of the successes.

    GMMC sec. 4.4, Table 7: untargeted (100 iterations) and targeted (1000 iterations) C&W; almost
    every attack succeeds, so the size of the noise it needs is the robustness measure. Only
    images the model classifies correctly are attacked. Targets (targeted) are drawn uniformly
    among the other classes with `seed`.

    Returns:
        dict with `success_rate`, `mean_l2`, `median_l2` (successful attacks, [0, 1] pixel units),
        `num_examples` (images given), `num_attacked` (correctly classified), `steps`, `targeted`.
    """
    fn = _differentiable(model)
    lo, hi = adapters.model_pixel_range(model, pixel_range)
    x, y = adapters.float_images(images, labels, (lo, hi), max_examples)
    steps = int(steps or GMMC_TABLE7_CW_STEPS["targeted" if targeted else "untargeted"])
    logits = np.concatenate([np.asarray(fn(tf.constant(x[s : s + batch_size]))) for s in range(0, len(x), batch_size)])
    num_classes = logits.shape[-1]
    correct = np.argmax(logits, -1) == y
    xa, ya = x[correct], y[correct]
    rng = np.random.RandomState(seed)
    targets = (ya + rng.randint(1, num_classes, size=len(ya))) % num_classes if targeted else None
    bar = keras.utils.Progbar(len(xa), unit_name="image") if progress else None
    norms, success = [], []
    for s in range(0, len(xa), batch_size):
        _, ok, l2 = carlini_wagner_l2(
            fn,
            xa[s : s + batch_size],
            ya[s : s + batch_size],
            (lo, hi),
            targets=None if targets is None else targets[s : s + batch_size],
            steps=steps,
            **cw_kwargs,
        )
        norms.append(l2)
        success.append(ok)
        if bar is not None:
            bar.update(min(s + batch_size, len(xa)))
    norms = np.concatenate(norms) if norms else np.zeros(0)
    success = np.concatenate(success) if success else np.zeros(0, bool)
    ok_norms = norms[success]
    name = name or f"cw_l2_{'targeted' if targeted else 'untargeted'}"
    results = {
        "name": name,
        "attack": "cw_l2",
        "targeted": bool(targeted),
        "steps": steps,
        "num_examples": int(len(x)),
        "num_attacked": int(len(xa)),
        "clean_accuracy": float(correct.mean()),
        "success_rate": float(success.mean()) if success.size else float("nan"),
        "mean_l2": float(ok_norms.mean()) if ok_norms.size else float("nan"),
        "median_l2": float(np.median(ok_norms)) if ok_norms.size else float("nan"),
        "l2_units": "[0, 1] pixel units",
        "pixel_range": [lo, hi],
        "seed": int(seed),
        "cw_kwargs": {k: float(v) for k, v in cw_kwargs.items()},
    }
    _log(
        f"{name}: {results['num_attacked']} images attacked, success {results['success_rate']:.4f}, "
        f"mean L2 {results['mean_l2']:.4f}, median {results['median_l2']:.4f} ([0, 1] units)"
    )
    if output_dir:
        _write_json(results, output_dir)
    return results
