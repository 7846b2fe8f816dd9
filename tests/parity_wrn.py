"""The replay loop shared by the parity tests of the WideResNet JEM family (JEM++, SADA-JEM):
load the golden run's initial state into a built trainer, replay the official draws into our
`train_step`, and compare losses, first-step gradients, weights, BN statistics, optimizer slots,
samples, buffer and the official evaluation (see tests/test_parity_jempp.py for the settings).
"""

import numpy as np
import tensorflow as tf

import parity_common as pc
from keras_ebm import convert, random_draws
from keras_ebm.convert.wrn import wrn_weight_map, yopo_canonical
from keras_ebm.evaluation.metrics import ood_metrics
from keras_ebm.optim import TorchSGD
from keras_ebm.optim.schedules import LinearWarmup
from keras_ebm.sampling import InformativeInitializer
from keras_ebm.sampling.initializers import class_gaussian_statistics
from keras_ebm.stateless_scope import discard_updates

# Official draw (function, enclosing official function) -> keras_ebm draw kind: the sampler of the
# official JEM code (wgrathwohl/JEM), which the HDGE code reuses.
JEM_DRAWS = {
    ("torch.randint", "sample_p_0"): "buffer_index",
    ("Tensor.uniform_", "init_random"): "init_uniform",
    ("torch.rand", "sample_p_0"): "reinit",
    ("torch.randn_like", "sample_q"): "sgld_noise",
}
_GAUSSIANS = {}  # (class images, labels, order) -> fitted statistics, shared by the tests of a session


class Tap:
    """Catches what one `train_step` computes: `out["logs"]` (every call of `compute_losses`: SAM
    calls it twice), `out["grads"]` (the gradients the optimizer applies) and `out["samples"]` (the
    SGLD samples written to the buffer), as tensors; `step(batch)` runs one step as a
    `tf.function` (traced once, then called per recorded step; eager steps would rebuild the
    backward function of the SGLD loop at every call) and returns them as NumPy arrays. A test
    may add entries to `out` from its own wrappers (SADA-JEM: the first-pass gradients)."""

    def __init__(self, trainer):
        self.out = {}
        compute, apply, update = trainer.compute_losses, trainer.optimizer.apply, trainer.buffer.update

        def compute_losses(*a, **k):
            logs = compute(*a, **k)
            self.out.setdefault("logs", []).append(dict(logs))
            return logs

        def apply_(grads, variables=None):
            self.out["grads"] = list(grads)
            return apply(grads, variables)

        def update_(idx, x):
            self.out["samples"] = x
            return update(idx, x)

        trainer.compute_losses, trainer.optimizer.apply, trainer.buffer.update = compute_losses, apply_, update_

        def run(batch):
            self.out = {}
            trainer.train_step(batch)
            return self.out

        self._run = tf.function(run)

    def step(self, batch):
        return tf.nest.map_structure(np.asarray, self._run(batch))


def step_draws(golden, kinds, stacked=("init_class", "init_normal")):
    """{kind: [arrays]} of every recorded step; per-sample draws of a `stacked` kind (the official
    loop draws one class and one Gaussian vector per sample) become one [B, ...] array per step."""
    draws = {}
    for k in range(golden.meta["steps"]):
        for kind, arrays in golden.draws(k, kinds).items():
            if kind in stacked:
                arrays = [np.stack(arrays)]
            draws.setdefault(kind, []).extend(arrays)
    return draws


def informative_initializer(golden, factor_order="chw"):
    """`InformativeInitializer` fitted (float64 factors) to the golden file's class images, in the
    golden precision. The JEM++ and SADA-JEM files of both precisions store the same images, so the
    two 3072 x 3072 Cholesky factorisations run once per session; later initialisers get the
    statistics through `from_config` + `set_statistics`, the path a reloaded `.keras` file takes."""
    images, labels = golden["init_state/class_images"], golden["init_state/class_labels"]
    n_classes = golden.meta["settings"]["n_classes"]
    key = (images.tobytes(), labels.tobytes(), factor_order)
    if key not in _GAUSSIANS:
        mean, cov = class_gaussian_statistics((images, labels), n_classes, (-1.0, 1.0), factor_order=factor_order)
        _GAUSSIANS[key] = InformativeInitializer(
            mean, cov, jitter=1e-4, factor_order=factor_order, dtype="float64"
        ).get_statistics()
    init = InformativeInitializer.from_config(
        {
            "pixel_range": [-1.0, 1.0],
            "jitter": 1e-4,
            "factor_order": factor_order,
            "dtype": golden.precision,
            "num_classes": n_classes,
            "dim": int(images[0].size),
        }
    )
    init.set_statistics(**_GAUSSIANS[key])
    return init


def buffer_options(golden, factor_order="chw"):
    """The replay-buffer options of the recorded JEM++ / SADA-JEM run: its size, its re-initialisation
    rate and the informative initialiser (`informative_initializer`)."""
    s = golden.meta["settings"]
    initializer = informative_initializer(golden, factor_order=factor_order)
    return dict(buffer_size=s["buffer_size"], reinit_prob=s["reinit_freq"], initializer=initializer)


def warmup_sgd(settings, from_zero):
    """The official SGD (momentum 0.9) with its linear warm-up of the recorded `settings`."""
    lr = LinearWarmup(settings["lr"], settings["warmup_iters"], from_zero=from_zero)
    return TorchSGD(learning_rate=lr, momentum=0.9)


def load_official_state(trainer, golden, method):
    convert.convert_official(method, golden.under("init"), trainer, load_buffer=False)
    trainer.buffer.buffer.assign(pc.nhwc(golden["init_state/replay_buffer"]))
    trainer.build_optimizers()


def compile_and_load(trainer, golden, method, optimizer):
    """Compile `trainer` with `optimizer`, build it (in the global float dtype) and load the official
    initial weights and replay buffer (`load_official_state`). Returns the trainer."""
    trainer.compile(optimizer=optimizer)
    trainer(tf.zeros((1, 32, 32, 3), pc.keras.config.floatx()))
    load_official_state(trainer, golden, method)
    return trainer


def replay(trainer, golden, draws, compare, losses, slots, weight_decay=0.0, batches=None, tap_hook=None):
    """Run every recorded step through `trainer.train_step` with the official draws and compare.

    losses: {official loss name: function(first-pass logs) -> our value}.
    slots: {official slot name: function(optimizer, variable) -> our slot variable}.
    weight_decay: the coupled decay the official optimizer adds inside its step (its recorded
        `.grad` excludes it; our tapped gradients include it, so it is subtracted here).
    batches: function(k) -> our batch of step k (default: ((x_lab, y_lab), (x_p_d, y_p_d))).
    tap_hook: function(tap), called once the `Tap` is installed (to add wrappers writing `tap.out`).
    Returns the per-step `Tap` outputs (NumPy).
    """
    steps = golden.meta["steps"]
    mapping = wrn_weight_map(trainer.network)
    # The YOPO network's first names of shared modules are aliases (f.layer_one, f.other_layers).
    mapping.update(
        {
            alias: mapping[canonical]
            for alias in _official_names(golden)
            if (canonical := yopo_canonical(alias)) in mapping
        }
    )
    init = {name: np.asarray(v) for name, (v, _, _) in mapping.items()}  # (for the weight decay)
    with random_draws.replay(draws) as replayed:
        tap = Tap(trainer)
        if tap_hook is not None:
            tap_hook(tap)
        outs = []
        for k in range(steps):
            if batches is None:
                batch = (
                    (pc.nhwc(golden[f"batch/{k}/x_lab"]), golden[f"batch/{k}/y_lab"]),
                    (pc.nhwc(golden[f"batch/{k}/x_p_d"]), golden[f"batch/{k}/y_p_d"]),
                )
            else:
                batch = batches(k)
            out = tap.step(batch)
            outs.append(out)
            logs = out["logs"][0]
            for name, ours in losses.items():
                compare("loss", f"step {k} {name}", ours(logs), golden[f"step/{k}/loss/{name}"])
            if k == 0:
                by_var = {id(v): g for v, g in zip(trainer.trainable_variables, out["grads"])}
                for name, g in golden.under("step/0/grad").items():
                    variable, to_keras, to_official = mapping[name]
                    ours = to_official(by_var[id(variable)] - weight_decay * init[name])
                    compare("grad", name, ours, g)
            for name, p in golden.under(f"step/{k}/probe/param").items():
                if name.endswith("num_batches_tracked") or name not in mapping:
                    continue
                variable, _, to_official = mapping[name]
                kind = "bn" if ".running_" in name else "weights"
                compare(kind, f"step {k} {name}", pc.probe(to_official(np.asarray(variable))), p)
            opt = trainer.optimizer
            for key, official in golden.under(f"step/{k}/probe/opt").items():
                name, slot = key.rsplit("/", 1)
                variable, _, to_official = mapping[name]
                compare(
                    "slots", f"step {k} {key}", pc.probe(to_official(np.asarray(slots[slot](opt, variable)))), official
                )
            schedule = opt._learning_rate
            lr = schedule(k) if callable(schedule) else schedule
            compare("slots", f"step {k} learning rate", np.asarray(lr), golden[f"step/{k}/opt/lr"])
            x_q = pc.nchw(out["samples"])
            if f"step/{k}/state/x_q" in golden:
                compare("samples", f"step {k} x_q", x_q, golden[f"step/{k}/state/x_q"])
            else:
                compare("samples", f"step {k} x_q", pc.probe(x_q), golden[f"step/{k}/probe/state/x_q"])
            _compare_buffer(trainer, golden, draws, compare, k, x_q)
        assert all(n == 0 for n in replayed.remaining().values()), f"unused official draws {replayed.remaining()}"
    return outs


def _official_names(golden):
    names = set(golden.under("step/0/grad"))
    for k in range(golden.meta["steps"]):
        names |= set(golden.under(f"step/{k}/probe/param"))
        names |= {n.rsplit("/", 1)[0] for n in golden.under(f"step/{k}/probe/opt")}
    return names


def _compare_buffer(trainer, golden, draws, compare, k, x_q):
    ours_buffer = pc.probe(pc.nchw(np.asarray(trainer.buffer.buffer)))
    official_buffer = golden[f"step/{k}/probe/state/replay_buffer"]
    idx = draws["buffer_index"][k]
    rows = pc.probe(np.repeat(np.arange(trainer.buffer.size), x_q[0].size))
    # A row drawn twice in one step: PyTorch's `buffer[inds] = x` keeps an unspecified one of its
    # samples (documented departure, docs/parity.md); such rows are left out of the comparison.
    twice = [int(r) for r in idx if np.sum(idx == r) > 1]
    keep = ~np.isin(rows, twice)
    compare("samples", f"step {k} replay buffer", ours_buffer[keep], official_buffer[keep])


def compare_eval(trainer, golden, compare, pxgrad_first_only=False):
    """The official evaluation (logits, OOD scores px / py / pxgrad and their AUROC) on the fixed
    test batch with the final weights (BN in inference mode, as the official `f.eval()`).

    `pxgrad_first_only`: the official score differentiates `f(x)[0].sum()` (sndnyang/SADAJEM
    eval_sadajem.py `OODAUC`), the first sample's log p only, so every other sample's gradient
    (BN in eval mode) and score is 0: our per-sample score is compared on the first sample, the
    official zeros are checked, and the AUROC (of a score that is 0 for 7 of 8 images) is not."""
    x_eval, x_ood = pc.nhwc(golden["eval/x"]), pc.nhwc(golden["eval/x_ood"])
    compare("eval", "logits", trainer(x_eval, training=False), golden["eval/logits"])
    ours = {"px": "log_px", "py": "max_softmax", "pxgrad": "grad_norm"}
    s_in, s_ood = trainer.scores(x_eval), trainer.scores(x_ood)
    for official, name in ours.items():
        if official == "pxgrad" and pxgrad_first_only:
            for split, scores in (("in", s_in), ("ood", s_ood)):
                recorded = golden[f"eval/pxgrad/scores_{split}"]
                assert np.all(recorded[1:] == 0), "the official grad-norm score is no longer first-sample-only"
                compare("eval", f"score pxgrad ({split}, first sample)", np.asarray(scores[name])[:1], recorded[:1])
            continue
        compare("eval", f"score {official}", s_in[name], golden[f"eval/{official}/scores_in"])
        compare("eval", f"score {official} (OOD)", s_ood[name], golden[f"eval/{official}/scores_ood"])
        auroc = ood_metrics(np.asarray(s_in[name]), np.asarray(s_ood[name]))["auroc"]
        compare("eval", f"AUROC {official}", auroc, golden[f"eval/{official}/auroc"])


def compare_forward(trainer, golden, compare, x=None):
    """The converted initial network against the official first forward: the mean logsumexp of the
    first p(x) batch in train mode (batch statistics; the moving-statistics update is discarded)."""
    with discard_updates():
        logits = trainer.network(pc.nhwc(golden["batch/0/x_p_d"]) if x is None else x, training=True)
    compare("forward", "fp (step 0, train-mode BN)", np.mean(tf.reduce_logsumexp(logits, -1)), golden["step/0/loss/fp"])
