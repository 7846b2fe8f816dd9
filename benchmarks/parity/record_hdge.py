"""Record lhao499/HDGE (commit 9f12b3e) step by step: `train_wrn.py` run as `__main__`, unchanged.

    /work/torchvenv/bin/python benchmarks/parity/record_hdge.py --official /work/official/HDGE \\
        --variant hdge --precision float64 --out tests/data/parity/hdge_float64.npz

Variants (the README's two configurations): `hdge` = `--pyxce 1 --pxycontrast 1` (CE + contrastive
log q(x|y) with the logit queue); `hdge_jem` adds `--pxsgld 1` (JEM's p(x) term with PCD SGLD).

The official script runs as `__main__` through `runpy` with its own argument parser, `set_seed`,
logger set-up and `main()`. What the recorder replaces, from outside:

* `utils.get_data` -> fixed batches (`FixedLoader`): real CIFAR-10 images scaled to [-1, 1] as the
  official transform does, without its augmentation and its sigma noise (the batch in the file is
  exactly what the step received); the labelled loader is `__next__`-ed like the official `cycle`.
* CUDA (`force_cpu`: `.cuda()` is a no-op; `model.joint` calls `torch.zeros(...).cuda()`).
* torchvision (stubbed: datasets/transforms/save_image only), matplotlib/pylab/seaborn (stubbed:
  plotting in `eval_wrn.py`), sklearn (stubbed: `roc_auc_score` records the official scores and
  computes the AUROC with the rank formula), tqdm passes through; the log directory is a temporary
  one and `sys.stdout` (redirected there by the script) is restored afterwards.
* `OptimizerTap` stops `main()` after `--steps` updates (inside the first epoch: no plotting,
  checkpointing or validation runs).

Evaluation: `eval_wrn.py`'s own `OODAUC` (score functions px, py, pxgrad, pxsim) and `eval_ece`
run on the fixed test batch, with `torchvision.datasets.CIFAR10` / `SVHN` replaced by that batch and
by seeded uniform-noise images, `--sigma 0` and `--n_steps 0` (no test-time noise or sampling).
The ECE is read from `make_ece_diagrams`' own print.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recording  # noqa: E402  isort: skip  (imported before torch, as it was)

import torch  # noqa: E402

COMMIT = "9f12b3e8f5"
LOSS_NAMES = ("l_pyxce", "l_pxsgld", "l_pxcontrast", "l_pxycontrast", "l_pxysgld", "fp", "fq", "L")


def parse():
    def more(p):
        p.add_argument("--variant", choices=["hdge", "hdge_jem"], default="hdge")
        p.add_argument("--steps", type=int, default=3)
        p.add_argument("--batch", type=int, default=4)
        p.add_argument("--norm", default="none", choices=["none", "batch"])
        # Default seeds: 4 (float32) and 10 (float64) draw no buffer row twice within a step of
        # hdge_jem (PyTorch leaves such duplicate writes undefined; see docs/parity.md, JEM).
        p.add_argument("--seed", type=int, default=None)

    a = recording.parse_recorder_args(__doc__, "/work/official/HDGE", more)
    if a.seed is None:
        a.seed = 10 if a.precision == "float64" else 4
    return a


def official_argv(a, log_dir):
    options = {
        "dataset": "cifar10",
        **recording.SMALL_WRN,
        "batch_size": a.batch,
        "sgld_batch_size": a.batch,
        "buffer_size": 10,
        "reinit_freq": 0.25,
        "n_steps": 2,
        "contrast_k": 4 * a.batch,
        "contrast_t": 0.1,
        "lr": "1e-4",  # (a string: the recorded argv keeps it as written)
        "warmup_iters": 2,
        "optimizer": "adam",
        "pyxce": 1,
        "pxycontrast": 1,
        "seed": a.seed,
        "workers": 0,
        "print_every": 1,
        "log_dir": log_dir,
        "id": "parity",
        "pxsgld": 1 if a.variant == "hdge_jem" else None,
        "norm": None if a.norm == "none" else a.norm,
    }
    return recording.official_argv(options, "train_wrn.py")


def batches(a, n):
    # Real CIFAR-10 training images, scaled to [-1, 1] like the official Normalize(.5, .5).
    x, y = recording.cifar10_tensors("train", range(2 * n * a.batch))
    out = []
    for k in range(n):
        p = slice(2 * k * a.batch, (2 * k + 1) * a.batch)
        lab = slice((2 * k + 1) * a.batch, (2 * k + 2) * a.batch)
        out.append(((x[p], y[p]), (x[lab], y[lab])))
    return out


def main():
    a = parse()
    out = recording.output_path(a.out, f"{a.variant}_{a.precision}.npz")
    root = recording.use_checkout(
        a.official, "matplotlib", "matplotlib.pyplot", "pylab", "seaborn", "sklearn", "sklearn.metrics"
    )
    auc_inputs = []

    def roc_auc_score(labels, scores):
        auc_inputs.append((np.asarray(labels), np.asarray(scores)))
        from scipy.stats import rankdata  # noqa: PLC0415

        labels, ranks = np.asarray(labels), rankdata(scores)
        n1, n0 = labels.sum(), len(labels) - labels.sum()
        return (ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)

    sys.modules["sklearn.metrics"].roc_auc_score = roc_auc_score
    log_dir = tempfile.mkdtemp(prefix="hdge_parity_")
    argv = official_argv(a, log_dir)
    golden = recording.recorder_golden(
        __file__, "lhao499/HDGE", COMMIT, a.precision, a.steps, argv[1:], variant=a.variant
    )
    golden.meta["notes"] = [
        "train_wrn.py runs as __main__ (runpy) with its own parser, set_seed and main(); get_data replaced by "
        "fixed batches (no augmentation, no sigma noise: the batch keys are exactly the step's inputs)",
        "CUDA no-op (force_cpu); torchvision, matplotlib, pylab, seaborn stubbed; sklearn.metrics.roc_auc_score "
        "stubbed to record the official OOD scores; log_dir in /tmp, stdout restored",
        "init/ holds f.state_dict() (queue_logit / queue_ptr included) before step 0; step/k/param after step k",
        "weights and optimizer slots: probes (256 evenly spaced entries, README) after every step (eval/logits "
        "checks the final weights in full); x_q probed but in full at the last step; init_uniform rows the reinit "
        "mask does not pick are stored as 0; "
        "replay buffer at init_state and after the last step (the per-step samples are step/k/state/x_q); "
        "variant hdge stores neither buffer nor x_p_d (its step never uses them)",
        "sgld_batch_size = batch_size (the official defaults are equal, 64); "
        "warmup_iters 2: the official warmup sets lr = lr * cur_iter / warmup_iters for cur_iter <= warmup_iters, "
        "so step 0 runs with lr 0 (weights unchanged, Adam moments and step count updated); step/k/opt/lr",
    ]
    golden.meta["draws_note"] = "draw/eval/* are the draws of the evaluation code (OOD interp / shuffles)"

    with recording.float64_mode(a.precision == "float64"):
        data = batches(a, a.steps)
        tape = recording.RandomTape([root])
        sys.modules.pop("utils", None)
        import utils as official_utils  # noqa: PLC0415

        state = {}

        def start():
            loc = recording.frame_locals("main")
            f, optim, buf = loc["f"], loc["optim"], loc["replay_buffer"]
            state.update(f=f, optim=optim, buffer=buf)
            names = {id(p): n for n, p in f.named_parameters()}
            golden.add_all("init", dict(f.state_dict().items()))
            if a.variant == "hdge_jem":  # HDGE alone never samples
                golden.add("init_state/replay_buffer", buf)

            def before(k):
                loc = recording.frame_locals("main")
                recording.add_terms(golden, f"step/{k}/loss", loc, LOSS_NAMES, keep=torch.is_tensor)
                if k == 0:  # (f.linear and energy_output are unused by the step: no gradient)
                    recording.add_grads(golden, "step/0/grad/", f)
                if "x_q" in loc and a.variant == "hdge_jem":
                    recording.add_full_at_last(golden, k, a.steps - 1, "x_q", loc["x_q"])
                recording.add_lr(golden, f"step/{k}/opt/lr", optim)

            def after(k):
                # Per step: probes of every weight and Adam slot (README "probe/"); in full only
                # after the last step (the slots' step count in full every step).
                recording.add_step_probes(golden, k, f.state_dict(), optim, names)
                if k == a.steps - 1:
                    if a.variant == "hdge_jem":
                        golden.add(f"step/{k}/state/replay_buffer", buf)

            recording.OptimizerTap(optim, a.steps, before=before, after=after, tape=tape)
            tape.step = 0

        for k, ((xp, _yp), (xl, yl)) in enumerate(data):
            if a.variant == "hdge_jem":  # HDGE alone reads x_p_d from the loader but never uses it
                golden.add(f"batch/{k}/x_p_d", xp)
            golden.add(f"batch/{k}/x_lab", xl)
            golden.add(f"batch/{k}/y_lab", yl)
        train_loader = recording.FixedLoader([(xp, yp) for (xp, yp), _ in data] + [data[0][0]], on_iter=start)
        lab_loader = recording.FixedLoader([lab for _, lab in data])
        official_utils.get_data = lambda args: (train_loader, lab_loader, None, None)

        with tape:
            recording.run_official_script([os.path.join(root, "train_wrn.py")] + argv[1:], tape)
            evaluate(a, state["f"], golden, tape, root, auc_inputs)
        tape.zero_unpicked("Tensor.uniform_@utils.py:101:init_random", "torch.rand", lambda u: u < 0.25)
        recording.finish(golden, tape, a.precision, out, 3_200_000 if a.precision == "float64" else 2_000_000)


def evaluate(a, f, golden, tape, root, auc_inputs):
    """The official eval_wrn.py functions on a fixed test batch (CIFAR-10 test) and noise as OOD."""
    import torchvision  # the stub  # noqa: PLC0415

    sys.modules.pop("eval_wrn", None)
    import eval_wrn  # noqa: PLC0415

    x, y = recording.cifar10_tensors("test", range(a.batch))
    gen = np.random.RandomState(0)
    x_ood = torch.tensor(gen.uniform(-1, 1, size=tuple(x.shape)), dtype=torch.get_default_dtype())
    golden.add("eval/x", x)
    golden.add("eval/y", y)
    golden.add("eval/x_ood", x_ood)

    def dataset(xs, ys):
        class Fixed(list):
            def __init__(self, *args, **kwargs):
                super().__init__(zip(xs, ys))

        return Fixed

    torchvision.datasets.CIFAR10 = dataset(x, y)
    torchvision.datasets.SVHN = dataset(x_ood, y)
    eval_wrn.device = torch.device("cpu")
    printed = []
    eval_wrn.print = lambda *args, **kwargs: printed.append(args)
    f.eval()
    with torch.no_grad():
        golden.add("eval/logits", f.classify(x))
    tape.step = "eval"
    args = argparse.Namespace(
        sigma=0.0,
        batch_size=len(x),
        workers=0,
        ood_dataset="svhn",
        n_steps=0,
        pxycontrast=1,
        n_classes=10,
        smoothing=0.0,
        dataset="cifar_test",
        log_dir=tempfile.mkdtemp(prefix="hdge_eval_"),
    )
    for score_fn in ("px", "py", "pxgrad", "pxsim"):
        args.score_fn = score_fn
        auc_inputs.clear()
        eval_wrn.OODAUC(f, args)
        labels, scores = auc_inputs[0]
        golden.add(f"eval/ood_{score_fn}/labels", labels)  # 1 = CIFAR-10 test batch, 0 = noise (shuffled)
        golden.add(f"eval/ood_{score_fn}/scores", scores)
        golden.add(f"eval/ood_{score_fn}/auroc", np.asarray(printed[-1][0]))
    printed.clear()
    eval_wrn.eval_ece(f, args)
    ece = [p[1] for p in printed if p and p[0] == "ECE error:"]
    golden.add("eval/ece", ece[0])
    golden.meta["eval_settings"] = {k: v for k, v in vars(args).items() if k != "log_dir"}
    tape.step = None


if __name__ == "__main__":
    main()
