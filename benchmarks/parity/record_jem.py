"""Record the official JEM step (wgrathwohl/JEM 3d01161, train_wrn_ebm.py) into a golden file.

    /work/torchvenv/bin/python benchmarks/parity/record_jem.py --official /work/official/JEM \
        --precision float64            # and --precision float32

Runs the official `main()` unchanged with its own parser's options (small settings below): the
data loaders are replaced by fixed CIFAR-10 batches, torchvision/tqdm/sklearn are stubbed, CUDA is
off, checkpoints are not written; `OptimizerTap` stops `main()` after `--steps` updates. Then the
official evaluation code (eval_wrn_ebm.py `OODAUC`, score functions px / py / pxgrad) runs on a
fixed test batch (CIFAR-10 test images as in-distribution, DTD textures as OOD).
"""

import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import official_run  # noqa: E402
import recording  # noqa: E402

REPO, COMMIT = "wgrathwohl/JEM", "3d01161"
BATCH, STEPS = 8, 3


def main():
    def norm_option(p):
        p.add_argument("--norm", default=None, choices=[None, "batch"])

    opts, parser, auc_calls = official_run.setup(__doc__, "/work/official/JEM", "train_wrn_ebm.py", more=norm_option)
    out = recording.output_path(opts.out, f"jem{'' if opts.norm is None else '_bn'}_{opts.precision}.npz")
    import torch

    save_dir = tempfile.mkdtemp(prefix="record_jem_")
    argv = recording.official_argv(
        {
            **official_run.SMALL_JEM,
            "batch_size": BATCH,
            "reinit_freq": 0.25,
            "lr": 1e-3,
            "save_dir": save_dir,
            "print_every": 1,
            "sgld_std": 0.01,
            "norm": opts.norm,
        }
    )
    args = parser.parse_args(argv)
    args.n_classes = 10  # as the script's __main__ does for cifar10
    dtype = np.float64 if opts.precision == "float64" else np.float32

    import train_wrn_ebm as T

    # Fixed batches: x_p_d from dload_train, (x_lab, y_lab) from dload_train_labeled.
    x_u8, y_all = official_run.fixed_images("train", 0, 2 * BATCH * STEPS)
    batches_px = [
        (
            torch.tensor(official_run.to_official(x_u8[i * BATCH : (i + 1) * BATCH], dtype)),
            torch.tensor(y_all[i * BATCH : (i + 1) * BATCH]),
        )
        for i in range(STEPS)
    ]
    off = BATCH * STEPS
    batches_lab = [
        (
            torch.tensor(official_run.to_official(x_u8[off + i * BATCH : off + (i + 1) * BATCH], dtype)),
            torch.tensor(y_all[off + i * BATCH : off + (i + 1) * BATCH]),
        )
        for i in range(STEPS)
    ]
    T.get_data = lambda a: (list(batches_px), iter(batches_lab), [], [])
    T.checkpoint = lambda *a, **k: None

    golden = recording.recorder_golden(
        __file__,
        REPO,
        COMMIT,
        opts.precision,
        STEPS,
        vars(args),
        notes=(
            "init_uniform rows not chosen by the reinit mask are stored as 0 "
            "(they do not enter the step); probe/ keys hold <= 256 evenly "
            "spaced entries of the flattened tensor"
        ),
    )
    tape = recording.RandomTape([opts.official])
    held = {}
    original_get = T.get_model_and_buffer

    def get_model_and_buffer(*a, **k):
        f, buffer = original_get(*a, **k)
        held["f"], held["buffer"] = f, buffer
        golden.add_all("init", dict(f.state_dict().items()))
        golden.add("init_state/replay_buffer", buffer)
        tape.step = 0
        return f, buffer

    T.get_model_and_buffer = get_model_and_buffer
    per_step = {}

    def install(opt):
        official_run.tap_main_step(golden, held, per_step, opt, STEPS, tape, keep=lambda v: True)

    official_run.run_main(T, args, opts.precision, tape, torch.optim, "Adam", install)

    official_run.store_batches(golden, batches_px, batches_lab)
    # Draws: zero the fresh-uniform rows the reinit mask does not pick (they do not enter the step).
    site = "Tensor.uniform_@train_wrn_ebm.py:107:init_random"
    tape.zero_unpicked(site, "torch.rand", lambda u: u < args.reinit_freq)
    tape.to_golden(golden)
    official_run.store_steps(golden, per_step, STEPS)

    # Official evaluation (eval_wrn_ebm.py) on a fixed test batch with the final weights.
    official_run.record_eval(
        golden,
        opts,
        "eval_wrn_ebm",
        held["f"],
        lambda E: E.CCF(args.depth, args.width, args.norm),
        auc_calls,
        recording.official_argv({**recording.SMALL_WRN, "norm": opts.norm}),
        BATCH,
        eval_mode=False,
    )
    official_run.save(golden, out)


if __name__ == "__main__":
    main()
