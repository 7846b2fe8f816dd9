"""Small files in the real formats, for tests that must run without the real data.

* The official distributions (`keras_ebm.data.official`): CIFAR-10/100 "python version" archives
  (pickled batches in a .tar.gz, laid out as cifar-10-python.tar.gz / cifar-100-python.tar.gz) and
  SVHN's `<split>_32x32.mat`.
* Stand-ins for the shared data directory (../shared/data/README.md): `cifar10_jpeg_bytes.npz`
  (JPEG bytes + offsets), `dtd_subset_32.npz` and `celeba_subset_32.npz`, same keys, dtypes and
  class names, with generated images.

The images are class-structured (each class its own colour, stripe orientation and frequency,
plus per-image phase, blob and noise), so that classifiers and EBMs have something to learn.
"""

import io
import pathlib
import pickle
import tarfile

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DTD_CLASSES = (
    "banded",
    "blotchy",
    "braided",
    "bubbly",
    "bumpy",
    "chequered",
    "cobwebbed",
    "cracked",
    "crosshatched",
    "crystalline",
)
SHARED_FILES = ("cifar10_jpeg_bytes.npz", "dtd_subset_32.npz", "celeba_subset_32.npz")


def synthetic_images(labels, size=32, seed=0, num_classes=10):
    """uint8 `[N, size, size, 3]` images whose look depends on their label."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).uniform(-1.0, 1.0, (num_classes, 3))
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1) / size
    out = np.empty((len(labels), size, size, 3), np.uint8)
    for i, c in enumerate(labels):
        angle = np.pi * c / num_classes
        freq = 1.0 + c % 4
        wave = np.sin(2 * np.pi * freq * (grid @ [np.cos(angle), np.sin(angle)]) + rng.uniform(0, 2 * np.pi))
        centre = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-np.sum((grid - centre) ** 2, -1) / 0.02)
        image = (
            128.0
            + 50.0 * palette[c]
            + rng.uniform(40, 70) * wave[..., None] * palette[c]
            + rng.uniform(-60, 60) * blob[..., None]
            + rng.normal(0, 6, (size, size, 3))
        )
        out[i] = np.clip(np.round(image), 0, 255)
    return out


# ------------------------------------------------------------------------- official formats
def _pickle_batch(batch):
    # Protocol 3 with the numpy < 2 module path, as the archives' Python 2 pickles name it (their
    # byte strings load as bytes with encoding="bytes", as these do).
    raw = pickle.dumps(batch, protocol=3)
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _add_member(tar, name, raw):
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    tar.addfile(info, io.BytesIO(raw))


def write_cifar_python(path, name="cifar10_python", sizes=(("train", 50), ("test", 20)), seed=0, folder=False):
    """A tiny CIFAR-10 ("cifar10_python") or CIFAR-100 ("cifar100_python") python-version archive.

    Laid out as the official files: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    or cifar-100-python/{train, test, meta}; each batch a pickled dict with b"data" uint8 [N, 3072]
    (rows R, G, B planes, each row-major) and list labels. `folder=True` writes the extracted folder
    under `path` instead of a .tar.gz at `path`.

    Returns:
        `{split: (x uint8 [N, 32, 32, 3], fine labels, coarse labels or None)}`, the arrays a reader
        must give back, and the class names `{"fine": ..., "coarse": ...}`.
    """
    rng = np.random.default_rng(seed)
    cifar100 = name == "cifar100_python"
    num = 100 if cifar100 else 10
    expected, members = {}, {}
    for split, n in dict(sizes).items():
        fine = rng.integers(0, num, n)
        coarse = fine // 5 if cifar100 else None
        x = synthetic_images(fine % 10, seed=seed + len(expected))
        expected[split] = (x, fine, coarse)
        data = x.transpose(0, 3, 1, 2).reshape(n, 3072)  # HWC -> the files' CHW rows
        chunks = [(f"data_batch_{i + 1}", part) for i, part in enumerate(np.array_split(np.arange(n), 5))]
        if split == "test" or cifar100:
            chunks = [(split if cifar100 else "test_batch", np.arange(n))]
        for member, idx in chunks:
            batch = {
                b"batch_label": member.encode(),
                b"data": data[idx],
                b"filenames": [f"img_{i}.png".encode() for i in idx],
            }
            if cifar100:
                batch.update(
                    {b"fine_labels": [int(v) for v in fine[idx]], b"coarse_labels": [int(v) for v in coarse[idx]]}
                )
            else:
                batch[b"labels"] = [int(v) for v in fine[idx]]
            members[member] = _pickle_batch(batch)
    if cifar100:
        names = {"fine": tuple(f"fine_{i}" for i in range(100)), "coarse": tuple(f"coarse_{i}" for i in range(20))}
        meta = {
            b"fine_label_names": [n.encode() for n in names["fine"]],
            b"coarse_label_names": [n.encode() for n in names["coarse"]],
        }
        members["meta"] = _pickle_batch(meta)
    else:
        names = {"fine": CIFAR10_CLASSES}
        meta = {b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_cases_per_batch": 10000}
        members["batches.meta"] = _pickle_batch(meta)
    root = "cifar-100-python" if cifar100 else "cifar-10-batches-py"
    path = pathlib.Path(path)
    if folder:
        (path / root).mkdir(parents=True, exist_ok=True)
        for member, raw in members.items():
            (path / root / member).write_bytes(raw)
    else:
        with tarfile.open(path, "w:gz") as tar:
            _add_member(tar, f"{root}/readme.html", b"<html></html>")
            for member, raw in members.items():
                _add_member(tar, f"{root}/{member}", raw)
    return expected, names


def write_svhn_mat(path, n=30, seed=0):
    """A tiny SVHN cropped-digits file: X uint8 [32, 32, 3, N], y uint8 [N, 1] in 1..10 (10 = "0").

    Returns:
        `(x uint8 [N, 32, 32, 3], labels in 0..9)`, what a reader must give back.
    """
    from scipy import io as scipy_io

    digits = np.random.default_rng(seed).integers(0, 10, n)
    digits[:2] = [0, 9]  # both ends of the 10 -> 0 mapping
    x = synthetic_images(digits, seed=seed)
    y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
    scipy_io.savemat(str(path), {"X": x.transpose(1, 2, 3, 0), "y": y}, format="5")
    return x, digits


# ------------------------------------------------------------------- shared-directory stand-ins
def write_cifar10_jpeg_bytes(path, n_train=512, n_test=256, seed=0):
    """`cifar10_jpeg_bytes.npz`'s format: `<split>_jpeg` (concatenated JPEG files), `<split>_offsets`
    (N+1), `<split>_y` uint8, `<split>_path`, `class_names`; JPEG quality 75 as the real archive."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    arrays = {"class_names": np.array(CIFAR10_CLASSES)}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        images = synthetic_images(y, seed=seed + n)
        jpegs = [tf.io.encode_jpeg(img, quality=75, chroma_downsampling=True).numpy() for img in images]
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(jpegs), np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64)
        arrays[f"{split}_y"] = y
        arrays[f"{split}_path"] = np.array([f"{split}/{CIFAR10_CLASSES[c]}/{i:04d}.jpg" for i, c in enumerate(y)])
    np.savez(path, **arrays)


def write_dtd_subset(path, per_class=12, seed=0):
    """`dtd_subset_32.npz`'s format: x uint8 [N, 32, 32, 3], y uint8, path, class_names (10 DTD
    categories), orig_size_wh."""
    y = np.repeat(np.arange(10), per_class).astype(np.uint8)
    # Textures: the stripes of other "classes" than CIFAR's, so they differ from the in-distribution set.
    x = synthetic_images((y + 3) % 10, seed=seed + 7)
    paths = np.array([f"images/{DTD_CLASSES[c]}/{DTD_CLASSES[c]}_{i:04d}.jpg" for i, c in enumerate(y)])
    np.savez(
        path, x=x, y=y, path=paths, class_names=np.array(DTD_CLASSES), orig_size_wh=np.full((len(y), 2), 640, np.int32)
    )


def write_celeba_subset(path, n=32, seed=0):
    """`celeba_subset_32.npz`'s format: x uint8 [N, 32, 32, 3], path (no labels)."""
    x = synthetic_images(np.arange(n) % 10, seed=seed + 11)[..., ::-1]
    np.savez(path, x=np.ascontiguousarray(x), path=np.array([f"celeba/{i + 1:06d}.jpg" for i in range(n)]))


def write_shared_standins(directory):
    """All three stand-ins under their real names in `directory`; returns it."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_cifar10_jpeg_bytes(directory / "cifar10_jpeg_bytes.npz")
    write_dtd_subset(directory / "dtd_subset_32.npz")
    write_celeba_subset(directory / "celeba_subset_32.npz")
    return directory
