"""Data layer: image sources, batched pipelines, augmentations and pixel-range conversions."""

from keras_ebm.data.augment import augment_fn
from keras_ebm.data.augment import pad_crop_flip
from keras_ebm.data.augment import simclr_augment
from keras_ebm.data.pipeline import load_arrays
from keras_ebm.data.pipeline import make_dataset
from keras_ebm.data.pipeline import make_dataset_fn
from keras_ebm.data.pipeline import make_two_branch_dataset
from keras_ebm.data.pipeline import make_two_branch_dataset_fn
from keras_ebm.data.pixel_range import from_pixel_range
from keras_ebm.data.pixel_range import to_pixel_range
from keras_ebm.data.sources import KNOWN_DATASETS
from keras_ebm.data.sources import SourceData
from keras_ebm.data.sources import SourceInfo
from keras_ebm.data.sources import from_arrays
from keras_ebm.data.sources import interpolate_images
from keras_ebm.data.sources import load_source
from keras_ebm.data.sources import register_source
from keras_ebm.data.sources import source_names
