"""Record sndnyang/GMMC (commit 962b52b) step by step: `train_gmmc.py` run as `__main__`, unchanged.

    /work/torchvenv/bin/python benchmarks/parity/record_gmmc.py --official /work/official/GMMC \\
        --mode gen --precision float64 --out tests/data/parity/gmmc_gen_float64.npz

Modes (the official flags; `scripts/cifar10_{gen,joint}.sh` settings on a small WRN):
* `dis`: no `--generative`: the MMC centre loss `l_p_x_given_y` on the labelled batch each step.
* `gen`: `--generative --start_generative 0`: `l_p_x = fp - beta * fq` with staged SGLD sampling.
* `joint`: `--generative --start_generative 1` with ONE batch per epoch, so the official sequential
  switch happens inside the recording: step 0 is discriminative, steps 1-2 generative.

The official script runs as `__main__` through `runpy` (its parser, `main()`; `main` seeds torch
with its module constant `seed = 1`; NumPy, which draws the buffer's and the reinitialised labels,
is seeded by the recorder). Replaced from outside:

* `utils.get_data` -> fixed batches (`FixedLoader`): real CIFAR-10 scaled to [-1, 1], without the
  official augmentation and sigma noise (the batch keys are exactly what the step received);
* `utils.checkpoint` and `utils.lda_eval_classification` (end-of-epoch checkpoint and validation)
  -> no-ops (with one batch per epoch they would run after every step);
* CUDA (`force_cpu`), torchvision and tensorboardX stubbed; the experiment directory is a temporary
  one; `OptimizerTap` stops `main()` after `--steps` updates.

GMMC's repository has no OOD or ECE code; `eval/` holds the official classifier's outputs on the
fixed test batch: `eval/logits` = `LDALayer.forward` (-0.5 ||phi(x) - mu_k||^2), `eval/P_X` =
`LDALayer.P_X` (its log p(x), computed without max-subtraction), and `lda_eval_classification`'s
(accuracy, loss) on that batch.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recording  # noqa: E402  isort: skip  (imported before torch, as it was)

import torch  # noqa: E402

COMMIT = "962b52b8f3"


def parse():
    def more(p):
        p.add_argument("--mode", choices=["dis", "gen", "joint"], default="joint")
        p.add_argument("--steps", type=int, default=3)
        p.add_argument("--batch", type=int, default=4)
        p.add_argument("--seed", type=int, default=1, help="NumPy seed (torch is seeded by main() itself)")

    return recording.parse_recorder_args(__doc__, "/work/official/GMMC", more)


def official_argv(a, root, log_dir):
    options = {
        "dataset": "cifar10",
        **recording.SMALL_WRN,
        "batch_size": a.batch,
        "buffer_size": 20,
        "reinit_freq": 0.25,
        "n_steps": 2,
        "sgld_lr": 1,
        "gamma": 0.001,
        "beta": 0.5,
        "method": "mmc",
        "mu_c": 10,
        "lr": "1e-4",  # (a string: the recorded argv keeps it as written)
        "optimizer": "adam",
        "print_every": 1,
        "log_dir": log_dir,
        "gpu-id": 0,
        "class_cond_p_x_sample": True,
        "n_epochs": 100,
        "generative": a.mode in ("gen", "joint"),
        "start_generative": {"gen": 0, "joint": 1}.get(a.mode),
    }
    return recording.official_argv(options, os.path.join(root, "train_gmmc.py"))


def main():
    a = parse()
    out = recording.output_path(a.out, f"gmmc_{a.mode}_{a.precision}.npz")
    root = recording.use_checkout(a.official, "tensorboardX")
    os.chdir(root)  # ExpUtils.copy_script_to_folder copies "utils.py" etc. from the working directory
    log_dir = tempfile.mkdtemp(prefix="gmmc_parity_")
    argv = official_argv(a, root, log_dir)
    golden = recording.recorder_golden(
        __file__, "sndnyang/GMMC", COMMIT, a.precision, a.steps, argv[1:], mode=a.mode, numpy_seed=a.seed
    )
    golden.meta["notes"] = [
        "train_gmmc.py runs as __main__ (runpy): its parser and main() (torch seeded by main's seed = 1); "
        "utils.get_data replaced by fixed batches (no augmentation, no sigma noise)",
        "utils.checkpoint and utils.lda_eval_classification (end of epoch) are no-ops; CUDA no-op; torchvision "
        "and tensorboardX stubbed; experiment dir in /tmp",
        "joint: one batch per epoch, so epoch == step and start_generative=1 switches at step 1",
        "init/ = f.state_dict() (WRN under f.*); init_state/centers = LDALayer.centers after cal_center; "
        "init_state/replay_buffer_x, _y = the (x, y) buffer; weights and optimizer slots as probes after every step "
        "(256 evenly spaced entries); x_q probed but in full at the last step; init_random_x_y's uniform rows the "
        "reinit mask does not pick stored as 0",
        "warmup_iters -1 (the official default): constant lr",
    ]

    with recording.float64_mode(a.precision == "float64"):
        np.random.seed(a.seed)
        x, y = recording.cifar10_tensors("train", range(2 * a.steps * a.batch))
        b = a.batch
        train = [(x[2 * k * b : (2 * k + 1) * b], y[2 * k * b : (2 * k + 1) * b]) for k in range(a.steps)]
        labeled = [(x[(2 * k + 1) * b : (2 * k + 2) * b], y[(2 * k + 1) * b : (2 * k + 2) * b]) for k in range(a.steps)]
        generative = {k: a.mode == "gen" or (a.mode == "joint" and k >= 1) for k in range(a.steps)}
        for k in range(a.steps):
            if generative[k]:
                golden.add(f"batch/{k}/x_p_d", train[k][0])
                golden.add(f"batch/{k}/y_p_d", train[k][1])
            else:
                golden.add(f"batch/{k}/x_lab", labeled[k][0])
                golden.add(f"batch/{k}/y_lab", labeled[k][1])
        tape = recording.RandomTape([root])
        for m in ("utils", "ExpUtils", "LDALayer", "models", "models.mmc_models"):
            sys.modules.pop(m, None)
        import utils as official_utils  # noqa: PLC0415

        state = {}

        def start():
            loc = recording.frame_locals("main")
            f, optim, buf, lgm = loc["f"], loc["optim"], loc["replay_buffer"], loc["lgm_loss"]
            state.update(f=f, lgm=lgm)
            names = {id(p): n for n, p in f.named_parameters()}
            golden.add_all("init", f.state_dict())
            golden.add("init_state/centers", lgm.centers)
            golden.add("init_state/replay_buffer_x", buf[0])
            golden.add("init_state/replay_buffer_y", buf[1])

            def before(k):
                loc = recording.frame_locals("main")
                # Only this step's terms: main()'s locals keep the previous steps' (joint: l_p_x_given_y).
                names_k = ("l_p_x", "fp", "fq", "L") if generative[k] else ("l_p_x_given_y", "L")
                recording.add_terms(golden, f"step/{k}/loss", loc, names_k, keep=torch.is_tensor)
                if generative[k]:
                    recording.add_full_at_last(golden, k, a.steps - 1, "x_q", loc["x_q"])
                    golden.add(f"step/{k}/state/y_q", loc["y_q"])
                if k == 0:
                    recording.add_grads(golden, "step/0/grad/", f)
                recording.add_lr(golden, f"step/{k}/opt/lr", optim)

            def after(k):
                # Per step: probes of every weight and Adam slot (README "probe/"; the eval features
                # check the final weights in full).
                recording.add_step_probes(golden, k, f.state_dict(), optim, names)
                golden.add(f"step/{k}/state/centers", lgm.centers)
                if k == a.steps - 1:
                    golden.add(f"step/{k}/state/replay_buffer_x", buf[0])
                    golden.add(f"step/{k}/state/replay_buffer_y", buf[1])

            recording.OptimizerTap(optim, a.steps, before=before, after=after, tape=tape)
            tape.step = 0

        train_loader = recording.FixedLoader(train, on_iter=start, per_epoch=1 if a.mode == "joint" else None)
        lab_loader = recording.FixedLoader(labeled)
        official_utils.get_data = lambda args: (train_loader, lab_loader, None, None)
        official_utils.checkpoint = lambda *args, **kwargs: None
        official_utils.lda_eval_classification = lambda *args, **kwargs: (0.0, 0.0)

        with tape:
            recording.run_official_script(argv, tape)
        if "f" not in state:
            raise SystemExit("the official main() never reached the training loop")
        evaluate(a, state["f"], state["lgm"], golden, root)
        tape.zero_unpicked("Tensor.uniform_@utils.py:135:init_random_x_y", "torch.rand", lambda u: u < 0.25)
        recording.finish(golden, tape, a.precision, out, 3_200_000 if a.precision == "float64" else 2_000_000)


def evaluate(a, f, lgm, golden, root):
    sys.modules.pop("utils", None)
    import utils as official_utils  # a fresh import: the real lda_eval_classification  # noqa: PLC0415

    x, y = recording.cifar10_tensors("test", range(a.batch))
    golden.add("eval/x", x)
    golden.add("eval/y", y)
    f.eval()
    lgm.eval()
    with torch.no_grad():
        feat = f.feature(x)
        golden.add("eval/features", feat)
        golden.add("eval/logits", lgm(feat))
        golden.add("eval/P_X", lgm.P_X(feat))
        args = argparse.Namespace(n_classes=10, device=torch.device("cpu"), vis=False)
        res = official_utils.lda_eval_classification(f, [(x, y)], lgm, "Test", 0, args, lambda *s, **k: None)
    correct, loss = res if isinstance(res, tuple) else (res, np.nan)
    golden.add("eval/accuracy", np.asarray(float(correct)))
    dtype = np.float64 if torch.get_default_dtype() == torch.float64 else np.float32
    golden.add("eval/loss", np.asarray(float(loss), dtype=dtype))  # .item() of the official float


if __name__ == "__main__":
    main()
