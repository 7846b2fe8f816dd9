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

import importlib
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


def small_recipe(precision, save_dir):
    """The options of the JEM++ recipe that record_jempp.py and record_sadajem.py share (official
    names; scripts/jempp_cifar10.sh and scripts/sadajem_cifar10.sh at a small size): BN, batch
    BATCH, `reinit_freq(precision)`, SGD lr 0.1 with warm-up over 2 iterations, output in
    `save_dir`, no per-iteration printing."""
    return {
        "norm": "batch",
        "batch_size": BATCH,
        "reinit_freq": reinit_freq(precision),
        "optimizer": "sgd",
        "lr": 0.1,
        "warmup_iters": 2,
        "save_dir": save_dir,
        "dir_path": save_dir,
        "print_every": 1000,
    }


def two_class_images(split, n):
    """The first `n` images of `split` whose label is < N_CLASSES (uint8 NHWC, labels)."""
    x, y = official_run.fixed_images(split, 0, 40 * n // N_CLASSES + 64)
    keep = np.flatnonzero(y < N_CLASSES)[:n]
    assert keep.size == n, "not enough images of the first classes"
    return x[keep], y[keep]


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


class Recording:
    """One recording of the JEM++ family (this file, record_sadajem.py): the official training
    module run once through its `main(args)`, fed the fixed two-class batches, its informative
    initialisation handed the class Gaussians fitted to `init_state/class_images`."""

    def __init__(self, doc, official, train_script):
        self.opts, self.parser, self.auc_calls = official_run.setup(doc, official, train_script, logging_stubs=True)
        self.per_step = {}

    def prepare(self, argv, module, with_index=False):
        """Parse the official options `argv` (2 classes), import the official training module
        `module` (its functions read the module-level `args` its __main__ sets), make the fixed
        batches and hand `torch.load` the class Gaussians of their statistics images (until `run`
        ends); no checkpoint writes. Returns the module."""
        args = self.parser.parse_args(argv)
        args.n_classes = N_CLASSES
        args.pid = "record"
        dtype = np.float64 if self.opts.precision == "float64" else np.float32
        T = importlib.import_module(module)
        T.args = args
        self.args, self.T = args, T
        self.batches_px, self.batches_lab, self.stats = fixed_batches(dtype, STEPS, with_index)
        centers, covs = class_gaussians(*self.stats, dtype)
        self.restore_load = patch_torch_load(args.dataset, centers, covs)
        T.checkpoint = lambda *a, **k: None
        return T

    def start(self, script, repo, commit, note=""):
        """The golden file (metadata, with the recorder's own `note`; the class-statistics images),
        the random tape, and the capture of the official model and informative buffer
        (`capture_setup`)."""
        notes = (
            "2 classes; class Gaussians fitted (category_mean's formulas) to init_state/class_images; "
            f"{note}fresh informative samples of rows the reinit mask does not pick are stored as 0; "
            "probe/ keys hold <= 256 evenly spaced entries of the flattened tensor"
        )
        self.golden = recording.recorder_golden(
            script, repo, commit, self.opts.precision, STEPS, vars(self.args), notes=notes
        )
        self.golden.add("init_state/class_images", self.stats[0])
        self.golden.add("init_state/class_labels", self.stats[1])
        self.tape = recording.RandomTape([self.opts.official])
        self.held = capture_setup(self.T, self.golden, self.tape)

    def run(self, owner, attr, install):
        """`official_run.run_main` with `owner.attr` (the official optimizer class) tapped by `install`."""
        official_run.run_main(self.T, self.args, self.opts.precision, self.tape, owner, attr, install)
        self.restore_load()

    def finish(self, batches_px, eval_script, eval_args, out):
        """The batches (`batches_px`: the p(x) batches as the step received them), the draws
        (`store_draws`), the per-step records, the official evaluation `eval_script` with the
        official CCF of `args`, and the file `out`."""
        golden, args = self.golden, self.args
        official_run.store_batches(golden, batches_px, self.batches_lab)
        store_draws(golden, self.tape, args.reinit_freq, "init_random")
        official_run.store_steps(golden, self.per_step, STEPS)
        official_run.record_eval(
            golden,
            self.opts,
            eval_script,
            self.held["f"],
            lambda E: E.CCF(args.depth, args.width, args.norm, n_classes=N_CLASSES, model=args.model),
            self.auc_calls,
            eval_args,
            BATCH,
        )
        official_run.save(golden, out)


def main():
    run = Recording(__doc__, "/work/official/JEMPP", "train_jempp.py")
    opts = run.opts
    out = recording.output_path(opts.out, f"jempp_{opts.precision}.npz")
    import torch

    save_dir = tempfile.mkdtemp(prefix="record_jempp_")
    argv = recording.official_argv(
        {
            **official_run.SMALL_JEM,
            **small_recipe(opts.precision, save_dir),
            "model": "yopo",
            "in_steps": 5,
            "pyld_lr": 0.2,
        }
    )
    T = run.prepare(argv, "train_jempp")  # (sample_p_0 reads the module-level `args`)
    T.get_data = lambda a: (list(run.batches_px), iter(run.batches_lab), [], [])
    run.start(__file__, REPO, COMMIT)

    def install(opt):
        official_run.tap_main_step(run.golden, run.held, run.per_step, opt, STEPS, run.tape)

    run.run(torch.optim, "SGD", install)
    eval_args = recording.official_argv({**recording.SMALL_WRN, "norm": "batch", "model": "yopo"})
    run.finish(run.batches_px, "eval_jempp", eval_args, out)


if __name__ == "__main__":
    main()
