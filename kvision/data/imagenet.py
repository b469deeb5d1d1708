"""The 1,000 ImageNet (ILSVRC-2012) class names, shipped so predictions print names
offline. The list is the one TensorFlow Datasets carries (Apache-2.0), in the class
index order of every ImageNet classifier (keras.applications' included)."""

from __future__ import annotations

import functools
import os

PATH = os.path.join(os.path.dirname(__file__), "imagenet_classes.txt")


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple:
    """``(1000,)`` names; index 285 is "Egyptian cat", 967 "espresso"."""
    with open(PATH) as f:
        return tuple(line.rstrip("\n") for line in f)
