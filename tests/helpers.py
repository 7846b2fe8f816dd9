"""Test helpers shared by the trainer tests: one tiny network, one tiny real-data batch, and the three
checks every trainer passes (a few fit steps, a checkpoint round trip, a `.keras` round trip).

- `tiny_network(...)`: the small convolutional networks of the tests, one function; its options
  rebuild each variant the tests used (and the numbers they pin) exactly.
- `digits_arrays(n)`: the first `n` images of scikit-learn's 8x8 digits in a pixel range.
- `cifar_arrays(path, n)`: the first `n` CIFAR-10 training images of the test archive.
- `ConstantInitializer`: chains that all start at one image (distribution tests).
- `run_trainer_smoke_test(trainer, x, y)`: `fit` a few steps; finite logs, moved weights.
- `run_checkpoint_roundtrip(trainer_fn, x, y, directory)`: train, checkpoint with
  `keras_ebm.callbacks.make_checkpoint`, restore into a fresh trainer: every variable equal, and the
  next step equal.
- `tiny_jem(...)`: the tiny JEM of the run / callback / guard tests (digits, buffer 64, seed 0,
  K = 2 SGLD steps of size 1, noise 0.01), unbuilt; its options override any setting.
- `run_briefly(model_dir, trainer, optimizer, train_data, steps, every)`: `run_training` for a few
  steps, no progress bar, no export unless asked.
- `run_script(args, cwd, env, timeout)`: a subprocess whose output is the message when its return
  code is not the one expected.
- `fit_one_device_and_two_replicas(two_device_strategy, build, x, y)` and
  `assert_replicas_agree(results, keys)`: the same trainer fitted on one device and on two
  replicas ends with the same logged values and network weights.
- `every_trainer()`: one tiny instance of every trainer (softmax, JEM, JEM++, SADA-JEM, HDGE, GMMC,
  CLEL), unbuilt.
- `run_serialization_test(trainer, x, y, directory)`: `trainer.save("x.keras")`,
  `keras.saving.load_model`: same class, config, variables, optimizer slots, outputs and scores,
  and the next step equal.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ebm import callbacks


def tiny_network(image_shape=(8, 8, 1), num_classes=10, seed=1, widths=(16,), pool="flatten", norm=False):
    """A tiny classifier `image_shape -> [batch, num_classes]` (or a feature backbone).

    One block per entry of `widths`: Conv2D(width, 3, strides 2, "same") [-> BatchNormalization
    (momentum 0.1, epsilon 1e-5, after the first convolution only, when `norm`)] -> LeakyReLU(0.2);
    then `pool` ("flatten" or "average": global average pooling), then Dense(num_classes). With
    `num_classes=None` the network ends at the pooled features (GMMC's backbone). Every kernel is
    drawn from one `GlorotUniform(seed)`, so a network is a function of its arguments.

    The variants the tests use:
        tiny_network()                                              softmax, callbacks, experiment
        tiny_network(shape, seed=3, widths=(16, 16), pool="average", norm=...)     JEM family
        tiny_network(shape, seed=3, widths=(8,), pool="average")                   HDGE
        tiny_network(shape, None, seed=3, widths=(8, dim), pool="average")         GMMC backbone
    """
    if pool not in ("flatten", "average"):
        raise ValueError(f"`pool` must be 'flatten' or 'average'. Received: pool={pool!r}")
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input(image_shape)
    h = inputs
    for i, width in enumerate(widths):
        h = keras.layers.Conv2D(int(width), 3, strides=2, padding="same", kernel_initializer=init)(h)
        if norm and i == 0:
            h = keras.layers.BatchNormalization(momentum=0.1, epsilon=1e-5)(h)
        h = keras.layers.LeakyReLU(0.2)(h)
    h = keras.layers.Flatten()(h) if pool == "flatten" else keras.layers.GlobalAveragePooling2D()(h)
    if num_classes is None:
        return keras.Model(inputs, h)
    return keras.Model(inputs, keras.layers.Dense(num_classes, kernel_initializer=init)(h))


def digits_arrays(n=256, pixel_range=(-1.0, 1.0), channels=1):
    """The first `n` of scikit-learn's 8x8 digits: float32 images `[n, 8, 8, channels]` in
    `pixel_range` (grey repeated over the channels) and int32 labels `[n]`."""
    from sklearn.datasets import load_digits

    lo, hi = (float(v) for v in pixel_range)
    d = load_digits()
    x = (d.images[:n, :, :, None] / 16.0 * (hi - lo) + lo).astype("float32")
    if channels != 1:
        x = np.repeat(x, channels, axis=-1)
    return x, d.target[:n].astype("int32")


def cifar_arrays(path, n=128, pixel_range=(-1.0, 1.0)):
    """The first `n` CIFAR-10 training images of the JPEG archive at `path` (the `cifar10_npz`
    fixture) as float32 numpy in `pixel_range`, and their labels."""
    from keras_ebm.data import load_arrays, to_pixel_range

    x, y = load_arrays("cifar10_jpeg", "train", max_examples=n, local_path=path)
    return to_pixel_range(x, pixel_range).numpy(), np.asarray(y)


def compile_trainer(trainer, learning_rate=1e-3):
    """Compile with Adam (CLEL: Adam for the EBM, its default SGD for the encoder)."""
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return trainer


def _fit(trainer, x, y, steps, batch_size):
    n = steps * batch_size
    return trainer.fit(x[:n], y[:n], batch_size=batch_size, epochs=1, verbose=0, shuffle=False)


def trainer_state(trainer):
    """Every variable of the trainer (weights, BN statistics, buffer, queue, EMA, RNG states) and
    of its optimizer(s) when compiled, by position, as numpy arrays; not the metrics' running
    means, which `fit` resets."""
    metric_variables = {id(v) for m in trainer.metrics for v in m.variables}
    variables = [v for v in trainer.variables if id(v) not in metric_variables]
    if trainer.compiled:
        for optimizer in trainer.optimizers.values():
            variables += list(optimizer.variables)
    return [np.asarray(v.numpy()) for v in variables]


def assert_states_equal(a, b, what):
    assert len(a) == len(b) > 0, f"{what}: {len(a)} vs {len(b)} variables"
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape, f"{what}: variable {i} has shape {u.shape} vs {v.shape}"
        np.testing.assert_array_equal(u, v, err_msg=f"{what}: variable {i}")


def assert_next_steps_equal(a, b, x, y, batch_size, what):
    """One `fit` step of each trainer on the same batch leaves them in equal states."""
    _fit(a, x, y, 1, batch_size)
    _fit(b, x, y, 1, batch_size)
    assert_states_equal(trainer_state(a), trainer_state(b), what)


def tiny_jem(network=None, *, trainer_class=None, sampler=None, **kwargs):
    """A JEM on digits (8x8x1, 10 classes) over `network` (default `tiny_network()`) with a
    64-image buffer and seed 0, sampling with `sampler` (default: SGLD, 2 steps of size 1, noise
    0.01, seed 0); `kwargs` add or override trainer options, `trainer_class` a JEM subclass."""
    from keras_ebm.sampling import SGLDSampler
    from keras_ebm.trainers.jem import JEM

    if network is None:
        network = tiny_network()
    if sampler is None:
        sampler = SGLDSampler(n_steps=2, step_size=1.0, noise_std=0.01, seed=0)
    options = dict(image_shape=(8, 8, 1), num_classes=10, buffer_size=64, seed=0)
    options.update(kwargs)
    return (trainer_class or JEM)(network, sampler=sampler, **options)


def run_briefly(model_dir, trainer, optimizer, train_data, steps, every, log_every=None, export=False, **kwargs):
    """`training.run_training` of `trainer` for `steps` steps, a checkpoint every `every` steps and
    a log line every `log_every` (default `every`), no progress bar, no export unless `export`;
    `kwargs` pass on. Returns the trained model."""
    from keras_ebm import training

    return training.run_training(
        model_dir=str(model_dir),
        trainer=trainer,
        optimizer=optimizer,
        train_data=train_data,
        train_steps=steps,
        checkpoint_every=every,
        log_every=every if log_every is None else log_every,
        export=export,
        progress=False,
        **kwargs,
    )


def run_script(args, cwd, env, timeout, returncode=0, tail=3000):
    """`subprocess.run(args)` capturing text output; asserts the return code is `returncode`,
    with the last `tail` characters of stdout and stderr as the message. Returns the process."""
    import subprocess

    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == returncode, out.stdout[-tail:] + out.stderr[-tail:]
    return out


def fit_one_device_and_two_replicas(two_device_strategy, build, x, y, batch_size=32, agree=(), weights=True):
    """`build()` (a compiled trainer) in the scope of the default strategy and of
    `two_device_strategy`, then fit each for one epoch of `(x, y)` in batches of `batch_size`, in
    order; then `assert_replicas_agree(results, agree, weights)` when `agree` names logged keys.
    Returns `[(history dict, model, strategy)]`, one device first."""
    results = []
    for strategy in (tf.distribute.get_strategy(), two_device_strategy):
        with strategy.scope():
            model = build()
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
        history = model.fit(ds, epochs=1, verbose=0, shuffle=False).history
        results.append((history, model, strategy))
    if agree:
        assert_replicas_agree(results, agree, weights)
    return results


def assert_replicas_agree(results, keys, weights=True):
    """The last logged value of each of `keys` agrees (rtol 1e-4, atol 1e-5) between the two
    fits of `fit_one_device_and_two_replicas`, and (when `weights`) so do the network weights
    (atol 1e-5)."""
    (h1, m1, _), (h2, m2, _) = results
    for key in keys:
        np.testing.assert_allclose(h1[key][-1], h2[key][-1], rtol=1e-4, atol=1e-5, err_msg=key)
    if weights:
        for a, b in zip(m1.network.weights, m2.network.weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


class ConstantInitializer:
    """A chain initialiser whose every chain starts at the same image (`value` everywhere): chain
    starts do not depend on which buffer rows are drawn."""

    def __init__(self, value=0.1):
        self.value = value

    def init(self, shape, seed, y=None):
        return tf.fill(shape, self.value)


def run_trainer_smoke_test(trainer, x, y, steps=2, batch_size=16):
    """`fit` `steps` steps (compiling with Adam if needed): every reported value is finite and the
    trainable weights moved. Returns the history dict."""
    if not trainer.compiled:
        compile_trainer(trainer)
    trainer(x[:1])
    before = [w.numpy().copy() for w in trainer.trainable_weights]
    history = _fit(trainer, x, y, steps, batch_size).history
    assert history, "fit reported nothing"
    for name, values in history.items():
        assert np.all(np.isfinite(values)), f"{name} is not finite: {values}"
    after = [w.numpy() for w in trainer.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "no trainable weight moved"
    return history


def run_checkpoint_roundtrip(trainer_fn, x, y, directory, steps=2, batch_size=16, compile_fn=compile_trainer):
    """Train `trainer_fn()` for `steps` steps, save a `make_checkpoint` checkpoint, restore it into a
    fresh `trainer_fn()` (built and compiled, as `run_training` resumes): every variable of the
    trainer and of its optimizer(s) is equal, and one more step on the same batch gives equal
    states (the RNG states came back too). Returns the restored trainer."""
    keras.utils.set_random_seed(0)
    trained = compile_fn(trainer_fn())
    callbacks.ensure_built(trained)
    _fit(trained, x, y, steps, batch_size)
    os.makedirs(str(directory), exist_ok=True)
    path = callbacks.make_checkpoint(trained).save(os.path.join(str(directory), "ckpt"))

    keras.utils.set_random_seed(1)  # a fresh trainer whose own draws differ
    restored = compile_fn(trainer_fn())
    callbacks.ensure_built(restored)
    callbacks.make_checkpoint(restored).restore(path).assert_existing_objects_matched()
    assert_states_equal(trainer_state(trained), trainer_state(restored), "restored checkpoint")
    assert_next_steps_equal(trained, restored, x, y, batch_size, "step after the restore")
    return restored


def run_lifecycle(trainer, x, y, directory, make=None, steps=2, compile_fn=compile_trainer, before_save=None):
    """The life of a trainer in one call: `run_trainer_smoke_test` (`steps` steps), then, given
    `make` (a function building a fresh trainer like `trainer`), `run_checkpoint_roundtrip` in
    `directory/checkpoint`, then `before_save()` if given, then `run_serialization_test` in
    `directory/keras`. Returns the loaded trainer."""
    run_trainer_smoke_test(trainer, x, y, steps=steps)
    if make is not None:
        run_checkpoint_roundtrip(make, x, y, os.path.join(str(directory), "checkpoint"), compile_fn=compile_fn)
    if before_save is not None:
        before_save()
    return run_serialization_test(trainer, x, y, os.path.join(str(directory), "keras"))


def _json(config):
    return json.loads(json.dumps(config))  # what the .keras file holds (tuples become lists)


def run_serialization_test(trainer, x, y, directory, batch_size=16):
    """`trainer.save(".keras")` then `keras.saving.load_model`: a trainer of the same class with the
    same config (and compile config), the same variables and optimizer slots, the same outputs and
    scores on `x`; and, when compiled, one more step on the same batch gives equal states. Returns
    the loaded trainer."""
    trainer(x[:1])
    os.makedirs(str(directory), exist_ok=True)
    path = os.path.join(str(directory), f"{type(trainer).__name__.lower()}.keras")
    trainer.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(trainer)
    assert _json(loaded.get_config()) == _json(trainer.get_config())
    assert _json(loaded.get_compile_config()) == _json(trainer.get_compile_config())
    assert loaded.compiled == trainer.compiled
    assert_states_equal(trainer_state(trainer), trainer_state(loaded), "loaded .keras")
    batch = x[:batch_size]
    np.testing.assert_array_equal(loaded(batch).numpy(), trainer(batch).numpy())
    expected, got = trainer.scores(batch), loaded.scores(batch)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
    if trainer.compiled:
        assert_next_steps_equal(trainer, loaded, x, y, batch_size, "step after loading")
    return loaded


__all__ = [
    "ConstantInitializer",
    "assert_replicas_agree",
    "cifar_arrays",
    "assert_next_steps_equal",
    "assert_states_equal",
    "compile_trainer",
    "digits_arrays",
    "fit_one_device_and_two_replicas",
    "run_briefly",
    "run_checkpoint_roundtrip",
    "run_lifecycle",
    "run_script",
    "run_serialization_test",
    "run_trainer_smoke_test",
    "tiny_jem",
    "tiny_network",
    "trainer_state",
]


TRAINER_NAMES = ("softmax", "jem", "jempp", "sadajem", "hdge", "gmmc", "clel")


def every_trainer():
    """One tiny, unbuilt instance of every trainer, in the order of `TRAINER_NAMES`: 8x8x1 images
    (CLEL: 8x8x3), 10 classes, a 20-image replay buffer."""
    from keras_ebm.trainers import GMMC, HDGE, JEM, JEMPP, SADAJEM, SoftmaxClassifier
    from keras_ebm.trainers.gmmc.head import build_mmc_classifier

    shape = (8, 8, 1)
    yield SoftmaxClassifier(tiny_network(), image_shape=shape, num_classes=10)
    for cls in (JEM, JEMPP, SADAJEM, HDGE):
        yield cls(tiny_network(), image_shape=shape, num_classes=10, buffer_size=20)
    backbone = tiny_network(shape, None, seed=3, widths=(8, 16), pool="average")
    yield GMMC(build_mmc_classifier(backbone, num_classes=10), image_shape=shape, num_classes=10, buffer_size=20)
    yield tiny_clel()


def import_script(name):
    """`keras_ebm.scripts.<name>` ("train" or "eval") with its absl flags defined, in this process.

    The two scripts define flags of the same names (--model_dir, --gin_file, ...) on absl's global
    FLAGS, and one pytest worker may import both: the other script's flags are removed first, and
    a script imported before whose flags were removed is reloaded (which defines them again).
    """
    import importlib
    import sys

    from absl import flags

    mine, other = (f"keras_ebm.scripts.{n}" for n in ((name, "eval") if name == "train" else (name, "train")))
    for flag in list(flags.FLAGS.flags_by_module_dict().get(other, [])):
        if flag.name in flags.FLAGS:
            delattr(flags.FLAGS, flag.name)
    if mine in sys.modules and not flags.FLAGS.flags_by_module_dict().get(mine):
        return importlib.reload(sys.modules[mine])
    return importlib.import_module(mine)


def tiny_clel_encoder(image_shape=(8, 8, 3), output_dim=6, **kwargs):
    """The SimCLR encoder of the tiny CLEL tests: stages 4 and 8 wide, one block each, an 8-unit
    head, `output_dim` outputs, no input normalisation (`kwargs` go to `build_clel_encoder`)."""
    from keras_ebm.backbones.clel import build_clel_encoder

    options = {"widths": (4, 8), "blocks_per_stage": (1, 1), "head_units": 8, "input_mean": None, **kwargs}
    return build_clel_encoder(image_shape, output_dim=output_dim, **options)


def tiny_clel(image_shape=(8, 8, 3), buffer_size=20, **kwargs):
    """A CLEL trainer on `image_shape` images with 4-8 wide networks and a `buffer_size`-row buffer
    (`kwargs` go to CLEL)."""
    from keras_ebm.backbones.clel import build_clel_ebm, build_clel_projection
    from keras_ebm.trainers import CLEL

    network = build_clel_ebm(
        "small",
        input_shape=image_shape,
        widths=(4, 8),
        blocks_per_stage=1,
        head_units=8,
        feature_dim=8,
        input_mean=None,
    )
    projection = build_clel_projection(feature_dim=8, hidden_units=8, output_dim=6)
    encoder = tiny_clel_encoder(image_shape)
    return CLEL(network, projection, encoder, image_shape=image_shape, buffer_size=buffer_size, **kwargs)


def clel_sampler(n_steps):
    """The SGLD of the tiny CLEL tests: `n_steps` steps of 100 (gradients clipped at 100), noise
    0.001, images in [0, 1], BN in training mode, seed 0."""
    from keras_ebm.sampling import SGLDSampler

    return SGLDSampler(
        n_steps=n_steps,
        step_size=100.0,
        noise_std=0.001,
        grad_clip=100.0,
        x_clip=(0.0, 1.0),
        energy_training=True,
        seed=0,
    )
