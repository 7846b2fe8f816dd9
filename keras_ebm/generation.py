"""Sample generation and sample grids: what `eval.py --samples` and the training callbacks draw.

`generate_samples` calls the trainer's one `generate` hook (`EBMTrainer.generate`) and writes a PNG
grid and an npz of uint8 images; `save_buffer_grid` shows the replay buffer as it is.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from keras_ebm.data.pixel_range import from_pixel_range
from keras_ebm.evaluation import plots

if TYPE_CHECKING:
    from keras_ebm.trainers.base import EBMTrainer


def _log(msg):
    print(f"[keras_ebm] {msg}", flush=True)


def save_buffer_grid(model: EBMTrainer, path: str | os.PathLike, num_images: int = 64) -> str:
    """A look at the chains before reading numbers: replay-buffer rows as a PNG grid.

    The rows are spread evenly over the buffer, so a class-partitioned buffer (GMMC, JEM with
    p(x, y)), whose classes sit in contiguous blocks, shows every class in order. Reads the buffer
    variable directly (no sampling, no RNG), so it changes no training state.
    """
    size = int(model.buffer.size)
    index = np.unique(np.linspace(0, size - 1, min(num_images, size)).round().astype(np.int64))
    rows = tf.gather(model.buffer.buffer, index).numpy()
    return plots.sample_grid(
        from_pixel_range(rows, model.pixel_range).numpy(),
        path,
        title=f"replay buffer ({len(rows)} of {model.buffer.size})",
    )


def generate_samples(
    model: EBMTrainer,
    output_dir: str | os.PathLike,
    num_samples: int = 64,
    n_steps: int | None = None,
    from_buffer: bool = False,
    conditional: bool = False,
    name: str | None = None,
    batch_size: int | None = None,
    labelled_data: tuple[np.ndarray, np.ndarray] | None = None,
) -> str:
    """Draw samples with `model.generate` and write a PNG grid and an npz (uint8 NHWC, labels).

    For FID, draw many samples in batches (`batch_size`) and feed the npz's `images` (uint8, the
    whole set) to an FID tool; the PNG shows the first 256.

    Args:
        model: a trainer with `generate` (JEM family, HDGE+JEM, GMMC, CLEL).
        output_dir: directory for `<name>.png` and `<name>.npz`.
        num_samples: number of images (rounded up to a multiple of the classes when conditional).
        n_steps: SGLD steps (default the sampler's; 0 with `from_buffer` shows the buffer as is).
        from_buffer: start from replay-buffer states instead of fresh initialiser draws.
        conditional: class-conditional chains, one row per class (on E(x, y) for classifiers; on
            p(x | z_bar_y) for CLEL, whose class latents come from `labelled_data`).
        name: file stem (default derived from the options).
        batch_size: chains run at once (default all `num_samples`).
        labelled_data: `(x, y)` images in the model's pixel range and int labels, for models that
            condition on class latents computed from data (CLEL's `set_class_latents`, Appendix D).

    Returns:
        The path of the PNG grid.
    """
    os.makedirs(output_dir, exist_ok=True)
    y = None
    if conditional:
        num_classes = model.num_classes
        if model.conditions_on_latents:
            if labelled_data is None:
                raise ValueError(
                    f"{type(model).__name__} conditions on class latents computed from labelled "
                    "images: pass labelled_data=(x, y). Received: labelled_data=None"
                )
            num_classes = int(model.set_class_latents(*labelled_data).shape[0])
        per_class = -(-num_samples // num_classes)
        y = tf.repeat(tf.range(num_classes, dtype=tf.int32), per_class)
        num_samples = int(y.shape[0])
    batch_size = int(batch_size or num_samples)
    chunks = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        y_chunk = None if y is None else y[start : start + n]
        chunks.append(
            from_pixel_range(
                model.generate(n, y=y_chunk, n_steps=n_steps, from_buffer=from_buffer), model.pixel_range
            ).numpy()
        )
        if num_samples > batch_size:
            _log(f"generated {start + n}/{num_samples} samples")
    images = np.concatenate(chunks, axis=0)
    name = name or ("conditional" if conditional else "buffer" if from_buffer else "fresh") + (
        f"_{n_steps}steps" if n_steps is not None else ""
    )
    np.savez(
        os.path.join(output_dir, f"{name}.npz"),
        images=images,
        labels=np.asarray(y) if y is not None else np.zeros(0, np.int32),
    )
    shown = images[:256] if not conditional else images
    path = plots.sample_grid(
        shown, os.path.join(output_dir, f"{name}.png"), nrow=per_class if conditional else None, title=name
    )
    _log(f"wrote {num_samples} samples to {path} and {name}.npz")
    return path
