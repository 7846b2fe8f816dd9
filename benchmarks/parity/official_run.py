"""Helpers of the JEM-family recorders (record_jem.py, record_jempp.py, record_sadajem.py).

* `official_parser(path)`: the official script's own `argparse` parser, which it builds inside
  `if __name__ == "__main__"`: the script runs as `__main__` with `parse_args` intercepted, so the
  recorder gets the parser object (and so every default) without re-typing an option.
* `stub_modules()`: tqdm (identity) and sklearn.metrics (a rank AUROC that also keeps what it was
  asked), which the torch venv lacks; torchvision via `recording.stub_torchvision`.
* `fixed_images(...)`: real CIFAR-10 test/train images (JPEG, decoded with Pillow) and DTD textures
  mapped to [-1, 1] as the official `Normalize((.5,.5,.5), (.5,.5,.5))` does.
* `probe(array)`: a fixed subset (<= 256 evenly spaced entries) of a tensor, the per-step record of
  tensors too large to store in full at every step (README: "probe/" keys).
"""

import argparse
import io
import runpy
import sys
import types

import numpy as np

import recording

CIFAR = "/work/shared/data/cifar10_jpeg_bytes.npz"
DTD = "/work/shared/data/dtd_subset_32.npz"
PROBE_SIZE = 256


class _Parsed(Exception):
    pass


def official_parser(script_path):
    """Run `script_path` as `__main__` until it calls `parse_args`; return its parser."""
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def intercept(self, *args, **kwargs):
        captured["parser"] = self
        raise _Parsed()

    argparse.ArgumentParser.parse_args = intercept
    try:
        runpy.run_path(script_path, run_name="__main__")
    except _Parsed:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


def stub_modules(auc_calls):
    import torch._dynamo  # noqa: F401  (imported before the stubs: it inspects every module's __spec__)

    recording.stub_torchvision()
    tqdm = types.ModuleType("tqdm")
    tqdm.tqdm = lambda it=None, *a, **k: it
    sys.modules["tqdm"] = tqdm
    sklearn = types.ModuleType("sklearn")
    metrics = types.ModuleType("sklearn.metrics")

    def roc_auc_score(labels, scores):
        labels, scores = np.asarray(labels), np.asarray(scores)
        pos, neg = scores[labels == 1], scores[labels == 0]
        auc = np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :])
        auc_calls.append({"labels": labels, "scores": scores, "auc": auc})
        return auc

    metrics.roc_auc_score = roc_auc_score
    sklearn.metrics = metrics
    sys.modules["sklearn"] = sklearn
    sys.modules["sklearn.metrics"] = metrics


def _decode(jpeg, offsets, rows):
    from PIL import Image

    return np.stack(
        [np.asarray(Image.open(io.BytesIO(jpeg[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")) for i in rows]
    )


def to_official(x_uint8, dtype):
    """uint8 NHWC -> the official ToTensor + Normalize(.5, .5): NCHW in [-1, 1]."""
    x = x_uint8.astype(np.float64) / 255.0
    x = (x - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(dtype)


def fixed_images(split, start, n):
    """`n` CIFAR-10 images (uint8 NHWC) and labels of `split` ("train"/"test") from row `start`."""
    d = np.load(CIFAR)
    rows = range(start, start + n)
    return _decode(d[f"{split}_jpeg"], d[f"{split}_offsets"], rows), d[f"{split}_y"][start : start + n].astype(np.int64)


def dtd_images(n):
    return np.load(DTD)["x"][:n]


def probe(array):
    flat = np.asarray(array).reshape(-1)
    if flat.size <= PROBE_SIZE:
        return flat.copy()
    return flat[np.linspace(0, flat.size - 1, PROBE_SIZE).astype(np.int64)].copy()
