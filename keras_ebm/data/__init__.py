"""Data layer: image sources, batched pipelines, augmentations and pixel-range conversions."""

from keras_ebm.data.augment import augment_fn, pad_crop_flip, simclr_augment
from keras_ebm.data.pipeline import (
    load_arrays,
    make_dataset,
    make_dataset_fn,
    make_two_branch_dataset,
    make_two_branch_dataset_fn,
)
from keras_ebm.data.pixel_range import from_pixel_range, to_pixel_range
from keras_ebm.data.sources import (
    KNOWN_DATASETS,
    SourceData,
    SourceInfo,
    from_arrays,
    interpolate_images,
    load_source,
    register_source,
    source_names,
)
