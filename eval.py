"""Evaluate an exported keras_ebm model: accuracy, ECE, OOD AUROC/AUPR/FPR95, plots.

    python eval.py --model_dir=runs/quickstart
    python eval.py --saved_model=runs/x/export --gin_file=gin_configs/data/cifar10_local.gin
    python eval.py --model_dir=runs/sadajem --samples=100 --conditional    # + sample grid (PNG, npz)
    python eval.py --model_dir=runs/clel --clel_betas=0,0.01,0.1                 # CLEL eq. 5 at other betas
    python eval.py --model_dir=runs/clel_base --samples=50000 --sample_batch_size=500 --sample_sweeps=10
        # CLEL FID set, the official protocol: 10 x (reinit, strong augmentation, 60 SGLD steps)

With --model_dir, the training config (<model_dir>/config.gin) supplies the datasets; --gin_file and
--gin_param override it. Results go to <model_dir>/eval (or --output_dir).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging

flags.DEFINE_string("model_dir", None, "Experiment directory written by train.py.")
flags.DEFINE_string("saved_model", None, "Path of an export (instead of --model_dir).")
flags.DEFINE_multi_string("gin_file", [], "Gin config files (datasets, OOD sets).")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, applied last.")
flags.DEFINE_string("output_dir", None, "Where to write results (default <model_dir>/eval).")
flags.DEFINE_integer("samples", 0, "Also draw this many samples from the trained model (needs --model_dir).")
flags.DEFINE_integer("sample_steps", None, "SGLD steps for --samples (default: the trainer's sampler); "
                     "per sweep with --sample_sweeps.")
flags.DEFINE_integer("sample_sweeps", None, "CLEL: run each chain as this many sweeps, each a training-style "
                     "restart (reinit with the buffer's probability, strong augmentation) then --sample_steps "
                     "steps (default 60): the official FID protocol, 10 sweeps (600 steps) for base, 20 for "
                     "large. Default: plain chains.", lower_bound=1)
flags.DEFINE_list("clel_betas", [], "CLEL: also report eq. 5 at these betas, neg_energy + beta * cosine "
                  "(e.g. 0,0.01,0.1); the export's own 'clel' score uses the trained CLEL.ood_beta.")
flags.DEFINE_bool("sample_from_buffer", False, "Start the chains from the replay buffer.")
flags.DEFINE_bool("conditional", False, "Class-conditional samples, one row per class (CLEL: on the mean "
                  "encoder latent of each class's in-distribution images, Appendix D).")
flags.DEFINE_integer("sample_batch_size", None, "Chains run at once for --samples (default all).")
flags.DEFINE_integer("class_latent_examples", 1000,
                     "CLEL --conditional: labelled in-distribution images used for the class latents.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines (savers, signatures) drown the progress
    from keras_ebm import cli
    from keras_ebm.evaluation.runner import run_eval

    if not FLAGS.model_dir and not FLAGS.saved_model:
        raise app.UsageError("Pass --model_dir (a train.py directory) or --saved_model (an export).")
    files = list(FLAGS.gin_file)
    if FLAGS.model_dir and os.path.exists(os.path.join(FLAGS.model_dir, "config.gin")):
        files.insert(0, os.path.join(FLAGS.model_dir, "config.gin"))
    if FLAGS.sample_sweeps and not FLAGS.samples:
        raise app.UsageError("--sample_sweeps applies to --samples; pass --samples=N too.")
    cli.parse_gin(files, FLAGS.gin_param)
    extra = {"clel_betas": [float(b) for b in FLAGS.clel_betas]} if FLAGS.clel_betas else {}
    run_eval(model_dir=FLAGS.model_dir, saved_model=FLAGS.saved_model, output_dir=FLAGS.output_dir, **extra)
    if FLAGS.samples:
        if not FLAGS.model_dir:
            raise app.UsageError("--samples needs --model_dir: sampling uses the trainer's checkpoint.")
        from keras_ebm import generation, restore

        model = restore.restore_trainer(FLAGS.model_dir)
        if not model.is_generative:
            raise app.UsageError(f"{type(model).__name__} is not a generative model: it has no sampler.")
        out = os.path.join(FLAGS.output_dir or os.path.join(FLAGS.model_dir, "eval"), "samples")
        name = None
        if FLAGS.sample_sweeps:
            if not model.conditions_on_latents:  # the sweeps protocol is CLEL's
                raise app.UsageError(f"--sample_sweeps is CLEL's FID protocol; {type(model).__name__} has none.")
            model.sample_sweeps = FLAGS.sample_sweeps
            steps = FLAGS.sample_steps if FLAGS.sample_steps is not None else model.sampler.n_steps
            kind = "conditional" if FLAGS.conditional else "buffer" if FLAGS.sample_from_buffer else "fresh"
            name = f"{kind}_{FLAGS.sample_sweeps}x{steps}steps"
        labelled = None
        if FLAGS.conditional and model.conditions_on_latents:
            from keras_ebm.data import to_pixel_range
            from keras_ebm.evaluation.runner import load_set

            x, y = load_set(cli.resolve_parameter("run_eval.in_dist"), FLAGS.class_latent_examples)
            labelled = (to_pixel_range(x, model.pixel_range), y)
        generation.generate_samples(model, out, FLAGS.samples, n_steps=FLAGS.sample_steps,
                                    from_buffer=FLAGS.sample_from_buffer, conditional=FLAGS.conditional,
                                    batch_size=FLAGS.sample_batch_size, labelled_data=labelled, name=name)


if __name__ == "__main__":
    app.run(main)
