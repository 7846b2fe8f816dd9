"""The "digits" source: scikit-learn's built-in 8x8 grayscale digits, for a quickstart that needs
no files."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keras_ebm.data.sources import common
from keras_ebm.data.sources.registry import register_source

if TYPE_CHECKING:
    from collections.abc import Sequence


@register_source("digits")
def digits_source(
    name: str, split: str, *, classes: Sequence[int] | None = None, max_examples: int | None = None
) -> common.SourceData:
    """scikit-learn's 1,797 8x8 digits (counts 0..16 spread over 0..255), 10 classes; "train" is
    a fixed 80% of them, "test" the rest, "all" every image in order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The 8x8 images hold counts 0..16; spread them over the uint8 range like any other image.
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    order = common.deterministic_split(len(x), split, "digits")
    class_names = tuple(str(i) for i in range(10))
    return common.from_arrays(x[order], digits.target[order], class_names, classes, max_examples)
