"""The evaluations `eval.py` runs beside `run_eval`, as library functions: adversarial robustness,
FID / IS / KID (or their classifier-feature stand-ins), sample quality by classification and the
AIS test log-likelihood.

Each `run_*` function takes in-memory objects (the restored trainer, uint8 images, feature
networks), calls `robustness`, `generative` or `sample_quality`, and returns `{name: result}`. The
registered evaluators (`evaluators/`, picked by eval.py's flags) call them, and
`runner.merge_results(output_dir, key, entries)` stores the entries in `<output_dir>/results.json` under
"robustness", "generative", "sample_quality" or "likelihood", where `report.compare_runs` reads them. Every result
holds the number of images it used (`num_examples`, `num_samples`, the reference's
`num_examples`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from keras_ebm.evaluation import adapters, ais, generative, robustness, sample_quality

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    import keras

    from keras_ebm.trainers.base import EBMTrainer

# eval.py --attack names: the norm of a custom PGD grid.
ATTACKS = {"pgd_linf": robustness.LINF, "pgd_l2": robustness.L2}


def pgd_settings(
    presets: Sequence[str] = (),
    attack: str | None = None,
    epsilons: Sequence[float] | None = None,
    steps: int | None = None,
    step_size: float | None = None,
    relative_step_size: float | None = None,
    restarts: int | None = None,
) -> dict[str, robustness.PGDSettings]:
    """`{name: PGDSettings}` of paper presets and/or one custom attack, with overrides.

    Args:
        presets: names in `robustness.PAPER_SETTINGS` (e.g. "sadajem_fig5_linf", "jem_l2").
        attack: "pgd_linf" or "pgd_l2" for a custom grid (needs `epsilons`); default steps 20 and
            step 2.5 * eps / steps (Madry et al.'s rule) unless given.
        epsilons, steps, step_size, relative_step_size, restarts: override the presets' fields
            (epsilons and step sizes in [0, 255] units; `step_size` absolute, `relative_step_size`
            a fraction of each epsilon).

    Returns:
        dict name -> `robustness.PGDSettings`, in the order given.
    """
    overrides = {}
    if epsilons:
        overrides["epsilons"] = tuple(float(e) for e in epsilons)
    if steps is not None:
        overrides["steps"] = int(steps)
    if restarts is not None:
        overrides["restarts"] = int(restarts)
    if step_size is not None and relative_step_size is not None:
        raise ValueError(
            "Pass at most one of `step_size` and `relative_step_size`. "
            f"Received: step_size={step_size}, relative_step_size={relative_step_size}"
        )
    if step_size is not None:
        overrides.update(step_size=float(step_size), relative_step_size=None)
    if relative_step_size is not None:
        overrides.update(step_size=None, relative_step_size=float(relative_step_size))
    out = {}
    for name in presets or ():
        if name not in robustness.PAPER_SETTINGS:
            raise ValueError(f"Unknown robustness preset {name!r}; choose from {sorted(robustness.PAPER_SETTINGS)}.")
        out[name] = dataclasses.replace(robustness.PAPER_SETTINGS[name], **overrides)
    if attack:
        if attack not in ATTACKS:
            raise ValueError(f"`attack` must be one of {sorted(ATTACKS)}. Received: attack={attack!r}")
        if not epsilons:
            raise ValueError(f"attack={attack!r} needs `epsilons` ([0, 255] units, e.g. 1,2,4,8).")
        custom = dict(steps=20, relative_step_size=2.5 / int(steps or 20), source=f"eval.py --attack={attack}")
        custom.update(overrides)
        out[attack] = robustness.PGDSettings(ATTACKS[attack], **custom)
    return out


def run_robustness(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    settings_by_name: Mapping[str, robustness.PGDSettings],
    defense: Mapping[str, Any] | None = None,
    batch_size: int = 100,
    max_examples: int | None = None,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Robust accuracy of `model` for every `PGDSettings` of `settings_by_name`.

    Args:
        model: the in-memory classifier (a restored trainer or keras model; exports are refused).
        images, labels: uint8 test images and their labels.
        settings_by_name: from `pgd_settings`.
        defense: None (attack the classifier), or a dict of the SGLD-refinement defence attacked
            with BPDA + EOT: `refine_steps` (K), and optionally `eot_reps`, `defense_reps`,
            `gradient_mode`, `step_size`, `noise_std`, `init_noise_std` (model pixel units; default
            JEM's refinement, `robustness.JEM_REFINE`).
        batch_size, max_examples, seed, output_dir, progress: as `robustness.evaluate_robustness`
            (`max_examples`: attack the first N images).

    Returns:
        dict name -> result of `evaluate_robustness` (with `num_examples`); defended runs are
        named `<name>_sgld<K>_<gradient_mode>`.
    """
    pixel_range = adapters.model_pixel_range(model)
    target, suffix = model, ""
    if defense:
        defense = dict(defense)
        k = int(defense.pop("refine_steps"))
        mode = defense.pop("gradient_mode", "bpda")
        eot_reps = int(defense.pop("eot_reps", robustness.SADAJEM_EOT["eot_reps"]))
        defense_reps = int(defense.pop("defense_reps", robustness.JEM_REFINE["n_chains"]))
        refine_kwargs = {key: robustness.JEM_REFINE[key] for key in ("step_size", "noise_std", "init_noise_std")}
        refine_kwargs.update(defense)
        fn = adapters.logits_fn(model)
        refine = robustness.sgld_refinement(fn, k, x_clip=pixel_range, seed=seed, **refine_kwargs)
        target = robustness.RefinementDefense(
            fn, refine, gradient_mode=mode, eot_reps=eot_reps, defense_reps=defense_reps
        )
        suffix = f"_sgld{k}_{mode}"
    out = {}
    for name, settings in settings_by_name.items():
        out[name + suffix] = robustness.evaluate_robustness(
            target,
            images,
            labels,
            settings,
            pixel_range=pixel_range,
            batch_size=batch_size,
            max_examples=max_examples,
            seed=seed,
            output_dir=output_dir,
            name=name + suffix,
            progress=progress,
        )
    return out


def run_cw(model: keras.Model, images: np.ndarray, labels: np.ndarray, **options: Any) -> dict[str, dict[str, Any]]:
    """C&W L2 (GMMC Table 7) as `{name: result}`; `options` are those of `robustness.evaluate_cw`
    (`targeted`, `steps`, `batch_size`, `max_examples`, `seed`, `output_dir`, `progress`, and the
    attack's own keywords)."""
    result = robustness.evaluate_cw(model, images, labels, **options)
    return {result["name"]: result}


def reference_source(
    spec: Mapping[str, Any] | Callable[[], tuple[np.ndarray, np.ndarray]], split: str = "train"
) -> tuple[str, str, dict[str, Any]]:
    """`(dataset, split, kwargs)` for `generative.reference_statistics` from a `run_eval.in_dist`
    spec: its source name and its local-file arguments, with the training split (the papers'
    reference set). A callable spec gives `("custom", split, {"images": spec})`."""
    if callable(spec):
        return "custom", split, {"images": spec}
    spec = dict(spec)
    name = spec.pop("name")
    spec.pop("split", None)
    spec.pop("max_examples", None)
    return name, split, spec


def run_generative(
    samples_by_name: Mapping[str, Any],
    feature_nets: Sequence[generative.InceptionV3Features | generative.ClassifierFeatures],
    reference_spec: Mapping[str, Any] | Callable[[], tuple[np.ndarray, np.ndarray]],
    reference_split: str = "train",
    reference_examples: int | None = None,
    max_examples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 100,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """FD / score / KD of every sample set in every feature space.

    Args:
        samples_by_name: dict name -> uint8 samples `[N, H, W, C]` (or `(images, labels)`).
        feature_nets: `generative.InceptionV3Features` (FID, IS, KID) and/or
            `generative.ClassifierFeatures` (classifier_fd, classifier_score, classifier_kd).
        reference_spec: the in-distribution spec (`run_eval.in_dist`); its `reference_split`
            (default the training split, as the papers) is the reference set.
        reference_examples: use the first N reference images (default all; part of the cache key).
        max_examples: use the first N samples of each set.
        cache_dir: reference-statistics cache (default `$KERAS_EBM_CACHE/generative_stats`).

    Returns:
        dict `"<sample set>/<feature network>"` -> result of `evaluate_generative` (with
        `num_samples` and the reference's `num_examples`).
    """
    dataset, split, kwargs = reference_source(reference_spec, reference_split)
    out = {}
    for feature_net in feature_nets:
        reference = generative.reference_statistics(
            feature_net,
            dataset=dataset,
            split=split,
            max_examples=reference_examples,
            cache_dir=cache_dir,
            use_cache=dataset != "custom",  # a callable has no name
            batch_size=batch_size,
            progress=progress,
            **kwargs,
        )
        for name, samples in samples_by_name.items():
            images = samples[0] if isinstance(samples, tuple) else samples
            key = f"{name}/{feature_net.name}"
            out[key] = generative.evaluate_generative(
                images,
                feature_net,
                reference,
                batch_size=batch_size,
                max_examples=max_examples,
                progress=progress,
                output_dir=output_dir,
                name=key.replace("/", "__"),
            )
    return out


def run_sample_quality(
    samples_by_name: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    reference_classifier: Any,
    ranking_model: Any = None,
    class_names: Sequence[str] | None = None,
    max_examples: int | None = None,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Samples classified by a reference classifier (CLEL Figure 3c; SADA-JEM Appendix E).

    Args:
        samples_by_name: dict name -> `(uint8 images, intended labels or None)`; labels of
            conditional samples give an accuracy, unconditional ones (None or empty) only the
            grids.
        reference_classifier: an export (`tf.saved_model.load`), keras model or trainer.
        ranking_model: ranks the best / worst samples by p(x) and p(y|x) (SADA-JEM: the generating
            model); default the reference classifier.

    Returns:
        dict name -> result of `sample_quality.classify_samples` (without the index lists).
    """
    out = {}
    for name, (images, labels) in samples_by_name.items():
        labels = None if labels is None or len(np.asarray(labels)) == 0 else labels
        result = sample_quality.classify_samples(
            images,
            labels,
            reference_classifier,
            ranking_model=ranking_model,
            class_names=class_names,
            max_examples=max_examples,
            output_dir=output_dir,
            name=name,
            progress=progress,
        )
        result.pop("ranked", None)
        out[name] = result
    return out


AIS_SAMPLERS = ("mala", "hmc")
AIS_BASES = ("uniform", "gaussian")


def run_ais(
    model: EBMTrainer,
    images: np.ndarray,
    num_chains: int = 64,
    num_temperatures: int = 1000,
    sampler: str = "mala",
    base: str = "uniform",
    steps_per_temperature: int = 1,
    step_size: float | None = None,
    max_examples: int | None = None,
    dequantize: bool = True,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """AIS log Z of the trainer's marginal energy E(x) (`model.energy`, inference mode) on its pixel
    box, and the test log-likelihood of `images` (see `keras_ebm.evaluation.ais`).

    Args:
        model: the restored trainer (an export has no gradient).
        images: uint8 test images `[N, H, W, C]`.
        num_chains, num_temperatures, steps_per_temperature: of `ais.ais_log_partition`.
        sampler: "mala" or "hmc" (`MALASampler` / `HMCSampler(num_leapfrog_steps=5)`), initial step
            `step_size` (default 1e-3 in pixel units), adapted by a pilot run.
        base: "uniform" on the pixel box (the replay buffer's initialiser) or "gaussian", a per-pixel
            Gaussian fitted to `images`, truncated to the box (a lower-variance start).
        max_examples: score the first N images.
        dequantize: uniform dequantisation of the 8-bit images (bits/dim comparable across models).

    Returns:
        `{"ais_<sampler>_<base>": result}`: log Z with its standard error and ESS, the test
        log-likelihood in nats per image and bits per dimension, and what they were computed from.
    """
    from keras_ebm.sampling import HMCSampler, MALASampler

    if sampler not in AIS_SAMPLERS:
        raise ValueError(f"`sampler` must be one of {AIS_SAMPLERS}. Received: sampler={sampler!r}")
    if base not in AIS_BASES:
        raise ValueError(f"`base` must be one of {AIS_BASES}. Received: base={base!r}")
    images = np.asarray(images)[:max_examples] if max_examples else np.asarray(images)
    box = adapters.model_pixel_range(model)
    step = 1e-3 if step_size is None else float(step_size)
    kernel = MALASampler(step_size=step) if sampler == "mala" else HMCSampler(step_size=step, num_leapfrog_steps=5)
    if base == "uniform":
        base_dist = ais.UniformBase(box)
    else:
        from keras_ebm.data import to_pixel_range

        base_dist = ais.GaussianBase.fit(np.asarray(to_pixel_range(images, box)), box=box)

    def energy_fn(x):
        return model.energy(x, training=False)

    result = ais.ais_log_partition(
        energy_fn,
        base_dist,
        images.shape[1:],
        num_chains=num_chains,
        num_temperatures=num_temperatures,
        sampler=kernel,
        steps_per_temperature=steps_per_temperature,
        seed=seed,
    )
    ll = ais.test_log_likelihood(
        energy_fn, images, result["log_z"], result["log_z_stderr"], box=box, dequantize=dequantize, seed=seed
    )
    result.pop("log_weights")
    result.pop("step_sizes")
    result.update(ll, base=base, box=list(box))
    return {f"ais_{sampler}_{base}": result}
