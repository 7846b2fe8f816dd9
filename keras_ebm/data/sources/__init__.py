"""Image sources: every data set as an unbatched `tf.data.Dataset` of `(uint8 image, int32 label)`.

`load_source(name, split, **options)` is the single entry point; it looks `name` up in a registry
of sources (`registry.py`), one file per kind of source:

* `tfds.py`, tensorflow-datasets: "cifar10", "cifar100", "svhn_cropped", "celeb_a", "dtd". Data that
  is not prepared is downloaded when the network answers a 3-second probe; offline a missing set
  raises `FileNotFoundError` at once, naming the offline options (`download=False`: never download).
* `official_files.py`, the files the data sets' authors distribute, read pixel-exactly
  (`keras_ebm.data.official`): "cifar10_python" and "cifar100_python" (`cifar-10-python.tar.gz` /
  `cifar-100-python.tar.gz` or their extracted folders) and "svhn_mat" (`train_32x32.mat`,
  `test_32x32.mat`, `extra_32x32.mat`), or the npz `python -m keras_ebm.data.prepare` makes from
  them.
* local files: "cifar10_jpeg" (`cifar10_jpeg.py`, the JPEG-bytes archive of the shared data
  directory), "npz" (`npz.py`, any `.npz` of uint8 NHWC arrays; "dtd_npz" and "celeba_npz" name the
  shared DTD and CelebA subsets), "folder" (`folder.py`, one sub-folder per class).
* built into scikit-learn, for a quickstart that needs no files: "digits" (`digits.py`, 8x8
  grayscale) and "photo_patches" (`photo_patches.py`, patches of the two sample photos, an OOD set
  of real textures).

Local files are looked for in the directory named by the environment variable KERAS_EBM_DATA_DIR,
then KERAS_EBM_SHARED_DATA, the working directory, Keras' dataset cache (`~/.keras/datasets`) and
`../shared/data` (see `data_search_dirs`), unless `local_path=` names them.

Any name followed by "_interp" ("cifar10_jpeg_interp", "digits_interp", ...) is the interpolation
OOD set built from that source: the average of two images of the set, as in JEM's and CLEL's
"CIFAR-10 interp" (`interp.py`, `interpolate_images`).

A new data set is one function in one new file, registered with `register_source` (see
`registry.py`): importing the file registers it, and its name then works wherever a source name
does (`load_source`, `make_dataset_fn.name` in gin, `run_eval.ood_sets`, "<name>_interp").
"""

from keras_ebm.data.sources.common import SourceData, SourceInfo, dataset_to_arrays, from_arrays
from keras_ebm.data.sources.files import data_search_dirs
from keras_ebm.data.sources.interp import interpolate_images
from keras_ebm.data.sources.registry import (
    INTERP_SUFFIX,
    check_available,
    get_source,
    load_source,
    register_source,
    source_names,
)

# The built-in sources register themselves on import, in this order (the order of the names in
# error messages).
from keras_ebm.data.sources import tfds  # noqa: E402  isort: skip
from keras_ebm.data.sources import official_files  # noqa: E402  isort: skip
from keras_ebm.data.sources import cifar10_jpeg  # noqa: E402  isort: skip
from keras_ebm.data.sources import npz  # noqa: E402  isort: skip
from keras_ebm.data.sources import folder  # noqa: E402  isort: skip
from keras_ebm.data.sources import digits  # noqa: E402  isort: skip
from keras_ebm.data.sources import photo_patches  # noqa: E402  isort: skip

from keras_ebm.data.sources.official_files import resolve_official_path  # noqa: E402

# The built-in source names (`source_names()` also lists the ones registered later).
KNOWN_DATASETS = source_names()
