"""Converter for sndnyang/GMMC checkpoints (`"gmmc"`): `models/mmc_models.py` `F` + `LDALayer`.

`F` is the JEM `wideresnet.py` backbone alone (keys `f.*`, `keras_ebm.convert.wrn`'s mapping; no
Linear head: the classifier is the MMC head). `LDALayer.centers` `[C, D]` (official `cal_center`,
non-trainable) goes to the `MaxMahalanobisHead` centres; without it our own max-Mahalanobis
centres stay (they are the same construction, `keras_ebm.trainers.gmmc.max_mahalanobis_centers`).

| official key | keras_ebm (`build_mmc_classifier(WideResNet(...))`) |
|---|---|
| `f.*` | the backbone, as in `keras_ebm.convert.wrn` |
| `centers` (the `LDALayer` state dict, or `margin/centers`) | `mmc_head.centers` |
| `replay_buffer` | not converted: the official buffer is an `(x, y)` pair; assign `trainer.buffer.buffer` yourself |
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keras_ebm.convert import register
from keras_ebm.convert.wrn import assign_wrn_state
from keras_ebm.trainers.gmmc.head import mmc_head

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from keras_ebm.trainers.gmmc import GMMC

_CENTER_KEYS = ("centers", "margin/centers", "lgm/centers")


@register("gmmc")
def convert_gmmc(state: Mapping[str, Any], trainer: GMMC, load_centers: bool = True) -> GMMC:
    state = {k[len("model_state_dict/") :] if k.startswith("model_state_dict/") else k: v for k, v in state.items()}
    centers = next((state[k] for k in _CENTER_KEYS if k in state), None)
    rest = {
        k: v
        for k, v in state.items()
        if k not in _CENTER_KEYS and k != "replay_buffer" and not k.startswith("replay_buffer/")
    }
    assign_wrn_state(rest, trainer.network, prefix="f.", head=None)
    if load_centers and centers is not None:
        head = mmc_head(trainer.network)
        centers = np.asarray(centers)
        if tuple(centers.shape) != tuple(head.centers.shape):
            raise ValueError(
                f"The checkpoint's centres are {centers.shape} (classes x feature dim); the trainer's MMC "
                f"head {tuple(head.centers.shape)}: build it with the official number of classes, depth "
                "and width."
            )
        head.centers.assign(centers.astype(head.centers.dtype))
    return trainer
