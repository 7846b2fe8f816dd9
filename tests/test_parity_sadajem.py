"""Parity with the official SADA-JEM code (sndnyang/SADAJEM 9d8f3c7, train_sadajem.py + sam.py +
eval_sadajem.py).

The golden files (benchmarks/parity/record_sadajem.py) hold the official run of 3 steps of the
recipe of scripts/sadajem_cifar10.sh at a small size: WRN-10-1 with BN, 2 classes, batch 8, buffer
20 filled from the class Gaussians, SGLD K = 2 (step 1, gradient clamp 1, x clamp, no noise, BN in
train mode), SAM with the code's default rho = 2 (ASAM, T = |w|) over SGD 0.1 momentum 0.9 with
coupled weight decay 5e-4 and a linear warm-up from 0 over 2 iterations, plus data noise 0.03 on
the p(x) batch and the energy L2 term 0.1 (`l2_coeff`, first pass only). Both SAM passes are
compared: the first pass's losses and gradients, the second pass's losses and the gradients SGD
applies; BN moving statistics change in the first pass only.
"""

import numpy as np
import pytest

import parity_common as pc
import parity_wrn as pw
import test_parity_jempp as jpp
from keras_ebm.backbones import WideResNet, build_classifier
from keras_ebm.convert.wrn import wrn_weight_map
from keras_ebm.optim import SAMGradients
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers import SADAJEM

METHOD = "SADA-JEM"
SADAJEM_DRAWS = {**jpp.JEMPP_DRAWS, ("torch.randn_like", "main"): None}  # data noise: added to the batch below
DATA_NOISE = ("torch.randn_like", "main")


def l2_term(logs, s):
    return s["l2_coeff"] * (logs["energy_data"] ** 2 + logs["energy_sample"] ** 2)


def losses(s):
    first = {
        "fp": lambda logs: -logs["energy_data"],
        "fq": lambda logs: -logs["energy_sample"],
        "l_p_x": lambda logs: logs["px_loss"] + l2_term(logs, s),
        "ce_loss": lambda logs: logs["clf_loss"],
        "loss": lambda logs: logs["loss"],
    }
    second = {
        "L": lambda logs: logs["loss"],
        "fp": lambda logs: -logs["energy_data"],
        "fq": lambda logs: -logs["energy_sample"],
        "ce_loss": lambda logs: logs["clf_loss"],
    }
    return first, second


# Float32: the official float32 run's own round-off, amplified already in step 1 by the SGLD
# input gradients through train-mode BN of 8 samples (samples 5e-4 apart after K = 2) and then by
# SAM's second pass at w + e (its gradients 4e-3 apart while the first pass's are 1.4e-4 apart).
# Measured as for JEM++: our float64 replay of the float32 recording is as far from it as our
# float32 replay (loss 1.0e-3, grad 3.9e-3, weights 4.1e-3, BN 2.7e-3, momentum 4.1e-2, samples
# 4.6e-3, eval 0.13 on the grad-norm score; Intel CPU with AVX512). On an AMD EPYC CPU (other
# oneDNN float32 kernels) our float32 replay lands further off (loss 1.9e-3, grad 4.1e-3, weights
# 7.3e-3, BN 4.3e-3, momentum 7.0e-2, samples 5.6e-3, eval 0.24) while our float64 replay is
# closer (weights 2.9e-3, BN 1.1e-3, eval 0.082): two float32 runs, each with its own amplified
# round-off. Bounds ~1.5x the largest measured. Float64 is this method's parity check.
FLOAT32_OVERRIDES = {
    "loss": (1e-4, 3e-3),
    "grad": (1e-3, 6.5e-3),
    "weights": (1e-4, 1.1e-2),
    "bn": (1e-4, 6.5e-3),
    "slots": (1e-3, 0.11),
    "samples": (1e-4, 8.5e-3),
    "eval": (1e-3, 0.37),
}

pc.register(
    METHOD,
    loss="tol; both SAM passes (the L2 term in the first only, as the code)",
    gradients="tol; first pass and the applied second-pass gradients (ASAM)",
    weights=(
        "tol; weights, SGD momentum buffers, learning rate; f32: ASAM rho 2 in f64, SAM "
        "rho 0.2 in f32, bounds of the official f32 run's own round-off (docs/parity.md)"
    ),
    bn="tol; updated in the first SAM pass only",
    sampler="tol; informative init in float64 (as JEM++); data noise added to the p(x) batch",
    queue="n/a",
    evaluation=(
        "tol; the official grad-norm score differentiates only each batch's first sample "
        "(`f(x_k)[0].sum()`): compared there, its AUROC not compared (departure)"
    ),
    float32=FLOAT32_OVERRIDES,
)


def build_trainer(golden, sam=None, energy_l2_second_pass=False, **jempp_kwargs):
    s = golden.meta["settings"]
    network = build_classifier(
        WideResNet(depth=s["depth"], width=s["width"], norm=s["norm"], input_shape=(32, 32, 3)), s["n_classes"]
    )
    buffer = pw.buffer_options(golden, "chw")
    sampler = SGLDSampler(
        n_steps=s["n_steps"],
        step_size=s["sgld_lr"],
        noise_std=s["sgld_std"],
        grad_clip=1.0,
        x_clip=(-1.0, 1.0),
        energy_training=True,
    )
    gradients = sam or SAMGradients(rho=s["rho"], adaptive=s["rho"] >= 0.5, eta=0.0)  # train_sadajem.py's choice
    trainer = SADAJEM(
        network,
        (32, 32, 3),
        s["n_classes"],
        sampler=sampler,
        gradients=gradients,
        **buffer,
        clf_weight=s["pyx"],
        px_weight=s["px"],
        energy_l2=s["l2_coeff"],
        energy_l2_mode="means",
        energy_l2_second_pass=energy_l2_second_pass,
        weight_decay=s["weight_decay"],
        seed=0,
        **jempp_kwargs,
    )
    return pw.compile_and_load(trainer, golden, "sadajem", pw.warmup_sgd(s, True))


def run_parity(precision, **build_kwargs):
    """Replay the official SADA-JEM run; returns the Comparer (its failures not yet raised)."""
    golden = pc.Golden("sadajem", precision)
    s = golden.meta["settings"]
    compare = pc.comparer(METHOD, precision)
    kinds = SADAJEM_DRAWS
    if s["reinit_freq"] == 0:  # float32 recording: no re-initialisation (see test_parity_jempp.py)
        kinds = {
            key: (None if kind in ("init_class", "init_normal", "reinit") else kind) for key, kind in kinds.items()
        }
    draws = pw.step_draws(golden, kinds)
    labels = golden.meta["draws"]
    noise = [
        golden[key]
        for key in sorted(labels)
        if labels[key].startswith("torch.randn_like@") and labels[key].endswith(":main")
    ]
    dtype = np.dtype(precision)

    def batch(k):
        # The official loop adds N(0, sigma^2) to the p(x) batch (x_p_d += sigma * randn_like); in
        # keras_ebm that is the input pipeline's `dequantize_noise` (make_two_branch_dataset).
        x_px = golden[f"batch/{k}/x_p_d"] + dtype.type(s["sigma"]) * noise[k]
        return (
            (pc.nhwc(golden[f"batch/{k}/x_lab"]), golden[f"batch/{k}/y_lab"]),
            (pc.nhwc(x_px.astype(dtype)), golden[f"batch/{k}/y_p_d"]),
        )

    first, second = losses(s)
    with pc.float_precision(precision):
        trainer = build_trainer(golden, **build_kwargs)
        pw.compare_forward(trainer, golden, compare, x=batch(0)[1][0])
        perturbation = trainer.gradients.perturbation

        def tap_first_pass(tap):
            def perturb(grads, variables):
                tap.out["first_grads"] = list(grads)
                return perturbation(grads, variables)

            trainer.gradients.perturbation = perturb

        outs = pw.replay(
            trainer,
            golden,
            draws,
            compare,
            first,
            jpp.SGD_SLOTS,
            weight_decay=s["weight_decay"],
            batches=batch,
            tap_hook=tap_first_pass,
        )
        for k, out in enumerate(outs):
            for name, ours in second.items():
                compare("loss", f"step {k} second pass {name}", ours(out["logs"][1]), golden[f"step/{k}/loss2/{name}"])
        mapping = wrn_weight_map(trainer.network)
        by_var = {id(v): g for v, g in zip(trainer.trainable_variables, outs[0]["first_grads"])}
        for name, g in golden.under("step/0/grad_first").items():
            variable, _, to_official = mapping[name]
            compare("grad", f"first pass {name}", to_official(by_var[id(variable)]), g)
        pw.compare_eval(trainer, golden, compare, pxgrad_first_only=True)
    return compare


@pytest.mark.parametrize("precision", pc.PRECISIONS)
def test_sadajem_parity(precision):
    run_parity(precision).check()
