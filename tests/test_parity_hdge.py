"""Parity with the official HDGE code (lhao499/HDGE 9f12b3e, train_wrn.py + model.py + eval_wrn.py).

The golden files (benchmarks/parity/record_hdge.py) hold 3 official steps of WRN-10-1 (no BN),
batch 4, logit queue K=16, temperature 0.1, Adam lr 1e-4 with a 2-step warmup, real CIFAR-10:
`hdge` (`--pyxce 1 --pxycontrast 1`) and `hdge_jem` (adds `--pxsgld 1`: JEM's p(x) term with PCD
SGLD, K=2, noise 0.01, buffer 10, reinit 0.25). Each test converts the initial weights and queue
(`keras_ebm.convert.convert_official("hdge", ...)`), builds `HDGE` with the official settings,
replays the official draws and compares the loss terms, the first gradients, the weights, Adam
moments and queue after every step (probes), the SGLD samples and buffer, and the official
evaluation (logits, OOD scores px / py / pxgrad / pxsim and their AUROC, ECE).

Weighting: the official loss is `CE + contrastive (+ p(x))`, ours `alpha * CE + (1 - alpha) *
contrastive (+ px_weight * p(x))` with alpha = px_weight = 0.5 (the paper's eq. 14 / 17), exactly
half. Halving is exact in binary floating point, so our loss, gradients and first moments are the
official ones times 0.5 (second moments times 0.25), and `TorchAdam(epsilon=0.5e-8)` makes the same
update as the official Adam(eps=1e-8) bit for bit; the test compares with those factors.
"""

import numpy as np
import pytest
import tensorflow as tf

import parity_common as pc
import parity_wrn as pw
from keras_ebm import convert, random_draws
from keras_ebm.backbones import WideResNet, build_classifier
from keras_ebm.convert.wrn import wrn_weight_map
from keras_ebm.evaluation.metrics import expected_calibration_error, ood_metrics
from keras_ebm.losses.hdge import hdge_contrastive_loss
from keras_ebm.optim import TorchAdam
from keras_ebm.optim.schedules import LinearWarmup
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers import HDGE

METHOD = "HDGE"  # the official draws: those of the JEM code (pw.JEM_DRAWS), which HDGE reuses
SCALE = 0.5  # our loss = SCALE * official loss (module docstring)

pc.register(
    METHOD,
    loss="tol; HDGE and HDGE+JEM (our weights 0.5 = the official unit weights / 2)",
    weights=(
        "tol; weights and Adam moments, 256 entries per tensor per step; warm-up from lr 0 "
        "(`LinearWarmup(from_zero=True)`)"
    ),
    bn="n/a (the recorded WRN has no BN)",
    sampler="tol (HDGE+JEM)",
    queue="tol; logit queue and pointer after every step",
    evaluation="tol; logits, px / py / pxgrad / pxsim scores and AUROC, ECE",
)


def build_trainer(golden, warmup_from_zero=True, temperature=None):
    s = golden.meta["settings"]
    jem = "--pxsgld" in s
    network = build_classifier(
        WideResNet(
            depth=int(pc.option(s, "--depth")), width=int(pc.option(s, "--width")), norm=None, input_shape=(32, 32, 3)
        ),
        10,
    )
    kwargs = {}
    if jem:
        kwargs = dict(
            px_weight=SCALE,
            buffer_size=int(pc.option(s, "--buffer_size")),
            reinit_prob=float(pc.option(s, "--reinit_freq")),
            sampler=SGLDSampler(n_steps=int(pc.option(s, "--n_steps")), step_size=1.0, noise_std=0.01),
        )
    trainer = HDGE(
        network,
        (32, 32, 3),
        10,
        alpha=SCALE,
        queue_size=int(pc.option(s, "--contrast_k")),
        temperature=temperature or float(pc.option(s, "--contrast_t")),
        queue_init="random_normal",
        seed=0,
        **kwargs,
    )
    lr = LinearWarmup(float(pc.option(s, "--lr")), int(pc.option(s, "--warmup_iters")), from_zero=warmup_from_zero)
    trainer.compile(optimizer=TorchAdam(learning_rate=lr, epsilon=SCALE * 1e-8))
    trainer(tf.zeros((1, 32, 32, 3), pc.keras.config.floatx()))
    convert.convert_official("hdge", golden.under("init"), trainer)
    if jem:
        trainer.buffer.buffer.assign(pc.nhwc(golden["init_state/replay_buffer"]))
    trainer.build_optimizers()
    return trainer


def run_parity(variant, precision, **build):
    golden = pc.Golden(variant, precision)
    compare = pc.comparer(METHOD, precision)
    steps, jem = golden.meta["steps"], "--pxsgld" in golden.meta["settings"]
    draws = pw.step_draws(golden, pw.JEM_DRAWS)
    with pc.float_precision(precision):
        trainer = build_trainer(golden, **build)
    with pc.float_precision(precision), random_draws.replay(draws) as replay:
        mapping = wrn_weight_map(trainer.network)
        logits = trainer(pc.nhwc(golden["batch/0/x_lab"]), training=False)
        ce = tf.reduce_mean(
            tf.keras.losses.sparse_categorical_crossentropy(golden["batch/0/y_lab"], logits, from_logits=True)
        )
        compare("forward", "CE of the initial network (step 0)", ce, golden["step/0/loss/l_pyxce"])
        tap = pc.StepTap(trainer)
        for k in range(steps):
            x_lab, y_lab = pc.nhwc(golden[f"batch/{k}/x_lab"]), golden[f"batch/{k}/y_lab"]
            if jem:
                x_p_d = pc.nhwc(golden[f"batch/{k}/x_p_d"])
                batch = ((x_lab, y_lab), (x_p_d, np.zeros(len(x_p_d), np.int64)))
            else:
                batch = (x_lab, y_lab)
            trainer.train_step(batch)
            logs = tap.logs[-1]
            compare("loss", f"step {k} l_pyxce", logs["clf_loss"], golden[f"step/{k}/loss/l_pyxce"])
            compare("loss", f"step {k} l_pxycontrast", logs["contrastive_loss"], golden[f"step/{k}/loss/l_pxycontrast"])
            compare("loss", f"step {k} L", logs["loss"] / SCALE, golden[f"step/{k}/loss/L"])
            if jem:
                compare("loss", f"step {k} l_pxsgld", logs["px_loss"], golden[f"step/{k}/loss/l_pxsgld"])
                compare("loss", f"step {k} fp", -logs["energy_data"], golden[f"step/{k}/loss/fp"])
                compare("loss", f"step {k} fq", -logs["energy_sample"], golden[f"step/{k}/loss/fq"])
            if k == 0:
                pc.compare_first_grads(compare, golden, tap, trainer, mapping, scale=SCALE)
            pc.compare_weights_and_adam(compare, golden, k, trainer, mapping, scale=SCALE)
            # The queue ([C, K] in the official state dict) and its pointer, after the step.
            compare(
                "weights",
                f"step {k} queue_logit",
                pc.probe(np.asarray(trainer.queue.queue).T),
                golden[f"step/{k}/probe/param/queue_logit"],
            )
            assert int(trainer.queue.pointer) == int(golden[f"step/{k}/probe/param/queue_ptr"][0]), (
                f"step {k}: queue pointer {int(trainer.queue.pointer)} != official"
            )
            compare("slots", f"step {k} lr", tap.lr[-1], golden[f"step/{k}/opt/lr"])
            if jem:
                pc.compare_samples(compare, golden, k, "x_q", pc.nchw(tap.samples[-1]))
                idx = draws["buffer_index"][k]
                assert len(set(idx.tolist())) == len(idx), (
                    "a buffer row drawn twice in one step (PyTorch leaves the duplicate write undefined, "
                    "docs/parity.md JEM): record with another seed"
                )
        if jem:
            pc.compare_final_buffer(compare, golden, trainer, "replay_buffer")
        pc.assert_draws_used(replay)
        evaluate(trainer, golden, compare)
    return compare


def evaluate(trainer, golden, compare):
    """The official eval_wrn.py on the fixed test batch (CIFAR-10 test) against noise images."""
    x, y, x_ood = pc.nhwc(golden["eval/x"]), golden["eval/y"], pc.nhwc(golden["eval/x_ood"])
    logits = trainer(x, training=False)
    compare("eval", "logits", logits, golden["eval/logits"])
    s_in, s_ood = trainer.scores(x), trainer.scores(x_ood)
    ours = {
        "px": lambda s: s["log_px"],
        "py": lambda s: s["max_softmax"],
        "pxgrad": lambda s: -np.log(-np.asarray(s["grad_norm"])),
    }  # official: -log ||grad||
    queue, k = trainer.queue.values(), trainer.queue.size

    def pxsim(images):  # official: -(contrastive CE - log K) of each image with its label (eval: no enqueue)
        return -(
            hdge_contrastive_loss(trainer(images, training=False), y, queue, temperature=trainer.temperature)
            - np.log(k)
        )

    scores = {name: (fn(s_in), fn(s_ood)) for name, fn in ours.items()}
    scores["pxsim"] = (pxsim(x), pxsim(x_ood))
    for name, (ours_in, ours_ood) in scores.items():
        labels, official = golden[f"eval/ood_{name}/labels"], golden[f"eval/ood_{name}/scores"]
        # The official loaders shuffle; each image keeps its label, so compare the sorted scores.
        compare("eval", f"score {name}", np.sort(np.asarray(ours_in)), np.sort(official[labels == 1]))
        compare("eval", f"score {name} (OOD)", np.sort(np.asarray(ours_ood)), np.sort(official[labels == 0]))
        auroc = ood_metrics(np.asarray(ours_in), np.asarray(ours_ood))["auroc"]
        compare("eval", f"AUROC {name}", auroc, golden[f"eval/ood_{name}/auroc"])
    probs = tf.nn.softmax(logits).numpy()
    compare("eval", "ECE", expected_calibration_error(probs, y, num_bins=20), golden["eval/ece"].reshape(()))


@pytest.mark.parametrize("precision", pc.PRECISIONS)
@pytest.mark.parametrize("variant", ["hdge", "hdge_jem"])
def test_hdge_parity(variant, precision):
    run_parity(variant, precision).check()


@pytest.mark.parametrize("break_", ["warmup_offset", "temperature"])
def test_hdge_parity_fails_on_a_break(break_):
    """The parity test sees a changed constant: the warm-up starting at lr / warmup (our default,
    `from_zero=False`), a temperature 0.11 for 0.1."""
    build = {"warmup_offset": {"warmup_from_zero": False}, "temperature": {"temperature": 0.11}}[break_]
    compare = run_parity("hdge", "float64", **build)
    assert compare.failures, f"the parity test did not notice the break {break_}"


def test_hdge_converter_forward_and_errors():
    golden = pc.Golden("hdge", "float32")
    with pc.float_precision("float32"):
        trainer = build_trainer(golden)
    np.testing.assert_allclose(np.asarray(trainer(pc.nhwc(golden["eval/x"]), training=False)).shape, (4, 10))
    state = golden.under("init")
    np.testing.assert_array_equal(np.asarray(trainer.queue.queue), state["queue_logit"].T)
    with pytest.raises(ValueError, match="queue_size=16"):
        small = HDGE(trainer.network, (32, 32, 3), 10, queue_size=8)
        convert.convert_official("hdge", state, small)
    with pytest.raises(ValueError, match=r"cannot place \['f.layer1.0.bn1.weight'\]"):
        convert.convert_official("hdge", dict(state, **{"f.layer1.0.bn1.weight": np.ones(16, np.float32)}), trainer)
