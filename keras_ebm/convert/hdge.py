"""Converter for lhao499/HDGE checkpoints (`"hdge"`): `model.py` `HYM` (HDGE and HDGE+JEM).

`HYM` is JEM's `CCF` around the same `wideresnet.py` (keys `f.*`, `class_output.*`, unused
`f.linear.*` / `energy_output.*`: `keras_ebm.convert.wrn`'s mapping) plus the logit queue:

| official key | keras_ebm |
|---|---|
| `queue_logit` `[C, K]` (raw logits, one column per example) | `trainer.queue.queue` `[K, C]` (transposed) |
| `queue_ptr` `[1]` | `trainer.queue.pointer`; the queue counts as full (the official queue starts as N(0, 1) columns that count as negatives) |
| `replay_buffer` (HDGE+JEM checkpoints) | `trainer.buffer`, when its size matches |

Build the trainer with the official depth, width, norm, number of classes and `queue_size=K`
(`contrast_k`). `load_queue=False` leaves our queue as it is (e.g. to evaluate only).
"""  # noqa: E501  (Markdown table rows: a table row cannot wrap)

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keras_ebm.convert import register
from keras_ebm.convert.wrn import assign_wrn_state

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from keras_ebm.trainers.hdge import HDGE

_QUEUE_KEYS = ("queue_logit", "queue_ptr")


@register("hdge")
def convert_hdge(state: Mapping[str, Any], trainer: HDGE, load_buffer: bool = True, load_queue: bool = True) -> HDGE:
    state = {k[len("model_state_dict/") :] if k.startswith("model_state_dict/") else k: v for k, v in state.items()}
    buffer = getattr(trainer, "buffer", None) if load_buffer else None
    assign_wrn_state(
        {k: v for k, v in state.items() if k not in _QUEUE_KEYS},
        trainer.network,
        prefix="f.",
        head="class_output",
        ignore=("f.linear.", "energy_output."),
        buffer=buffer,
    )
    if load_queue and "queue_logit" in state:
        queue = trainer.queue
        logits = np.asarray(state["queue_logit"]).T
        if logits.shape != (queue.size, queue.dim):
            raise ValueError(
                f"The checkpoint's logit queue holds {logits.shape[0]} logits of {logits.shape[1]} classes; "
                f"the trainer's queue {queue.size} x {queue.dim}: build HDGE with queue_size="
                f"{logits.shape[0]} (the official --contrast_k) and num_classes={logits.shape[1]}."
            )
        queue.queue.assign(logits.astype(queue.storage_dtype))
        queue.pointer.assign(int(np.asarray(state.get("queue_ptr", 0)).reshape(-1)[0]) % queue.size)
        queue.count.assign(queue.size)
    return trainer
