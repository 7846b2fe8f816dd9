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

import contextlib
import inspect
import json
import os
import random
import sys
import types

import numpy as np
import torch


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
    names = ["torchvision", "torchvision.transforms", "torchvision.datasets", "torchvision.utils",
             "torchvision.models", "torchvision.transforms.functional"]
    mods = {n: _Anything(n) for n in names}
    for n, m in mods.items():
        if "." in n:
            parent, child = n.rsplit(".", 1)
            setattr(mods[parent], child, m)
        sys.modules.setdefault(n, m)
    mods["torchvision.utils"].save_image = lambda *a, **k: None
    return mods["torchvision"]


def force_cpu():
    torch.cuda.is_available = lambda: False
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self


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
_TORCH_FUNCS = ("randn", "rand", "randint", "randn_like", "rand_like", "randint_like", "randperm",
                "normal", "bernoulli", "multinomial", "poisson")
_TENSOR_METHODS = ("uniform_", "normal_", "random_", "bernoulli_", "exponential_", "geometric_",
                   "log_normal_", "cauchy_")
_NUMPY_FUNCS = ("rand", "randn", "randint", "random", "choice", "permutation", "shuffle", "uniform",
                "normal", "beta", "binomial")
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
                return f"{os.path.relpath(path, next(r for r in self.roots if path.startswith(r + os.sep)))}:{info.lineno}:{info.function}"
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


# ----------------------------------------------------------------------------- golden file
class Golden:
    """Arrays by key plus a JSON metadata record, written as one compressed npz (see README.md)."""

    def __init__(self, **meta):
        self.arrays = {}
        self.meta = dict(meta)

    def add(self, key, value):
        if key in self.arrays:
            raise KeyError(f"golden key {key!r} written twice")
        self.arrays[key] = to_numpy(value)

    def add_all(self, prefix, mapping):
        for k, v in mapping.items():
            self.add(f"{prefix}/{k}", v)

    def save(self, path, max_bytes=2_500_000):
        self.meta.setdefault("torch_version", torch.__version__)
        arrays = dict(self.arrays)
        arrays["meta/json"] = np.asarray(json.dumps(self.meta, sort_keys=True, default=str))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        np.savez_compressed(path, **arrays)
        size = os.path.getsize(path)
        print(f"wrote {path}: {len(arrays)} arrays, {size / 1e6:.2f} MB")
        if size > max_bytes:
            raise SystemExit(f"{path} is {size / 1e6:.2f} MB, over the {max_bytes / 1e6:.1f} MB budget: "
                             "use a smaller network, batch or buffer")
        return path
