"""Semantic segmentation datasets from disk or TFDS: images and their label maps.

``load_segmentation(source)`` -> :class:`SegmentationData`, whose ``dataset`` is an
unbatched ``tf.data.Dataset`` of ``{"images": float32 (H, W, C) in [0, 255],
"segmentation_masks": int32 (H, W, 1)}`` (what Keras' augmentation layers move with the
image; images keep their own sizes). A label is a class index, 0 the background, and
:data:`IGNORE` (255) marks pixels no loss or metric counts. ``source`` is

* a Pascal VOC style folder: ``root/images/[SPLIT/]NAME.jpg`` (any image extension)
  with ``root/masks/[SPLIT/]NAME.png``, an index PNG (mode ``P``, VOC's
  SegmentationClass palette files, or ``L``) whose pixel value IS the class index;
  class names from ``root/classes.txt``, ``labels.txt`` or ``obj.names`` (one a line,
  the first the background), else ``"background", "1", "2", ...`` up to the largest
  index found;
* a COCO JSON file whose annotations hold ``segmentation`` polygons or RLE
  (uncompressed ``counts`` lists or compressed strings): each image's label map is
  painted annotation by annotation, later ones over earlier ones, with class
  ``1 + the category's index`` (category ids sorted, as in
  :func:`kvision.data.detection.load_detection`) and :data:`IGNORE` for crowd regions;
  images are found beside the JSON or in an ``images/`` folder next to it;
* ``"tfds:NAME"`` or ``"tfds:NAME:SPLIT"``: a TFDS dataset with ``image`` and
  ``segmentation_mask`` features, downloaded on first use. The mask values are used
  as class indices unchanged: ``oxford_iiit_pet``'s trimaps are 1 pet, 2 background,
  3 border (index 0 unused).

Disk sources are checked when loaded: every image has a mask of its size and every
mask an image, and no label reaches past the class names (ValueErrors naming the
file). :func:`write_voc` and :func:`write_coco_masks` write
:class:`kvision.data.synthetic.Scenes` in those forms, for other tools.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from kvision.data import detection, folders

IGNORE = 255  # the label of pixels no loss or metric counts (VOC's "void")
NAMES_FILES = ("classes.txt", "labels.txt", "obj.names")
MASK_MODES = ("P", "L")    # index PNGs: a palette's indices, or grey values as indices
SUPERSAMPLE = 8            # PIL rounds polygon vertices to whole pixels: draw 8x finer

FORMS = ("a Pascal VOC style folder (root/images/ and root/masks/ with matching file "
         "names; masks are index PNGs, 0 background, 255 ignored)",
         "a COCO JSON file with segmentation annotations (polygons or RLE)",
         '"tfds:NAME" or "tfds:NAME:SPLIT" (a TFDS dataset with a segmentation_mask, '
         'e.g. tfds:oxford_iiit_pet)')

# TFDS datasets whose masks carry no class names: the names of their mask values.
TFDS_CLASS_NAMES = {"oxford_iiit_pet": ("none", "pet", "background", "border")}


@dataclasses.dataclass(frozen=True)
class SegmentationData:
    """A segmentation dataset: ``dataset`` (unbatched dict examples, see the module
    docstring), ``class_names`` (index 0 the background), ``num_examples``, ``source``;
    ``files`` is the image path of each example (disk sources)."""

    dataset: Any
    class_names: tuple
    num_examples: int
    source: str
    files: tuple = ()

    @property
    def num_classes(self):
        return len(self.class_names)


def load_segmentation(source, *, split=None, class_names=None, num_classes=None,
                      channels=3, max_examples=None, data_dir=None) -> SegmentationData:
    """Load a segmentation dataset (see the module docstring for the forms of
    ``source``).

    ``split``: a split folder of a VOC style folder (``images/train`` by default when it
    exists) or a TFDS split ("train" by default). ``class_names``: every class's name,
    the background first, overriding the names found with the data. ``num_classes``:
    the class count (background included) the caller expects; a different count in the
    data is an error. ``max_examples``: keep the first ones only.
    """
    folders._check_channels(channels)
    kind, path = detection.where_from(source, "segmentation", FORMS, max_examples)
    if kind == "tfds":
        return _from_tfds(path, split, class_names, num_classes, channels, max_examples,
                          data_dir)
    if os.path.isfile(path) and path.lower().endswith(".json"):
        images, labels, names = _read_coco(path, class_names, num_classes, max_examples)
    elif all(os.path.isdir(os.path.join(path, d)) for d in ("images", "masks")):
        images, labels, names = _read_voc(path, split, class_names, num_classes,
                                          max_examples)
    else:
        raise ValueError(f"{path!r} is neither a COCO .json file nor a folder with images/ "
                         f"and masks/ subfolders. Expected one of:\n  " + "\n  ".join(FORMS))
    return SegmentationData(_file_dataset(images, labels, channels), tuple(names),
                            len(images), os.path.abspath(path), tuple(images))


# -- shared --------------------------------------------------------------------------
def _numbered(count):
    """Names for ``count`` classes known by index only."""
    return ["background"] + [str(i) for i in range(1, count)]


def _class_names(found, class_names, num_classes, where):
    """The class names to use: given, found with the data, or numbered to
    ``num_classes``; None when nothing tells (the data's largest label will)."""
    names = detection._check_names(found, class_names, num_classes, where)
    if found is None and class_names is None and names is not None:
        names = _numbered(len(names))
    return names


def _check_labels(present, names, where):
    """A ValueError naming ``where`` and the label when one is past the class names."""
    bad = [int(v) for v in present if v != IGNORE and v >= len(names)]
    if bad:
        raise ValueError(f"{where}: label {bad[0]} but only {len(names)} class names "
                         f"(0..{len(names) - 1}, and {IGNORE} for ignored pixels): "
                         f"{list(names)[:12]}.")


def _file_dataset(images, labels, channels):
    """Decoded images (TensorFlow) with their label maps (``labels[i]()``, numpy)."""
    import tensorflow as tf

    def label_map(index):
        return labels[int(index)]().astype(np.int32)

    def read(path, index):
        image = folders.decode(tf.io.read_file(path), channels)
        mask = tf.numpy_function(label_map, [index], tf.int32, stateful=False)
        return {"images": tf.cast(image, tf.float32),
                "segmentation_masks": tf.reshape(mask, (tf.shape(image)[0],
                                                        tf.shape(image)[1], 1))}

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(images, tf.string, shape=(len(images),)),
         tf.range(len(images), dtype=tf.int64)))
    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


# -- Pascal VOC style folders --------------------------------------------------------
def read_mask(path):
    """An index PNG's labels ``(H, W)`` uint8 (palette indices, not colours); a
    ValueError naming the file when it is not one."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode, labels = image.mode, np.asarray(image)
    except Exception as err:
        raise ValueError(f"{path}: not a readable mask ({type(err).__name__}: {err}).") \
            from None
    if mode not in MASK_MODES:
        raise ValueError(f"{path}: a mask must be an index PNG (mode {' or '.join(MASK_MODES)}"
                         f": the pixel value is the class), got mode {mode!r}.")
    return labels


def _stems(root, paths):
    return {os.path.splitext(os.path.relpath(p, root))[0]: p for p in paths}


def _pair(image_root, mask_root):
    """``[(image, mask)]`` matched by path below the roots without the extension; a
    ValueError naming the counts and a few names of each side's strays."""
    images = _stems(image_root, folders._files_under(image_root))
    masks = _stems(mask_root, [p for p in folders._files_under(mask_root)
                               if p.lower().endswith(".png")])
    if not images:
        raise FileNotFoundError(f"No images ({' '.join(folders.IMAGE_EXTENSIONS)}) under "
                                f"{image_root!r}.")
    lonely = sorted(set(images) - set(masks))
    orphans = sorted(set(masks) - set(images))
    strays = ([f"{len(lonely)} images have no mask (e.g. {lonely[:3]})"] if lonely else []) \
        + ([f"{len(orphans)} masks have no image (e.g. {orphans[:3]})"] if orphans else [])
    if strays:
        raise ValueError(f"Images and masks must match by name: {len(images)} images under "
                         f"{image_root!r} and {len(masks)} masks under {mask_root!r}; "
                         + "; ".join(strays) + ".")
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def _read_voc(root, split, class_names, num_classes, max_examples):
    """``(images, labels, names)`` of a VOC style folder, every mask read once to
    check its size and labels."""
    image_root, mask_root = os.path.join(root, "images"), os.path.join(root, "masks")
    if split is None and os.path.isdir(os.path.join(image_root, "train")):
        split = "train"
    if split is not None:
        image_root, mask_root = os.path.join(image_root, split), os.path.join(mask_root, split)
        for folder in (image_root, mask_root):
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"No split folder {folder!r} (split={split!r}).")
    pairs = _pair(image_root, mask_root)[:max_examples and int(max_examples)]
    names = _class_names(detection._names_file(root, NAMES_FILES), class_names,
                         num_classes, root)
    top = 0
    for image, mask in pairs:
        labels, size = read_mask(mask), detection._image_size(image)
        if labels.shape != size:
            raise ValueError(f"{mask}: the mask is {labels.shape[1]}x{labels.shape[0]} "
                             f"pixels but its image {image} is {size[1]}x{size[0]}.")
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
        if names is not None:
            _check_labels(present, names, mask)
        top = max([top] + [int(v) for v in present if v != IGNORE])
    names = names if names is not None else _numbered(top + 1)
    readers = [lambda mask=mask: read_mask(mask) for _, mask in pairs]
    return [image for image, _ in pairs], readers, names


# -- COCO ----------------------------------------------------------------------------
def rle_from_string(counts):
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``:
    LEB128-like 5-bit groups offset by 48, each count after the second stored as the
    difference from the count two back)."""
    runs, position = [], 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            char = ord(counts[position]) - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position, shift = position + 1, shift + 5
            if not more and char & 0x10:
                value -= 1 << shift          # sign-extend the last group
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_to_string(runs):
    """The compressed COCO RLE string of run lengths (pycocotools' ``rleToString``)."""
    chars = []
    for i, run in enumerate(runs):
        value = int(run) - (int(runs[i - 2]) if i > 2 else 0)
        more = True
        while more:
            char = value & 0x1F
            value >>= 5
            more = value != -1 if char & 0x10 else value != 0
            chars.append(chr((char | (0x20 if more else 0)) + 48))
    return "".join(chars)


def rle_decode(rle):
    """A COCO RLE (``{"size": [h, w], "counts": list or string}``) -> bool ``(h, w)``.
    Runs alternate background and object, starting with background, down the columns."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = np.asarray(rle_from_string(counts) if isinstance(counts, str) else counts,
                      np.int64)
    if runs.sum() != height * width or (runs < 0).any():
        raise ValueError(f"RLE counts sum to {runs.sum()} but size {height}x{width} has "
                         f"{height * width} pixels.")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T


def rle_encode(mask):
    """Bool ``(h, w)`` -> a compressed COCO RLE dict (what pycocotools'
    ``mask.encode`` gives, with a str ``counts``)."""
    flat = np.asarray(mask, bool).T.ravel()
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs                  # runs start with background
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle_to_string(runs)}


def polygons_mask(polygons, shape):
    """COCO polygons (lists ``[x1, y1, x2, y2, ...]`` in pixels, pixel ``i`` covering
    ``[i, i + 1)``) -> bool ``shape``: the pixels whose centres are inside, drawn by PIL
    at :data:`SUPERSAMPLE` times the resolution over the polygons' box only. Agrees with
    pycocotools' ``annToMask`` except at pixels the outline passes through (it rounds
    vertices to a 1/5-pixel grid): measured on 300 random polygons 3-15 px across,
    3.0% of the area differs, every such pixel's centre within 0.2 px of the outline."""
    from PIL import Image, ImageDraw

    mask = np.zeros(shape, bool)
    points = [np.asarray(p, np.float64).reshape(-1, 2) for p in polygons if len(p) >= 6]
    if not points:
        return mask
    every = np.concatenate(points)
    low = np.clip(np.floor(every.min(0)), 0, shape[::-1]).astype(int)      # x, y
    high = np.clip(np.ceil(every.max(0)), 0, shape[::-1]).astype(int)
    if (high <= low).any():                # wholly outside the image
        return mask
    canvas = Image.new("1", tuple((high - low) * SUPERSAMPLE))
    draw = ImageDraw.Draw(canvas)
    for polygon in points:
        draw.polygon(((polygon - low) * SUPERSAMPLE).ravel().tolist(), fill=1)
    centre = SUPERSAMPLE // 2
    mask[low[1]:high[1], low[0]:high[0]] = \
        np.asarray(canvas)[centre::SUPERSAMPLE, centre::SUPERSAMPLE]
    return mask


def _segmentation(segmentation, shape, where):
    """A checked annotation ``segmentation``, as a zero-argument mask function."""
    if isinstance(segmentation, dict) and "counts" in segmentation:
        if [int(v) for v in segmentation.get("size", ())] != list(shape):
            raise ValueError(f"{where}: the RLE's size {segmentation.get('size')} is not "
                             f"its image's [height, width] {list(shape)}.")
        if not isinstance(segmentation["counts"], (str, list)):
            raise ValueError(f"{where}: RLE counts must be a list or a string, got "
                             f"{type(segmentation['counts']).__name__}.")
        return lambda: rle_decode(segmentation)
    if (isinstance(segmentation, list) and segmentation
            and all(isinstance(p, list) and len(p) % 2 == 0
                    and all(isinstance(v, (int, float)) for v in p) for p in segmentation)):
        return lambda: polygons_mask(segmentation, shape)
    raise ValueError(f"{where}: segmentation must be polygons [[x1, y1, x2, y2, ...], ...] "
                     f"or RLE {{'size': [h, w], 'counts': ...}}, got "
                     f"{str(segmentation)[:80]}.")


def _painter(shape, layers):
    """A zero-argument function giving the label map of ``layers``, ``[(label,
    mask function)]`` painted in order over background."""
    def paint():
        labels = np.zeros(shape, np.uint8)
        for label, mask in layers:
            labels[mask()] = label
        return labels
    return paint


def _read_coco(path, class_names, num_classes, max_examples):
    """``(images, labels, names)`` of a COCO file: annotations checked now, label maps
    painted when read."""
    coco, ids, categories = detection.read_coco_json(path)
    index = {cid: 1 + i for i, cid in enumerate(ids)}
    names = _class_names(["background"] + categories, class_names, num_classes, path)
    if len(names) != len(ids) + 1:
        raise ValueError(f"{path}: {len(ids)} categories and the background but "
                         f"{len(names)} class names.")
    images = {}
    for number, image in enumerate(coco["images"][:max_examples and int(max_examples)]):
        try:
            shape = (int(image["height"]), int(image["width"]))
            file = detection.coco_image_path(path, image["file_name"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: images[{number}] needs id, file_name, height and "
                             f"width, got {image!r}.") from None
        size = detection._image_size(file)
        if size != shape:
            raise ValueError(f"{file}: the image is {size[1]}x{size[0]} pixels but {path} "
                             f"says {shape[1]}x{shape[0]} (its masks are drawn at that size).")
        images[image["id"]] = (file, shape, [])
    for number, ann in enumerate(coco["annotations"]):
        where = f"{path}: annotations[{number}] (id {ann.get('id')})"
        if ann.get("category_id") not in index:
            raise ValueError(f"{where}: category_id {ann.get('category_id')!r} is not one of "
                             f"the {len(ids)} categories {ids[:20]}.")
        if ann.get("image_id") not in images:
            continue                       # an image left out by max_examples
        shape, layers = images[ann["image_id"]][1:]
        label = IGNORE if ann.get("iscrowd", 0) else index[ann["category_id"]]
        layers.append((label, _segmentation(ann.get("segmentation"), shape, where)))
    return ([file for file, _, _ in images.values()],
            [_painter(shape, layers) for _, shape, layers in images.values()], names)


# -- TFDS ----------------------------------------------------------------------------
def _from_tfds(spec, split, class_names, num_classes, channels, max_examples, data_dir):
    import tensorflow as tf

    from kvision.data.sources import _tfds_builder, _to_channels

    name, _, requested = spec.partition(":")
    if not name:
        raise ValueError(f"Expected 'tfds:NAME' or 'tfds:NAME:SPLIT', got 'tfds:{spec}'.")
    split = requested or split or "train"
    builder = _tfds_builder(name, data_dir)
    missing = [k for k in ("image", "segmentation_mask") if k not in builder.info.features]
    if missing:
        raise ValueError(f"TFDS dataset {name!r} has no {missing} feature: it is not a "
                         f"segmentation dataset.")
    names = _class_names(TFDS_CLASS_NAMES.get(name.split("/")[0]), class_names,
                         num_classes, f"tfds:{name}")
    if names is None:
        raise ValueError(f"tfds:{name}'s masks carry no class names: pass num_classes= "
                         f"(the largest mask value + 1) or class_names=.")

    def convert(example):
        mask = tf.cast(example["segmentation_mask"], tf.int32)
        return {"images": tf.cast(_to_channels(example["image"], channels), tf.float32),
                "segmentation_masks": tf.reshape(mask, tf.concat(
                    [tf.shape(mask)[:2], [1]], 0))}

    ds, count = detection.tfds_examples(builder, split, max_examples)
    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return SegmentationData(ds, tuple(names), count, f"tfds:{name}")


# -- writing -------------------------------------------------------------------------
def voc_palette():
    """Pascal VOC's 256 colours (``(256, 3)`` uint8): class ``i``'s bits spread over the
    high bits of red, green and blue; 255 is the light "void" colour."""
    palette = np.zeros((256, 3), np.uint8)
    for i in range(256):
        code, colour = i, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((code >> channel) & 1) << bit
            code >>= 3
        palette[i] = colour
    return palette


def _save_mask(labels, path):
    """An index PNG with VOC's palette (what VOC's SegmentationClass files are)."""
    from PIL import Image

    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"{path}: labels must be 0..255 for an index PNG, got "
                         f"{labels.min()}..{labels.max()}.")
    image = Image.frombytes("P", labels.shape[::-1], labels.astype(np.uint8).tobytes())
    image.putpalette(voc_palette().ravel().tolist())
    image.save(path)


@contextlib.contextmanager
def _staged(target):
    """A temporary folder beside ``target`` whose files move into ``target`` only when
    the block ends without error: a failure leaves ``target`` as it was."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".kvision-", dir=parent)
    try:
        yield stage
        for folder, _, files in os.walk(stage):
            destination = os.path.join(target, os.path.relpath(folder, stage))
            os.makedirs(destination, exist_ok=True)
            for name in files:
                os.replace(os.path.join(folder, name), os.path.join(destination, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_voc(scenes, root, *, class_names=None, split=None):
    """Write ``scenes`` as a Pascal VOC style folder: ``root/images/[split/]NNNNN.png``,
    ``root/masks/[split/]NNNNN.png`` (``scenes.semantic`` as index PNGs with VOC's
    palette) and ``root/classes.txt`` (by default ``background`` and
    ``scenes.class_names``). Returns ``root``."""
    names = list(class_names or ("background", *getattr(scenes, "class_names", ())))
    sub = [split] if split else []
    with _staged(root) as stage:
        os.makedirs(os.path.join(stage, "images", *sub))
        os.makedirs(os.path.join(stage, "masks", *sub))
        for i, (image, labels) in enumerate(zip(scenes.images, scenes.semantic)):
            detection._save_image(image, os.path.join(stage, "images", *sub, f"{i:05d}.png"))
            _save_mask(labels, os.path.join(stage, "masks", *sub, f"{i:05d}.png"))
        with open(os.path.join(stage, "classes.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(names) + "\n")
    return root


def mask_polygons(mask):
    """COCO polygons of a bool mask's outer outlines, traced (OpenCV) at twice the
    resolution so that each vertex lies a quarter pixel inside its pixels' edges and
    ``annToMask`` gives the mask back; holes are filled, as COCO polygons have none
    (write RLE for exact masks)."""
    import cv2

    double = np.repeat(np.repeat(np.asarray(mask, np.uint8), 2, 0), 2, 1)
    outlines, _ = cv2.findContours(double, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [((outline.reshape(-1, 2) + 0.5) / 2).ravel().tolist() for outline in outlines]


def write_coco_masks(scenes, path, *, image_dir=None, rle=False):
    """Write ``scenes`` as a COCO JSON file at ``path`` with one annotation per object:
    its ``scenes.masks`` mask as polygons (:func:`mask_polygons`) or, with ``rle=True``,
    exactly as compressed RLE; category ids 1..C named ``scenes.class_names``, boxes
    ``[x, y, w, h]``. The images go as PNGs to ``image_dir`` (by default the JSON's
    folder), then the JSON. Returns ``path``."""
    image_dir = image_dir or os.path.dirname(os.path.abspath(path))
    images, annotations = [], []
    with _staged(image_dir) as stage:
        for i, (image, masks, classes) in enumerate(zip(scenes.images, scenes.masks,
                                                        scenes.classes)):
            detection._save_image(image, os.path.join(stage, f"{i:05d}.png"))
            height, width = np.asarray(image).shape[:2]
            images.append({"id": i + 1, "file_name": f"{i:05d}.png", "height": int(height),
                           "width": int(width)})
            annotations += [_annotation(mask, cls, i + 1, len(annotations) + n + 1, rle)
                            for n, (mask, cls) in enumerate(zip(masks, classes))]
    names = getattr(scenes, "class_names", ()) or [
        str(i) for i in range(1 + max((int(np.max(c)) for c in scenes.classes if len(c)),
                                      default=-1))]
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": str(n)} for i, n in enumerate(names)]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(os.path.abspath(path)),
                                     suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(coco, f)
    os.replace(f.name, path)
    return path


def _annotation(mask, cls, image_id, number, rle):
    """One COCO annotation of a bool mask."""
    ys, xs = np.nonzero(mask)
    box = ([float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)] if len(xs) else [0.0, 0.0, 0.0, 0.0])
    return {"id": number, "image_id": image_id, "category_id": int(cls) + 1, "iscrowd": 0,
            "segmentation": rle_encode(mask) if rle else mask_polygons(mask),
            "area": float(len(xs)), "bbox": box}
