"""Helpers of the JEM-family recorders (record_jem.py, record_jempp.py, record_sadajem.py).

* `official_parser(path)`: the official script's own `argparse` parser, which it builds inside
  `if __name__ == "__main__"`: the script runs as `__main__` with `parse_args` intercepted, so the
  recorder gets the parser object (and so every default) without re-typing an option.
* `stub_modules()`: tqdm (identity) and sklearn.metrics (a rank AUROC that also keeps what it was
  asked), which the torch venv lacks; torchvision via `recording.stub_torchvision`.
* `fixed_images(...)`: real CIFAR-10 test/train images (JPEG, decoded with Pillow) and DTD textures
  mapped to [-1, 1] as the official `Normalize((.5,.5,.5), (.5,.5,.5))` does.
* `probe(array)`: a fixed subset (<= 256 evenly spaced entries) of a tensor, the per-step record of
  tensors too large to store in full at every step (README: "probe/" keys).
* `setup`, `run_main`, `tap_main_step`, `store_batches`, `store_steps`, `record_eval`: the run, tap
  and save steps the three recorders share (the official `main(args)` runs once, as written; the
  tap on its optimizer reads the step's losses, gradients, weights, slots, samples and buffer).
"""

import argparse
import importlib
import io
import os
import runpy
import sys
import types

import numpy as np

import recording

CIFAR = "/work/shared/data/cifar10_jpeg_bytes.npz"
DTD = "/work/shared/data/dtd_subset_32.npz"
PROBE_SIZE = 256
LOSSES = ("l_p_x", "l_p_y_given_x", "L", "fp", "fq")  # the loss terms of JEM's and JEM++'s main()
# The small run the three JEM-family recordings share (official option names): the small WRN, a
# replay buffer of 20, K = 2 SGLD steps, one epoch (the tap stops main() after the recorded steps).
SMALL_JEM = {**recording.SMALL_WRN, "buffer_size": 20, "n_steps": 2, "n_epochs": 1}


class _Parsed(Exception):
    pass


def official_parser(script_path):
    """Run `script_path` as `__main__` until it calls `parse_args`; return its parser."""
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def intercept(self, *args, **kwargs):
        captured["parser"] = self
        raise _Parsed()

    argparse.ArgumentParser.parse_args = intercept
    try:
        runpy.run_path(script_path, run_name="__main__")
    except _Parsed:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


def setup(doc, official, script, logging_stubs=False, more=None):
    """The recorder's options (`recording.parse_recorder_args`); the modules the torch venv lacks
    stubbed (`stub_modules`; with `logging_stubs` also matplotlib and tensorboardX), CUDA off, the
    checkout on `sys.path`. Returns the options, the official `script`'s parser and the list the
    sklearn stub appends its AUROC calls to."""
    opts = recording.parse_recorder_args(doc, official, more)
    auc_calls = []
    stub_modules(auc_calls)
    if logging_stubs:
        for name in ("matplotlib", "matplotlib.pyplot", "tensorboardX"):  # imported for logging / plots only
            sys.modules.setdefault(name, recording._Anything(name))
        sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
    recording.force_cpu()
    sys.path.insert(0, opts.official)
    return opts, official_parser(os.path.join(opts.official, script)), auc_calls


def stub_modules(auc_calls):
    import torch._dynamo  # noqa: F401  (imported before the stubs: it inspects every module's __spec__)

    recording.stub_torchvision()
    tqdm = types.ModuleType("tqdm")
    tqdm.tqdm = lambda it=None, *a, **k: it
    sys.modules["tqdm"] = tqdm
    sklearn = types.ModuleType("sklearn")
    metrics = types.ModuleType("sklearn.metrics")

    def roc_auc_score(labels, scores):
        labels, scores = np.asarray(labels), np.asarray(scores)
        pos, neg = scores[labels == 1], scores[labels == 0]
        auc = np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :])
        auc_calls.append({"labels": labels, "scores": scores, "auc": auc})
        return auc

    metrics.roc_auc_score = roc_auc_score
    sklearn.metrics = metrics
    sys.modules["sklearn"] = sklearn
    sys.modules["sklearn.metrics"] = metrics


def _decode(jpeg, offsets, rows):
    from PIL import Image

    return np.stack(
        [np.asarray(Image.open(io.BytesIO(jpeg[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")) for i in rows]
    )


def to_official(x_uint8, dtype):
    """uint8 NHWC -> the official ToTensor + Normalize(.5, .5): NCHW in [-1, 1]."""
    x = x_uint8.astype(np.float64) / 255.0
    x = (x - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(dtype)


def fixed_images(split, start, n):
    """`n` CIFAR-10 images (uint8 NHWC) and labels of `split` ("train"/"test") from row `start`."""
    d = np.load(CIFAR)
    rows = range(start, start + n)
    return _decode(d[f"{split}_jpeg"], d[f"{split}_offsets"], rows), d[f"{split}_y"][start : start + n].astype(np.int64)


def dtd_images(n):
    return np.load(DTD)["x"][:n]


def probe(array):
    flat = np.asarray(array).reshape(-1)
    if flat.size <= PROBE_SIZE:
        return flat.copy()
    return flat[np.linspace(0, flat.size - 1, PROBE_SIZE).astype(np.int64)].copy()


def run_main(T, args, precision, tape, owner, attr, install):
    """Run the official `T.main(args)` in `precision` until the tap stops it, with `owner.attr` (the
    optimizer class it builds) building the official optimizer and handing it to `install(optimizer)`
    (which puts the `OptimizerTap` on it)."""
    original = getattr(owner, attr)

    def build(*a, **k):
        optimizer = original(*a, **k)
        install(optimizer)
        return optimizer

    setattr(owner, attr, build)
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


def tap_main_step(golden, held, per_step, optimizer, steps, tape, losses=LOSSES, loss_dir="loss", keep=None):
    """`OptimizerTap` on the official `optimizer`. Before update k: the loss terms `losses` of the
    official `main()`'s frame (`step/k/<loss_dir>/<name>`; `keep`: see `recording.add_terms`), its
    samples `x_q` and, at k = 0, the gradients (`step/0/grad/`); after it: the weights
    (`unique_state`), the optimizer slots and the buffer `held["buffer"]` into `per_step[k]`
    (written by `store_steps`). Returns the tap."""
    f = held["f"]
    names = {id(p): n for n, p in f.named_parameters()}

    def before(step):
        loc = recording.frame_locals("main")
        recording.add_terms(golden, f"step/{step}/{loss_dir}", loc, losses, keep)
        per_step[step] = {"x_q": recording.to_numpy(loc["x_q"])}
        if step == 0:  # (energy_output, and JEM's f.linear, are never used by CCF: no gradient)
            recording.add_grads(golden, "step/0/grad/", f)

    def after(step):
        per_step[step]["param"] = unique_state(f)
        per_step[step]["opt"] = recording.optimizer_state(optimizer, names)
        per_step[step]["buffer"] = recording.to_numpy(held["buffer"])

    return recording.OptimizerTap(optimizer, steps, before=before, after=after, tape=tape)


def store_batches(golden, px, lab):
    """`batch/k/{x_p_d, y_p_d}` from the p(x) batches `px`, `batch/k/{x_lab, y_lab}` from the
    labelled batches `lab` (one per step)."""
    for k, (p_d, labelled) in enumerate(zip(px, lab)):  # (images, labels[, indices])
        golden.add(f"batch/{k}/x_p_d", p_d[0])
        golden.add(f"batch/{k}/y_p_d", p_d[1])
        golden.add(f"batch/{k}/x_lab", labelled[0])
        golden.add(f"batch/{k}/y_lab", labelled[1])


def store_steps(golden, per_step, steps):
    """What `tap_main_step` kept: x_q (in full at the last step), probes of the weights (BN
    statistics of <= 256 entries whole), of the optimizer slots (`lr` and slot `step` in full) and
    of the buffer."""
    for k in range(steps):
        recording.add_full_at_last(golden, k, steps - 1, "x_q", per_step[k]["x_q"])
        for n, v in per_step[k]["param"].items():  # (the eval logits check the final weights in full)
            golden.add(f"step/{k}/probe/param/{n}", probe(v))
        for n, v in per_step[k]["opt"].items():
            if n == "lr" or n.endswith("/step"):
                golden.add(f"step/{k}/opt/{n}", v)
            else:
                golden.add(f"step/{k}/probe/opt/{n}", probe(v))
        golden.add(f"step/{k}/probe/state/replay_buffer", probe(per_step[k]["buffer"]))


def record_eval(golden, opts, eval_script, f, make_model, auc_calls, extra_args, batch, eval_mode=True):
    """The official evaluation module `eval_script` (its `OODAUC` with px / py / pxgrad, and the
    logits) on a fixed test batch (`batch` CIFAR-10 test images, DTD textures as OOD) with the final
    weights of `f`, loaded into `make_model(module)`; the model in eval mode as the eval_*.py `main`
    sets it (`eval_mode=False`: as built, JEM's eval_wrn_ebm.py)."""
    import torch

    E = importlib.import_module(eval_script)
    eval_parser = official_parser(os.path.join(opts.official, f"{eval_script}.py"))
    dtype = np.float64 if opts.precision == "float64" else np.float32
    x_test, y_test = fixed_images("test", 0, batch)
    x_ood = dtd_images(batch)
    x_eval = torch.tensor(to_official(x_test, dtype))
    x_fake = torch.tensor(to_official(x_ood, dtype))
    golden.add("eval/x", x_eval)
    golden.add("eval/y", y_test)
    golden.add("eval/x_ood", x_fake)
    with recording.float64_mode(opts.precision == "float64"):
        ef = make_model(E)
        ef.load_state_dict(f.state_dict())
        if eval_mode:
            ef.eval()
        golden.add("eval/logits", ef.classify(x_eval))
        loaders = []
        E.DataLoader = lambda dset, **k: loaders.pop(0)
        for score_fn in ("px", "py", "pxgrad"):
            eargs = eval_parser.parse_args(["--score_fn", score_fn, "--ood_dataset", "svhn"] + extra_args)
            eargs.debug = True  # (ExpUtils.init_env sets it; OODAUC reads it for num_workers)
            E.args = eargs  # eval_sadajem.py's OODAUC also reads its __main__'s global `args`
            loaders[:] = [[(x_eval, torch.tensor(y_test))], [(x_fake, torch.zeros(batch, dtype=torch.long))]]
            E.OODAUC(ef, eargs, "cpu")
            call = auc_calls.pop()
            golden.add(f"eval/{score_fn}/scores_in", call["scores"][:batch])
            golden.add(f"eval/{score_fn}/scores_ood", call["scores"][batch:])
            golden.add(f"eval/{score_fn}/auroc", call["auc"])


def save(golden, out):
    """Write the golden file (size limit `PARITY_MAX_BYTES`, default 4.5 MB: README "Sizes")."""
    golden.save(out, max_bytes=int(os.environ.get("PARITY_MAX_BYTES", 4_500_000)))
