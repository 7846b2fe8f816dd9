"""The former name of `keras_ebm.data.pixel_range` (uint8 <-> float pixel-range conversions), kept so
that `from keras_ebm.data.preprocess import to_pixel_range` still works."""

from keras_ebm.data.pixel_range import from_pixel_range  # noqa: F401
from keras_ebm.data.pixel_range import to_pixel_range  # noqa: F401
