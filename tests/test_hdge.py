"""HDGE: the contrastive loss by hand, alpha limits, queue bookkeeping, distribution, real CIFAR-10."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    digits_arrays,
    fit_one_device_and_two_replicas,
    run_briefly,
    run_lifecycle,
    tiny_network,
)
from keras_ebm.losses.hdge import hdge_contrastive_loss, hdge_loss
from keras_ebm.sampling import SGLDSampler
from keras_ebm.trainers.hdge import HDGE
from keras_ebm.trainers.hdge.queue import FeatureQueue
from keras_ebm.trainers.softmax import SoftmaxClassifier

TAU = 0.1

# Hand-built example: 4 samples, 3 classes. Each logit row has a round L2 norm.
LOGITS = np.array([[3, 4, 0], [0, 0, 2], [-4, 0, 3], [0, -2, 0]], "float32")  # norms 5, 2, 5, 2
LABELS = np.array([1, 2, 0, 1], "int32")
# Raw queue rows, norms 10, 5, 2, 3 -> unit rows [.6 0 .8], [0 1 0], [0 0 -1], [1/3 2/3 2/3].
QUEUE = np.array([[6, 0, 8], [0, 5, 0], [0, 0, -2], [1, 2, 2]], "float32")
MASK = np.array([True, True, True, False])  # the last slot is "unfilled"

# Normalised logit at the label, p_y: 4/5, 2/2, -4/5, -2/2.
P_Y = np.array([0.8, 1.0, -0.8, -1.0])
# Unit queue rows at each sample's label, q_k[y_n] (row n, column k).
Q_Y = np.array(
    [
        [0.0, 1.0, 0.0, 2 / 3],  # y = 1
        [0.8, 0.0, -1.0, 2 / 3],  # y = 2
        [0.6, 0.0, 0.0, 1 / 3],  # y = 0
        [0.0, 1.0, 0.0, 2 / 3],  # y = 1
    ]
)


def _lse(v, axis=-1):
    m = np.max(v, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(v - m), axis=axis))


def _infonce(pos, neg, mask):
    """-log exp(pos/tau) / (exp(pos/tau) + sum over unmasked k of exp(neg_k/tau)), per row."""
    scores = np.concatenate([pos[:, None], np.where(mask[None, :], neg, -np.inf)], axis=1) / TAU
    return _lse(scores) - pos / TAU


@pytest.mark.parametrize("score", ["logit", "code"])
@pytest.mark.parametrize("masked", [True, False])
def test_contrastive_loss_matches_hand_computation(score, masked):
    if score == "logit":  # eq. 15: s = p_y
        pos, neg = P_Y, Q_Y
    else:  # code: s = logsumexp_c(onehot_c * p_c) = log(exp(p_y) + (C - 1) * exp(0)), C = 3
        pos, neg = np.log(np.exp(P_Y) + 2.0), np.log(np.exp(Q_Y) + 2.0)
    mask = MASK if masked else np.ones(4, bool)
    expected = _infonce(pos, neg, mask)
    got = hdge_contrastive_loss(
        LOGITS, LABELS, QUEUE, temperature=TAU, score=score, queue_mask=MASK if masked else None
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    if score == "logit" and masked:
        # Sample 1 fully by hand: p_y = 1, negatives 0.8, 0, -1 ->
        # log(e^10 + e^8 + e^0 + e^-10) - 10 = log(1 + e^-2 + e^-10 + e^-20) = 0.126968...
        np.testing.assert_allclose(got.numpy()[1], np.log(1 + np.exp(-2) + np.exp(-10) + np.exp(-20)), rtol=1e-5)
        np.testing.assert_allclose(got.numpy()[1], 0.126968, atol=2e-6)
    # The masked slot matters: including it changes every loss.
    other = hdge_contrastive_loss(
        LOGITS, LABELS, QUEUE, temperature=TAU, score=score, queue_mask=np.ones(4, bool) if masked else MASK
    )
    assert np.all(np.abs(other.numpy() - got.numpy()) > 1e-4)


@pytest.mark.parametrize("score", ["logit", "code"])
def test_label_smoothing_matches_the_direct_einsum_form(score):
    """The O(batch * K) form equals the direct [batch, K, C] logsumexp of CODE_FACTS 1.1."""
    s, c = 0.2, 3
    dist = np.eye(c)[LABELS] * (1 - s) + s / c
    p = LOGITS / np.linalg.norm(LOGITS, axis=1, keepdims=True)
    q = QUEUE / np.linalg.norm(QUEUE, axis=1, keepdims=True)
    if score == "code":
        pos = _lse(dist * p)
        neg = _lse(np.einsum("nc,kc->nkc", dist, q))
    else:
        pos = np.sum(dist * p, axis=1)
        neg = dist @ q.T
    expected = _infonce(pos, neg, MASK)
    got = hdge_contrastive_loss(LOGITS, LABELS, QUEUE, temperature=TAU, score=score, label_smoothing=s, queue_mask=MASK)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_empty_queue_gives_zero_loss_and_gradient():
    logits = tf.constant(LOGITS)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = hdge_contrastive_loss(logits, LABELS, np.zeros((4, 3), "float32"), queue_mask=np.zeros(4, bool))
    np.testing.assert_array_equal(loss.numpy(), np.zeros(4))
    np.testing.assert_array_equal(tape.gradient(loss, logits).numpy(), np.zeros((4, 3)))


def test_hdge_loss_alpha_limits():
    logits = tf.constant(LOGITS)
    ce_fn = lambda l: keras.losses.sparse_categorical_crossentropy(LABELS, l, from_logits=True)  # noqa: E731
    hdge_fn = lambda l, a: hdge_loss(l, LABELS, QUEUE, alpha=a, queue_mask=MASK)  # noqa: E731
    con = hdge_contrastive_loss(logits, LABELS, QUEUE, queue_mask=MASK).numpy()
    for alpha, _want in ((1.0, ce_fn), (0.0, None), (0.3, None)):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            got = hdge_fn(logits, alpha)
            ref = ce_fn(logits)
        if alpha == 1.0:  # exactly the cross-entropy, value and gradient
            np.testing.assert_array_equal(got.numpy(), ref.numpy())
            np.testing.assert_array_equal(tape.gradient(got, logits).numpy(), tape.gradient(ref, logits).numpy())
        else:
            np.testing.assert_allclose(got.numpy(), alpha * ref.numpy() + (1 - alpha) * con, rtol=1e-6)
    with pytest.raises(ValueError, match="Received: alpha=1.5"):
        hdge_loss(logits, LABELS, QUEUE, alpha=1.5)
    with pytest.raises(ValueError, match="Received: score='cosine'"):
        hdge_contrastive_loss(logits, LABELS, QUEUE, score="cosine")


# The HDGE tests' network: one strided convolution, global average pooling, kernels of seed 3.
tiny_net = functools.partial(tiny_network, seed=3, widths=(8,), pool="average")


def tiny_hdge(image_shape=(8, 8, 1), **kwargs):
    """HDGE over `tiny_net(image_shape)`, 10 classes; `kwargs` go to HDGE."""
    return HDGE(tiny_net(image_shape), image_shape=image_shape, num_classes=10, **kwargs)


def _prefill(queue, rows):
    # Cross-replica assignment writes every mirror: the same starting queue on 1 or 2 devices.
    padded = np.zeros((queue.size, queue.dim), "float32")
    padded[: len(rows)] = rows
    queue.queue.assign(padded)
    queue.pointer.assign(len(rows) % queue.size)
    queue.count.assign(len(rows))


def test_alpha_one_is_exactly_cross_entropy_loss_and_gradients():
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 8).astype("int32")
    network = tiny_net((8, 8, 1))
    hdge = HDGE(network, image_shape=(8, 8, 1), num_classes=10, alpha=1.0, queue_size=16)
    softmax = SoftmaxClassifier(network, image_shape=(8, 8, 1), num_classes=10)
    _prefill(hdge.queue, rng.normal(size=(12, 10)))
    results = []
    for trainer in (hdge, softmax):
        batch = trainer.unpack_batch((x, y))
        with tf.GradientTape() as tape:
            logs = trainer.compute_losses(batch, trainer.sample_negatives(batch))
        results.append((logs, tape.gradient(logs["loss"], network.trainable_variables)))
    (h_logs, h_grads), (s_logs, s_grads) = results
    assert float(h_logs["contrastive_loss"]) > 0.1  # it is computed and reported, not added
    np.testing.assert_array_equal(h_logs["loss"].numpy(), s_logs["loss"].numpy())
    np.testing.assert_array_equal(h_logs["clf_loss"].numpy(), s_logs["clf_loss"].numpy())
    for a, b in zip(h_grads, s_grads):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # alpha < 1 mixes the two terms.
    hdge.alpha = 0.25
    assert hdge.clf_weight == 0.25  # alpha is the cross-entropy weight of JEM's total
    logs = hdge.compute_losses(batch, None)
    np.testing.assert_allclose(logs["loss"], 0.25 * logs["clf_loss"] + 0.75 * logs["contrastive_loss"], rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("score", ["code", "logit"])
def test_trainer_loss_is_the_pure_hdge_loss(alpha, label_smoothing, score):
    """The trainer's total (JEM's weighting) equals `losses.hdge_loss`, label smoothing included."""
    from keras_ebm.losses import hdge_loss

    rng = np.random.RandomState(2)
    x = rng.uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 8).astype("int32")
    model = tiny_hdge(
        alpha=alpha,
        queue_size=16,
        label_smoothing=label_smoothing,
        score=score,
        temperature=0.5,
    )
    _prefill(model.queue, rng.normal(size=(12, 10)))
    batch = model.unpack_batch((x, y))
    logs = model.compute_losses(batch, model.sample_negatives(batch))
    expected = tf.reduce_mean(
        hdge_loss(
            model(x),
            y,
            model.queue.values(),
            alpha=alpha,
            temperature=0.5,
            score=score,
            label_smoothing=label_smoothing,
            queue_mask=model.queue.valid_mask(),
        )
    )
    np.testing.assert_allclose(logs["loss"].numpy(), expected.numpy(), rtol=1e-5)
    if label_smoothing:  # the smoothed cross-entropy, not the plain one, is what the trainer reports
        plain = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True))
        assert abs(float(logs["clf_loss"]) - float(plain)) > 1e-4


def test_train_step_reads_the_queue_then_enqueues_the_raw_logits():
    rng = np.random.RandomState(1)
    x = rng.uniform(-1, 1, (16, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 16).astype("int32")
    model = tiny_hdge(queue_size=12)
    assert model.buffer is None  # pure HDGE samples nothing
    assert set(model.tracked_names) == {"loss", "clf_loss", "contrastive_loss", "clf_acc", "queue_fill"}
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # lr 0: the logits are reproducible after the step
    first = model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0, shuffle=False).history
    # The loss saw the empty queue (no fake negatives): exactly zero, and a fill of 0.
    assert first["contrastive_loss"] == [0.0] and first["queue_fill"] == [0.0]
    np.testing.assert_allclose(first["loss"][0], 0.5 * first["clf_loss"][0], rtol=1e-6)
    # ...then the step's raw (unnormalised) logits were enqueued.
    np.testing.assert_allclose(model.queue.values().numpy()[:8], model(x[:8]).numpy(), rtol=1e-5, atol=1e-6)
    assert int(model.queue.count.numpy()) == 8
    second = model.fit(x[8:], y[8:], batch_size=8, epochs=1, verbose=0, shuffle=False).history
    assert second["contrastive_loss"][0] > 0.0
    np.testing.assert_allclose(second["queue_fill"][0], 8 / 12)
    # 12 is not a multiple of 8: the second batch filled slots 8..11 and wrapped to 0..3.
    np.testing.assert_allclose(
        model.queue.values().numpy()[[8, 9, 10, 11, 0, 1, 2, 3]], model(x[8:]).numpy(), rtol=1e-5, atol=1e-6
    )
    assert int(model.queue.pointer.numpy()) == 4


def test_arguments_are_validated():
    net = tiny_net((8, 8, 1))
    with pytest.raises(ValueError, match="pass alpha instead"):
        HDGE(net, (8, 8, 1), 10, clf_weight=1.0)
    with pytest.raises(ValueError, match="Received: score='dot'"):
        HDGE(net, (8, 8, 1), 10, score="dot")
    with pytest.raises(ValueError, match="Received: queue.dim=4"):
        HDGE(net, (8, 8, 1), 10, queue=FeatureQueue(8, 4))
    with pytest.raises(ValueError, match="Received: queue_init='ones'"):
        HDGE(net, (8, 8, 1), 10, queue_init="ones")
    # The code's random initial queue is used as negatives from the first step.
    model = HDGE(net, (8, 8, 1), 10, queue_size=8, queue_init="random_normal", seed=0)
    assert float(model.queue.fill_fraction()) == 1.0 and np.std(model.queue.values().numpy()) > 0.5


def test_one_device_and_two_replicas_agree(two_device_strategy):
    rng = np.random.RandomState(2)
    x = rng.uniform(-1, 1, (64, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 64).astype("int32")
    prefill = rng.normal(size=(30, 10)).astype("float32")

    def build():
        # queue 40, global batch 16: 30 prefilled rows, the first step fills it, later ones wrap.
        model = tiny_hdge(queue_size=40, seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        _prefill(model.queue, prefill)
        return model

    agree = ("loss", "clf_loss", "contrastive_loss", "queue_fill")
    results = fit_one_device_and_two_replicas(two_device_strategy, build, x, y, batch_size=16, agree=agree)
    q1, q2 = ([v.numpy() for v in s.experimental_local_results(m.queue.queue.value)] for _, m, s in results)
    assert results[0][0]["contrastive_loss"][-1] > 0.1
    assert len(q2) == 2
    np.testing.assert_array_equal(q2[0], q2[1])  # the two replicas hold the same global queue
    np.testing.assert_allclose(q1[0], q2[0], atol=1e-4)  # ...which is the one-device queue


def test_fit_on_real_cifar10_fills_the_queue(cifar10_arrays):
    x, y = cifar10_arrays(128)
    model = tiny_hdge((32, 32, 3), queue_size=100, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False).history
    assert all(np.all(np.isfinite(v)) for v in history.values()), history
    assert history["contrastive_loss"][-1] > 0.0 and history["queue_fill"][-1] == 1.0
    assert float(model.queue.fill_fraction()) == 1.0
    assert np.all(np.isfinite(model.queue.values().numpy()))


def test_hdge_plus_jem_fits_on_real_cifar10(cifar10_arrays):
    x, y = cifar10_arrays(64)
    model = tiny_hdge(
        (32, 32, 3),
        queue_size=50,
        px_weight=1.0,
        buffer_size=64,
        sampler=SGLDSampler(n_steps=2, step_size=1.0, noise_std=0.01),
        seed=0,
    )
    assert {"px_loss", "energy_gap", "sgld_grad_norm"} <= set(model.tracked_names)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    buffer_before = model.buffer.buffer.numpy().copy()
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False).history
    assert all(np.all(np.isfinite(v)) for v in history.values()), history
    assert history["px_loss"][-1] != 0.0 and history["contrastive_loss"][-1] > 0.0
    assert not np.allclose(buffer_before, model.buffer.buffer.numpy())  # SGLD chains written back
    assert int(model.queue.count.numpy()) == 50
    # total = alpha * clf + (1 - alpha) * contrastive + px_weight * px (eq. 17 up to the alpha split).
    batch = model.unpack_batch((x[:32], y[:32]))
    logs = model.compute_losses(batch, model.sample_negatives(batch), training=False)
    np.testing.assert_allclose(
        logs["loss"], 0.5 * logs["clf_loss"] + 0.5 * logs["contrastive_loss"] + logs["px_loss"], rtol=1e-5
    )


def test_resume_continues_the_queue_like_an_uninterrupted_run(tmp_path):
    # Stopped after the step-2 checkpoint and resumed to step 4: the queue rows, pointer and fill
    # count, the weights and the Adam slots equal those of a run that never stopped.
    rng = np.random.RandomState(5)
    x = rng.uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    y = rng.randint(0, 10, 8).astype("int32")

    def data_fn(input_context=None):  # every batch the same 8 images: the data order cannot differ
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8, drop_remainder=True)

    def run(model_dir, steps):
        trainer = lambda: tiny_hdge(queue_size=20)  # noqa: E731
        return run_briefly(model_dir, trainer, lambda: keras.optimizers.Adam(1e-2), data_fn, steps, 2)

    straight = run(tmp_path / "straight", 4)
    first = run(tmp_path / "resumed", 2)
    assert int(first.queue.count.numpy()) == 16
    resumed = run(tmp_path / "resumed", 4)
    assert int(resumed.queue.count.numpy()) == int(straight.queue.count.numpy()) == 20
    assert int(resumed.queue.pointer.numpy()) == int(straight.queue.pointer.numpy()) == 12  # 32 rows mod 20
    np.testing.assert_allclose(resumed.queue.values().numpy(), straight.queue.values().numpy(), rtol=1e-5, atol=1e-6)
    for a, b in zip(straight.variables + straight.optimizer.variables, resumed.variables + resumed.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert not np.allclose(first.queue.values().numpy(), resumed.queue.values().numpy())


def _hdge(variant):
    if variant == "hdge":
        return tiny_hdge(queue_size=24, seed=0)
    if variant == "hdge_code_queue":  # the official code's random initial queue, smoothing, eq. 15 score
        return tiny_hdge(
            alpha=0.3,
            queue_size=20,
            queue_init="random_normal",
            label_smoothing=0.1,
            score="logit",
            temperature=0.5,
            seed=1,
        )
    return tiny_hdge(
        queue_size=24,
        px_weight=0.5,
        pxy_weight=0.5,
        buffer_size=20,
        sampler=SGLDSampler(n_steps=2, step_size=1.0, noise_std=0.01),
        seed=2,
    )


@pytest.mark.parametrize("variant", ["hdge", "hdge_code_queue", "hdge_jem"])
def test_smoke_checkpoint_and_keras_file_round_trips(variant, tmp_path):
    x, y = digits_arrays(64)
    trainer = _hdge(variant)
    loaded = run_lifecycle(trainer, x, y, tmp_path, make=lambda: _hdge(variant))
    # The queue (rows, pointer, fill count) is state of the file; its settings are config.
    assert loaded.queue.get_config() == trainer.queue.get_config()
    assert int(loaded.queue.count.numpy()) == int(trainer.queue.count.numpy()) > 0
    assert loaded.alpha == trainer.alpha and loaded.tracked_names == trainer.tracked_names


# --- The HDGE configs reproduce the paper rows their headers name ------------------------------
# Liu & Abbeel 2020: Table 1 (96.7 / 80.9 / 96.4) is WRN-28-10 *with* BN, section 4.1 recipe (SGD,
# x0.2 at epochs 60/120/160, batch 256, 200 epochs; the code's "for accuracy" lr 0.1, wd 5e-4,
# dropout 0.3, no warmup). Tables 2-4 / Figures 1-2 are WRN-28-10 without BN, trained with the
# official code's README recipe (Adam 1e-4, warmup 1000, x0.3 at 160/180 of 200, batch 64).

CIFAR_TRAIN = 50000
EPOCHS = 200
_BN_SGD = dict(
    norm="batch",
    bn_momentum=0.1,
    bn_epsilon=1e-5,
    dropout=0.3,
    optimizer="keras.optimizers.SGD",
    momentum=0.9,
    nesterov=False,
    decay_epochs=(60, 120, 160),
    decay_factor=0.2,
    warmup=0,
    batch=256,
    code_lr=0.1,
    code_weight_decay=5e-4,
    guard=None,
    px_weight=0.0,
)
_NOBN_ADAM = dict(
    norm=None,
    dropout=0.0,
    optimizer="keras.optimizers.Adam",
    decay_epochs=(160, 180),
    decay_factor=0.3,
    warmup=1000,
    batch=64,
    code_lr=1e-4,
    code_weight_decay=0.0,
    guard=None,
    px_weight=0.0,
)
HDGE_ROWS = {
    "gin_configs/hdge.gin": dict(
        _BN_SGD, header=("Table 1", "HDGE (ours)", "96.7"), alpha=0.5, dataset="cifar10", classes=10
    ),
    "gin_configs/hdge_cifar100.gin": dict(
        _BN_SGD, header=("Table 1", "CIFAR100", "80.9"), alpha=0.5, dataset="cifar100", classes=100
    ),
    "gin_configs/hdge_pxy_only.gin": dict(
        _BN_SGD, header=("Table 1", "HDGE (log q(x|y) only)", "96.4"), alpha=0.0, dataset="cifar10", classes=10
    ),
    "gin_configs/hdge_nobn.gin": dict(
        _NOBN_ADAM, header=("Table 2", "Table 4", "94.6", "without BN"), alpha=0.5, dataset="cifar10", classes=10
    ),
    "gin_configs/hdge_nobn_cifar100.gin": dict(
        _NOBN_ADAM, header=("Figure 2", "4.62", "74.5", "without BN"), alpha=0.5, dataset="cifar100", classes=100
    ),
    "gin_configs/hdge_jem.gin": dict(
        _NOBN_ADAM,
        header=("Table 4", "HDGE+JEM", "94.4", "without BN"),
        alpha=0.5,
        dataset="cifar10",
        classes=10,
        px_weight=0.5,
        guard=1e8,
    ),
}


def _parse(config, params=()):
    import gin

    from keras_ebm import run_config

    gin.clear_config()
    run_config.parse_gin([config], list(params))
    return run_config


@pytest.mark.parametrize("config", sorted(HDGE_ROWS))
def test_hdge_config_binds_the_recipe_of_its_row(config):
    import gin

    row = HDGE_ROWS[config]
    with open(config if config.startswith("/") else _repo_path(config)) as f:
        header = "".join(line for line in f if line.startswith("#"))
    for text in row["header"]:
        assert text in header, f"{config}'s header does not name {text!r}"
    run_config = _parse(config)
    q, r = gin.query_parameter, run_config.resolve_parameter

    # Network
    assert q("WideResNet.depth") == 28 and q("WideResNet.width") == 10
    assert q("WideResNet.norm") == row["norm"]
    assert q("WideResNet.dropout") == row["dropout"]
    if row["norm"] == "batch":  # Keras momentum 0.1 = the code's PyTorch BatchNorm2d(momentum=0.9)
        assert q("WideResNet.bn_momentum") == row["bn_momentum"]
        assert q("WideResNet.bn_epsilon") == row["bn_epsilon"]

    # Data: batch, steps = 200 epochs of the 50k training images, augmentation + 0.03 noise
    batch = row["batch"]
    steps_per_epoch = CIFAR_TRAIN // batch
    assert r("%GLOBAL_BATCH_SIZE") == batch and r("%DATASET") == row["dataset"]
    assert r("%NUM_CLASSES") == row["classes"] and r("build_classifier.num_classes") == row["classes"]
    assert r("%STEPS_PER_EPOCH") == steps_per_epoch == r("epoch_step_decay.steps_per_epoch")
    assert r("run_training.train_steps") == EPOCHS * steps_per_epoch
    loader = "make_two_branch_dataset_fn" if row["px_weight"] else "make_dataset_fn"
    assert q("run_training.train_data").selector.endswith(loader)
    if row["px_weight"]:
        assert r("train/make_two_branch_dataset_fn.clf_batch_size") == batch
        assert r("train/make_two_branch_dataset_fn.px_batch_size") == batch
        assert r("train/make_two_branch_dataset_fn.dequantize_noise") == 0.03
    else:
        assert r("train/make_dataset_fn.global_batch_size") == batch
        assert r("train/make_dataset_fn.augment") == "pad_crop_flip"
        assert r("train/make_dataset_fn.dequantize_noise") == 0.03

    # HDGE (section 4: K = 65536, tau = 0.1; eq. 14 alpha)
    assert r("HDGE.queue_size") == 65536 and r("%QUEUE_SIZE") == 65536
    assert q("HDGE.temperature") == 0.1 and q("HDGE.alpha") == row["alpha"]
    assert q("HDGE.score") == "code" and q("HDGE.label_smoothing") == 0.0
    assert q("HDGE.px_weight") == row["px_weight"]

    # Optimizer and schedule
    opt_name = row["optimizer"]
    assert q("run_training.optimizer").selector == opt_name
    opt = run_config.resolve_run_training()["optimizer"]()
    assert isinstance(opt, keras.optimizers.SGD if opt_name.endswith("SGD") else keras.optimizers.Adam)
    if opt_name.endswith("SGD"):
        assert opt.momentum == row["momentum"] and opt.nesterov == row["nesterov"]
    lr = q("epoch_step_decay.initial_learning_rate")
    wd = q("HDGE.weight_decay")
    if opt_name.endswith("SGD"):
        # SGD sees the loss scale: alpha * CE + (1 - alpha) * L is (1 - alpha) times the code's
        # CE + L (alpha = 0.5) or L alone (alpha = 0), so lr * (1 - alpha) and wd / (1 - alpha) are
        # the code's lr 0.1 and weight decay 5e-4.
        scale = 1.0 - row["alpha"]
        np.testing.assert_allclose(lr * scale, row["code_lr"], rtol=1e-12)
        np.testing.assert_allclose(wd / scale, row["code_weight_decay"], rtol=1e-12)
    else:  # Adam's update does not see the scale
        assert lr == row["code_lr"] and wd == row["code_weight_decay"]
    assert tuple(q("epoch_step_decay.decay_epochs")) == row["decay_epochs"]
    assert q("epoch_step_decay.decay_factor") == row["decay_factor"]
    assert q("epoch_step_decay.warmup_steps") == row["warmup"]
    schedule = r(f"{opt_name}.learning_rate")
    for i, epoch in enumerate(row["decay_epochs"]):
        boundary = epoch * steps_per_epoch
        np.testing.assert_allclose(float(schedule(boundary - 1)), lr * row["decay_factor"] ** i, rtol=1e-6)
        # (PiecewiseConstantDecay keeps the old rate at step == boundary.)
        np.testing.assert_allclose(float(schedule(boundary + 1)), lr * row["decay_factor"] ** (i + 1), rtol=1e-6)
    if row["warmup"]:
        assert float(schedule(0)) < lr / 100
    else:
        np.testing.assert_allclose(float(schedule(0)), lr, rtol=1e-6)

    # Divergence guard (hdge_jem: the code's |L| > 1e8)
    if row["guard"] is None:
        with pytest.raises(ValueError):
            q("run_training.divergence_guard")
    else:
        guard = r("run_training.divergence_guard")
        assert type(guard).__name__ == "DivergenceGuard" and guard.threshold == row["guard"]


def _repo_path(path):
    import os

    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)


@pytest.mark.parametrize(
    "config, bn, dropout", [("gin_configs/hdge.gin", True, 0.3), ("gin_configs/hdge_nobn.gin", False, 0.0)]
)
def test_hdge_config_builds_the_backbone_it_names(config, bn, dropout):
    # The same bindings on a WRN-10-1: BN layers with Keras momentum 0.1 / eps 1e-5 and dropout 0.3
    # between the convolutions (hdge.gin), or neither (hdge_nobn.gin).
    run_config = _parse(
        _repo_path(config), ["WideResNet.depth = 10", "WideResNet.width = 1", "WideResNet.input_shape = (8, 8, 3)"]
    )
    backbone = run_config.resolve_parameter("build_classifier.backbone")
    norms = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    drops = [l for l in backbone.layers if isinstance(l, keras.layers.Dropout)]
    assert len(norms) == (2 * 1 * 3 + 1 if bn else 0)
    assert all(l.momentum == 0.1 and l.epsilon == 1e-5 for l in norms)
    assert len(drops) == (3 if dropout else 0) and all(l.rate == dropout for l in drops)


def test_hdge_jem_keeps_the_no_bn_hdge_recipe():
    # hdge_jem.gin = hdge_nobn.gin + JEM's log q(x) term + the guard: every hdge_nobn binding it
    # does not deliberately override is unchanged.
    import gin

    def bindings(config):
        _parse(_repo_path(config))
        out = {}
        for (scope, selector), params in gin.config._CONFIG.items():
            for name, value in params.items():
                out[(scope, selector, name)] = repr(value)
        return out

    nobn, jem = bindings("gin_configs/hdge_nobn.gin"), bindings("gin_configs/hdge_jem.gin")
    changed = {k[1].rsplit(".", 1)[-1] + "." + k[2] for k in nobn if jem.get(k) != nobn[k]}
    assert changed == {"run_training.train_data", "HDGE.px_weight"}, changed
