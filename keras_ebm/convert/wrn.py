"""Converters for the official WideResNet codebases: JEM, JEM++ and SADA-JEM (`"jem"`, `"jempp"`,
`"sadajem"`), and `wrn_weight_map` / `assign_wrn_state`, the key layout of the JEM `wideresnet.py`
that the HDGE and GMMC repositories copy.

Official layout (wgrathwohl/JEM train_wrn_ebm.py `CCF` around wideresnet.py `Wide_ResNet`; the same
in sndnyang/JEMPP models/jem_models.py and sndnyang/SADAJEM models/jem_models.py for CIFAR-size
inputs; JEM++'s default YOPO variant adds alias keys `f.layer_one.*`, `f.other_layers.*`, which
`"jempp"` checks and drops):

| official key | keras_ebm weight (`build_classifier(WideResNet(...))`) |
|---|---|
| `f.conv1.{weight,bias}` | `stem_conv/{kernel,bias}` |
| `f.layer<g>.<b>.bn1`, `.bn2` | `group<g>_block<b+1>_norm1`, `_norm2` |
| `f.layer<g>.<b>.conv1`, `.conv2` | `group<g>_block<b+1>_conv1`, `_conv2` |
| `f.layer<g>.<b>.shortcut.0` | `group<g>_block<b+1>_shortcut` |
| `f.bn1` | `final_norm` |
| `class_output.{weight,bias}` | `logits/{kernel,bias}` |
| `f.linear.*`, `energy_output.*` | not used by the official CCF forward: ignored |
| `*.num_batches_tracked` | ignored (PyTorch uses it only when BN momentum is None) |
| `replay_buffer` (checkpoint) | the trainer's replay buffer, when its size matches |

Conversions: conv kernels OIHW -> HWIO, Linear weights [out, in] -> [in, out], images NCHW ->
NHWC; BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance
(PyTorch averages the *unbiased* batch variance into running_var, Keras the biased one: see
docs/parity.md for the effect; momentum: PyTorch `BatchNorm2d(momentum=0.9)` is Keras `momentum=0.1`, as WideResNet's
default). The architecture itself must match: build the trainer with the official depth, width,
norm and number of classes (`WideResNet(depth, width, norm="batch" or None)`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keras_ebm.backbones.classifier import feature_extractor
from keras_ebm.convert import register

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    import keras

    from keras_ebm.sampling import ReplayBuffer

_CONV = {"kernel": "weight", "bias": "bias"}
_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _official_layer(name, prefix):
    """Official module name of a keras_ebm WideResNet layer name (None: a layer without weights)."""
    if name == "stem_conv":
        return f"{prefix}conv1"
    if name == "final_norm":
        return f"{prefix}bn1"
    if name.startswith("group") and "_block" in name:
        group, rest = name[len("group") :].split("_block", 1)
        block, part = rest.split("_", 1)
        official = {"norm1": "bn1", "norm2": "bn2", "conv1": "conv1", "conv2": "conv2", "shortcut": "shortcut.0"}.get(
            part
        )
        if official is not None:
            return f"{prefix}layer{group}.{int(block) - 1}.{official}"
    return None


def _conv_to_keras(a):
    return np.transpose(a, (2, 3, 1, 0)) if a.ndim == 4 else a


def _conv_to_official(a):
    return np.transpose(a, (3, 2, 0, 1)) if a.ndim == 4 else a


def _dense_to_keras(a):
    return a.T if a.ndim == 2 else a


def wrn_weight_map(
    network: keras.Model, prefix: str = "f.", head: str | None = "class_output"
) -> dict[str, tuple[Any, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]]:
    """{official name: (keras variable, to_keras, to_official)} for a `build_classifier(WideResNet)`
    network: every weight of the network, under the name the official `state_dict()` gives it.
    `prefix` is the official attribute path of the `Wide_ResNet` ("f." in the JEM family), `head`
    the official name of the classifier Linear ("class_output"; None: no Linear head). The parity tests use the inverse
    (`to_official`) to compare our weights and optimizer slots with the official ones."""
    mapping = {}
    backbone = feature_extractor(network)
    for layer in backbone.layers:
        official = _official_layer(layer.name, prefix)
        if official is None:
            if layer.weights:
                raise ValueError(
                    f"The backbone layer {layer.name!r} has weights but no official "
                    "WideResNet counterpart: is this a keras_ebm WideResNet?"
                )
            continue
        names = _BN if "norm" in layer.name else _CONV
        for v in layer.weights:
            short = v.path.rsplit("/", 1)[-1]
            if short not in names:
                raise ValueError(f"Unexpected weight {v.path!r} in layer {layer.name!r}.")
            to_k, to_o = (_conv_to_keras, _conv_to_official) if names is _CONV else (np.asarray, np.asarray)
            mapping[f"{official}.{names[short]}"] = (v, to_k, to_o)
    if head is None:  # a network without a Linear classifier (GMMC's MMC head)
        return mapping
    dense = network.get_layer("logits")
    for v in dense.weights:
        short = v.path.rsplit("/", 1)[-1]
        mapping[f"{head}.{_CONV[short]}"] = (v, _dense_to_keras, _dense_to_keras)
    return mapping


def assign_wrn_state(
    state: Mapping[str, Any],
    network: keras.Model,
    prefix: str = "f.",
    head: str | None = "class_output",
    ignore: Sequence[str] = (),
    buffer: ReplayBuffer | None = None,
) -> keras.Model:
    """Assign an official WideResNet state dict ({name: array}) to `network`.

    `ignore`: name prefixes of official weights that the official forward does not use.
    `buffer`: a keras_ebm `ReplayBuffer` to receive the checkpoint's `replay_buffer` (NCHW), or None.
    Raises ValueError naming every key it cannot place, every network weight left unset and
    every shape that differs.
    """
    state = {
        k[len("model_state_dict/") :] if k.startswith("model_state_dict/") else k: np.asarray(v)
        for k, v in state.items()
    }
    mapping = wrn_weight_map(network, prefix=prefix, head=head)
    unplaced = sorted(
        k
        for k in state
        if k not in mapping
        and not k.endswith("num_batches_tracked")
        and not any(k.startswith(p) for p in ignore)
        and k != "replay_buffer"
    )
    unset = sorted(k for k in mapping if k not in state)
    if unplaced or unset:
        raise ValueError(
            "The official state dict does not match the keras_ebm network: "
            + (
                f"keys it cannot place {unplaced} (a different architecture: norm='batch' weights "
                "into a network without BN, or another codebase's layout?); "
                if unplaced
                else ""
            )
            + (
                f"network weights it does not set {unset} (build the network with the official "
                "depth, width, norm and number of classes)"
                if unset
                else ""
            )
        )
    shapes = []
    for name, (variable, to_keras, _) in mapping.items():
        value = to_keras(state[name])
        if tuple(value.shape) != tuple(variable.shape):
            shapes.append(
                f"{name}: official {tuple(state[name].shape)} -> {tuple(value.shape)}, "
                f"keras {variable.path} {tuple(variable.shape)}"
            )
    if shapes:
        raise ValueError("Shapes differ (depth, width or number of classes differ?): " + "; ".join(shapes))
    for name, (variable, to_keras, _) in mapping.items():
        variable.assign(to_keras(state[name]).astype(variable.dtype))
    if buffer is not None and "replay_buffer" in state:
        x = np.transpose(state["replay_buffer"], (0, 2, 3, 1))
        if tuple(x.shape) != tuple(buffer.buffer.shape):
            raise ValueError(
                f"The checkpoint's replay buffer has {x.shape[0]} images of shape {x.shape[1:]}; the "
                f"trainer's {tuple(buffer.buffer.shape)}: build the trainer with "
                f"buffer_size={x.shape[0]}, or drop 'replay_buffer' from the state dict."
            )
        buffer.buffer.assign(x.astype(buffer.buffer.dtype))
    return network


def yopo_canonical(key: str) -> str | None:
    """The canonical key of a YOPO alias key (see `_yopo_aliases`), or None for any other key."""
    if key.startswith("f.layer_one."):
        return "f.conv1." + key[len("f.layer_one.") :]
    if key.startswith("f.other_layers."):
        index, rest = key[len("f.other_layers.") :].split(".", 1)
        return (f"f.layer{int(index) + 1}." if int(index) < 3 else "f.bn1.") + rest
    return None


def _yopo_aliases(state):
    """JEM++'s default `--model yopo` Wide_ResNet (sndnyang/JEMPP models/wideresnet_yopo.py) holds
    `conv1` also as `layer_one` and `layer1..3`, `bn1` also in the ModuleList `other_layers`, so its
    state dict repeats them as `f.layer_one.*` and `f.other_layers.<0-3>.*`. Each alias is dropped
    when its canonical key holds the same array (renamed when the canonical key is absent); an alias
    that differs is an error."""
    out, differ = {}, []
    for key, value in state.items():
        name = yopo_canonical(key)
        if name is None:
            out.setdefault(key, value)
        elif name not in state:
            out[name] = value
        elif not np.array_equal(np.asarray(state[name]), np.asarray(value)):
            differ.append(f"{key} != {name}")
    if differ:
        raise ValueError(f"YOPO alias keys differ from the weights they alias: {differ}")
    return out


def _convert_jem_family(state, trainer, load_buffer=True):
    state = _yopo_aliases(
        {k[len("model_state_dict/") :] if k.startswith("model_state_dict/") else k: v for k, v in state.items()}
    )
    assign_wrn_state(
        state,
        trainer.network,
        prefix="f.",
        head="class_output",
        ignore=("f.linear.", "energy_output."),
        buffer=trainer.buffer if load_buffer else None,
    )
    return trainer


for _method in ("jem", "jempp", "sadajem"):
    register(_method)(_convert_jem_family)
