"""Parity with the official CLEL code (hankook/CLEL ccccf50: train.py, models/ebm.py, models/sampler.py).

The golden files (benchmarks/parity/record_clel.py) hold 3 official steps of `train.py` run as
`__main__` with configs/cifar10.yaml and small networks (EBM ResNet stages 8-8-16-16 with spectral
norm, MLPs 32 wide, encoder a torchvision ResNet(BasicBlock, [1,1,1,1]) 16 wide with CLEL's 64-channel
stem), batch 4, SGLD K=2 (step 100, noise 0.001, gradient clamp 100, x in [0, 1]), buffer 12 with
reinit 0.25 (seed 1: three re-initialisations in three steps), EMA half-life 8 images (decay 0 at
ignite iteration 1, then 0.5 ** (4 / 8)), the two official optimizers (EBM Adam 1e-4, betas (0, 0.999),
LambdaLR (k + 1) / 2000; encoder SGD 0.03, momentum 0.9, weight decay 5e-4, CosineAnnealingLR over
100 iterations), real CIFAR-10.

The test converts the initial state (`keras_ebm.convert.convert_official("clel", ...)`), builds
`CLEL` with `TorchAdam` / `TorchSGD`, replays the official draws (buffer rows, re-init draws and
fresh images, the augmented chain starts, guidance views and SimCLR views as images, SGLD noise)
and compares every loss term, the first gradients of both networks, after every step the weights,
spectral-norm vectors, BatchNorm statistics, EMA copies and both optimizers' slots (probes), the
SGLD samples, the replay buffer, and the official evaluation outputs (f, z, energies, encoder
outputs of both the online and EMA networks, `compute_ood_scores`).

Our tensors are matched to the official names through the converter itself: a state dict whose
entries are all distinct numbers is converted once, and each Keras weight then tells which official
entry every one of its elements came from.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import parity_common as pc
from keras_ebm import convert, random_draws
from keras_ebm.backbones.clel import build_clel_ebm, build_clel_encoder, build_clel_projection
from keras_ebm.optim import TorchAdam, TorchSGD
from keras_ebm.optim.schedules import LinearWarmup
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers.clel import CLEL

METHOD = "CLEL"
LOSSES = {
    "loss": "loss",
    "e_pos": "energy_data",
    "e_neg": "energy_sample",
    "s_pos": "cosine",
    "latent_loss": "contrastive_loss",
}

# Float32 tolerances of this test. The encoder's backward (NT-Xent at temperature 0.2 through
# BatchNorm over 4 and 8 images) loses float32 precision on small entries, and momentum SGD's
# buffer (raw gradient sums, entries up to ~4) carries it. The official float32 run has its own
# share: our *float64* replay of the float32 recording differs from it by grad 2.8e-5, slots
# 1.8e-4, weights 5.1e-6, BN 8.9e-6; our float32 replay, a second float32 run with its own
# operation order, by grad 1.7e-5, slots 1.2e-3, weights 3.6e-5, BN 4.7e-5, eval 4.1e-5 (the
# float64 file agrees to 1e-12). Bounds ~1.5x the measured ones.
FLOAT32_OVERRIDES = {
    "grad": (1e-3, 4e-5),
    "slots": (1e-3, 2e-3),
    "weights": (1e-4, 6e-5),
    "bn": (1e-4, 7e-5),
    "eval": (1e-4, 6e-5),
}

pc.register(
    METHOD,
    forward="tol; f, z direction, energies, encoder outputs (online and EMA)",
    loss="tol; eq. 3 terms, s_pos, NT-Xent with the sample latents",
    gradients="tol; EBM and encoder",
    weights="tol; weights, spectral-norm u / v, Adam and SGD slots, 256 entries per tensor per step",
    bn="tol; encoder (3 passes a step: guidance view, then both SimCLR views)",
    sampler="tol; buffer rows without replacement, augmented chain starts, SGLD with the clamp",
    queue="tol; EMA at the start of each step (decay 0 at first)",
    evaluation="tol; f, z, energy, encoder outputs, `compute_ood_scores` (augmented view injected)",
    float32=FLOAT32_OVERRIDES,
)


def settings(golden):
    """The recorded dot-list overrides of configs/cifar10.yaml, {key: value string}."""
    return dict(s.split("=", 1) for s in golden.meta["settings"] if "=" in s)


class TorchCosine(keras.optimizers.schedules.LearningRateSchedule):
    """CosineAnnealingLR(T_max) in floatx (Keras' CosineDecay computes in float32)."""

    def __init__(self, lr, t_max):
        self.lr, self.t_max = lr, t_max

    def __call__(self, step):
        dtype = keras.config.floatx()
        step = tf.cast(step, dtype)
        return tf.constant(self.lr, dtype) * 0.5 * (1.0 + tf.cos(tf.constant(math.pi, dtype) * step / self.t_max))


def build_trainer(
    golden,
    guidance_view="augmented",
    ema_timing="before_step",
    encoder_sgd=TorchSGD,
    bn_unbiased=True,
    sn_order="u_first",
):
    s, arch = settings(golden), golden.meta["architecture"]
    widths = tuple(w for w, _ in arch["ebm_layers"])
    hidden, dim = arch["mlp_hidden"], int(s["encoder.out_dim"])
    batch, halflife = int(s["data.batch_size"]), float(s["ema.halflife"])
    network = build_clel_ebm(
        widths=widths, blocks_per_stage=1, head_units=hidden, feature_dim=dim, sn_update_order=sn_order
    )
    projection = build_clel_projection(dim, hidden, dim)
    encoder = build_clel_encoder(
        widths=(16, 16, 16, 16),
        blocks_per_stage=(1, 1, 1, 1),
        head_units=hidden,
        output_dim=dim,
        stem_width=64,
        bn_unbiased_variance=bn_unbiased,
    )
    sampler = SGLDSampler(
        n_steps=int(s["sampler.num_steps"]),
        step_size=100.0,
        noise_std=0.001,
        grad_clip=100.0,
        x_clip=(0.0, 1.0),
        energy_training=True,
    )
    trainer = CLEL(
        network,
        projection,
        encoder,
        image_shape=(32, 32, 3),
        sampler=sampler,
        buffer_size=int(s["sampler.memory_size"]),
        reinit_prob=float(s["sampler.memory_init"]),
        alpha=1.0,
        beta=0.01,
        temperature=0.2,
        ema_decay=0.5 ** (batch / halflife),
        ema_start_step=math.ceil(halflife / batch) - 1,
        ema_timing=ema_timing,
        guidance_view=guidance_view,
        seed=0,
    )
    trainer.compile(
        optimizer=TorchAdam(LinearWarmup(1e-4, 2000), beta_1=0.0, beta_2=0.999),
        encoder_optimizer=encoder_sgd(TorchCosine(0.03, int(s["num_iterations"])), momentum=0.9),
    )
    convert.convert_official("clel", golden.under("init"), trainer)
    trainer.buffer.buffer.assign(pc.nhwc(golden["init_state/memory"]))
    trainer.build_optimizers()
    return trainer


FIXED = ("stem.0.mean", "stem.0.std", "conv1.0.mean", "conv1.0.std", "num_batches_tracked")


def official_layout(golden, trainer):
    """{official name: (Keras variable, to_official)} for the EBM, projection, encoder and EMAs."""
    init = golden.under("init")
    state, starts, offset = {}, {}, 1.0
    for name, value in {**init, **{"ema_" + k: v for k, v in init.items()}}.items():
        if name.endswith(FIXED):  # the input normalisation (checked by the converter), counters
            state[name] = value
            continue
        state[name] = (offset + np.arange(value.size, dtype=np.float64)).reshape(value.shape)
        starts[offset] = (name, value.shape)
        offset += value.size
    saved = [v.numpy() for v in _all_weights(trainer)]
    convert.convert_official("clel", state, trainer)
    layout = {}
    for variable in _all_weights(trainer):
        flat = np.asarray(variable.numpy(), np.float64).reshape(-1)
        if flat.size and flat.min() in starts:
            name, shape = starts[flat.min()]
            layout[name] = (variable, _permutation(flat - flat.min(), shape))
    for variable, value in zip(_all_weights(trainer), saved):
        variable.assign(value)
    assert set(layout) == {n for n, _ in starts.values()}, sorted({n for n, _ in starts.values()} - set(layout))
    return layout


def _permutation(index, shape):
    index = index.astype(np.int64)

    def to_official(ours):
        out = np.empty(index.size, np.float64)
        out[index] = np.asarray(ours, np.float64).reshape(-1)
        return out.reshape(shape)

    return to_official


def _all_weights(trainer):
    models = (
        trainer.network,
        trainer.projection,
        trainer.encoder,
        trainer.ema_network.model,
        trainer.ema_projection.model,
        trainer.ema_encoder.model,
    )
    return [w for m in models for w in m.weights]


def replay_draws(golden, steps, reinit_prob):
    """The official draws as our kinds (module docstring of keras_ebm.random_draws)."""
    draws = {}
    labels = golden.meta["draws"]

    def add(kind, array):
        draws.setdefault(kind, []).append(array)

    for k in list(range(steps)) + ["eval"]:
        keys = sorted(key for key in labels if key.startswith(f"draw/{k}/"))
        by_fn = [(labels[key].split("@")[0], golden[key]) for key in keys]
        if k == "eval":
            assert [fn for fn, _ in by_fn] == ["aug:ebm"], by_fn
            continue
        reinit = np.array([float(v) for fn, v in by_fn if fn == "random.random"])
        fresh = [pc.nhwc(v[None])[0] for fn, v in by_fn if fn == "Tensor.uniform_"]
        assert len(fresh) == int(np.sum(reinit < reinit_prob))
        init = np.zeros((len(reinit), 32, 32, 3))  # our buffer draws fresh images for every row
        init[reinit < reinit_prob] = np.stack(fresh) if fresh else init[:0]
        for fn, v in by_fn:
            if fn == "random.sample":
                add("buffer_index", np.asarray(v, np.int32))
            elif fn == "aug:sampler":
                add("augment_chain_start", pc.nhwc(v))
            elif fn == "torch.randn_like":
                add("sgld_noise", pc.nhwc(v))
            elif fn == "aug:ebm":
                add("augment_guidance", pc.nhwc(v))
            elif fn == "aug:encoder":
                first, second = np.split(pc.nhwc(v), 2)
                add("augment_views", first)
                add("augment_views", second)
            elif fn not in ("random.random", "Tensor.uniform_"):
                raise AssertionError(f"official draw {fn} at step {k} has no keras_ebm kind")
        add("reinit", reinit)
        add("init_uniform", init)
    return draws


class EncoderTap:
    """Catches the encoder optimizer's gradients (before the coupled weight decay) and rates."""

    def __init__(self, trainer):
        self.grads, self.lr = [], []
        opt, wd = trainer.encoder_optimizer, float(trainer.encoder_weight_decay)
        apply = opt.apply

        def apply_(grads, variables):
            self.grads.append([np.asarray(g) - wd * np.asarray(v) for g, v in zip(grads, variables)])
            self.lr.append(float(opt.learning_rate))
            return apply(grads, variables)

        opt.apply = apply_


def run_parity(precision, compute=None, **build):
    """Replay the `precision` golden file, computing in `compute` (default the same precision)."""
    golden = pc.Golden("clel", precision)
    compare = pc.comparer(METHOD, precision)
    compute = compute or precision
    steps = golden.meta["steps"]
    draws = replay_draws(golden, steps, float(settings(golden)["sampler.memory_init"]))
    eval_view = pc.nhwc(golden["draw/eval/000"])
    with pc.float_precision(compute):
        trainer = build_trainer(golden, **build)
        layout = official_layout(golden, trainer)
    with pc.float_precision(compute), random_draws.replay(draws) as replay:
        tap, encoder_tap = pc.StepTap(trainer), EncoderTap(trainer)
        ebm_names = {id(v): n for n, (v, _) in layout.items() if n.startswith("ebm.")}
        enc_names = {id(v): n for n, (v, _) in layout.items() if n.startswith("encoder.")}
        for k in range(steps):
            x = pc.nhwc(golden[f"batch/{k}/x_pos"])
            trainer.train_step((x, np.zeros(len(x), np.int32)))
            logs = tap.logs[-1]
            for official, ours in LOSSES.items():
                compare("loss", f"step {k} {official}", logs[ours], golden[f"step/{k}/loss/{official}"])
            compare("loss", f"step {k} e_diff", -logs["energy_gap"], golden[f"step/{k}/loss/e_diff"])
            compare("loss", f"step {k} lr_ebm", tap.lr[-1], golden[f"step/{k}/opt/lr_ebm"])
            compare("loss", f"step {k} lr_encoder", encoder_tap.lr[-1], golden[f"step/{k}/opt/lr_encoder"])
            pc.compare_samples(compare, golden, k, "x_neg", pc.nchw(tap.samples[-1]))
            if k == 0:
                for variables, grads, names in (
                    (trainer.ebm_variables(), tap.grads[0], ebm_names),
                    (trainer.encoder_variables(), encoder_tap.grads[0], enc_names),
                ):
                    for variable, g in zip(variables, grads):
                        name = names[id(variable)]
                        compare("grad", name, layout[name][1](g), golden[f"step/0/grad/{name}"])
            compare_state(compare, golden, k, trainer, layout)
        pc.compare_final_buffer(compare, golden, trainer, "memory")
        if any(replay.remaining().values()):
            compare.failures.append(f"unused official draws {replay.remaining()}")
        compare_eval(compare, golden, trainer, eval_view)
    return compare


def compare_state(compare, golden, k, trainer, layout):
    """Probes after step k: weights, SN vectors, BN statistics, EMA copies, both optimizers' slots."""
    for name, p in golden.under(f"step/{k}/probe/param").items():
        if name not in layout:
            assert name.endswith(("mean", "std", "num_batches_tracked")), f"{name} has no keras_ebm weight"
            continue
        variable, to_official = layout[name]
        kind = "bn" if "running_" in name else "weights"
        compare(kind, f"step {k} {name}", pc.probe(to_official(variable.numpy())), p)
    adam, sgd = trainer.optimizer, trainer.encoder_optimizer
    for name, p in golden.under(f"step/{k}/probe/opt/ebm").items():
        param, slot = name.rsplit("/", 1)
        variable, to_official = layout["ebm." + param]
        i = adam._get_variable_index(variable)
        if slot == "step":
            compare("slots", f"step {k} Adam step", int(adam.iterations), p.reshape(()))
        else:
            ours = (adam._momentums if slot == "exp_avg" else adam._velocities)[i]
            compare("slots", f"step {k} ebm.{param}/{slot}", pc.probe(to_official(ours.numpy())), p)
    for name, p in golden.under(f"step/{k}/probe/opt/encoder").items():
        param, slot = name.rsplit("/", 1)
        assert slot == "momentum_buffer", name
        variable, to_official = layout["encoder." + param]
        ours = sgd.momentums[sgd._get_variable_index(variable)]
        compare("slots", f"step {k} encoder.{param}/{slot}", pc.probe(to_official(ours.numpy())), p)


def compare_eval(compare, golden, trainer, eval_view):
    """The recorder's `evaluate`: EMA and online networks in inference mode, `compute_ood_scores`."""
    x = pc.nhwc(golden["eval/x"])

    def unit(v):
        v = np.asarray(v, np.float64)
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    f = trainer.ema_network(x)
    compare("eval", "ema_ebm_f", f, golden["eval/ema_ebm_f"])
    compare(
        "eval", "ema_ebm_z (direction)", unit(trainer.latent(f, trainer.ema_projection)), unit(golden["eval/ema_ebm_z"])
    )
    compare("eval", "ema_encoder_y", trainer.ema_encoder(x), golden["eval/ema_encoder_y"])
    f = trainer.network(x, training=False)
    compare("eval", "ebm_f", f, golden["eval/ebm_f"])
    compare("eval", "ebm_z (direction)", unit(trainer.latent(f, trainer.projection)), unit(golden["eval/ebm_z"]))
    compare("eval", "energy", trainer._energy(x), golden["eval/energy"])
    compare("eval", "encoder_y", trainer.encoder(x, training=False), golden["eval/encoder_y"])
    # compute_ood_scores: the online networks (our scores use the EMA ones: copy them over, as
    # test_ood.py's use_ema copies the other way), beta = the model's beta, h of an augmented view.
    for ema in (trainer.ema_network, trainer.ema_projection, trainer.ema_encoder):
        ema.update(0.0)
    trainer.ood_beta = float(trainer.beta)
    scores = trainer.scores(x, encoder_x=eval_view)
    compare("eval", "ood_score (s(x) = -ours['clel'])", -np.asarray(scores["clel"]), golden["eval/ood_score"])


@pytest.mark.parametrize("precision", pc.PRECISIONS)
def test_clel_parity(precision):
    run_parity(precision).check()


# One break in the default suite, the others (15-30 s each) in the slow one.
@pytest.mark.parametrize(
    "break_",
    ["first_view"]
    + [pytest.param(b, marks=pytest.mark.slow) for b in ("after_step", "keras_sgd", "biased_bn", "v_first")],
)
def test_clel_parity_fails_on_a_break(break_):
    """The parity test sees: the first SimCLR view as guidance view, the EMA after the update,
    Keras' SGD momentum under the cosine rate, Keras' biased BN moving variance, the older
    spectral-norm power iteration order (v first)."""
    build = {
        "first_view": {"guidance_view": "first_view"},
        "after_step": {"ema_timing": "after_step"},
        "keras_sgd": {"encoder_sgd": keras.optimizers.SGD},
        "biased_bn": {"bn_unbiased": False},
        "v_first": {"sn_order": "v_first"},
    }[break_]
    assert run_parity("float64", **build).failures, f"the parity test did not notice the break {break_}"
