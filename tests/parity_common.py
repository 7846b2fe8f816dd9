"""Shared pieces of the parity tests (tests/test_parity_*.py): golden files, draw mapping,
tolerances and the parity table of docs/parity.md.

Golden files (`tests/data/parity/<method>_<precision>.npz`) are written by the recorders of
benchmarks/parity/ (format: benchmarks/parity/README.md). The tests need no torch.

The tolerances below are the only ones the parity tests use; `render_table()` builds the table of
docs/parity.md from them and from `TABLE` (test_parity_table.py checks the page is current;
`python benchmarks/parity/table.py` rewrites it).
"""

import json
import pathlib
import re

import keras
import numpy as np
import pytest

DATA = pathlib.Path(__file__).resolve().parent / "data" / "parity"
PRECISIONS = ("float64", "float32")

# (rtol, atol) per tensor kind and precision; with the reason for every float32 value.
TOLERANCES = {
    "float64": dict.fromkeys(("forward", "loss", "grad", "weights", "slots", "bn", "samples", "eval"), (1e-10, 1e-10)),
    "float32": {
        "forward": (1e-5, 1e-5),  # one forward pass: float32 round-off of ~1e3 terms per output
        "loss": (1e-4, 1e-5),  # scalars after SGLD and several forward passes
        "grad": (1e-3, 1e-6),  # backward sums over the batch; relative error of tiny entries grows
        "weights": (1e-4, 1e-5),  # Adam steps of lr 1e-3: |update| <= lr, errors ~1e-7
        "slots": (1e-3, 1e-9),  # Adam moments inherit the gradients' relative error
        "bn": (1e-4, 1e-5),  # batch means/variances of float32 activations
        "samples": (1e-4, 1e-5),  # SGLD: K input-gradient steps of size 1 add their round-off
        "eval": (1e-4, 1e-5),  # logits and scores (the grad-norm score is a backward pass)
    },
}
FLOAT32_REASONS = {
    "forward": "one forward pass in float32",
    "loss": "scalars after SGLD and several passes",
    "grad": "backward sums; small entries lose relative precision",
    "weights": "Adam steps of at most lr",
    "slots": "moments inherit the gradients' relative error",
    "bn": "batch statistics of float32 activations",
    "samples": "K SGLD steps of size 1 accumulate round-off",
    "eval": "logits and scores, incl. one backward pass",
}


def tolerance(precision, kind):
    return TOLERANCES[precision][kind]


# ----------------------------------------------------------------------------- golden files
class Golden:
    """A golden file: arrays by key, `meta` (the JSON record), helpers to read per step."""

    def __init__(self, name, precision):
        path = DATA / f"{name}_{precision}.npz"
        if not path.exists():
            pytest.fail(f"missing golden file {path}: run the recorder (docs/parity.md)")
        with np.load(path) as d:
            self.arrays = {k: d[k] for k in d.files}
        self.meta = json.loads(str(self.arrays.pop("meta/json")))
        self.precision = precision

    def __getitem__(self, key):
        return self.arrays[key]

    def __contains__(self, key):
        return key in self.arrays

    def under(self, prefix):
        """{rest: array} of every key starting with `prefix/`."""
        p = prefix.rstrip("/") + "/"
        return {k[len(p) :]: v for k, v in self.arrays.items() if k.startswith(p)}

    def draws(self, step, kinds):
        """The recorded draws of `step` as `{our kind: [arrays]}` (NHWC), mapping each official
        label `fn@file:line:function` with `kinds`: {(fn, function): our kind or None (dropped)}.
        A draw with no entry fails the test: the official step drew something the map ignores."""
        out = {}
        labels = self.meta["draws"]
        for key in sorted(k for k in labels if k.startswith(f"draw/{step}/")):
            fn, site = labels[key].split("@", 1)
            function = site.rsplit(":", 1)[-1]
            if (fn, function) not in kinds:
                raise AssertionError(f"official draw {labels[key]} ({key}) has no keras_ebm kind")
            kind = kinds[(fn, function)]
            if kind is None:
                continue
            out.setdefault(kind, []).append(nhwc(self.arrays[key]))
        return out


def nhwc(a):
    a = np.asarray(a)
    return np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else a


def nchw(a):
    a = np.asarray(a)
    return np.transpose(a, (0, 3, 1, 2)) if a.ndim == 4 else a


def probe(array, size=256):
    """The recorders' `official_run.probe`: <= 256 evenly spaced entries of the flattened tensor."""
    flat = np.asarray(array).reshape(-1)
    if flat.size <= size:
        return flat
    return flat[np.linspace(0, flat.size - 1, size).astype(np.int64)]


# ----------------------------------------------------------------------------- comparison
class Comparer:
    """Compares tensors with the tolerance of their kind; collects every failure before failing,
    and the largest error per kind (printed on failure, handy when recording a departure)."""

    def __init__(self, precision, overrides=None):
        """`overrides`: {kind: (rtol, atol)} replacing this module's tolerances for one test; each
        needs its measured reason next to it (e.g. the official float32 run's own round-off)."""
        self.precision = precision
        self.overrides = dict(overrides or {})
        self.failures = []
        self.worst = {}

    def __call__(self, kind, name, actual, expected):
        rtol, atol = self.overrides.get(kind) or tolerance(self.precision, kind)
        actual = np.asarray(actual, np.float64)
        expected = np.asarray(expected, np.float64)
        if actual.shape != expected.shape:
            self.failures.append(f"{kind} {name}: shape {actual.shape} != official {expected.shape}")
            return
        err = np.abs(actual - expected)
        excess = err - (atol + rtol * np.abs(expected))
        worst = float(err.max()) if err.size else 0.0
        self.worst[kind] = max(self.worst.get(kind, 0.0), worst)
        if err.size and excess.max() > 0:
            i = int(np.argmax(excess))
            self.failures.append(
                f"{kind} {name}: max |diff| {worst:.3g} (rtol {rtol:g}, atol {atol:g}); at flat index "
                f"{i}: ours {actual.reshape(-1)[i]!r}, official {expected.reshape(-1)[i]!r}"
            )

    def check(self):
        if self.failures:
            raise AssertionError(
                f"{len(self.failures)} tensors differ from the official code "
                f"({self.precision}):\n  " + "\n  ".join(self.failures[:40]) + f"\nworst |diff| per kind: {self.worst}"
            )


def comparer(method, precision):
    """A `Comparer` with the tolerances `method`'s test registered in `OVERRIDES` for `precision`."""
    return Comparer(precision, OVERRIDES.get(method, {}).get(precision))


def compare_final_buffer(compare, golden, trainer, key):
    """Our replay buffer (NCHW) after the last step against the official `step/<last>/state/<key>`."""
    last = golden.meta["steps"] - 1
    compare(
        "samples",
        "replay buffer after the last step",
        nchw(np.asarray(trainer.buffer.buffer)),
        golden[f"step/{last}/state/{key}"],
    )


def assert_draws_used(replay):
    """Every official draw was replayed (`random_draws.replay`): none left over."""
    assert all(n == 0 for n in replay.remaining().values()), f"unused official draws {replay.remaining()}"


class float_precision:
    """Build and run inside: `keras.config.set_floatx(precision)` (float64: every layer, variable,
    optimizer slot and the learning rate in float64), restored on exit."""

    def __init__(self, precision):
        self.precision = precision

    # Keras caches the global dtype policy the first time it is read (DTypePolicy(floatx())): a
    # layer built inside would otherwise leave a float64 policy behind for every later test of the
    # process. The cached policy is saved and restored with floatx.

    def __enter__(self):
        from keras.src.backend.common import global_state

        self.old = keras.config.floatx()
        self.old_policy = global_state.get_global_attribute("dtype_policy", None)
        global_state.set_global_attribute("dtype_policy", None)
        keras.config.set_floatx(self.precision)
        return self

    def __exit__(self, *exc):
        from keras.src.backend.common import global_state

        keras.config.set_floatx(self.old)
        global_state.set_global_attribute("dtype_policy", self.old_policy)


# ----------------------------------------------------------------------------- a step's tensors
def option(settings, name):
    """The value after `name` in a recorded official argv (`golden.meta["settings"]`)."""
    return settings[settings.index(name) + 1]


class StepTap:
    """Catches, in an eager train_step, the loss terms (`logs`), the gradients (`grads`), the rate
    of each update (`lr`) and the chains written to the replay buffer (`samples`, if any)."""

    def __init__(self, trainer):
        self.logs, self.grads, self.lr, self.samples = [], [], [], []
        compute, apply = trainer.compute_losses, trainer.optimizer.apply

        def compute_losses(*a, **k):
            logs = compute(*a, **k)
            self.logs.append(dict(logs))
            return logs

        def apply_(grads, variables=None):
            self.grads.append([np.asarray(g) for g in grads])
            self.lr.append(float(trainer.optimizer.learning_rate))
            return apply(grads, variables)

        trainer.compute_losses, trainer.optimizer.apply = compute_losses, apply_
        buffer = getattr(trainer, "buffer", None)
        if buffer is not None:
            update = buffer.update

            def update_(idx, x):
                self.samples.append(np.asarray(x))
                return update(idx, x)

            buffer.update = update_


def compare_first_grads(compare, golden, tap, trainer, mapping, scale=1.0):
    """Step 0's gradients (`step/0/grad/<official name>`) against ours / `scale`."""
    by_var = {id(v): g for v, g in zip(trainer.trainable_variables, tap.grads[0])}
    for name, g in golden.under("step/0/grad").items():
        variable, _, to_official = mapping[name]
        compare("grad", name, to_official(by_var[id(variable)]) / scale, g)


def compare_samples(compare, golden, k, name, ours):
    """Our chains (NCHW) of step k against `step/k/state/<name>` (in full) or its probe."""
    if f"step/{k}/state/{name}" in golden:
        compare("samples", f"step {k} {name}", ours, golden[f"step/{k}/state/{name}"])
    else:
        compare("samples", f"step {k} {name}", probe(ours), golden[f"step/{k}/probe/state/{name}"])


def compare_weights_and_adam(compare, golden, k, trainer, mapping, scale=1.0):
    """Probes of the weights and Adam moments after step k (`step/k/probe/{param,opt}`) and the
    Adam step count; our moments are divided by `scale` (first) and `scale**2` (second)."""
    for name, p in golden.under(f"step/{k}/probe/param").items():
        if name in mapping:
            variable, _, to_official = mapping[name]
            compare("weights", f"step {k} {name}", probe(to_official(np.asarray(variable))), p)
    opt = trainer.optimizer
    for name, (variable, _, to_official) in mapping.items():
        i = opt._get_variable_index(variable)
        for slot, ours, factor in (("exp_avg", opt._momentums[i], scale), ("exp_avg_sq", opt._velocities[i], scale**2)):
            compare(
                "slots",
                f"step {k} {name}/{slot}",
                probe(to_official(np.asarray(ours))) / factor,
                golden[f"step/{k}/probe/opt/{name}/{slot}"],
            )
    compare(
        "slots",
        f"step {k} Adam step",
        int(opt.iterations),
        golden[f"step/{k}/probe/opt/{next(iter(mapping))}/step"].reshape(()),
    )


# ----------------------------------------------------------------------------- the parity table
COLUMNS = (
    "forward",
    "loss terms",
    "gradients",
    "weights after 3 steps",
    "BN statistics",
    "sampler / buffer",
    "queue / centres / EMA",
    "evaluation",
)
_COLUMN_KIND = {
    "forward": "forward",
    "loss terms": "loss",
    "gradients": "grad",
    "weights after 3 steps": "weights",
    "BN statistics": "bn",
    "sampler / buffer": "samples",
    "queue / centres / EMA": "weights",
    "evaluation": "eval",
}

# method -> {column: "tol" (equal within the tolerances above), "tol; <note>" (the same, with a
# documented departure or scope note), or text (a departure, n/a)}.
# Each test module fills its method's row; the cells say what the test compares.
TABLE = {}
# method -> {precision: {kind: (rtol, atol)}}: a test's own tolerances where they differ from
# TOLERANCES (reason next to them in the test); the table shows them and `Comparer` takes them.
OVERRIDES = {}
METHOD_ORDER = ("JEM", "JEM++", "SADA-JEM", "HDGE", "GMMC", "CLEL")


def register(
    method, *, weights, bn, sampler, queue, forward="tol", loss="tol", gradients="tol", evaluation="tol", float32=None
):
    """A test module's entry in the parity table: its method's cells (`TABLE`) and its own float32
    tolerances (`OVERRIDES`; `float32`: {kind: (rtol, atol)}, the reason next to them in the test).

    `weights`, `bn`, `sampler` and `queue` say what the test compares in those columns (they vary
    by method); `forward`, `loss`, `gradients` and `evaluation` are "tol" unless given: every
    parity test compares those within the tolerances.
    """
    TABLE[method] = dict(zip(COLUMNS, (forward, loss, gradients, weights, bn, sampler, queue, evaluation), strict=True))
    if float32:
        OVERRIDES[method] = {"float32": dict(float32)}


def _tol_text(kind, method=None):
    own = OVERRIDES.get(method, {})
    r64, a64 = own.get("float64", {}).get(kind) or tolerance("float64", kind)
    r32, a32 = own.get("float32", {}).get(kind) or tolerance("float32", kind)
    return f"equal within {r64:g} (f64); rtol {r32:g} / atol {a32:g} (f32)"


def render_table():
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method in METHOD_ORDER:
        row = TABLE.get(method)
        if row is None:
            lines.append(f"| {method} | " + " | ".join(["not recorded yet"] * len(COLUMNS)) + " |")
            continue
        cells = []
        for column in COLUMNS:
            cell = row.get(column, "n/a")
            if cell == "tol" or cell.startswith("tol; "):
                cell = _tol_text(_COLUMN_KIND[column], method) + cell[len("tol") :]
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLE_BEGIN = "<!-- parity table: generated by benchmarks/parity/table.py from tests/parity_common.py -->"
TABLE_END = "<!-- end of parity table -->"


def table_in(text):
    m = re.search(re.escape(TABLE_BEGIN) + r"\n(.*?)\n" + re.escape(TABLE_END), text, re.S)
    return None if m is None else m.group(1)
