"""Evaluate an exported keras_ebm model (`keras-ebm-eval`, or `python eval.py`): accuracy, ECE,
OOD AUROC/AUPR/FPR95, plots.

    python eval.py --model_dir=runs/quickstart
    python eval.py --saved_model=runs/x/export --gin_file=gin_configs/data/cifar10_python.gin
    python eval.py --model_dir=runs/sadajem --samples=100 --conditional    # + sample grid (PNG, npz)
    python eval.py --model_dir=runs/clel --clel_betas=0,0.01,0.1                 # CLEL eq. 5 at other betas
    python eval.py --model_dir=runs/clel_base --samples=50000 --sample_batch_size=500 --sample_sweeps=10
        # CLEL FID set, the official protocol: 10 x (reinit, strong augmentation, 60 SGLD steps)

    # Robustness (the in-memory model restored from the checkpoint; --eval_examples caps the images):
    python eval.py --model_dir=runs/sadajem --robustness=sadajem_fig5_linf --epsilons=1,2,4,8 --eval_examples=500
    python eval.py --model_dir=runs/jem --attack=pgd_l2 --epsilons=50,100,200 --attack_steps=40 \
        --defense=sgld --refine_steps=10 --eot=15 --defense_reps=5            # BPDA + EOT on JEM-10
    python eval.py --model_dir=runs/gmmc --cw --cw_targeted                     # GMMC Table 7
    # FID / IS / KID of samples with the papers' Inception (docs/fid.md: pytorch-fid's weight file,
    # --fid_inception_weights=pt_inception-2015-12-05-6726825d.pth or its .npz), or Keras' Inception-v3
    # (--feature_network=keras_inception_v3, not comparable with papers), or the classifier-feature
    # stand-ins in the feature space of a keras_ebm run:
    python eval.py --model_dir=runs/sadajem --samples=10000 --sample_from_buffer --generative \
        --feature_classifier=runs/softmax --inception_weights=none
    python eval.py --model_dir=runs/sadajem --samples_npz=x.npz --sample_quality --reference_classifier=runs/softmax
    # One report across runs (markdown table, JSON, plots side by side):
    python eval.py --compare runs/softmax runs/sadajem --output_dir=report

    # Any registered evaluator, by name, configured from gin (keras_ebm.evaluation.registry):
    python eval.py --model_dir=runs/x --gin_param='import my_evaluators' --evaluators=brightness \
        --gin_param='brightness.max_images = 50'

With --model_dir, the training config (<model_dir>/config.gin) supplies the datasets; --gin_file and
--gin_param override it. Results go to <model_dir>/eval (or --output_dir): results.json gains
"robustness", "generative" and "sample_quality" entries, each with the number of images it used.
The logic lives in keras_ebm.evaluation: the flags below pick evaluators (`evaluate.evaluators`)
and bind their gin parameters (FLAG_BINDINGS; only flags given on the command line, after
--gin_param), and `keras_ebm.evaluation.evaluate` runs them.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from keras_ebm import scripts

flags.DEFINE_string("model_dir", None, "Experiment directory written by train.py.")
flags.DEFINE_string("saved_model", None, "Path of an export (instead of --model_dir).")
flags.DEFINE_multi_string("gin_file", [], "Gin config files (datasets, OOD sets).")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, applied last.")
flags.DEFINE_string("output_dir", None, "Where to write results (default <model_dir>/eval).")
flags.DEFINE_integer("samples", 0, "Also draw this many samples from the trained model (needs --model_dir).")
flags.DEFINE_integer(
    "sample_steps", None, "SGLD steps for --samples (default: the trainer's sampler); per sweep with --sample_sweeps."
)
flags.DEFINE_integer(
    "sample_sweeps",
    None,
    "CLEL: run each chain as this many sweeps, each a training-style "
    "restart (reinit with the buffer's probability, strong augmentation) then --sample_steps "
    "steps (default 60): the official FID protocol, 10 sweeps (600 steps) for base, 20 for "
    "large. Default: plain chains.",
    lower_bound=1,
)
flags.DEFINE_list(
    "clel_betas",
    [],
    "CLEL: also report eq. 5 at these betas, neg_energy + beta * cosine "
    "(e.g. 0,0.01,0.1); the export's own 'clel' score uses the trained CLEL.ood_beta.",
)
flags.DEFINE_bool("sample_from_buffer", False, "Start the chains from the replay buffer.")
flags.DEFINE_bool(
    "conditional",
    False,
    "Class-conditional samples, one row per class (CLEL: on the mean "
    "encoder latent of each class's in-distribution images, Appendix D).",
)
flags.DEFINE_integer("sample_batch_size", None, "Chains run at once for --samples (default all).")
flags.DEFINE_integer(
    "class_latent_examples", 1000, "CLEL --conditional: labelled in-distribution images used for the class latents."
)
flags.DEFINE_integer(
    "eval_examples",
    None,
    "Use only the first N images of every set (test set, OOD sets, "
    "attacked images, samples scored): quick or budgeted runs. Default: run_eval.max_examples "
    "for the standard evaluation, all images otherwise.",
    lower_bound=1,
)
flags.DEFINE_bool(
    "standard",
    True,
    "Run the standard evaluation (accuracy, ECE, OOD); --nostandard runs only "
    "the evaluations asked for below and keeps results.json's other entries.",
)
# Robustness
flags.DEFINE_list(
    "robustness",
    [],
    "Paper presets of keras_ebm.evaluation.robustness.PAPER_SETTINGS: jem_linf, "
    "jem_l2, gmmc_table5, hdge_fig3_linf, hdge_fig3_l2, sadajem_fig5_linf, sadajem_fig5_l2.",
)
flags.DEFINE_enum("attack", None, ["pgd_linf", "pgd_l2"], "A custom PGD attack (needs --epsilons).")
flags.DEFINE_list("epsilons", [], "Epsilons in [0, 255] pixel units (override the presets' grids).")
flags.DEFINE_integer("attack_steps", None, "PGD steps (override).")
flags.DEFINE_float("attack_step_size", None, "PGD step size, [0, 255] units (override).")
flags.DEFINE_float("attack_relative_step_size", None, "PGD step size as a fraction of epsilon (override).")
flags.DEFINE_integer("attack_restarts", None, "Random restarts (override; JEM: 20).")
flags.DEFINE_integer("attack_batch_size", 100, "Images per attack batch.")
flags.DEFINE_enum("defense", "none", ["none", "sgld"], "sgld: attack the SGLD-refinement defence with BPDA + EOT.")
flags.DEFINE_integer("refine_steps", 10, "--defense=sgld: refinement steps K (JEM-0/1/10).")
flags.DEFINE_integer("eot", 15, "--defense=sgld: refined copies averaged per attack gradient (SADA-JEM: 15).")
flags.DEFINE_integer("defense_reps", 5, "--defense=sgld: refined copies per prediction (JEM: 5; SADA-JEM: 150).")
flags.DEFINE_enum("gradient_mode", "bpda", ["bpda", "through", "classifier"], "--defense=sgld attack gradient.")
flags.DEFINE_bool("cw", False, "C&W L2, untargeted (GMMC Table 7).")
flags.DEFINE_bool("cw_targeted", False, "C&W L2, targeted (GMMC Table 7).")
flags.DEFINE_integer("cw_steps", None, "C&W Adam steps (default 100 untargeted, 1000 targeted).")
flags.DEFINE_integer("attack_seed", 0, "Seed of the random starts and C&W targets.")
# Samples: FID / IS / KID and sample quality
flags.DEFINE_string(
    "samples_npz",
    None,
    "Score these samples (npz with uint8 'images' and optional 'labels', as "
    "--samples writes) instead of / beside the ones drawn with --samples.",
)
flags.DEFINE_bool(
    "generative",
    False,
    "FID / IS / KID of the samples (--samples or --samples_npz) against the training split of the in-distribution set.",
)
flags.DEFINE_enum(
    "feature_network",
    None,
    ["auto", "fid_inception", "keras_inception_v3"],
    "Inception of FID / IS / KID (default: gin inception_features.network, 'auto'): fid_inception "
    "is the papers' 2015 TF graph (needs --fid_inception_weights, docs/fid.md); keras_inception_v3 is "
    "Keras' network, not comparable with published numbers; auto takes fid_inception when its weights "
    "are found, else Keras'.",
)
flags.DEFINE_string(
    "fid_inception_weights",
    None,
    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth or its .npz "
    "conversion (default: $KERAS_EBM_FID_INCEPTION_WEIGHTS, the Keras and torch hub caches).",
)
flags.DEFINE_enum(
    "fid_preprocessing",
    None,
    ["tf2015", "pytorch_fid"],
    "fid_inception's input pipeline (default tf2015: the papers' TF1 resize and scaling; pytorch_fid: pytorch-fid's).",
)
flags.DEFINE_string(
    "inception_weights",
    None,
    "Keras Inception-v3 weights file (feature_network "
    "keras_inception_v3; default: $KERAS_EBM_INCEPTION_WEIGHTS or the Keras cache). 'none': skip "
    "Inception (only --feature_classifier).",
)
flags.DEFINE_string(
    "feature_classifier",
    None,
    "A train.py directory of a classifier: also report "
    "classifier_fd / classifier_score / classifier_kd in its feature space (not FID).",
)
flags.DEFINE_integer(
    "reference_examples",
    None,
    "First N reference (training) images for the statistics (default all; cached per data set and feature network).",
)
flags.DEFINE_bool(
    "sample_quality",
    False,
    "Classify the samples with --reference_classifier: accuracy of "
    "class-conditional samples, confusion matrix, best / worst samples per class.",
)
flags.DEFINE_string(
    "reference_classifier",
    None,
    "Export or train.py directory (its export) of the reference classifier for --sample_quality.",
)
# Report across runs
flags.DEFINE_bool(
    "compare",
    False,
    "Compare runs: python eval.py --compare runs/a runs/b ... writes report.md, "
    "report.json and side-by-side plots to --output_dir (default ./eval_report).",
)
flags.DEFINE_list(
    "compare_names",
    [],
    "Row names of --compare (default: each run's trainer and config, e.g. "
    "'SADAJEM (quickstart)'; the run folders are the table's second column).",
)
flags.DEFINE_list("compare_scores", [], "OOD scores shown as AUROC columns of --compare (default all).")
flags.DEFINE_list(
    "evaluators",
    [],
    "More registered evaluators to run, by name, after those the flags above pick "
    "(also: gin evaluate.evaluators); their options come from gin (--gin_param=<name>.<option> = ...).",
)
flags.DEFINE_bool("verbose", False, "Show the traceback of an error (also: KERAS_EBM_VERBOSE=1).")
# AIS test log-likelihood (keras_ebm.evaluation.ais; docs/samplers.md).
flags.DEFINE_bool(
    "ais",
    False,
    "AIS log Z and test log-likelihood (nats, bits/dim) of the trained model's E(x) "
    "on its pixel box (needs --model_dir); first --eval_examples test images.",
)
flags.DEFINE_integer("ais_chains", 64, "--ais: AIS chains (the standard error shrinks as 1/sqrt(chains)).")
flags.DEFINE_integer("ais_temperatures", 1000, "--ais: intermediate temperatures (the bias shrinks as they grow).")
flags.DEFINE_enum("ais_sampler", "mala", ["mala", "hmc"], "--ais: transition kernel.")
flags.DEFINE_enum(
    "ais_base",
    "uniform",
    ["uniform", "gaussian"],
    "--ais: start distribution (uniform on the pixel box, or a Gaussian fitted to the test images).",
)
FLAGS = flags.FLAGS


# Each flag binds a gin parameter (or several): flag -> parameter, or flag -> fn(value) -> {parameter: value}.
FLAG_BINDINGS = {
    "eval_examples": "evaluate.max_examples",
    "clel_betas": lambda v: {"run_eval.clel_betas": [float(b) for b in v]},
    # samples
    "samples": "samples.num_samples",
    "sample_steps": "samples.steps",
    "sample_sweeps": "samples.sweeps",
    "sample_from_buffer": "samples.from_buffer",
    "conditional": "samples.conditional",
    "sample_batch_size": "samples.batch_size",
    "class_latent_examples": "samples.class_latent_examples",
    "samples_npz": "samples.npz",
    # robustness
    "robustness": "robustness.presets",
    "attack": "robustness.attack",
    "epsilons": "robustness.epsilons",
    "attack_steps": "robustness.steps",
    "attack_step_size": "robustness.step_size",
    "attack_relative_step_size": "robustness.relative_step_size",
    "attack_restarts": "robustness.restarts",
    "attack_batch_size": "robustness.batch_size",
    "defense": "robustness.defense",
    "refine_steps": "robustness.refine_steps",
    "eot": "robustness.eot_reps",
    "defense_reps": "robustness.defense_reps",
    "gradient_mode": "robustness.gradient_mode",
    "cw": "robustness.cw",
    "cw_targeted": "robustness.cw_targeted",
    "cw_steps": "robustness.cw_steps",
    "attack_seed": "robustness.seed",
    # FID / IS / KID and sample quality
    "feature_network": "inception_features.network",
    "fid_inception_weights": "inception_features.weights",
    "fid_preprocessing": "inception_features.preprocessing",
    "inception_weights": lambda v: (
        {"generative.inception": False} if v.lower() == "none" else {"inception_features.keras_weights": v}
    ),
    "feature_classifier": "generative.feature_classifier",
    "reference_examples": "generative.reference_examples",
    "reference_classifier": "sample_quality.reference_classifier",
    # AIS
    "ais_chains": "ais.num_chains",
    "ais_temperatures": "ais.num_temperatures",
    "ais_sampler": "ais.sampler",
    "ais_base": "ais.base",
    # report across runs
    "compare_names": "compare.names",
    "compare_scores": "compare.scores",
}


def flag_bindings() -> list[str]:
    """Gin bindings of the flags given on the command line (`FLAG_BINDINGS`), as strings."""
    out = []
    for flag, target in FLAG_BINDINGS.items():
        if FLAGS[flag].present:
            value = FLAGS[flag].value
            for param, v in (target(value) if callable(target) else {target: value}).items():
                out.append(f"{param} = {v!r}")
    return out


def _parse_run_gin(bindings=(), run_config=True):
    """Parse this run's config.gin (if any and `run_config`), then --gin_file, --gin_param and the
    flags' `bindings`."""
    import gin

    from keras_ebm import run_config

    files = list(FLAGS.gin_file)
    config = os.path.join(FLAGS.model_dir, "config.gin") if run_config and FLAGS.model_dir else None
    if config and os.path.exists(config):
        files.insert(0, config)
    elif config and not files:
        raise FileNotFoundError(
            f"{FLAGS.model_dir} has no config.gin, so it is not a run folder written by train.py: "
            "eval.py reads the run's test and OOD sets (and, for attacks and samples, its trainer) "
            "from it. Pass a train.py run folder, or name the data with --gin_file=<a config> "
            f"(e.g. the gin files the run was trained with). Received: --model_dir={FLAGS.model_dir}"
        )
    with gin.unlock_config():  # parse_gin locks the config; a --feature_classifier run's is parsed in between
        gin.clear_config()
        run_config.parse_gin(files, list(FLAGS.gin_param) + list(bindings))


def _check_flags(argv):
    """The flag combinations eval.py refuses, before anything runs."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]} (only --compare takes run directories).")
    if not FLAGS.model_dir and not FLAGS.saved_model:
        raise app.UsageError("Pass --model_dir (a train.py directory) or --saved_model (an export).")
    if FLAGS.sample_sweeps and not FLAGS.samples:
        raise app.UsageError("--sample_sweeps applies to --samples; pass --samples=N too.")
    attacks = bool(FLAGS.robustness or FLAGS.attack or FLAGS.cw or FLAGS.cw_targeted)
    if FLAGS.ais and not FLAGS.model_dir:
        raise app.UsageError("--ais needs --model_dir: it uses the trainer restored from its checkpoint.")
    if (attacks or FLAGS.samples) and not FLAGS.model_dir:
        raise app.UsageError(
            "Attacks and --samples need --model_dir: they use the trainer restored from its "
            "checkpoint (an export has no gradient and no sampler)."
        )
    if (FLAGS.generative or FLAGS.sample_quality) and not (FLAGS.samples or FLAGS.samples_npz):
        raise app.UsageError("--generative / --sample_quality score samples: pass --samples=N or --samples_npz.")
    if FLAGS.sample_quality and not FLAGS.reference_classifier:
        raise app.UsageError("--sample_quality needs --reference_classifier (an export or a train.py directory).")


def selected_evaluators() -> list[str]:
    """The evaluators the flags pick, in the order they run, then gin's `evaluate.evaluators` and
    --evaluators (names not already picked)."""
    import gin

    picked = {
        "standard": FLAGS.standard,
        "robustness": bool(FLAGS.robustness or FLAGS.attack or FLAGS.cw or FLAGS.cw_targeted),
        "ais": FLAGS.ais,
        "generative": FLAGS.generative,
        "sample_quality": FLAGS.sample_quality,
        "samples": bool(FLAGS.samples or FLAGS.samples_npz),
    }
    names = [name for name, on in picked.items() if on]
    try:
        from_gin = list(gin.query_parameter("evaluate.evaluators"))
    except ValueError:  # not bound
        from_gin = []
    return names + [n for n in dict.fromkeys(from_gin + list(FLAGS.evaluators)) if n not in names]


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines (savers, signatures) drown the progress
    from keras_ebm import evaluation
    from keras_ebm.evaluation import registry

    bindings = flag_bindings()
    if any(b.startswith("inception_features.") for b in bindings):
        import keras_ebm.configurables  # noqa: F401  (registers inception_features with gin)
    try:
        if FLAGS.compare:
            if FLAGS.output_dir:
                bindings.append(f"compare.output_dir = {FLAGS.output_dir!r}")
            _parse_run_gin(bindings + [f"compare.runs = {list(argv[1:])!r}"], run_config=False)
            evaluation.evaluate(["compare"])
            return
        _check_flags(argv)
        _parse_run_gin(bindings)
        evaluation.evaluate(
            selected_evaluators(),
            model_dir=FLAGS.model_dir,
            saved_model=FLAGS.saved_model,
            output_dir=FLAGS.output_dir,
            reparse_config=lambda: _parse_run_gin(bindings),
        )
    except registry.UsageError as error:
        raise app.UsageError(scripts.without_gin_context(str(error))) from error


def run() -> None:
    """The `keras-ebm-eval` console script (and `python eval.py`)."""
    scripts.run_main(main)


if __name__ == "__main__":
    run()
