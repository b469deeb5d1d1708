"""Detection datasets from disk or TFDS, in Keras' bounding-box dict format.

``load_detection(source)`` -> :class:`DetectionData`, whose ``dataset`` is an unbatched
``tf.data.Dataset`` of ``{"images": float32 (H, W, C) in [0, 255], "bounding_boxes":
{"boxes": (n, 4) float32 xyxy pixels, "labels": (n,) int32}}`` (images keep their own
sizes; resize with :class:`kvision.data.box_augment.ResizeWithBoxes`). ``source`` is

* a YOLO folder: ``root/images/[SPLIT/]NAME.jpg`` with ``root/labels/[SPLIT/]NAME.txt``
  holding one ``class cx cy w h`` line per object, normalized to the image size (the
  Ultralytics layout); class names from ``root/classes.txt`` or ``root/obj.names``
  (darknet's file; one name per line) or the ``names`` of ``root/data.yaml``; an image
  without a label file has no objects;
* a COCO JSON file (``images``, ``annotations`` with ``bbox: [x, y, w, h]`` pixels,
  ``categories``); category ids are remapped to contiguous 0..C-1 in id order, and
  ``category_ids`` keeps the original id of each class; crowd annotations
  (``iscrowd: 1``) are skipped; image files are found under ``image_dir``, by default
  beside the JSON or, when not there, in an ``images/`` folder next to it;
* ``"tfds:NAME"`` or ``"tfds:NAME:SPLIT"``: a TFDS detection dataset whose examples
  hold ``objects/bbox`` (normalized ``yxyx``) and ``objects/label`` (``voc/2007``,
  ``coco/2017``, ...), downloaded on first use.

Every box goes through :func:`kvision.ops.boxes.sanitize`: clipped to its image;
zero-area, inverted or outside boxes dropped with one counted
:class:`kvision.ops.boxes.BoxWarning`; class ids outside the class list raise a
ValueError naming the file and line. :func:`write_yolo` and :func:`write_coco` write
:class:`kvision.data.synthetic.Scenes` (or anything with ``images``, ``boxes``,
``classes``) in those formats, for other tools.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import numpy as np

from kvision.data import folders

NAMES_FILES = ("classes.txt", "obj.names")  # one class name a line; obj.names is darknet's

FORMS = ("a YOLO folder (root/images/ and root/labels/ with 'class cx cy w h' lines)",
         "a COCO JSON file (images, annotations, categories)",
         '"tfds:NAME" or "tfds:NAME:SPLIT" (a TFDS detection dataset, e.g. tfds:voc/2007)')


@dataclasses.dataclass(frozen=True)
class DetectionData:
    """A detection dataset: ``dataset`` (unbatched dict examples, see the module
    docstring), ``class_names``, ``num_examples``, ``source``; ``files`` is the image
    path of each example (disk sources) and ``category_ids`` the original COCO id of
    each class."""

    dataset: Any
    class_names: tuple
    num_examples: int
    source: str
    files: tuple = ()
    category_ids: tuple = ()

    @property
    def num_classes(self):
        return len(self.class_names)


def load_detection(source, *, split=None, class_names=None, num_classes=None,
                   image_dir=None, channels=3, min_size=1.0, max_examples=None,
                   data_dir=None):
    """Load a detection dataset (see the module docstring for the forms of ``source``).

    ``split``: a YOLO split folder ("train", "val"; by default ``train`` when
    ``images/train`` exists) or a TFDS split ("train" by default). ``class_names``:
    overrides the names found with the data. ``num_classes``: the class count the
    caller expects; a different count in the data is an error. ``min_size``: boxes
    narrower or lower than this (pixels, after clipping) are dropped. ``max_examples``:
    keep the first ones only.
    """
    folders._check_channels(channels)
    kind, path = where_from(source, "detection", FORMS, max_examples)
    if kind == "tfds":
        return _from_tfds(path, split, class_names, num_classes, channels, min_size,
                          max_examples, data_dir)
    if os.path.isfile(path) and path.lower().endswith(".json"):
        records, names, ids = _read_coco(path, image_dir, class_names, num_classes)
    elif os.path.isdir(os.path.join(path, "images")):
        records, names = _read_yolo(path, split, class_names, num_classes)
        ids = ()
    else:
        raise ValueError(f"{path!r} is neither a COCO .json file nor a YOLO folder with an "
                         f"images/ subfolder. Expected one of:\n  " + "\n  ".join(FORMS))
    if max_examples is not None:
        records = records[:int(max_examples)]
    records = _sanitize_all(records, len(names), min_size)
    return DetectionData(_file_dataset(records, channels), tuple(names), len(records),
                         os.path.abspath(path), tuple(r[0] for r in records), tuple(ids))


# -- shared --------------------------------------------------------------------------
def where_from(source, what, forms, max_examples=None):
    """The checks every loader (detection, segmentation, keypoints) makes first:
    ``("tfds", "NAME[:SPLIT]")`` for ``"tfds:NAME[:SPLIT]"``, ``("path", path)`` for a
    path that exists; a path that does not is a FileNotFoundError, anything else (or a
    ``max_examples`` below 1) a ValueError, each naming ``forms``."""
    if max_examples is not None and int(max_examples) < 1:
        raise ValueError(f"max_examples must be a positive int or None, got {max_examples}.")
    if isinstance(source, str) and source.startswith("tfds:"):
        return "tfds", source[len("tfds:"):]
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"source must be a path or 'tfds:NAME', got "
                         f"{type(source).__name__}. Expected one of:\n  " + "\n  ".join(forms))
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No {what} data at {path!r}. Expected one of:\n  "
                                + "\n  ".join(forms))
    return "path", path


def _check_names(names, class_names, num_classes, where):
    """The class names to use, checked against ``num_classes``."""
    if class_names is not None:
        names = [str(n) for n in class_names]
    if num_classes is not None:
        if names is None:
            names = [str(i) for i in range(int(num_classes))]
        elif len(names) != int(num_classes):
            raise ValueError(f"num_classes={num_classes} disagrees with the {len(names)} "
                             f"classes of {where}: {names[:10]}.")
    return names


def _sanitize_all(records, num_classes, min_size):
    """Sanitizes every record's boxes; one BoxWarning for all dropped boxes."""
    from kvision.ops import boxes as box_ops

    paths, boxes, classes, shapes, label_files = zip(*records) if records else ((),) * 5
    boxes, classes = box_ops.sanitize_images(
        boxes, classes, list(shapes), num_classes=num_classes, min_size=min_size,
        names=[f"{label} (image {path})" for label, path in zip(label_files, paths)],
        caller="load_detection")
    return list(zip(paths, boxes, classes, shapes))


def _ragged(arrays, inner, dtype):
    import tensorflow as tf

    lengths = np.array([len(a) for a in arrays], "int64")
    flat = (np.concatenate([np.asarray(a, dtype).reshape((-1,) + inner) for a in arrays])
            if len(arrays) else np.zeros((0,) + inner, dtype))
    return tf.RaggedTensor.from_row_lengths(flat, lengths)


def _file_dataset(records, channels):
    import tensorflow as tf

    paths = [r[0] for r in records]
    ds = tf.data.Dataset.from_tensor_slices({
        "path": tf.constant(paths, tf.string, shape=(len(paths),)),
        "boxes": _ragged([r[1] for r in records], (4,), "float32"),
        "labels": _ragged([r[2] for r in records], (), "int32")})

    def read(example):
        image = folders.decode(tf.io.read_file(example["path"]), channels)
        return {"images": tf.cast(image, tf.float32),
                "bounding_boxes": {"boxes": example["boxes"], "labels": example["labels"]}}

    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def _image_size(path):
    """``(height, width)`` from the file's header, or a ValueError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as err:
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err}).") \
            from None
    return height, width


# -- YOLO ----------------------------------------------------------------------------
def _yaml_names(path):
    """The ``names`` of an Ultralytics data.yaml: a list ``[a, b]``, a block list or an
    ``id: name`` mapping (read without a YAML library)."""
    lines = open(path, encoding="utf-8").read().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^names\s*:\s*(.*)$", line)
        if not match:
            continue
        inline = match.group(1).split("#")[0].strip()
        if inline.startswith("["):
            return [n.strip().strip("'\"") for n in inline.strip("[]").split(",") if n.strip()]
        names = {}
        for j, item in enumerate(lines[i + 1:], start=i + 2):
            if item.strip() == "" or item.lstrip().startswith("#"):
                continue
            if not item.startswith((" ", "\t")):
                break
            entry = item.strip()
            pair = re.match(r"^(\d+)\s*:\s*(.+)$", entry)
            if entry.startswith("-"):
                names[len(names)] = entry[1:].strip().strip("'\"")
            elif pair:
                names[int(pair.group(1))] = pair.group(2).strip().strip("'\"")
            else:
                raise ValueError(f"{path}, line {j}: expected '- name' or 'id: name' under "
                                 f"names:, got {entry!r}.")
        if sorted(names) != list(range(len(names))):
            raise ValueError(f"{path}: the names ids must be 0..{len(names) - 1}, got "
                             f"{sorted(names)}.")
        return [names[k] for k in range(len(names))]
    raise ValueError(f"{path}: no 'names:' entry (the class names).")


def _names_file(root, names=NAMES_FILES):
    """The lines of the first of ``names`` found in ``root`` (one class name a line),
    or None."""
    for name in names:
        if os.path.isfile(os.path.join(root, name)):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                return [line.strip() for line in f if line.strip()]
    return None


def _yolo_names(root):
    names = _names_file(root)
    if names is not None:
        return names
    for name in ("data.yaml", "dataset.yaml"):
        if os.path.isfile(os.path.join(root, name)):
            return _yaml_names(os.path.join(root, name))
    return None


def _parse_yolo_labels(path, num_classes):
    """``(classes, normalized cx cy w h)`` of one label file; errors name file and line."""
    classes, boxes = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                values = [float(v) for v in fields]
            except ValueError:
                values = None
            if values is None or len(values) != 5 or values[0] != int(values[0]):
                raise ValueError(f"{path}, line {number}: expected 'class cx cy w h' (an "
                                 f"integer class and 4 numbers), got {line.strip()!r}.")
            if num_classes is not None and not 0 <= values[0] < num_classes:
                raise ValueError(f"{path}, line {number}: class {int(values[0])} is outside "
                                 f"the {num_classes} classes 0..{num_classes - 1} (the "
                                 f"class count disagrees with the data).")
            if max(abs(v) for v in values[1:]) > 2.0:
                raise ValueError(f"{path}, line {number}: YOLO coordinates are fractions of "
                                 f"the image size (0..1), got {values[1:]} (pixels?).")
            classes.append(int(values[0]))
            boxes.append(values[1:])
    return np.array(classes, "int64"), np.array(boxes, "float64").reshape(-1, 4)


def _yolo_to_xyxy(yolo, shape):
    """Normalized ``cx cy w h`` -> xyxy pixels of an image of ``shape`` (numpy: an eager
    keras op per image costs ~5 ms, a tenth of the whole read)."""
    scale = np.array([shape[1], shape[0]] * 2, "float64")
    return np.hstack([yolo[:, :2] - yolo[:, 2:] / 2, yolo[:, :2] + yolo[:, 2:] / 2]) * scale


def _xyxy_to_yolo(boxes, shape):
    scale = np.array([shape[1], shape[0]] * 2, "float64")
    boxes = np.asarray(boxes, "float64").reshape(-1, 4) / scale
    return np.hstack([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]])


def _read_yolo(root, split, class_names, num_classes):
    image_root = os.path.join(root, "images")
    if split is None and os.path.isdir(os.path.join(image_root, "train")):
        split = "train"
    if split is not None:
        image_root = os.path.join(image_root, split)
        if not os.path.isdir(image_root):
            raise FileNotFoundError(f"No split folder {image_root!r} (split={split!r}).")
    names = _check_names(_yolo_names(root), class_names, num_classes, root)
    label_root = os.path.join(root, "labels", split) if split else os.path.join(root, "labels")
    records = []
    for image_path in folders._files_under(image_root):
        relative = os.path.relpath(image_path, image_root)
        label_path = os.path.join(label_root, os.path.splitext(relative)[0] + ".txt")
        shape = _image_size(image_path)
        if os.path.isfile(label_path):
            classes, yolo = _parse_yolo_labels(label_path, None if names is None
                                               else len(names))
        else:
            classes, yolo = np.zeros(0, "int64"), np.zeros((0, 4))
        records.append((image_path, _yolo_to_xyxy(yolo, shape), classes, shape, label_path))
    if not records:
        raise FileNotFoundError(f"No images ({' '.join(folders.IMAGE_EXTENSIONS)}) under "
                                f"{image_root!r}.")
    if names is None:
        top = max((int(r[2].max()) for r in records if len(r[2])), default=-1)
        names = [str(i) for i in range(top + 1)]
    return records, names


# -- COCO ----------------------------------------------------------------------------
def coco_image_path(json_path, file_name, image_dir=None):
    """Where a COCO file's image is: under ``image_dir`` when given, else beside the
    JSON or, when not there, in an ``images/`` folder next to it (a FileNotFoundError
    naming the places looked at when none holds it)."""
    folder = os.path.dirname(os.path.abspath(json_path))
    places = ([image_dir] if image_dir is not None
              else [folder, os.path.join(folder, "images")])
    for place in places:
        if os.path.isfile(os.path.join(place, file_name)):
            return os.path.join(place, file_name)
    raise FileNotFoundError(f"{json_path}: image file {file_name!r} is not in "
                            f"{' nor '.join(repr(p) for p in places)} (pass image_dir= "
                            f"where the images are).")


def read_coco_json(path):
    """``(coco, ids, names)``: a COCO file's dict, checked to hold ``images``,
    ``annotations`` and ``categories``, and its category ids sorted with their names
    (the contiguous class order)."""
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}).") from None
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(coco, dict) or k not in coco]
    if missing:
        raise ValueError(f"{path}: a COCO file needs 'images', 'annotations' and "
                         f"'categories'; {missing} missing.")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    return (coco, [c["id"] for c in categories],
            [str(c.get("name", c["id"])) for c in categories])


def _read_coco(path, image_dir, class_names, num_classes):
    coco, ids, names = read_coco_json(path)
    index = {cid: i for i, cid in enumerate(ids)}
    names = _check_names(names, class_names, num_classes, path)
    if len(names) != len(ids):
        raise ValueError(f"{path}: {len(ids)} categories but {len(names)} class names.")
    images, order = {}, []
    for number, image in enumerate(coco["images"]):
        try:
            images[image["id"]] = (coco_image_path(path, image["file_name"], image_dir),
                                   (int(image["height"]), int(image["width"])), [], [])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: images[{number}] needs id, file_name, height and "
                             f"width, got {image!r}.") from None
        order.append(image["id"])
    for number, ann in enumerate(coco["annotations"]):
        where = f"{path}: annotations[{number}] (id {ann.get('id')})"
        if ann.get("image_id") not in images:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not in images.")
        if ann.get("category_id") not in index:
            raise ValueError(f"{where}: category_id {ann.get('category_id')!r} is not one of "
                             f"the {len(ids)} categories {ids[:20]} (the class count "
                             f"disagrees with the data).")
        bbox = ann.get("bbox")
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{where}: bbox must be [x, y, width, height] pixels, got "
                             f"{bbox!r}.")
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = bbox
        images[ann["image_id"]][2].append([x, y, x + w, y + h])
        images[ann["image_id"]][3].append(index[ann["category_id"]])
    records = []
    for image_id in order:
        file, shape, boxes, classes = images[image_id]
        records.append((file, np.array(boxes, "float64").reshape(-1, 4),
                        np.array(classes, "int64"), shape, path))
    return records, names, ids


# -- TFDS ----------------------------------------------------------------------------
def _box_feature(features, name):
    """``(key, features)`` of the objects sequence (with ``bbox`` and ``label``) of a
    TFDS detection dataset."""
    for key, feature in features.items():
        inner = getattr(feature, "feature", None)
        if inner is not None and hasattr(inner, "keys") and "bbox" in inner.keys():
            if "label" not in inner.keys():
                break
            return key, inner
    raise ValueError(f"TFDS dataset {name!r} has no objects with 'bbox' and 'label' "
                     f"features: it is not a detection dataset.")


def _from_tfds(spec, split, class_names, num_classes, channels, min_size, max_examples,
               data_dir):
    import tensorflow as tf

    from kvision.data.sources import _tfds_builder, _to_channels
    from kvision.ops import boxes as box_ops

    name, _, requested = spec.partition(":")
    if not name:
        raise ValueError(f"Expected 'tfds:NAME' or 'tfds:NAME:SPLIT', got 'tfds:{spec}'.")
    split = requested or split or "train"
    builder = _tfds_builder(name, data_dir)
    objects, inner = _box_feature(builder.info.features, name)
    names = _check_names(list(inner["label"].names), class_names, num_classes,
                         f"tfds:{name}")
    crowd = "is_crowd" in inner.keys()
    limit = len(names)

    def clean(boxes, labels, height, width):
        return box_ops.sanitize(boxes, labels, (int(height), int(width)),
                                num_classes=limit, min_size=min_size)

    def convert(example):
        image = _to_channels(example["image"], channels)
        shape = tf.shape(image)
        height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        found = example[objects]
        y1, x1, y2, x2 = tf.unstack(tf.cast(found["bbox"], tf.float32), axis=-1)
        boxes = tf.stack([x1 * width, y1 * height, x2 * width, y2 * height], axis=-1)
        labels = tf.cast(found["label"], tf.int64)
        if crowd:
            keep = tf.logical_not(tf.cast(found["is_crowd"], tf.bool))
            boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
        boxes, labels = tf.numpy_function(clean, [boxes, labels, shape[0], shape[1]],
                                          [tf.float32, tf.int32], stateful=False)
        return {"images": tf.cast(image, tf.float32),
                "bounding_boxes": {"boxes": tf.reshape(boxes, (-1, 4)),
                                   "labels": tf.reshape(labels, (-1,))}}

    ds, count = tfds_examples(builder, split, max_examples)
    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return DetectionData(ds, tuple(names), count, f"tfds:{name}")


def tfds_examples(builder, split, max_examples=None):
    """``(dataset, count)``: a TFDS split's examples in order, the first
    ``max_examples`` of them if given, and how many (the split's size where the
    dataset does not know it); shared by the detection, segmentation and keypoint
    loaders."""
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if max_examples is not None:
        ds = ds.take(int(max_examples))
    count = int(ds.cardinality())
    if count < 0 and split in builder.info.splits:
        count = builder.info.splits[split].num_examples
    return ds, count


# -- writing -------------------------------------------------------------------------
def _save_image(image, path):
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


def write_yolo(scenes, root, *, class_names=None, split=None):
    """Write ``scenes`` as a YOLO folder: ``root/images/[split/]NNNNN.png``,
    ``root/labels/[split/]NNNNN.txt`` (``class cx cy w h``, normalized) and
    ``root/classes.txt``. Returns ``root``."""
    names = list(class_names or getattr(scenes, "class_names", ()))
    image_dir = os.path.join(root, "images", *([split] if split else []))
    label_dir = os.path.join(root, "labels", *([split] if split else []))
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    for i, (image, boxes, classes) in enumerate(zip(scenes.images, scenes.boxes,
                                                    scenes.classes)):
        _save_image(image, os.path.join(image_dir, f"{i:05d}.png"))
        shape = np.asarray(image).shape[:2]
        yolo = _xyxy_to_yolo(boxes, shape)
        with open(os.path.join(label_dir, f"{i:05d}.txt"), "w", encoding="utf-8") as f:
            for cls, box in zip(classes, yolo):
                f.write(f"{int(cls)} " + " ".join(f"{v:.6f}" for v in box) + "\n")
    if names:
        with open(os.path.join(root, "classes.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(names) + "\n")
    return root


def write_coco(scenes, path, *, class_names=None, image_dir=None):
    """Write ``scenes`` as a COCO JSON file at ``path`` (category ids 1..C, boxes
    ``[x, y, w, h]``), the images as PNGs in ``image_dir`` (by default the JSON's
    folder). Returns ``path``."""
    names = list(class_names or getattr(scenes, "class_names", ()))
    image_dir = image_dir or os.path.dirname(os.path.abspath(path))
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i, (image, boxes, classes) in enumerate(zip(scenes.images, scenes.boxes,
                                                    scenes.classes)):
        file_name = f"{i:05d}.png"
        _save_image(image, os.path.join(image_dir, file_name))
        height, width = np.asarray(image).shape[:2]
        images.append({"id": i + 1, "file_name": file_name, "height": int(height),
                       "width": int(width)})
        for box, cls in zip(np.asarray(boxes, "float64").reshape(-1, 4), classes):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(cls) + 1, "iscrowd": 0,
                                "bbox": [float(box[0]), float(box[1]), float(w), float(h)],
                                "area": float(w * h)})
    if not names:
        top = max((int(np.max(c)) for c in scenes.classes if len(c)), default=-1)
        names = [str(i) for i in range(top + 1)]
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": categories}, f)
    return path
