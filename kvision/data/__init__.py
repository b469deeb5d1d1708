"""Datasets: image folders, TensorFlow Datasets by name, the embedded digits, and
detection/segmentation data (digit scenes, YOLO-txt and COCO-JSON folders, TFDS).

``load(data, image_size=...)`` gives a :class:`Dataset` of unbatched ``(image,
label)`` examples from any of the three; ``list_images`` and ``load_image`` work on
folders and single files directly. ``digit_scenes`` draws a seeded detection and
segmentation set of real handwritten digits with exact boxes and masks;
``load_detection`` reads YOLO, COCO and TFDS detection data into Keras' bounding-box
dicts, ``load_segmentation`` VOC style mask folders, COCO masks and TFDS segmentation
data into label maps. ``figures.figures`` draws a seeded pose dataset of articulated
figures with exact keypoints (MPII's 16 joints); ``load_keypoints`` reads COCO
keypoints, MPII annotations, iBUG ``.pts`` files and TFDS landmarks. TensorFlow loads
only when one of them is called.

Image files are seen upright (their EXIF orientation applied), and one whose header
declares more than ``MAX_PIXELS`` pixels is refused before it is decoded
(:class:`ImageTooLargeError`). ``MAX_PIXELS`` None means ``$KVISION_MAX_PIXELS``, or
else 178,956,970 (Pillow's own refusal threshold); set it to change the limit.
"""

from kvision.data.detection import DetectionData, load_detection
from kvision.data.digits import load_digits
from kvision.data.figures import Figures
from kvision.data.folders import (CorruptImageWarning, ImageTooLargeError,
                                   TooFewImagesWarning, list_images, load_image,
                                   max_pixels)
from kvision.data.imagenet import imagenet_class_names
from kvision.data.keypoints import KeypointData, load_keypoints
from kvision.data.photos import load_faces, load_textures, photo_crops, photo_dataset
from kvision.data.segmentation import SegmentationData, load_segmentation
from kvision.data.sources import Dataset, load
from kvision.data.synthetic import Scenes, digit_scenes

MAX_PIXELS = None  # the pixel limit of image files: see the module docstring

__all__ = ["CorruptImageWarning", "Dataset", "DetectionData", "Figures",
           "ImageTooLargeError", "KeypointData", "MAX_PIXELS", "Scenes", "digit_scenes",
           "imagenet_class_names", "list_images", "load", "load_detection",
           "load_digits", "load_faces", "load_image", "load_keypoints",
           "load_segmentation", "load_textures", "max_pixels", "photo_crops",
           "photo_dataset", "SegmentationData", "TooFewImagesWarning"]
