"""The base trainer and the softmax baseline: fit lowers the loss, distribution is exact, errors are clear,
checkpoints and .keras files round-trip."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    digits_arrays,
    every_trainer,
    run_lifecycle,
    run_serialization_test,
    run_trainer_smoke_test,
    tiny_network,
)
from keras_ebm import energy
from keras_ebm.trainers import SoftmaxClassifier


def make_trainer(**kwargs):
    return SoftmaxClassifier(tiny_network(), image_shape=(8, 8, 1), num_classes=10, **kwargs)


def test_fit_lowers_loss_on_real_digits():
    x, y = digits_arrays(512)
    trainer = make_trainer()
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = trainer.evaluate(x, y, verbose=0, return_dict=True)
    trainer.fit(x, y, batch_size=64, epochs=4, verbose=0)
    after = trainer.evaluate(x, y, verbose=0, return_dict=True)
    assert after["clf_loss"] < before["clf_loss"] - 0.3
    assert after["clf_acc"] > before["clf_acc"] + 0.2


def test_reported_energy_matches_convention():
    x, y = digits_arrays(32)
    trainer = make_trainer()
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = trainer.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    logits = trainer(x).numpy()
    expected = -np.log(np.exp(logits).sum(-1)).mean()
    np.testing.assert_allclose(logs["energy_data"], expected, rtol=1e-5)
    np.testing.assert_allclose(trainer.energy(x).numpy(), energy.energy_from_logits(logits).numpy(), rtol=1e-6)


def _train(strategy, x, y, steps=3, use_fit=True, weight_decay=0.0, momentum=0.0):
    with strategy.scope():
        trainer = make_trainer(weight_decay=weight_decay)
        trainer.compile(optimizer=keras.optimizers.SGD(0.5, momentum=momentum))
        trainer(x[:1])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).take(steps)
    if use_fit:
        history = trainer.fit(ds, epochs=1, verbose=0, shuffle=False)
        loss = history.history["loss"][-1]
    else:  # the custom loop of keras_ebm.training: strategy.run(train_step) + cross-replica reads
        with strategy.scope():  # momentum slots are variables: create them under the strategy
            trainer.optimizer.build(trainer.trainable_variables)
        dist = strategy.experimental_distribute_dataset(ds)

        @tf.function
        def step(batch):
            strategy.run(trainer.train_step, args=(batch,))
            return {m.name: m.result() for m in trainer.metrics}

        for batch in dist:
            logs = step(batch)
        loss = float(logs["loss"])
    return loss, [w.numpy() for w in trainer.network.weights]


@pytest.mark.parametrize("use_fit", [True, False])
def test_one_device_and_two_replicas_agree(two_device_strategy, use_fit):
    x, y = digits_arrays(96)
    loss_1, weights_1 = _train(tf.distribute.get_strategy(), x, y, use_fit=use_fit)
    loss_2, weights_2 = _train(two_device_strategy, x, y, use_fit=use_fit)
    np.testing.assert_allclose(loss_1, loss_2, rtol=1e-5)
    for a, b in zip(weights_1, weights_2):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The step really moved the weights (otherwise the comparison proves nothing).
    initial = make_trainer().network.weights
    assert not np.allclose(initial[0].numpy(), weights_1[0])


def test_coupled_weight_decay_is_pytorch_sgd_and_replicas_agree(two_device_strategy):
    """`weight_decay` adds wd * w to the gradient before SGD's momentum (PyTorch SGD semantics)."""
    x, y = digits_arrays(96)
    wd, lr, momentum = 0.05, 0.5, 0.9
    _, trained = _train(tf.distribute.get_strategy(), x, y, weight_decay=wd, momentum=momentum, use_fit=False)
    _, replicas = _train(two_device_strategy, x, y, weight_decay=wd, momentum=momentum, use_fit=False)
    # Reference: torch.optim.SGD(lr, momentum, weight_decay=wd) written out by hand.
    net = make_trainer().network
    buf = [np.zeros_like(w.numpy()) for w in net.trainable_weights]
    for i in range(3):
        xb, yb = x[32 * i : 32 * (i + 1)], y[32 * i : 32 * (i + 1)]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, net(xb), from_logits=True))
        grads = tape.gradient(loss, net.trainable_weights)
        for j, (g, w) in enumerate(zip(grads, net.trainable_weights)):
            d = g.numpy() + wd * w.numpy()
            buf[j] = momentum * buf[j] + d if i else d
            w.assign(w.numpy() - lr * buf[j])
    for a, b, c in zip(trained, replicas, [w.numpy() for w in net.weights]):
        np.testing.assert_allclose(a, c, atol=1e-5)
        np.testing.assert_allclose(b, c, atol=1e-5)
    _, no_decay = _train(tf.distribute.get_strategy(), x, y, momentum=momentum, use_fit=False)
    assert not np.allclose(no_decay[0], trained[0], atol=1e-4)  # the decay term is not negligible here
    with pytest.raises(ValueError, match="weight_decay"):
        make_trainer(weight_decay=-1.0)


def test_wrong_image_shape_is_a_clear_error():
    trainer = make_trainer()
    trainer.compile(optimizer="sgd")
    x = np.zeros((4, 16, 16, 3), "float32")
    with pytest.raises(ValueError, match=r"built for images of shape \[batch, 8, 8, 1\]"):
        trainer.fit(x, np.zeros(4, "int32"), verbose=0)


def test_uint8_images_are_a_clear_error():
    trainer = make_trainer()
    trainer.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="to_pixel_range"):
        trainer.fit(np.zeros((4, 8, 8, 1), "uint8"), np.zeros(4, "int32"), verbose=0)


def test_nan_inputs_are_a_clear_error():
    trainer = make_trainer()
    trainer.compile(optimizer="sgd")
    x = np.zeros((4, 8, 8, 1), "float32")
    x[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):  # numpy arrays: checked before fit traces
        trainer.fit(x, np.zeros(4, "int32"), verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):  # a dataset: the step's assert
        trainer.fit(tf.data.Dataset.from_tensor_slices((x, np.zeros(4, "int32"))).batch(4), verbose=0)


def test_two_loader_batches_are_unpacked():
    trainer = make_trainer()
    x, y = digits_arrays(8)
    batch = trainer.unpack_batch(((x[:4], y[:4]), (x[4:], y[4:])))
    np.testing.assert_array_equal(batch["x_px"].numpy(), x[4:])
    np.testing.assert_array_equal(batch["y"].numpy(), y[:4])
    single = trainer.unpack_batch((x, y))
    assert single["x_px"] is single["x"]  # one loader: JEM reuses the classifier forward pass


def test_softmax_smoke_checkpoint_and_keras_file_round_trips(tmp_path):
    x, y = digits_arrays(64)
    trainer = make_trainer(weight_decay=1e-3, seed=4)
    loaded = run_lifecycle(trainer, x, y, tmp_path, make=make_trainer)
    assert loaded.weight_decay == 1e-3 and loaded.seed == 4
    run_serialization_test(make_trainer(), x, y, tmp_path / "uncompiled")  # weights only, no optimizer
    # Compiled but never trained: the optimizer comes back unbuilt (nothing to load), then trains.
    fresh = make_trainer()
    fresh.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    fresh(x[:1])
    fresh.save(str(tmp_path / "fresh.keras"))
    reloaded = keras.saving.load_model(str(tmp_path / "fresh.keras"))
    assert reloaded.compiled and not reloaded.optimizer.built
    assert reloaded.optimizer.get_config() == fresh.optimizer.get_config()
    run_trainer_smoke_test(reloaded, x, y)


def test_every_constructor_argument_is_in_the_config():
    """`get_config` names every argument of the trainer's constructor (and of the constructors its
    **kwargs reach), except the buffer shorthands that the serialized `buffer` carries."""
    import inspect

    from keras_ebm.trainers import HDGE, EBMTrainer

    carried_by_buffer = {"buffer_size", "reinit_prob", "initializer", "buffer_replacement"}
    for trainer in every_trainer():
        expected = set()
        for cls in type(trainer).__mro__:
            if issubclass(cls, EBMTrainer) and "__init__" in vars(cls):
                params = inspect.signature(cls.__init__).parameters.values()
                expected |= {p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD} - {"self"}
        if isinstance(trainer, HDGE):
            expected.discard("clf_weight")  # HDGE refuses it: it is alpha
        config = trainer.get_config()
        assert expected - carried_by_buffer <= set(config), (type(trainer).__name__, expected - set(config))
        assert (config.get("buffer") is None) == (trainer.buffer is None)
        assert json.loads(json.dumps(config)) == json.loads(json.dumps(type(trainer).from_config(config).get_config()))
