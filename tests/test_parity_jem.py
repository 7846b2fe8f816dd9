"""Parity with the official JEM code (wgrathwohl/JEM 3d01161, train_wrn_ebm.py + eval_wrn_ebm.py).

The golden files (benchmarks/parity/record_jem.py) hold the official run of 3 steps of WRN-10-1
(no BN), batch 8, buffer 20, SGLD K=2 with noise 0.01, reinit 0.25, Adam lr 1e-3, on real CIFAR-10
images: initial weights and buffer, batches, every random draw, the loss terms, the first step's
gradients, per-step weights / Adam moments / buffer (probes), the final samples, and the official
evaluation (logits, OOD scores px / py / pxgrad and their AUROC against DTD textures).
This test converts the initial weights (keras_ebm.convert), builds `JEM` from the Python API with
the same settings, replays the official draws into our `train_step` and compares everything.
"""

import numpy as np
import pytest
import tensorflow as tf

import parity_common as pc
import parity_wrn as pw
from keras_ebm import convert, random_draws
from keras_ebm.backbones import WideResNet, build_classifier
from keras_ebm.convert.wrn import wrn_weight_map
from keras_ebm.evaluation.metrics import ood_metrics
from keras_ebm.optim import TorchAdam
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers import JEM

METHOD = "JEM"  # the official draws: pw.JEM_DRAWS

# float32 Adam moments: the largest difference measured in a true float32 run is 7.1e-6 (step 2,
# 0.4% of a 1.9e-3 entry; 4e-8 on entries near 2e-7): K=2 SGLD steps of size 1 amplify float32
# round-off from step 1 on, and moments sum three steps' gradients. Until the float32 test ran
# in float32 (the global dtype policy cached by a float64 test made it run in float64; fixed in
# parity_common.float_precision) the shared (1e-3, 1e-9) looked enough. atol = 1.5x the measurement.
FLOAT32_OVERRIDES = {"slots": (1e-3, 1.1e-5)}

pc.register(
    METHOD,
    weights="tol; weights and Adam moments, 256 entries per tensor per step",
    bn="n/a (the JEM recipe has no BN)",
    sampler="tol; a buffer row drawn twice in one step keeps our last sample (departure)",
    queue="n/a",
    float32=FLOAT32_OVERRIDES,
)


def build_trainer(golden, sampler_kwargs=None, optimizer=None):
    s = golden.meta["settings"]
    network = build_classifier(
        WideResNet(depth=s["depth"], width=s["width"], norm=s["norm"], input_shape=(32, 32, 3)), 10
    )
    sampler = SGLDSampler(
        **{"n_steps": s["n_steps"], "step_size": s["sgld_lr"], "noise_std": s["sgld_std"], **(sampler_kwargs or {})}
    )
    trainer = JEM(
        network,
        (32, 32, 3),
        10,
        sampler=sampler,
        buffer_size=s["buffer_size"],
        reinit_prob=s["reinit_freq"],
        clf_weight=s["p_y_given_x_weight"],
        px_weight=s["p_x_weight"],
        pxy_weight=s["p_x_y_weight"],
        seed=0,
    )
    return pw.compile_and_load(trainer, golden, "jem", optimizer or TorchAdam(learning_rate=s["lr"]))


class Tap:
    """Catches, in an eager train_step, the loss terms, the gradients and the SGLD samples."""

    def __init__(self, trainer):
        self.logs, self.grads, self.samples = [], [], []
        compute, apply, update = trainer.compute_losses, trainer.optimizer.apply, trainer.buffer.update

        def compute_losses(*a, **k):
            logs = compute(*a, **k)
            self.logs.append(logs)
            return logs

        def apply_(grads, variables=None):
            self.grads.append([np.asarray(g) for g in grads])
            return apply(grads, variables)

        def update_(idx, x):
            self.samples.append(np.asarray(x))
            return update(idx, x)

        trainer.compute_losses, trainer.optimizer.apply, trainer.buffer.update = compute_losses, apply_, update_


def run_parity(precision, sampler_kwargs=None, optimizer=None, step_order=None):
    """Replay the official JEM run; returns the Comparer (its failures not yet raised)."""
    golden = pc.Golden("jem", precision)
    compare = pc.comparer(METHOD, precision)
    steps = golden.meta["steps"]
    draws = pw.step_draws(golden, pw.JEM_DRAWS)
    with pc.float_precision(precision):
        trainer = build_trainer(golden, sampler_kwargs, optimizer)  # its buffer fill is not replayed
    with pc.float_precision(precision), random_draws.replay(draws) as replay:
        mapping = wrn_weight_map(trainer.network)
        # Forward: the converted initial network against the official forward (first step's fp:
        # mean logsumexp of the p(x) batch, the initial weights).
        logits = trainer(pc.nhwc(golden["batch/0/x_p_d"]), training=False)
        compare("forward", "fp (step 0)", np.mean(tf.reduce_logsumexp(logits, -1)), golden["step/0/loss/fp"])
        tap = Tap(trainer)
        diverged = set()
        order = step_order or range(steps)
        for k in order:
            batch = (
                (pc.nhwc(golden[f"batch/{k}/x_lab"]), golden[f"batch/{k}/y_lab"]),
                (pc.nhwc(golden[f"batch/{k}/x_p_d"]), golden[f"batch/{k}/y_p_d"]),
            )
            trainer.train_step(batch)
            logs = tap.logs[-1]
            compare("loss", f"step {k} l_p_x", logs["px_loss"], golden[f"step/{k}/loss/l_p_x"])
            compare("loss", f"step {k} l_p_y_given_x", logs["clf_loss"], golden[f"step/{k}/loss/l_p_y_given_x"])
            compare("loss", f"step {k} L", logs["loss"], golden[f"step/{k}/loss/L"])
            compare("loss", f"step {k} fp", -logs["energy_data"], golden[f"step/{k}/loss/fp"])
            compare("loss", f"step {k} fq", -logs["energy_sample"], golden[f"step/{k}/loss/fq"])
            if k == 0:
                pc.compare_first_grads(compare, golden, tap, trainer, mapping)
            for name, p in golden.under(f"step/{k}/probe/param").items():
                if name.endswith("num_batches_tracked") or name not in mapping:
                    continue
                variable, _, to_official = mapping[name]
                compare("weights", f"step {k} {name}", pc.probe(to_official(np.asarray(variable))), p)
            opt = trainer.optimizer
            for name, (variable, _, to_official) in mapping.items():
                i = opt._get_variable_index(variable)
                for slot, ours in (("exp_avg", opt._momentums[i]), ("exp_avg_sq", opt._velocities[i])):
                    key = f"step/{k}/probe/opt/{name}/{slot}"
                    compare("slots", f"step {k} {name}/{slot}", pc.probe(to_official(np.asarray(ours))), golden[key])
            compare(
                "slots", f"step {k} Adam step", int(opt.iterations), golden[f"step/{k}/opt/{next(iter(mapping))}/step"]
            )
            x_q = pc.nchw(tap.samples[-1])
            if f"step/{k}/state/x_q" in golden:
                compare("samples", f"step {k} x_q", x_q, golden[f"step/{k}/state/x_q"])
            else:
                compare("samples", f"step {k} x_q", pc.probe(x_q), golden[f"step/{k}/probe/state/x_q"])
            ours_buffer = pc.probe(pc.nchw(np.asarray(trainer.buffer.buffer)))
            official_buffer = golden[f"step/{k}/probe/state/replay_buffer"]
            idx = draws["buffer_index"][k]
            twice = {int(r) for r in idx if np.sum(idx == r) > 1}
            rows = pc.probe(np.repeat(np.arange(trainer.buffer.size), x_q[0].size))
            offsets = pc.probe(np.arange(trainer.buffer.size * x_q[0].size)) % x_q[0].size
            for r in twice:
                # Departure (docs/parity.md): a row drawn twice in one step keeps our *last* sample;
                # PyTorch's `replay_buffer[inds] = x` leaves duplicates undefined (its CPU kernel
                # kept the last in one step of this run and the first in another). The official
                # row must hold one of the row's samples; where it is not ours, the row is left out.
                candidates = [x_q[j].reshape(-1)[offsets[rows == r]] for j in np.flatnonzero(idx == r)]
                close = [np.allclose(c, official_buffer[rows == r], rtol=0, atol=1e-4) for c in candidates]
                assert any(close), f"step {k}: official buffer row {r} is none of its samples"
                if not close[-1]:
                    diverged.add(r)
            keep = ~np.isin(rows, list(diverged))
            compare("samples", f"step {k} replay buffer", ours_buffer[keep], official_buffer[keep])
            later = {int(r) for j in range(k + 1, steps) for r in draws["buffer_index"][j]}
            assert not diverged & later, (
                "a row written twice is read again by a later step: the "
                "duplicate-write departure would propagate; record another run"
            )
        pc.assert_draws_used(replay)
        # Evaluation: the official eval_wrn_ebm.py on a fixed test batch with the final weights.
        x_eval, x_ood = pc.nhwc(golden["eval/x"]), pc.nhwc(golden["eval/x_ood"])
        compare("eval", "logits", trainer(x_eval, training=False), golden["eval/logits"])
        ours = {"px": "log_px", "py": "max_softmax", "pxgrad": "grad_norm"}
        s_in, s_ood = trainer.scores(x_eval), trainer.scores(x_ood)
        for official, name in ours.items():
            compare("eval", f"score {official}", s_in[name], golden[f"eval/{official}/scores_in"])
            compare("eval", f"score {official} (OOD)", s_ood[name], golden[f"eval/{official}/scores_ood"])
            auroc = ood_metrics(np.asarray(s_in[name]), np.asarray(s_ood[name]))["auroc"]
            compare("eval", f"AUROC {official}", auroc, golden[f"eval/{official}/auroc"])
    return compare


@pytest.mark.parametrize("precision", pc.PRECISIONS)
def test_jem_parity(precision):
    run_parity(precision).check()


def test_jem_converter_forward_and_errors():
    """Converted official weights give the official logits; bad state dicts name the keys."""
    golden = pc.Golden("jem", "float32")
    trainer = build_trainer(golden)
    state = golden.under("init")
    bad = dict(state, **{"f.layer1.0.bn1.weight": np.ones(16, np.float32)})
    with pytest.raises(ValueError, match=r"cannot place \['f.layer1.0.bn1.weight'\]"):
        convert.convert_official("jem", bad, trainer)
    missing = {k: v for k, v in state.items() if k != "class_output.bias"}
    with pytest.raises(ValueError, match=r"does not set \['class_output.bias'\]"):
        convert.convert_official("jem", missing, trainer)
    wrong = dict(state, **{"class_output.weight": np.zeros((5, 64), np.float32)})
    with pytest.raises(ValueError, match="Shapes differ"):
        convert.convert_official("jem", wrong, trainer)
    with pytest.raises(ValueError, match="buffer_size=20"):
        small = JEM(trainer.network, (32, 32, 3), 10, buffer_size=10)
        convert.convert_official("jem", {**state, "replay_buffer": golden["init_state/replay_buffer"]}, small)
