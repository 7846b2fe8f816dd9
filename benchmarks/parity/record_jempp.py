"""Record the official JEM++ step (sndnyang/JEMPP fba6ba5, train_jempp.py) into a golden file.

    /work/torchvenv/bin/python benchmarks/parity/record_jempp.py --official /work/official/JEMPP \
        --precision float64            # and --precision float32

Runs the official `main()` unchanged with its own parser's options and the recipe of
scripts/jempp_cifar10.sh (SGD lr 0.1, momentum 0.9, weight decay 4e-4, linear warm-up, BN, the
YOPO WideResNet, proximal SGLD with `in_steps` inner steps of `pyld_lr`, BN in train mode while
sampling) at a small size: WRN-10-1, batch 8, buffer 20, K = 2 outer steps, reinit 0.25, warm-up
over 2 iterations, and 2 classes (CIFAR-10 airplanes and automobiles), so that the class Gaussians
of the informative initialisation (3072 x 3072 covariances) stay cheap to factor in the test.

The class statistics the official code loads (`<dataset>_mean.pt`, `<dataset>_cov.pt`, which its
commented-out `category_mean` would write) are computed here with `category_mean`'s own formulas
(channels-first flattening, biased covariance) from `CLASS_IMAGES` fixed training images per class,
which the golden file stores (`init_state/class_images`, `init_state/class_labels`): the test
refits the Gaussians from them. `torch.load` is patched to hand them over.

Data loaders are replaced by fixed CIFAR-10 batches, torchvision/tqdm/sklearn/matplotlib/
tensorboardX are stubbed, CUDA is off, checkpoints are not written; `OptimizerTap` stops `main()`
after `--steps` updates. Then the official evaluation code (eval_jempp.py `OODAUC` with score
functions px / py / pxgrad, the network in eval mode as its `main` sets it) runs on a fixed test
batch (CIFAR-10 test images as in-distribution, DTD textures as OOD).
"""

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import official_run  # noqa: E402
import recording  # noqa: E402

REPO, COMMIT = "sndnyang/JEMPP", "fba6ba5"
BATCH, STEPS, N_CLASSES, CLASS_IMAGES = 8, 3, 2, 8


def reinit_freq(precision):
    """0.25 in float64. 0 in float32: the official float32 Cholesky factor of a jittered class
    covariance (condition ~1e6) puts 1.5e-3 of round-off into every informative sample (measured
    against the float64 factor; NumPy's float32 factor differs from PyTorch's by as much), which
    would hide every other float32 difference; float64 checks the informative initialisation."""
    return 0.25 if precision == "float64" else 0.0


def stub_more():
    """matplotlib and tensorboardX (imported by ExpUtils for logging/plots only)."""
    for name in ("matplotlib", "matplotlib.pyplot", "tensorboardX"):
        sys.modules.setdefault(name, recording._Anything(name))
    sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]


def two_class_images(split, n):
    """The first `n` images of `split` whose label is < N_CLASSES (uint8 NHWC, labels)."""
    x, y = official_run.fixed_images(split, 0, 40 * n // N_CLASSES + 64)
    keep = np.flatnonzero(y < N_CLASSES)[:n]
    assert keep.size == n, "not enough images of the first classes"
    return x[keep], y[keep]


def setup(opts, script):
    auc_calls = []
    official_run.stub_modules(auc_calls)
    stub_more()
    recording.force_cpu()
    sys.path.insert(0, opts.official)
    parser = official_run.official_parser(os.path.join(opts.official, script))
    return parser, auc_calls


def fixed_batches(dtype, n_batches, with_index=False):
    """(p(x) batches, labelled batches, class-statistics images) from the first two classes."""
    import torch

    total = 2 * BATCH * n_batches + N_CLASSES * CLASS_IMAGES
    x_u8, y_all = two_class_images("train", total)

    def batch(lo):
        out = (
            torch.tensor(official_run.to_official(x_u8[lo : lo + BATCH], dtype)),
            torch.tensor(y_all[lo : lo + BATCH]),
        )
        return out + (torch.arange(lo, lo + BATCH),) if with_index else out

    px = [batch(i * BATCH) for i in range(n_batches)]
    off = BATCH * n_batches
    lab = [batch(off + i * BATCH) for i in range(n_batches)]
    stats_x, stats_y = x_u8[2 * off :], y_all[2 * off :]
    return px, lab, (stats_x, stats_y)


def class_gaussians(stats_x, stats_y, dtype):
    """Per-class mean and biased covariance of channels-first flattened images, as the official
    `category_mean` computes them (`sub.t() @ sub / len(imc)`)."""
    import torch as t

    im = t.tensor(official_run.to_official(stats_x, dtype))
    targ = t.tensor(stats_y)
    size = int(np.prod(im.shape[1:]))
    centers, covs = t.zeros([N_CLASSES, size], dtype=im.dtype), t.zeros([N_CLASSES, size, size], dtype=im.dtype)
    for i in range(N_CLASSES):
        imc = im[targ == i]
        imc = imc.view(len(imc), -1)
        mean = imc.mean(dim=0)
        sub = imc - mean.unsqueeze(dim=0)
        centers[i] = mean
        covs[i] = sub.t() @ sub / len(imc)
    return centers, covs


def patch_torch_load(dataset, centers, covs):
    import torch

    original = torch.load

    def load(path, *a, **k):
        name = os.path.basename(str(path))
        if name == f"{dataset}_mean.pt":
            return centers.clone()
        if name == f"{dataset}_cov.pt":
            return covs.clone()
        return original(path, *a, **k)

    torch.load = load
    return lambda: setattr(torch, "load", original)


def capture_setup(T, golden, tape):
    """Wrap the official `get_model_and_buffer` and `init_from_centers` of module `T`: record the
    initial weights and the informative buffer; the draws after the buffer fill belong to step 0.
    Returns the dict that receives the model ("f") and the buffer ("buffer")."""
    held = {}
    original_get, original_centers = T.get_model_and_buffer, T.init_from_centers

    def get_model_and_buffer(*a, **k):
        f, buffer = original_get(*a, **k)
        held["f"] = f
        golden.add_all("init", dict(f.state_dict().items()))
        return f, buffer

    def init_from_centers(*a, **k):
        buffer = original_centers(*a, **k)
        held["buffer"] = buffer
        golden.add("init_state/replay_buffer", buffer)
        tape.step = 0
        return buffer

    T.get_model_and_buffer, T.init_from_centers = get_model_and_buffer, init_from_centers
    return held


def run_main(T, args, precision, tape, owner, attr, factory):
    """Run the official `T.main(args)` with `owner.attr` (the optimizer class it builds) replaced
    by `factory` (which installs the tap), in `precision`, until the tap stops it."""
    original = getattr(owner, attr)
    setattr(owner, attr, factory)
    try:
        with recording.float64_mode(precision == "float64"), tape:
            try:
                T.main(args)
            except recording.StopRecording:
                pass
    finally:
        setattr(owner, attr, original)


def unique_state(module):
    """`state_dict()` without alias keys (a module registered twice, as the YOPO network's
    `layer_one` / `other_layers`): the first name of each tensor."""
    seen, out = set(), {}
    for n, v in module.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape))
        if key not in seen:
            seen.add(key)
            out[n] = recording.to_numpy(v)
    return out


def store_draws(golden, tape, reinit_freq, fresh_fn):
    """The tape's draws; the fresh informative samples of rows the reinit mask does not pick are
    stored as 0 (they do not enter the step): `fresh_fn` names the official function drawing them."""
    by_step = {}
    for step, name, site, value in tape.draws:
        by_step.setdefault(step, []).append([step, name, site, value])
    for _step, draws in by_step.items():
        for i, (_, name, site, value) in enumerate(draws):
            if name != "torch.rand" or not site.endswith("sample_p_0"):
                continue
            mask = value < reinit_freq
            # The B class draws and B Gaussian draws of init_random precede the mask, in sample order.
            fresh = [j for j in range(i) if draws[j][2].endswith(":" + fresh_fn) and draws[j][1] != "np.random.randint"]
            fresh = fresh[-len(mask) :]
            for row, j in enumerate(fresh):
                if not mask[row]:
                    draws[j][3] = np.zeros_like(draws[j][3])
    tape.draws = [d for s in sorted(by_step, key=str) for d in by_step[s]]
    tape.to_golden(golden)


def store_steps(golden, per_step, steps):
    for k in range(steps):
        if k == steps - 1:
            golden.add(f"step/{k}/state/x_q", per_step[k]["x_q"])
        else:
            golden.add(f"step/{k}/probe/state/x_q", official_run.probe(per_step[k]["x_q"]))
        for n, v in per_step[k]["param"].items():  # BN statistics (<= 64 entries) are stored whole
            golden.add(f"step/{k}/probe/param/{n}", official_run.probe(v))
        for n, v in per_step[k]["opt"].items():
            if n == "lr" or n.endswith("/step"):
                golden.add(f"step/{k}/opt/{n}", v)
            else:
                golden.add(f"step/{k}/probe/opt/{n}", official_run.probe(v))
        golden.add(f"step/{k}/probe/state/replay_buffer", official_run.probe(per_step[k]["buffer"]))


def record_eval(golden, E, eval_parser, state_dict, make_model, auc_calls, dtype, precision, extra_args):
    """The official OODAUC (px / py / pxgrad) and logits on a fixed test batch, model in eval mode."""
    import torch

    x_test, y_test = official_run.fixed_images("test", 0, BATCH)
    x_ood = official_run.dtd_images(BATCH)
    x_eval = torch.tensor(official_run.to_official(x_test, dtype))
    x_fake = torch.tensor(official_run.to_official(x_ood, dtype))
    golden.add("eval/x", x_eval)
    golden.add("eval/y", y_test)
    golden.add("eval/x_ood", x_fake)
    with recording.float64_mode(precision == "float64"):
        ef = make_model()
        ef.load_state_dict(state_dict)
        ef.eval()  # eval_*.py main: f.eval() before OODAUC
        golden.add("eval/logits", ef.classify(x_eval))
        loaders = []
        E.DataLoader = lambda dset, **k: loaders.pop(0)
        for score_fn in ("px", "py", "pxgrad"):
            eargs = eval_parser.parse_args(["--score_fn", score_fn, "--ood_dataset", "svhn"] + extra_args)
            eargs.debug = True  # (ExpUtils.init_env sets it; OODAUC reads it for num_workers)
            E.args = eargs  # eval_sadajem.py's OODAUC also reads its __main__'s global `args`
            loaders[:] = [[(x_eval, torch.tensor(y_test))], [(x_fake, torch.zeros(BATCH, dtype=torch.long))]]
            E.OODAUC(ef, eargs, "cpu")
            call = auc_calls.pop()
            golden.add(f"eval/{score_fn}/scores_in", call["scores"][:BATCH])
            golden.add(f"eval/{score_fn}/scores_ood", call["scores"][BATCH:])
            golden.add(f"eval/{score_fn}/auroc", call["auc"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", default="/work/official/JEMPP")
    ap.add_argument("--precision", choices=["float64", "float32"], default="float64")
    ap.add_argument("--out", default=None)
    opts = ap.parse_args()
    out = opts.out or os.path.join(HERE, "..", "..", "tests", "data", "parity", f"jempp_{opts.precision}.npz")
    parser, auc_calls = setup(opts, "train_jempp.py")
    import torch

    save_dir = tempfile.mkdtemp(prefix="record_jempp_")
    argv = [
        "--depth",
        "10",
        "--width",
        "1",
        "--norm",
        "batch",
        "--model",
        "yopo",
        "--batch_size",
        str(BATCH),
        "--buffer_size",
        "20",
        "--n_steps",
        "2",
        "--in_steps",
        "5",
        "--pyld_lr",
        "0.2",
        "--reinit_freq",
        str(reinit_freq(opts.precision)),
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--warmup_iters",
        "2",
        "--n_epochs",
        "1",
        "--save_dir",
        save_dir,
        "--dir_path",
        save_dir,
        "--print_every",
        "1000",
    ]
    args = parser.parse_args(argv)
    args.n_classes = N_CLASSES
    args.pid = "record"
    dtype = np.float64 if opts.precision == "float64" else np.float32

    import train_jempp as T

    T.args = args  # sample_p_0 reads the module-level `args` its __main__ sets

    batches_px, batches_lab, (stats_x, stats_y) = fixed_batches(dtype, STEPS)
    T.get_data = lambda a: (list(batches_px), iter(batches_lab), [], [])
    T.checkpoint = lambda *a, **k: None
    centers, covs = class_gaussians(stats_x, stats_y, dtype)
    restore_load = patch_torch_load(args.dataset, centers, covs)

    golden = recording.Golden(
        repo=REPO,
        commit=COMMIT,
        recorder="benchmarks/parity/record_jempp.py",
        precision=opts.precision,
        steps=STEPS,
        settings=vars(args),
        notes=(
            "2 classes; class Gaussians fitted (category_mean's formulas) to "
            "init_state/class_images; fresh informative samples of rows the "
            "reinit mask does not pick are stored as 0; probe/ keys hold <= 256 "
            "evenly spaced entries of the flattened tensor"
        ),
    )
    golden.add("init_state/class_images", stats_x)
    golden.add("init_state/class_labels", stats_y)
    tape = recording.RandomTape([opts.official])
    held = capture_setup(T, golden, tape)
    original_sgd = torch.optim.SGD
    per_step = {}

    def make_sgd(*a, **k):
        opt = original_sgd(*a, **k)
        names = {id(p): n for n, p in held["f"].named_parameters()}

        def before(step):
            loc = recording.frame_locals("main")
            for name in ("l_p_x", "l_p_y_given_x", "L", "fp", "fq"):
                golden.add(f"step/{step}/loss/{name}", loc[name])
            per_step[step] = {"x_q": recording.to_numpy(loc["x_q"])}
            if step == 0:
                for n, p in held["f"].named_parameters():
                    if p.grad is not None:  # energy_output is never used by CCF
                        golden.add(f"step/0/grad/{n}", p.grad)

        def after(step):
            per_step[step]["param"] = unique_state(held["f"])
            per_step[step]["opt"] = recording.optimizer_state(opt, names)
            per_step[step]["buffer"] = recording.to_numpy(held["buffer"])

        recording.OptimizerTap(opt, STEPS, before=before, after=after, tape=tape)
        return opt

    run_main(T, args, opts.precision, tape, torch.optim, "SGD", make_sgd)
    restore_load()

    for k in range(STEPS):
        golden.add(f"batch/{k}/x_p_d", batches_px[k][0])
        golden.add(f"batch/{k}/y_p_d", batches_px[k][1])
        golden.add(f"batch/{k}/x_lab", batches_lab[k][0])
        golden.add(f"batch/{k}/y_lab", batches_lab[k][1])
    store_draws(golden, tape, args.reinit_freq, "init_random")
    store_steps(golden, per_step, STEPS)

    import eval_jempp as E

    eval_parser = official_run.official_parser(os.path.join(opts.official, "eval_jempp.py"))
    record_eval(
        golden,
        E,
        eval_parser,
        held["f"].state_dict(),
        lambda: E.CCF(args.depth, args.width, args.norm, n_classes=N_CLASSES, model=args.model),
        auc_calls,
        dtype,
        opts.precision,
        ["--depth", "10", "--width", "1", "--norm", "batch", "--model", "yopo"],
    )
    golden.save(out, max_bytes=int(os.environ.get("PARITY_MAX_BYTES", 4_500_000)))


if __name__ == "__main__":
    main()
