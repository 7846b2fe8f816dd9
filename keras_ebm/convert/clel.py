"""hankook/CLEL state dicts -> `keras_ebm.trainers.CLEL` (network f, projection g, encoder h, EMAs).

The official `JointModel.state_dict()` (a checkpoint's `model` entry, hankook/CLEL models/ebm.py)
holds `ebm.*` (architectures.py `ResNet` / `MSResNet`: stem(s), stages, head, projection),
`ema_ebm.*`, `encoder.*` (torchvision ResNet with CLEL's 3x3 stem and MLP head), `ema_encoder.*`
and `sampler.memory`. A dict with only `ebm.*` / `encoder.*` (or with the prefixes stripped for
`part="ebm"` / `part="encoder"`) works too; the EMA copies then start equal to the online weights.

Layout: PyTorch convolutions `[out, in, kh, kw]` -> Keras `[kh, kw, in, out]`; linear
`[out, in]` -> `[in, out]`; spectral norm (`parametrizations.weight.original`, `0._u`, `0._v`) ->
`SpectralNormConv2D` kernel, `sn_u`, and `sn_v` reordered from PyTorch's (in, kh, kw) flattening to
Keras' (kh, kw, in); BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/
moving_variance. The `Normalize` buffers (mean, std) must equal the Keras models' input
normalisation (checked). The official EBM latent is g(f); ours is g(f / ||f||) -- the same
direction (g is bias-free and positively homogeneous), so every cosine and score agrees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keras_ebm.convert import register

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from keras_ebm.trainers.clel import CLEL


def _conv(w):
    return np.transpose(w, (2, 3, 1, 0))


def _sn_v(v, kernel_shape):
    out, cin, kh, kw = kernel_shape
    return np.transpose(v.reshape(cin, kh, kw), (1, 2, 0)).reshape(-1)


class _Assigner:
    """Collects (Keras variable, value) pairs, checking names and shapes, and reports leftovers."""

    def __init__(self, state, model, prefix):
        # `prefix`: the official name prefix of `state`'s keys (error messages give full names).
        self.state, self.model, self.what = state, model, prefix
        self.used, self.assigned, self.errors = set(), set(), []
        self.layers = {layer.name: layer for layer in model.layers}

    def take(self, key):
        if key not in self.state:
            self.errors.append(f"missing official key {self.what + key!r}")
            return None
        self.used.add(key)
        return self.state[key]

    def assign(self, variable, value, key):
        if value is None:
            return
        value = np.asarray(value)
        if tuple(variable.shape) != value.shape:
            self.errors.append(
                f"{self.what}{key} has shape {value.shape}, {variable.path} needs {tuple(variable.shape)}"
            )
            return
        variable.assign(value.astype(variable.dtype))
        self.assigned.add(id(variable))

    def layer(self, name):
        if name not in self.layers:
            self.errors.append(
                f"{self.model.name} has no layer {name!r} for {self.what}* "
                f"(its architecture differs from the official one)"
            )
            return None
        return self.layers[name]

    def conv(self, key, name, spectral=False, bias=True):
        layer = self.layer(name)
        if layer is None:
            return
        if spectral:
            w = self.take(f"{key}.parametrizations.weight.original")
            if w is not None:
                self.assign(layer.kernel, _conv(w), key)
                u, v = (
                    self.take(f"{key}.parametrizations.weight.0._u"),
                    self.take(f"{key}.parametrizations.weight.0._v"),
                )
                self.assign(layer.sn_u, u, f"{key} _u")
                if v is not None:
                    self.assign(layer.sn_v, _sn_v(v, w.shape), f"{key} _v")
        else:
            w = self.take(f"{key}.weight")
            if w is not None:
                self.assign(layer.kernel, _conv(w), key)
        if bias and layer.use_bias:
            self.assign(layer.bias, self.take(f"{key}.bias"), key)

    def dense(self, key, name):
        layer = self.layer(name)
        if layer is None:
            return
        w = self.take(f"{key}.weight")
        if w is not None:
            self.assign(layer.kernel, np.transpose(w), key)
        if layer.use_bias:
            self.assign(layer.bias, self.take(f"{key}.bias"), key)

    def bn(self, key, name):
        layer = self.layer(name)
        if layer is None:
            return
        for src, dst in (
            ("weight", "gamma"),
            ("bias", "beta"),
            ("running_mean", "moving_mean"),
            ("running_var", "moving_variance"),
        ):
            self.assign(getattr(layer, dst), self.take(f"{key}.{src}"), f"{key}.{src}")
        self.used.add(f"{key}.num_batches_tracked")

    def normalize(self, key, name):
        mean, std = self.take(f"{key}.mean"), self.take(f"{key}.std")
        layer = self.layers.get(name)
        if mean is None or std is None:
            return
        if layer is None:
            self.errors.append(
                f"the official network normalises its input ({self.what}{key}) but "
                f"{self.model.name} has no {name!r} layer (build it with input_mean/input_std)"
            )
            return
        ours_mean = np.asarray(layer.mean).reshape(-1)
        ours_std = np.sqrt(np.asarray(layer.variance).reshape(-1))
        if not (np.allclose(ours_mean, mean, atol=1e-6) and np.allclose(ours_std, std, atol=1e-6)):
            self.errors.append(
                f"{self.what}{key} is mean={mean.tolist()}, std={std.tolist()}; "
                f"{self.model.name} normalises with mean={ours_mean.tolist()}, std={ours_std.tolist()}"
            )

    def finish(self):
        left = sorted(set(self.state) - self.used)
        unset = [w.path for w in self.model.weights if id(w) not in self.assigned]
        return (
            self.errors,
            [f"unplaced official key {self.what + k!r}" for k in left],
            [f"Keras weight {p} ({self.what}*) left unset" for p in unset],
        )


def _scales(state):
    if any(k.startswith("stem1.") for k in state):
        return [("stem1", "stages1", 1), ("stem2", "stages2", 2), ("stem3", "stages3", 4)]
    return [("stem", "stages", 1)]


def _ebm(state, network, projection, what):
    net = _Assigner({k: v for k, v in state.items() if not k.startswith("projection.")}, network, what)
    name = network.name
    for stem, stages, scale in _scales(state):
        prefix = f"{name}_x{scale}"
        net.normalize(f"{stem}.0", f"{name}_normalize")
        net.conv(f"{stem}.1", f"{prefix}_stem", spectral=True)
        stage_ids = sorted({int(k.split(".")[1]) for k in state if k.startswith(f"{stages}.")})
        for s in stage_ids:
            blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith(f"{stages}.{s}.")})
            for b, j in enumerate(blocks):
                key, layer = f"{stages}.{s}.{j}", f"{prefix}_s{s}b{b}"
                net.conv(f"{key}.conv1", f"{layer}_conv1", spectral=True)
                net.conv(f"{key}.conv2", f"{layer}_conv2", spectral=True)
                if any(k.startswith(f"{key}.shortcut.") for k in state):
                    net.conv(f"{key}.shortcut", f"{layer}_shortcut", spectral=True, bias=False)
    net.dense("head.0", f"{name}_head1")
    net.dense("head.2", f"{name}_head2")
    proj = _Assigner(
        {k[len("projection.") :]: v for k, v in state.items() if k.startswith("projection.")},
        projection,
        f"{what}projection.",
    )
    proj.dense("0", f"{projection.name}_1")
    proj.dense("2", f"{projection.name}_2")
    return [net.finish(), proj.finish()]


def _encoder(state, encoder, what):
    enc = _Assigner(state, encoder, what)
    name = encoder.name
    enc.normalize("conv1.0", f"{name}_normalize")
    enc.conv("conv1.1", f"{name}_stem", bias=False)
    enc.bn("bn1", f"{name}_stem_bn")
    stage_ids = sorted({int(k.split(".")[0][len("layer") :]) for k in state if k.startswith("layer")})
    for s in stage_ids:
        blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith(f"layer{s}.")})
        for b in blocks:
            key, layer = f"layer{s}.{b}", f"{name}_s{s - 1}b{b}"
            enc.conv(f"{key}.conv1", f"{layer}_conv1", bias=False)
            enc.bn(f"{key}.bn1", f"{layer}_bn1")
            enc.conv(f"{key}.conv2", f"{layer}_conv2", bias=False)
            enc.bn(f"{key}.bn2", f"{layer}_bn2")
            if any(k.startswith(f"{key}.downsample.") for k in state):
                enc.conv(f"{key}.downsample.0", f"{layer}_down", bias=False)
                enc.bn(f"{key}.downsample.1", f"{layer}_down_bn")
    enc.dense("fc.0", f"{name}_head1")
    enc.bn("fc.1", f"{name}_head_bn")
    enc.dense("fc.3", f"{name}_head2")
    return [enc.finish()]


def _sub(state, prefix):
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@register("clel")
def convert_clel(state: Mapping[str, Any], trainer: CLEL, part: str | None = None) -> CLEL:
    """Assign a hankook/CLEL `JointModel` state dict to a built `keras_ebm.trainers.CLEL`.

    Args:
        state: {official name: array}: the full model state dict (`ebm.*`, `ema_ebm.*`, `encoder.*`,
            `ema_encoder.*`, `sampler.memory`), or one network's keys with `part`.
        trainer: a `CLEL` trainer whose network / projection / encoder were built with the official
            architecture (`build_clel_ebm`, `build_clel_projection`, `build_clel_encoder`).
        part: None (full state), "ebm" (an `architectures.ResNet` state dict) or "encoder".

    Raises:
        ValueError: naming every official key that could not be placed, every Keras weight left
            unset and every shape or normalisation mismatch.
    """
    if part == "ebm":
        state = {f"ebm.{k}": v for k, v in state.items()}
    elif part == "encoder":
        state = {f"encoder.{k}": v for k, v in state.items()}
    elif part is not None:
        raise ValueError(f"`part` must be None, 'ebm' or 'encoder'. Received: part={part!r}")
    reports, leftovers = [], []
    known = ("ebm.", "ema_ebm.", "encoder.", "ema_encoder.", "sampler.memory")
    leftovers += [f"unplaced official key {k!r}" for k in state if not k.startswith(known)]
    if _sub(state, "ebm."):
        reports += _ebm(_sub(state, "ebm."), trainer.network, trainer.projection, "ebm.")
        ema = _sub(state, "ema_ebm.") or _sub(state, "ebm.")
        reports += _ebm(ema, trainer.ema_network.model, trainer.ema_projection.model, "ema_ebm.")
    if _sub(state, "encoder."):
        reports += _encoder(_sub(state, "encoder."), trainer.encoder, "encoder.")
        ema = _sub(state, "ema_encoder.") or _sub(state, "encoder.")
        reports += _encoder(ema, trainer.ema_encoder.model, "ema_encoder.")
    if "sampler.memory" in state:
        memory = np.transpose(np.asarray(state["sampler.memory"]), (0, 2, 3, 1))
        images = trainer.buffer.buffer
        if tuple(images.shape) != memory.shape:
            leftovers.append(
                f"sampler.memory has {memory.shape[0]} images of {memory.shape[1:]} (NHWC); "
                f"the trainer's buffer holds {tuple(images.shape)}"
            )
        else:
            images.assign(memory.astype(images.dtype))
    if not reports:
        raise ValueError(
            "No CLEL weights found: expected keys starting with 'ebm.' or 'encoder.' "
            f"(or pass part='ebm' / 'encoder'). Received keys like {sorted(state)[:5]}"
        )
    problems = leftovers + [m for errors, left, unset in reports for m in errors + left + unset]
    if problems:
        raise ValueError("Could not convert the CLEL state dict:\n  " + "\n  ".join(problems))
    return trainer
