"""Record the official SADA-JEM step (sndnyang/SADAJEM 9d8f3c7, train_sadajem.py + sam.py) into a
golden file.

    /work/torchvenv/bin/python benchmarks/parity/record_sadajem.py --official /work/official/SADAJEM \
        --precision float64            # and --precision float32

Runs the official `main()` unchanged with its own parser's defaults and the recipe of
scripts/sadajem_cifar10.sh (SGD lr 0.1 momentum 0.9, weight decay 5e-4, linear warm-up, BN, the
plain WideResNet, SGLD step 1 with gradient clamp 1 and x clamp, no SGLD noise, informative
initialisation, SAM with the code's default rho = 2, which selects ASAM) at a small size: WRN-10-1,
batch 8, buffer 20, K = 2, 2 classes, warm-up over 2 iterations; and, to exercise the terms the
recipe leaves at 0, data noise `--sigma 0.03` on the p(x) batch and `--l2_coeff 0.1`.
reinit 0.25 in float64, 0 in float32 (record_jempp.py `reinit_freq`). rho: the code's default 2
(ASAM) in float64; in float32 the paper's 0.2 (plain SAM, gin_configs/sadajem.gin): ASAM at rho 2
amplifies the official float32 run's own round-off to ~1e-3 on the losses and 0.15 on the
grad-norm score by step 3 (measured: our float64 replay of such a recording is as far from it as
our float32 replay), which would leave the float32 comparison little to check.

Both SAM passes run as written: `first_step` (running statistics on) and `second_step` (BN
momentum 0 via `disable_running_stats`); the base SGD's `step` is tapped. Recorded per step: the
first pass's fp, fq, l_p_x (with the l2 term), ce_loss and total `loss` (tapped at `first_step`),
the second pass's `L`, fp, fq, ce_loss; step 0's first-pass gradients (`step/0/grad_first/`) and
second-pass gradients (`step/0/grad/`, the ones SGD applies); weights, BN statistics, momentum
buffers, learning rate, samples and buffer as in record_jempp.py. Evaluation: eval_sadajem.py
`OODAUC` (px / py / pxgrad) on the fixed test batch, model in eval mode.
"""

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import official_run  # noqa: E402
import record_jempp as jp  # noqa: E402
import recording  # noqa: E402

REPO, COMMIT = "sndnyang/SADAJEM", "9d8f3c7"
BATCH, STEPS = jp.BATCH, jp.STEPS


def main():
    run = jp.Recording(__doc__, "/work/official/SADAJEM", "train_sadajem.py")
    opts = run.opts
    out = recording.output_path(opts.out, f"sadajem_{opts.precision}.npz")

    save_dir = tempfile.mkdtemp(prefix="record_sadajem_")
    argv = recording.official_argv(
        {
            "dataset": "cifar10",
            **official_run.SMALL_JEM,
            **jp.small_recipe(opts.precision, save_dir),
            "model": "wrn",
            "sgld_lr": 1,
            "sgld_std": 0,
            "sigma": 0.03,
            "l2_coeff": 0.1,
            "rho": 2 if opts.precision == "float64" else 0.2,
            "no_fid": True,
        }
    )
    T = run.prepare(argv, "train_sadajem", with_index=True)  # (main reads the module-level `args`)
    run.args.writer = recording._Anything("writer").SummaryWriter()
    run.args.writer.add_scalar = lambda *a, **k: None
    clean = [[recording.to_numpy(t) for t in run.batches_px[k][:2]] for k in range(STEPS)]  # before the in-place noise
    T.get_data = lambda a: (iter(run.batches_px), list(run.batches_lab), [], [])
    run.start(__file__, REPO, COMMIT, "batch/k/x_p_d is the batch before the data noise (draw at main); ")
    golden, held = run.golden, run.held

    def install(opt):
        first = opt.first_step

        def first_step(*fa, **fk):
            step = tap.k
            loc = recording.frame_locals("main")
            recording.add_terms(golden, f"step/{step}/loss", loc, ("fp", "fq", "l_p_x", "ce_loss", "loss"))
            if step == 0:
                recording.add_grads(golden, "step/0/grad_first/", held["f"])
            return first(*fa, **fk)

        opt.first_step = first_step
        losses = ("L", "fp", "fq", "ce_loss")
        tap = official_run.tap_main_step(
            golden, held, run.per_step, opt.base_optimizer, STEPS, run.tape, losses, "loss2"
        )

    run.run(T, "SAM", install)
    eval_args = recording.official_argv({**recording.SMALL_WRN, "norm": "batch", "model": "wrn", "sigma": 0})
    run.finish(clean, "eval_sadajem", eval_args, out)


if __name__ == "__main__":
    main()
