"""Records the forward pass of pytorch-fid's FID Inception (and torch-fidelity's copy of it) on
deterministic random weights, for `tests/test_fid_inception.py`.

Run by hand, never in CI (needs torch; the test does not):

    /path/to/torch-venv/bin/pip install --no-deps pytorch-fid==0.3.0 torch-fidelity==0.4.0 torchvision
    /path/to/torch-venv/bin/python benchmarks/parity/record_fid_inception.py   # writes tests/data/fid_inception.npz

What runs, unchanged:

* pytorch-fid 0.3.0 (github.com/mseitzer/pytorch-fid, `src/pytorch_fid/inception.py`):
  `InceptionV3(output_blocks=[3])`, the 2048-d pool3 features of `fid_inception_v3()`, with its
  own resize (bilinear, align_corners=False, to 299x299) and [0, 1] -> [-1, 1] scaling of float
  images in [0, 1]. Its weights come through its own `load_state_dict_from_url` call, patched to
  return the random state dict instead of downloading `pt_inception-2015-12-05-6726825d.pth`.
  pytorch-fid's forward stops at pool3; the 1008 logits of the same network are the `fc` layer of
  the very module it built (`fid_inception_v3().fc` applied to those features).
* torch-fidelity 0.4.0 (github.com/toshas/torch-fidelity, `feature_extractor_inceptionv3.py`):
  `FeatureExtractorInceptionV3` on uint8 images, the path of the 2015 TensorFlow graph (TF1
  bilinear resize without half-pixel centres, (x - 128) / 128) that the papers' FID/IS code
  feeds (TTUR `fid.py` and OpenAI's `inception_score.py` via `ExpandDims:0`; CLEL via
  torchmetrics); features "2048", "logits_unbiased" (IS: pool3 @ W, no bias, as OpenAI's IS code)
  and "logits". Its weights are the same random state dict, saved to a temporary .pth.

torchvision: pytorch-fid subclasses `torchvision.models.inception`'s blocks. The PyPI torchvision
wheel's compiled ops do not load against a CPU torch of another build, so the `torchvision`,
`torchvision.models` and `torchvision.transforms` packages are stubbed (no `__init__` run) and only
the pure-Python `torchvision/models/inception.py` (and the modules it imports) is loaded from the
installed wheel; `_log_api_usage_once` and the `ImageClassification` preset class (weights
metadata only) are placeholders.

Random weights: `random_state_dict(names_and_shapes, seed)` (NumPy only; the test imports it from
this file and regenerates the same arrays from the recorded names and shapes, so the 95 MB of
weights are never stored). Each tensor draws from its own generator seeded by (seed, crc32(name)),
so the order of the keys does not matter.
"""

import hashlib
import os
import sys
import zlib

import numpy as np

SEED = 20151205
RECIPE = (
    "per key: rng = np.random.default_rng([seed, zlib.crc32(name)]); conv.weight [o,i,kh,kw]: "
    "normal * sqrt(2 / (i*kh*kw)); bn.weight: uniform(0.8, 1.2); bn.bias: normal * 0.1; "
    "bn.running_mean: normal * 0.1; bn.running_var: uniform(0.5, 2.0); bn.num_batches_tracked: 0; "
    "fc.weight: normal * sqrt(1 / 2048); fc.bias: normal * 0.5; float32"
)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "fid_inception.npz")


def random_state_dict(names_and_shapes, seed=SEED):
    """`{name: float32 array}` following `RECIPE` (`num_batches_tracked`: int64 0)."""
    out = {}
    for name, shape in names_and_shapes:
        shape = tuple(int(s) for s in shape)
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        if name.endswith("num_batches_tracked"):
            out[name] = np.zeros(shape, np.int64)
            continue
        if name.endswith("conv.weight"):
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif name.endswith("bn.weight"):
            value = rng.uniform(0.8, 1.2, shape)
        elif name.endswith("bn.running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith(("bn.bias", "bn.running_mean")):
            value = rng.standard_normal(shape) * 0.1
        elif name == "fc.weight":
            value = rng.standard_normal(shape) * np.sqrt(1.0 / shape[1])
        elif name == "fc.bias":
            value = rng.standard_normal(shape) * 0.5
        else:
            raise ValueError(f"No recipe for {name!r} {shape}")
        out[name] = value.astype(np.float32)
    return out


def test_images():
    """`{batch name: uint8 [N, H, W, 3]}`: CIFAR-sized images (upsampled to 299) and one larger,
    non-square image (downsampled), deterministic."""
    rng = np.random.default_rng(SEED)
    noise = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    yy, xx = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 32), indexing="ij")
    smooth = np.stack([255 * xx, 255 * yy, 127 + 120 * np.sin(6 * xx + 4 * yy)], -1)
    small = np.concatenate([noise, np.round(smooth)[None].astype(np.uint8)])
    yy, xx = np.meshgrid(np.linspace(0, 1, 373), np.linspace(0, 1, 331), indexing="ij")
    large = np.stack([127 + 127 * np.sin(9 * xx) * np.cos(7 * yy), 255 * xx * yy, 255 * (1 - yy)], -1)
    large = np.clip(np.round(large + rng.normal(0, 8, large.shape)), 0, 255).astype(np.uint8)[None]
    return {"small": small, "large": large}


def _stub_torchvision():
    import importlib.util
    import types

    root = os.path.dirname(importlib.util.find_spec("torchvision").origin)

    def package(name, path):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
        return module

    from importlib import metadata

    tv = package("torchvision", root)
    tv.__version__ = metadata.version("torchvision")
    tv.models = package("torchvision.models", os.path.join(root, "models"))
    package("torchvision.transforms", os.path.join(root, "transforms"))
    presets = types.ModuleType("torchvision.transforms._presets")
    presets.ImageClassification = object  # weights metadata only
    sys.modules[presets.__name__] = presets
    utils = types.ModuleType("torchvision.utils")
    utils._log_api_usage_once = lambda obj: None
    sys.modules[utils.__name__] = utils
    import torchvision.models.inception as inception

    tv.models.inception = inception
    tv.models.inception_v3 = inception.inception_v3
    return tv.__version__


def _stub_torch_fidelity():
    """Import only torch_fidelity.feature_extractor_inceptionv3 (its __init__ imports datasets)."""
    import importlib.util
    import types

    root = os.path.dirname(importlib.util.find_spec("torch_fidelity").origin)
    module = types.ModuleType("torch_fidelity")
    module.__path__ = [root]
    sys.modules["torch_fidelity"] = module
    from torch_fidelity import feature_extractor_inceptionv3

    return feature_extractor_inceptionv3


def main():
    import tempfile
    from importlib import metadata

    import torch

    torch.set_num_threads(2)
    tv_version = _stub_torchvision()
    from pytorch_fid import inception as pfi

    # Pass 1: the names and shapes of fid_inception_v3()'s state dict (its load is skipped once).
    captured = {}
    real_load = torch.nn.Module.load_state_dict

    def capture(module, state_dict, *args, **kwargs):
        captured.update({k: tuple(v.shape) for k, v in module.state_dict().items()})

    torch.nn.Module.load_state_dict = capture
    pfi.load_state_dict_from_url = lambda *a, **k: None
    try:
        pfi.fid_inception_v3()
    finally:
        torch.nn.Module.load_state_dict = real_load
    names = sorted(captured)
    weights = random_state_dict([(n, captured[n]) for n in names])
    state = {k: torch.from_numpy(v) for k, v in weights.items()}

    # Pass 2: pytorch-fid's InceptionV3 loads the random weights through its own loader.
    pfi.load_state_dict_from_url = lambda url, **k: {k2: v.clone() for k2, v in state.items()}
    fid_url = pfi.FID_WEIGHTS_URL
    model = pfi.InceptionV3([pfi.InceptionV3.DEFAULT_BLOCK_INDEX]).eval()
    fc = pfi.fid_inception_v3().fc.eval()

    fe_module = _stub_torch_fidelity()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random.pth")
        torch.save(state, path)
        fidelity = fe_module.FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased", "logits"], feature_extractor_weights_path=path
        ).eval()
    assert sorted(fidelity.state_dict()) == names, "torch-fidelity's and pytorch-fid's state dicts differ"

    record, image_sha256 = {}, {}
    with torch.no_grad():
        for batch, images in test_images().items():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            pool = model(x.float() / 255.0)[0].flatten(1)
            if images.size < 10000:  # the large image is regenerated by test_images() (hash in meta)
                record[f"{batch}_images"] = images
            image_sha256[batch] = hashlib.sha256(images.tobytes()).hexdigest()
            record[f"{batch}_pytorch_fid_pool3"] = pool.numpy()
            record[f"{batch}_pytorch_fid_logits"] = fc(pool).numpy()
            record[f"{batch}_pytorch_fid_logits_unbiased"] = (pool @ fc.weight.T).numpy()
            f_pool, f_unbiased, f_logits = fidelity(x)
            record[f"{batch}_torch_fidelity_pool3"] = f_pool.numpy()
            record[f"{batch}_torch_fidelity_logits_unbiased"] = f_unbiased.numpy()
            record[f"{batch}_torch_fidelity_logits"] = f_logits.numpy()
            print(
                batch,
                images.shape,
                "pool3 mean/std/max",
                float(pool.mean()),
                float(pool.std()),
                float(pool.max()),
                "logits std",
                float(record[f"{batch}_pytorch_fid_logits"].std()),
            )
    meta = {
        "seed": SEED,
        "recipe": RECIPE,
        "fid_weights_url": fid_url,
        "pytorch_fid": metadata.version("pytorch-fid"),
        "torch_fidelity": metadata.version("torch-fidelity"),
        "torchvision": tv_version,
        "torch": torch.__version__,
        "recorder": "benchmarks/parity/record_fid_inception.py",
        "image_sha256": image_sha256,
    }
    import json

    np.savez_compressed(
        OUT,
        meta=json.dumps(meta),
        names=np.array(names),
        shapes=np.array([",".join(map(str, captured[n])) for n in names]),
        **record,
    )
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT) / 1e3:.0f} kB), {len(names)} tensors")


if __name__ == "__main__":
    main()
