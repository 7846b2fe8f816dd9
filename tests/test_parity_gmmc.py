"""Parity with the official GMMC code (sndnyang/GMMC 962b52b, train_gmmc.py + LDALayer + utils.py).

The golden files (benchmarks/parity/record_gmmc.py) hold 3 official steps of joint training
(`--generative --start_generative 1`, one batch per epoch: step 0 discriminative, steps 1-2
generative with staged, class-conditional sampling) of WRN-10-1 (no BN) with the max-Mahalanobis
centres (mu_c 10), batch 4, buffer 20, SGLD K=2 (step 1, no noise, clamp to [-1, 1], batch-mean
energy), gamma 0.001, beta 0.5, Adam lr 1e-4, real CIFAR-10. The test converts the initial
weights and centres (`keras_ebm.convert.convert_official("gmmc", ...)`), builds `GMMC(mode="joint",
switch_step=1)`, replays the official draws (buffer offsets, fresh uniform images, reinit mask,
latent noise) and compares the loss terms, the first gradients, weights and Adam moments after
every step (probes), the SGLD samples, the buffer, the centres and the official evaluation
(features, logits, log p(x), accuracy, loss).

The discriminative step 0 makes no draw in the official code; ours samples the buffer (with 0
SGLD steps, so one trace serves both phases) and writes the rows back unchanged. The test feeds
it placeholder draws and checks that the buffer is untouched by that step.
"""

import numpy as np
import pytest
import tensorflow as tf

import parity_common as pc
from keras_ebm import convert, random_draws
from keras_ebm.backbones import WideResNet
from keras_ebm.convert.wrn import wrn_weight_map
from keras_ebm.optim import TorchAdam
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers import GMMC
from keras_ebm.trainers.gmmc.head import build_mmc_classifier, mmc_head

METHOD = "GMMC"
GMMC_DRAWS = {
    ("torch.randint", "sample_p_0"): "buffer_index",
    ("Tensor.uniform_", "init_random_x_y"): "init_uniform",
    ("np.random.randint", "init_random_x_y"): None,  # labels of fresh samples: unused (y is given)
    ("torch.rand", "sample_p_0"): "reinit",
    ("torch.randn", "sample_q"): "latent_normal",
}

# GMMC's loss is a squared distance to centres of norm 10 (~50, JEM's ~2): its gradients and first
# moments are ~25x larger (entries up to 0.2), and float32 resolves ~1e-8 on them, above the shared
# slots atol of 1e-9 meant for JEM's moments; a tiny entry after cancellation differed by 1.7e-8.
FLOAT32_SLOTS = (1e-3, 1e-7)


pc.register(
    METHOD,
    loss="tol; joint: step 0 discriminative, steps 1-2 generative",
    weights="tol; weights and Adam moments, 256 entries per tensor per step",
    bn="n/a (the recorded WRN has no BN)",
    sampler="tol; staged class-conditional chains, buffer untouched before the switch",
    queue="tol; centres",
    evaluation="tol; features, logits, log p(x) (official exp-then-log), accuracy, loss",
    float32={"slots": FLOAT32_SLOTS},
)


def build_trainer(golden, balance=None, step_size=1.0):
    s = golden.meta["settings"]
    backbone = WideResNet(
        depth=int(pc.option(s, "--depth")), width=int(pc.option(s, "--width")), norm=None, input_shape=(32, 32, 3)
    )
    network = build_mmc_classifier(backbone, num_classes=10, scale=float(pc.option(s, "--mu_c")))
    sampler = SGLDSampler(
        n_steps=int(pc.option(s, "--n_steps")),
        step_size=step_size,
        noise_std=0.0,
        x_clip=(-1.0, 1.0),
        energy_reduction="mean",
    )
    trainer = GMMC(
        network,
        (32, 32, 3),
        10,
        mode="joint",
        switch_step=int(pc.option(s, "--start_generative")),
        ramp_steps=0,
        balance=balance or float(pc.option(s, "--beta")),
        sampler=sampler,
        latent_std=float(pc.option(s, "--gamma")),
        buffer_size=int(pc.option(s, "--buffer_size")),
        reinit_prob=float(pc.option(s, "--reinit_freq")),
        seed=0,
    )
    trainer.compile(optimizer=TorchAdam(learning_rate=float(pc.option(s, "--lr"))))
    trainer(tf.zeros((1, 32, 32, 3), pc.keras.config.floatx()))
    convert.convert_official("gmmc", {**golden.under("init"), "centers": golden["init_state/centers"]}, trainer)
    trainer.buffer.buffer.assign(pc.nhwc(golden["init_state/replay_buffer_x"]))
    trainer.build_optimizers()
    return trainer


def run_parity(precision, **build):
    golden = pc.Golden("gmmc_joint", precision)
    compare = pc.comparer(METHOD, precision)
    steps = golden.meta["steps"]
    generative = [f"batch/{k}/x_p_d" in golden for k in range(steps)]
    draws = {}
    for k in range(steps):
        recorded = golden.draws(k, GMMC_DRAWS)
        if not generative[k]:  # placeholders for the discriminative step (module docstring)
            assert not recorded, "the official discriminative step drew"
            n, dim = len(golden[f"batch/{k}/y_lab"]), golden["init_state/centers"].shape[1]
            recorded = {
                "buffer_index": [np.zeros(n, np.int32)],
                "init_uniform": [np.zeros((n, 32, 32, 3))],
                "reinit": [np.zeros(n)],
                "latent_normal": [np.zeros((n, dim))],
            }
        for kind, arrays in recorded.items():
            draws.setdefault(kind, []).extend(arrays)
    with pc.float_precision(precision):
        trainer = build_trainer(golden, **build)
    with pc.float_precision(precision), random_draws.replay(draws) as replay:
        mapping = wrn_weight_map(trainer.network, head=None)
        head = mmc_head(trainer.network)
        compare("forward", "centres (converted)", np.asarray(head.centers), golden["init_state/centers"])
        x0, y0 = pc.nhwc(golden["batch/0/x_lab"]), golden["batch/0/y_lab"]
        compare(
            "forward",
            "l_p_x_given_y of the initial network (step 0)",
            np.mean(head.center_loss(trainer.features(x0), y0)),
            golden["step/0/loss/l_p_x_given_y"],
        )
        tap = pc.StepTap(trainer)
        for k in range(steps):
            name = "x_p_d" if generative[k] else "x_lab"
            x, y = pc.nhwc(golden[f"batch/{k}/{name}"]), golden[f"batch/{k}/{name.replace('x', 'y', 1)}"]
            buffer_before = np.asarray(trainer.buffer.buffer)
            trainer.train_step((x, y))
            logs = tap.logs[-1]
            compare("loss", f"step {k} L", logs["loss"], golden[f"step/{k}/loss/L"])
            if generative[k]:
                compare("loss", f"step {k} fp", logs["center_loss"], golden[f"step/{k}/loss/fp"])
                compare("loss", f"step {k} fq", logs["sample_loss"], golden[f"step/{k}/loss/fq"])
                compare("loss", f"step {k} l_p_x", logs["loss"], golden[f"step/{k}/loss/l_p_x"])
                pc.compare_samples(compare, golden, k, "x_q", pc.nchw(tap.samples[-1]))
                np.testing.assert_array_equal(y, golden[f"step/{k}/state/y_q"])
            else:
                compare("loss", f"step {k} l_p_x_given_y", logs["center_loss"], golden[f"step/{k}/loss/l_p_x_given_y"])
                compare("samples", f"step {k} buffer untouched", np.asarray(trainer.buffer.buffer), buffer_before)
            if k == 0:
                pc.compare_first_grads(compare, golden, tap, trainer, mapping)
            pc.compare_weights_and_adam(compare, golden, k, trainer, mapping)
            compare("weights", f"step {k} centres", np.asarray(head.centers), golden[f"step/{k}/state/centers"])
        pc.compare_final_buffer(compare, golden, trainer, "replay_buffer_x")
        pc.assert_draws_used(replay)
        # Evaluation: the official features, LDALayer logits and P_X, lda_eval_classification.
        x, y = pc.nhwc(golden["eval/x"]), golden["eval/y"]
        features = trainer.features(x)
        logits = head(features)
        compare("eval", "features", features, golden["eval/features"])
        compare("eval", "logits", logits, golden["eval/logits"])
        compare("eval", "P_X (log p(x))", head.log_px(features), golden["eval/P_X"])
        compare("eval", "accuracy", np.mean(np.argmax(logits, -1) == y), golden["eval/accuracy"])
        compare("eval", "loss", np.mean(head.center_loss(features, y)), golden["eval/loss"])
    return compare


@pytest.mark.parametrize("precision", pc.PRECISIONS)
def test_gmmc_parity(precision):
    run_parity(precision).check()


@pytest.mark.parametrize("break_", ["balance", "step_size"])
def test_gmmc_parity_fails_on_a_break(break_):
    """The parity test sees a changed constant: beta 0.55 for 0.5, SGLD step 1.1 for 1."""
    build = {"balance": {"balance": 0.55}, "step_size": {"step_size": 1.1}}[break_]
    assert run_parity("float64", **build).failures, f"the parity test did not notice the break {break_}"


def test_gmmc_converter_errors():
    golden = pc.Golden("gmmc_joint", "float32")
    with pc.float_precision("float32"):
        trainer = build_trainer(golden)
    state = golden.under("init")
    with pytest.raises(ValueError, match=r"cannot place \['class_output.weight'\]"):
        convert.convert_official("gmmc", {**state, "class_output.weight": np.zeros((10, 64), np.float32)}, trainer)
    with pytest.raises(ValueError, match="centres are"):
        convert.convert_official("gmmc", {**state, "centers": np.zeros((10, 32), np.float32)}, trainer)
