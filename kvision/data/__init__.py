"""Datasets: image folders, TensorFlow Datasets by name, and the embedded digits.

``load(data, image_size=...)`` gives a :class:`Dataset` of unbatched ``(image,
label)`` examples from any of the three; ``list_images`` and ``load_image`` work on
folders and single files directly. TensorFlow loads only when one of them is called.
"""

from kvision.data.digits import load_digits
from kvision.data.folders import CorruptImageWarning, list_images, load_image
from kvision.data.imagenet import imagenet_class_names
from kvision.data.sources import Dataset, load

__all__ = ["CorruptImageWarning", "Dataset", "imagenet_class_names", "list_images", "load",
           "load_digits", "load_image"]
