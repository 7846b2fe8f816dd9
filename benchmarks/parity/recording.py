"""Shared machinery of the parity recorders: run an official PyTorch implementation unchanged and tape it.

Run by hand with PyTorch (a CPU build is enough); never imported by keras_ebm or by its tests.
A recorder (``record_<method>.py`` beside this file) imports the official module from a checkout
at the commit it names, replaces what touches the outside world (data loaders, CUDA, logging,
plotting, checkpoint files) and lets the official step run as written. This module supplies:

* `stub_torchvision()`: the official scripts import torchvision only for datasets, transforms and
  `save_image`; the PyPI torchvision does not import against a CPU torch, so a permissive stub
  stands in for it (the recorder feeds fixed batches, so no transform runs).
* `force_cpu()`: `.cuda()` becomes a no-op and `torch.cuda.is_available()` False.
* `float64_mode()`: the default dtype becomes float64 and `torch.FloatTensor(...)` (which some
  official code calls to allocate) allocates float64, so the whole step runs in float64.
* `RandomTape`: wraps every random-number function of torch, NumPy and `random` that the official
  code may call, and records each draw's result, in order, with its call site in the official code
  (file:line:function) and the step it belongs to. The code under test draws exactly what it
  would have drawn; the tape only watches.
* `OptimizerTap`: wraps `optimizer.step()` of the official optimizer: before the update it reads
  the gradients and (through the caller's frame) the loss terms the official step computed as
  local variables; after it, the weights, the optimizer slots and whatever else the recorder
  asks for; after `n_steps` updates it raises `StopRecording`, which ends the official main loop.
* `Golden`: collects arrays under the keys of the golden-file format (README.md beside this file)
  and writes them as one compressed `.npz`.
"""

import argparse
import contextlib
import importlib.machinery
import inspect
import json
import os
import random
import sys
import types

import numpy as np
import torch

sys.dont_write_bytecode = True  # never write __pycache__ into the official checkouts
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StopRecording(Exception):
    """Raised from inside the official loop once the recorded steps are done."""


# ----------------------------------------------------------------------------- environment
class _Anything(types.ModuleType):
    """A module whose every attribute is a do-nothing callable class (for the torchvision stub)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        class Dummy:
            def __init__(self, *args, **kwargs):
                self.args, self.kwargs = args, kwargs

            def __call__(self, x=None, *args, **kwargs):
                return x

        Dummy.__name__ = name
        return Dummy


def stub_torchvision():
    """Put a permissive `torchvision` (transforms, datasets, utils, models) in `sys.modules`."""
    names = [
        "torchvision",
        "torchvision.transforms",
        "torchvision.datasets",
        "torchvision.utils",
        "torchvision.models",
        "torchvision.transforms.functional",
    ]
    mods = {n: _Anything(n) for n in names}
    for n, m in mods.items():
        m.__spec__ = importlib.machinery.ModuleSpec(n, None)  # torch._dynamo's find_spec needs one
    for n, m in mods.items():
        if "." in n:
            parent, child = n.rsplit(".", 1)
            setattr(mods[parent], child, m)
        sys.modules.setdefault(n, m)
    mods["torchvision.utils"].save_image = lambda *a, **k: None
    return mods["torchvision"]


class Whatever:
    """Accepts any call, attribute, item (get and set) and 2-way unpacking; does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return Whatever()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Whatever()

    def __getitem__(self, key):
        return Whatever()

    def __setitem__(self, key, value):
        pass

    def __iter__(self):
        return iter((Whatever(), Whatever()))


class _WhateverModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Whatever()


def stub_modules(*names):
    """Do-nothing stand-ins for plotting libraries the official code imports (matplotlib, seaborn, ...)."""
    for n in names:
        parts = n.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in sys.modules:
                sys.modules[sub] = _WhateverModule(sub)
                sys.modules[sub].__spec__ = importlib.machinery.ModuleSpec(sub, None)
                if i > 1:
                    setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], sys.modules[sub])


def import_real_torchvision():
    """Import the installed torchvision for its pure-Python models (e.g. `models.resnet18`).

    A torchvision wheel built for another torch fails at import while registering the fake
    (meta) kernels of its C++ operators (`operator torchvision::nms does not exist`); the models
    never call those operators, so the meta-registration module is skipped.
    """
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision  # noqa: PLC0415

    return torchvision


def load_cifar10(split, indices, path="/work/shared/data/cifar10_jpeg_bytes.npz"):
    """Real CIFAR-10 images `[n, 32, 32, 3]` uint8 (JPEG-decoded with Pillow) and labels, by index."""
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    data = np.load(path)
    raw, offsets, labels = data[f"{split}_jpeg"], data[f"{split}_offsets"], data[f"{split}_y"]
    images = [
        np.asarray(Image.open(io.BytesIO(raw[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")) for i in indices
    ]
    return np.stack(images), labels[np.asarray(indices)].astype(np.int64)


def image_tensor(x_uint8, center=True):
    """uint8 NHWC images -> NCHW tensor of the default dtype, in [-1, 1] as the official
    `Normalize((.5, .5, .5), (.5, .5, .5))` maps them (`center=False`: [0, 1], `ToTensor` alone)."""
    x = x_uint8.transpose(0, 3, 1, 2) / 255.0
    if center:
        x = (x - 0.5) / 0.5
    return torch.tensor(x, dtype=torch.get_default_dtype())


def cifar10_tensors(split, indices, center=True):
    """`load_cifar10` as torch tensors: images by `image_tensor`, int64 labels."""
    x, y = load_cifar10(split, indices)
    return image_tensor(x, center), torch.tensor(y)


class FixedLoader:
    """Stands in for an official DataLoader: yields the given batches in order (and `__next__`
    cycles them, for loaders the official code wraps in an infinite `cycle`). `on_iter()` runs when
    the official loop first asks for an iterator -- inside `main()`, after the model and optimizer
    exist -- so a recorder can pick them from `frame_locals` and install its taps there."""

    def __init__(self, batches, on_iter=None, per_epoch=None):
        self.batches, self.on_iter, self._next = list(batches), on_iter, 0
        self.per_epoch, self._epoch = per_epoch, 0  # per_epoch=n: each `iter()` yields the next n batches

    def __len__(self):
        return len(self.batches) if self.per_epoch is None else self.per_epoch

    def __iter__(self):
        if self.on_iter is not None:
            on_iter, self.on_iter = self.on_iter, None
            on_iter()
        if self.per_epoch is None:
            return iter(list(self.batches))
        start, self._epoch = self._epoch, self._epoch + 1
        return iter(self.batches[start * self.per_epoch : (start + 1) * self.per_epoch])

    def __next__(self):
        batch = self.batches[self._next % len(self.batches)]
        self._next += 1
        return batch


def force_cpu():
    torch.cuda.is_available = lambda: False
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self


def use_checkout(official, *stubs, torchvision_stub=True):
    """Ready the official checkout `official` to be imported and run: torchvision (`stub_torchvision`,
    unless the recorder imports the real one) and the modules `stubs` (`stub_modules`) stubbed, CUDA
    off (`force_cpu`), its real path first on `sys.path`. Returns that path."""
    root = os.path.realpath(official)
    if torchvision_stub:
        stub_torchvision()
    stub_modules(*stubs)
    force_cpu()
    sys.path.insert(0, root)
    return root


@contextlib.contextmanager
def float64_mode(enabled=True):
    """Run the official code in float64: default dtype, and `torch.FloatTensor(*sizes)` allocations."""
    if not enabled:
        yield
        return
    old_default, old_ft = torch.get_default_dtype(), torch.FloatTensor

    def float_tensor(*args, **kwargs):
        if args and all(isinstance(a, int) for a in args):
            return torch.empty(*args, dtype=torch.float64)
        return torch.tensor(*args, dtype=torch.float64, **kwargs)

    torch.set_default_dtype(torch.float64)
    torch.FloatTensor = float_tensor
    try:
        yield
    finally:
        torch.set_default_dtype(old_default)
        torch.FloatTensor = old_ft


# ----------------------------------------------------------------------------- helpers
# The small WideResNet every recording of a WRN model trains (official option names).
SMALL_WRN = {"depth": 10, "width": 1}


def official_argv(options, script=None):
    """The command line of an official script (`script`, if given, first) from `options`: official
    option name -> value, in order. A value gives `--name str(value)`; True a bare `--name` (the
    official `store_true` flags); None or False leaves the option out (its official default)."""
    argv = [] if script is None else [script]
    for name, value in options.items():
        if value is None or value is False:
            continue
        argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return argv


def parse_recorder_args(doc, official, more=None):
    """The recorder's command line: `--official` (the checkout, default `official`), `--precision`,
    the recorder's own options (`more(parser)`), `--out` (default: `output_path`)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--official", default=official)
    p.add_argument("--precision", choices=["float64", "float32"], default="float64")
    if more is not None:
        more(p)
    p.add_argument("--out", default=None)
    return p.parse_args()


def output_path(out, name):
    """Where a recording goes: `--out`, else tests/data/parity/<name> of this checkout."""
    return os.path.abspath(out) if out else os.path.join(REPO, "tests", "data", "parity", name)


def to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().copy()
    return np.asarray(x).copy()


def frame_locals(function_name, depth_limit=50):
    """The local variables of the nearest caller frame running `function_name` (e.g. "main")."""
    frame = inspect.currentframe()
    for _ in range(depth_limit):
        frame = frame.f_back
        if frame is None:
            break
        if frame.f_code.co_name == function_name:
            return dict(frame.f_locals)
    raise LookupError(f"no frame of {function_name!r} on the stack")


# ----------------------------------------------------------------------------- random tape
_TORCH_FUNCS = (
    "randn",
    "rand",
    "randint",
    "randn_like",
    "rand_like",
    "randint_like",
    "randperm",
    "normal",
    "bernoulli",
    "multinomial",
    "poisson",
)
_TENSOR_METHODS = (
    "uniform_",
    "normal_",
    "random_",
    "bernoulli_",
    "exponential_",
    "geometric_",
    "log_normal_",
    "cauchy_",
)
_NUMPY_FUNCS = (
    "rand",
    "randn",
    "randint",
    "random",
    "choice",
    "permutation",
    "shuffle",
    "uniform",
    "normal",
    "beta",
    "binomial",
)
_RANDOM_FUNCS = ("random", "randint", "choice", "shuffle", "sample", "uniform", "gauss", "randrange")


class RandomTape:
    """Record every random draw the official code makes, in order, per step.

    `roots` are the directories of the official checkout: a draw's call site is the innermost
    frame inside them (torch-internal frames such as `nn.init` are skipped, so a draw made by
    `nn.init.kaiming_normal_` called from the official model is sited at the model's line).
    Draws made while `step` is None belong to the set-up (weights, buffer) and are kept under
    "setup" only when `keep_setup=True`.
    """

    def __init__(self, roots, keep_setup=False):
        self.roots = [os.path.realpath(r) for r in roots]
        self.keep_setup = keep_setup
        self.step = None
        self.draws = []  # (step, name, site, array)
        self._patches = []
        self._depth = 0

    def _site(self):
        for info in inspect.stack()[2:]:
            path = os.path.realpath(info.filename)
            if any(path.startswith(r + os.sep) for r in self.roots):
                root = next(r for r in self.roots if path.startswith(r + os.sep))
                return f"{os.path.relpath(path, root)}:{info.lineno}:{info.function}"
        return "outside"

    def _record(self, name, value):
        if self.step is None and not self.keep_setup:
            return
        self.draws.append(("setup" if self.step is None else self.step, name, self._site(), to_numpy(value)))

    def _wrap(self, owner, attr, name, result_is_arg0=False):
        original = getattr(owner, attr)
        tape = self

        def wrapper(*args, **kwargs):
            tape._depth += 1
            try:
                out = original(*args, **kwargs)
            finally:
                tape._depth -= 1
            if tape._depth == 0:
                value = args[0] if result_is_arg0 else out
                if isinstance(value, (torch.Tensor, np.ndarray, int, float, list)):
                    tape._record(name, value)
            return out

        setattr(owner, attr, wrapper)
        self._patches.append((owner, attr, original))

    def watch(self, owner, attr, name):
        """Record the *output* of `owner.attr(...)` as one draw (e.g. a random augmentation: its
        result is what a replay injects); the draws made inside it are not recorded one by one."""
        self._wrap(owner, attr, name)

    def __enter__(self):
        for f in _TORCH_FUNCS:
            if hasattr(torch, f):
                self._wrap(torch, f, f"torch.{f}")
        for m in _TENSOR_METHODS:
            self._wrap(torch.Tensor, m, f"Tensor.{m}", result_is_arg0=True)
        for f in _NUMPY_FUNCS:
            self._wrap(np.random, f, f"np.random.{f}", result_is_arg0=(f == "shuffle"))
        for f in _RANDOM_FUNCS:
            self._wrap(random, f, f"random.{f}", result_is_arg0=(f == "shuffle"))
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self._patches = []
        return False

    def zero_unpicked(self, draw_site, mask_name, picked):
        """Zero the rows of every `draw_site` draw (e.g. "Tensor.uniform_@...init_random") that the
        next `mask_name` draw (e.g. "torch.rand") does not pick (`picked(mask_draw)` -> bool rows):
        fresh re-initialisation samples that never enter the step, stored as 0 (they compress)."""
        for i, (step, name, site, value) in enumerate(self.draws):
            if f"{name}@{site}".startswith(draw_site):
                nxt = next(d for d in self.draws[i + 1 :] if d[1] == mask_name)
                rows = picked(nxt[3]).reshape((-1,) + (1,) * (value.ndim - 1))
                self.draws[i] = (step, name, site, np.where(rows, value, 0).astype(value.dtype))

    def to_golden(self, golden):
        """Store the draws as `draw/<step>/<nnn>` arrays and their labels in the metadata."""
        counters, labels = {}, {}
        for step, name, site, value in self.draws:
            n = counters.get(step, 0)
            counters[step] = n + 1
            golden.add(f"draw/{step}/{n:03d}", value)
            labels[f"draw/{step}/{n:03d}"] = f"{name}@{site}"
        golden.meta["draws"] = labels


# ----------------------------------------------------------------------------- optimizer tap
class OptimizerTap:
    """Wrap `optimizer.step` to record each official update; stop after `n_steps`.

    `before(k)` runs just before update k (gradients are in `.grad`; the caller's frame holds the
    loss terms), `after(k)` right after it. `tape.step` is advanced after every update, so the
    draws of step k are those made between update k-1 and update k.
    """

    def __init__(self, optimizer, n_steps, before=None, after=None, tape=None):
        self.optimizer, self.n_steps, self.before, self.after, self.tape = optimizer, n_steps, before, after, tape
        self.k = 0
        original = optimizer.step

        def step(*args, **kwargs):
            if self.before:
                self.before(self.k)
            out = original(*args, **kwargs)
            if self.after:
                self.after(self.k)
            self.k += 1
            if self.tape is not None:
                self.tape.step = self.k
            if self.k >= self.n_steps:
                raise StopRecording()
            return out

        optimizer.step = step


def run_official_script(argv, tape):
    """Run the official script `argv[0]` as `__main__` with `sys.argv = argv` until `StopRecording`.

    The script's own argument parser, seeding and `main()` run; `sys.stdout` (which some scripts
    redirect into their log directory) is restored afterwards and `tape.step` reset to None.
    """
    import runpy  # noqa: PLC0415

    stdout, sys.argv = sys.stdout, list(argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except StopRecording:
        pass
    finally:
        sys.stdout = stdout
        tape.step = None


def optimizer_state(optimizer, param_names):
    """{"<param name>/<slot>": array} for every slot of a torch optimizer (`param_names`: id -> name)."""
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for slot, value in optimizer.state.get(p, {}).items():
                out[f"{param_names[id(p)]}/{slot}"] = to_numpy(value)
        out_lr = group.get("lr")
    out["lr"] = np.asarray(out_lr)
    return out


def add_terms(golden, prefix, loc, names, keep=None):
    """`<prefix>/<name>` for each of `names` in `loc` (the official step's local variables, e.g. its
    loss terms): all of them must be there; with `keep`, those there whose value `keep` accepts."""
    for n in names:
        if keep is None or (n in loc and keep(loc[n])):
            golden.add(f"{prefix}/{n}", loc[n])


def add_grads(golden, prefix, module):
    """`<prefix><name>`: the `.grad` of every parameter of `module` that has one (just before the
    update; parameters the step never uses have none)."""
    for n, p in module.named_parameters():
        if p.grad is not None:
            golden.add(f"{prefix}{n}", p.grad)


def add_lr(golden, key, optimizer):
    """The learning rate of the optimizer's first parameter group (as the update uses it)."""
    golden.add(key, np.asarray(optimizer.param_groups[0]["lr"]))


def add_step_probes(golden, k, state_dict, optimizer, param_names, prefix=""):
    """`step/k/probe/param/<name>` of every `state_dict` entry and `step/k/probe/opt/<prefix><name>/<slot>`
    of every optimizer slot: the per-step record of weights and slots (README "probe/")."""
    from official_run import probe  # noqa: PLC0415 (official_run imports this module)

    for n, v in state_dict.items():
        golden.add(f"step/{k}/probe/param/{n}", probe(v))
    for n, v in optimizer_state(optimizer, param_names).items():
        if n != "lr":
            golden.add(f"step/{k}/probe/opt/{prefix}{n}", probe(v))


def add_full_at_last(golden, k, last, name, value):
    """`step/k/state/<name>` in full at the last step, its probe (`step/k/probe/state/<name>`) before."""
    from official_run import probe  # noqa: PLC0415

    if k == last:
        golden.add(f"step/{k}/state/{name}", value)
    else:
        golden.add(f"step/{k}/probe/state/{name}", probe(value))


# ----------------------------------------------------------------------------- golden file
class Golden:
    """Arrays by key plus a JSON metadata record, written as one compressed npz (see README.md)."""

    def __init__(self, **meta):
        self.arrays = {}
        self.meta = dict(meta)

    def add(self, key, value):
        if key in self.arrays:
            raise KeyError(f"golden key {key!r} written twice")
        if value is None:
            raise ValueError(f"golden key {key!r}: value is None (a parameter without .grad?)")
        self.arrays[key] = to_numpy(value)

    def add_all(self, prefix, mapping):
        for k, v in mapping.items():
            self.add(f"{prefix}/{k}", v)

    def check_precision(self, precision):
        """Every floating array (bar 0-d Python numbers such as lr or an AUROC) has the run's dtype."""
        want = np.float64 if precision == "float64" else np.float32
        bad = [k for k, v in self.arrays.items() if v.dtype.kind == "f" and v.ndim > 0 and v.dtype != want]
        if bad:
            raise SystemExit(f"not {precision}: {bad[:10]}")

    def save(self, path, max_bytes=2_500_000):
        self.meta.setdefault("torch_version", torch.__version__)
        arrays = dict(self.arrays)
        arrays["meta/json"] = np.asarray(json.dumps(self.meta, sort_keys=True, default=str))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        np.savez_compressed(path, **arrays)
        size = os.path.getsize(path)
        print(f"wrote {path}: {len(arrays)} arrays, {size / 1e6:.2f} MB")
        if size > max_bytes:
            raise SystemExit(
                f"{path} is {size / 1e6:.2f} MB, over the {max_bytes / 1e6:.1f} MB budget: "
                "use a smaller network, batch or buffer"
            )
        return path


def recorder_golden(script, repo, commit, precision, steps, settings, **meta):
    """A `Golden` with the metadata every recording carries (README: `meta/json`): the official
    `repo` and `commit`, the recorder (`script`: its `__file__`), precision, steps and settings."""
    recorder = os.path.relpath(os.path.abspath(script), REPO)
    return Golden(
        repo=repo, commit=commit, recorder=recorder, precision=precision, steps=steps, settings=settings, **meta
    )


def finish(golden, tape, precision, out, max_bytes):
    """Store the tape's draws, check every float array has the run's precision, write `out`."""
    tape.to_golden(golden)
    golden.check_precision(precision)
    golden.save(out, max_bytes=max_bytes)
