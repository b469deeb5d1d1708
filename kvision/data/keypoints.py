"""Keypoint datasets from disk or TFDS: images with every person's (or face's) keypoints.

``load_keypoints(source)`` -> :class:`KeypointData`, whose ``dataset`` is an unbatched
``tf.data.Dataset`` of ``{"images": float32 (H, W, C) in [0, 255], "keypoints": float32
(n, K, 3) x, y, v, "boxes": float32 (n, 4) xyxy}``, one row per person (images keep
their own sizes). Keypoints are in image pixels with the pixel grid's corner at 0 and
``v`` COCO's visibility (0 not labelled, 1 labelled but hidden, 2 visible); ``layout``
(:mod:`kvision.data.pose_layouts`) names the K joints. ``source`` is

* a COCO keypoints JSON file (``images``, ``annotations`` with ``keypoints: [x1, y1,
  v1, ...]`` and ``bbox``, ``categories`` with the ``keypoints`` names and
  ``skeleton``): the layout is COCO's or MPII's when the names are theirs, else one
  made from the category (left/right pairs found from the names); annotations of
  categories without keypoints and crowd annotations are left out; images are found
  beside the JSON or in an ``images/`` folder next to it (or under ``image_dir``);
* an MPII annotation list as bearpaw/pytorch-pose's ``mpii_annotations.json`` (one
  record per person: ``img_paths``, ``joint_self`` 16 x ``[x, y, visible]``,
  ``objpos``, ``scale_provided``, ``isValidation``, ``joint_others``...): the records
  of one image become one example with every person of it (those only in
  ``joint_others`` too); a joint is labelled when ``x > 0`` or ``y > 0`` (the file
  pads missing ones with zeros) and ``v`` is 2 when marked visible, 1 otherwise; the
  box is MPII's person scale, a square of ``200 * scale_provided`` pixels centred on
  ``objpos``; ``split``: "train" or "validation" (``isValidation``), all by default;
* iBUG ``.pts`` files (300-W, menpo, dlib): a ``.pts`` file or a folder of them, each
  beside its image of the same name (``face.pts`` and ``face.jpg``), one face each,
  every point ``v = 2``, the box their extent; 68 points are the
  :data:`~kvision.data.pose_layouts.IBUG68` layout, other counts a numbered one;
* ``"tfds:NAME"`` or ``"tfds:NAME:SPLIT"``: a TFDS dataset of :data:`TFDS_KEYPOINTS`
  (68 facial landmarks normalized to the image size), downloaded on first use.

MPII and iBUG coordinates are 1-based (MATLAB's, pixel centres at 1, 2, ...): they are
read as ``x - 0.5`` and written back as ``x + 0.5``. A labelled keypoint outside its
image (beyond ``[0, W] x [0, H]``) is marked ``v = 0`` with its coordinates kept, and
one :class:`KeypointWarning` per load names how many and where; a keypoint count that
disagrees with ``layout``, a missing image or a malformed record is a ValueError or
FileNotFoundError naming the file. :func:`write_coco_keypoints`, :func:`write_mpii`
and :func:`write_pts` write :class:`kvision.data.figures.Figures` (or anything with
``images``, ``keypoints`` and ``boxes`` lists) in those forms.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import warnings
from typing import Any

import numpy as np

from kvision.data import detection, folders, pose_layouts

FORMS = ("a COCO keypoints JSON file (images, annotations with keypoints, categories "
         "with keypoint names)",
         "an MPII annotation JSON list as bearpaw/pytorch-pose's mpii_annotations.json "
         "(img_paths, joint_self, objpos, scale_provided)",
         "an iBUG .pts file or a folder of .pts files, each beside its image",
         '"tfds:NAME" or "tfds:NAME:SPLIT" (a TFDS keypoint dataset: '
         "tfds:the300w_lp, tfds:aflw2k3d)")

# TFDS datasets with keypoints: name -> (feature of (K, 2) x, y normalized to the
# image's width and height, layout).
TFDS_KEYPOINTS = {"the300w_lp": ("landmarks_2d", "ibug68"),
                  "aflw2k3d": ("landmarks_68_3d_xy_normalized", "ibug68")}
MPII_SPLITS = {"train": False, "validation": True, "val": True}


class KeypointWarning(UserWarning):
    """Keypoints that were changed on loading (labelled ones outside their image)."""


@dataclasses.dataclass(frozen=True)
class KeypointData:
    """A keypoint dataset: ``dataset`` (unbatched dict examples, see the module
    docstring), ``layout`` (:class:`kvision.data.pose_layouts.Layout`),
    ``num_examples``, ``source``; ``files`` is the image path of each example (disk
    sources)."""

    dataset: Any
    layout: pose_layouts.Layout
    num_examples: int
    source: str
    files: tuple = ()

    @property
    def num_keypoints(self):
        return self.layout.num_keypoints


@dataclasses.dataclass
class _Record:
    """One image: its file, ``(n, K, 3)`` keypoints, ``(n, 4)`` boxes, ``(h, w)``, and
    where its annotation came from (for messages)."""

    path: str
    keypoints: np.ndarray
    boxes: np.ndarray
    shape: tuple
    where: str


def load_keypoints(source, *, layout=None, split=None, image_dir=None, channels=3,
                   max_examples=None, data_dir=None) -> KeypointData:
    """Load a keypoint dataset (see the module docstring for the forms of ``source``).

    ``layout``: a :class:`~kvision.data.pose_layouts.Layout` or its name ("coco",
    "mpii", "ibug68"); by default the one the data says. A source whose keypoint count
    differs from it is a ValueError. ``split``: MPII's "train" or "validation", or a
    TFDS split ("train" by default). ``image_dir``: where a COCO or MPII file's images
    are. ``max_examples``: keep the first ones only.
    """
    folders._check_channels(channels)
    kind, path = detection.where_from(source, "keypoint", FORMS, max_examples)
    layout = _named_layout(layout)
    if kind == "tfds":
        return _from_tfds(path, split, layout, channels, max_examples, data_dir)
    if os.path.isdir(path) or path.lower().endswith(".pts"):
        records, layout = _read_pts(path, layout)
    elif path.lower().endswith(".json"):
        records, layout = _read_json(path, layout, split, image_dir)
    else:
        raise ValueError(f"{path!r} is neither a .json file, a .pts file nor a folder. "
                         f"Expected one of:\n  " + "\n  ".join(FORMS))
    if max_examples is not None:
        records = records[:int(max_examples)]
    _mark_outside(records, layout)
    return KeypointData(_file_dataset(records, channels, layout.num_keypoints), layout,
                        len(records), os.path.abspath(path), tuple(r.path for r in records))


# -- shared --------------------------------------------------------------------------
def _named_layout(layout):
    if layout is None or isinstance(layout, pose_layouts.Layout):
        return layout
    if layout not in pose_layouts.LAYOUTS:
        raise ValueError(f"Unknown keypoint layout {layout!r}; expected a Layout or one "
                         f"of {sorted(pose_layouts.LAYOUTS)}.")
    return pose_layouts.LAYOUTS[layout]


def _agree(layout, found, where):
    """``layout`` (the caller's) or ``found`` (the data's), checked to have the same
    keypoint count."""
    if layout is None:
        return found
    if layout.num_keypoints != found.num_keypoints:
        raise ValueError(f"{where}: {found.num_keypoints} keypoints per instance, but the "
                         f"layout {layout.name!r} has {layout.num_keypoints} "
                         f"({', '.join(layout.names[:4])}, ...).")
    return layout


def numbered_layout(count, name=None):
    """A layout of ``count`` keypoints known by number only (no skeleton, no flips)."""
    return pose_layouts.Layout(name or f"{count}_points", tuple(str(i) for i in range(count)),
                               (), ())


def flip_pairs(names):
    """Pairs of ``names`` that differ only by left/right (``left_eye``/``right_eye``,
    ``l_knee``/``r_knee``, ``paw_left``/``paw_right``)."""
    swap = {"left": "right", "right": "left", "l": "r", "r": "l"}
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        mirrored = "_".join(swap.get(token, token) for token in name.split("_"))
        j = index.get(mirrored)
        if j is not None and j > i:
            pairs.append((i, j))
    return tuple(pairs)


def _extent(keypoints):
    """``(n, 4)`` xyxy boxes around each instance's labelled keypoints (zeros when it
    has none)."""
    boxes = np.zeros((len(keypoints), 4))
    for i, points in enumerate(keypoints):
        labelled = points[points[:, 2] > 0, :2]
        if len(labelled):
            boxes[i] = *labelled.min(0), *labelled.max(0)
    return boxes


def _mark_outside(records, layout):
    """Labelled keypoints outside their image -> ``v = 0`` (coordinates kept), with one
    :class:`KeypointWarning` naming the count and the first files."""
    found, examples = 0, []
    for record in records:
        height, width = record.shape
        points = record.keypoints
        outside = (points[..., 2] > 0) & (
            (points[..., 0] < 0) | (points[..., 0] > width)
            | (points[..., 1] < 0) | (points[..., 1] > height))
        if outside.any():
            person, joint = np.argwhere(outside)[0]
            examples.append(f"{record.where} (image {os.path.basename(record.path)}, "
                            f"{width}x{height}): instance {person} {layout.names[joint]!r} "
                            f"at ({points[person, joint, 0]:.1f}, "
                            f"{points[person, joint, 1]:.1f})")
            found += int(outside.sum())
            points[outside, 2] = 0
    if found:
        warnings.warn(f"load_keypoints: {found} labelled keypoint(s) outside their image "
                      f"were marked not labelled (v=0), e.g. " + "; ".join(examples[:3])
                      + ".", KeypointWarning, stacklevel=3)


def _ragged(arrays, inner):
    import tensorflow as tf

    lengths = np.array([len(a) for a in arrays], "int64")
    flat = (np.concatenate([np.asarray(a, "float32").reshape((-1,) + inner)
                            for a in arrays]) if len(arrays)
            else np.zeros((0,) + inner, "float32"))
    return tf.RaggedTensor.from_row_lengths(flat, lengths)


def _file_dataset(records, channels, count):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices({
        "path": tf.constant([r.path for r in records], tf.string, shape=(len(records),)),
        "keypoints": _ragged([r.keypoints for r in records], (count, 3)),
        "boxes": _ragged([r.boxes for r in records], (4,))})

    def read(example):
        image = folders.decode(tf.io.read_file(example["path"]), channels)
        return {"images": tf.cast(image, tf.float32), "keypoints": example["keypoints"],
                "boxes": example["boxes"]}

    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def person_crops(dataset, image_size, *, margin=1.25, min_keypoints=1):
    """Examples of :func:`load_keypoints` -> one example per person, cut as MPII's
    person-centric crops are: the square ``margin`` times its box's longer side,
    centred on the box, resized bilinearly to ``image_size`` (pixels beyond the image
    are 0). Each is ``{"images": float32 (S, S, C), "keypoints": (K, 3), "boxes":
    (4,)}`` in the crop's pixels; a keypoint the crop leaves out gets ``v = 0``; people
    with fewer than ``min_keypoints`` labelled keypoints are left out."""
    import tensorflow as tf

    size = int(image_size)
    if size < 2:
        raise ValueError(f"image_size must be at least 2 pixels, got {image_size}.")

    def crops(example):
        boxes, points = tf.reshape(example["boxes"], (-1, 4)), example["keypoints"]
        keep = tf.reduce_sum(tf.cast(points[..., 2] > 0, tf.int32), -1) >= min_keypoints
        boxes, points = tf.boolean_mask(boxes, keep), tf.boolean_mask(points, keep)
        side = tf.maximum(margin * tf.reduce_max(boxes[:, 2:] - boxes[:, :2], -1), 1.0)
        corner = (boxes[:, :2] + boxes[:, 2:]) / 2 - side[:, None] / 2        # x, y
        # crop_and_resize samples at pixel centres y1 * (h - 1) + i * step: output
        # pixel i's centre lands on corner + (i + 0.5) * side / S, pixel centres being
        # at +0.5 in kvision's corner-at-0 coordinates
        first = corner - 0.5 + 0.5 * (side / size)[:, None]
        last = first + (side * (size - 1) / size)[:, None]
        extent = tf.maximum(tf.cast(tf.shape(example["images"])[1::-1], tf.float32) - 1, 1)
        first, last = first / extent, last / extent
        images = tf.image.crop_and_resize(
            example["images"][None], tf.stack([first[:, 1], first[:, 0], last[:, 1],
                                               last[:, 0]], -1),
            tf.zeros(tf.shape(boxes)[:1], tf.int32), (size, size))
        scale = (size / side)[:, None]
        xy = (points[..., :2] - corner[:, None]) * scale[:, None]
        inside = tf.reduce_all((xy >= 0) & (xy <= size), -1)
        v = tf.where(inside, points[..., 2], 0.0)
        return tf.data.Dataset.from_tensor_slices({
            "images": images, "keypoints": tf.concat([xy, v[..., None]], -1),
            "boxes": (boxes - tf.tile(corner, [1, 2])) * scale})

    return dataset.flat_map(crops)


# -- JSON: COCO or MPII ----------------------------------------------------------------
def _read_json(path, layout, split, image_dir):
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}).") from None
    if isinstance(content, list) and content and isinstance(content[0], dict) \
            and "joint_self" in content[0]:
        return _read_mpii(path, content, layout, split, image_dir)
    if split is not None:
        raise ValueError(f"split={split!r}: a COCO file has no splits (one file a split).")
    return _read_coco(path, layout, image_dir)


def coco_layout(category):
    """The layout of a COCO category's ``keypoints`` names and ``skeleton`` (1-based
    pairs): COCO's or MPII's when the names are theirs."""
    names = tuple(str(n) for n in category["keypoints"])
    for known in (pose_layouts.COCO, pose_layouts.MPII):
        if names == known.names:
            return known
    skeleton = tuple((int(a) - 1, int(b) - 1) for a, b in category.get("skeleton", ()))
    return pose_layouts.Layout(str(category.get("name", "keypoints")), names, skeleton,
                               flip_pairs(names))


def _read_coco(path, layout, image_dir):
    coco, _, _ = detection.read_coco_json(path)
    keyed = {c["id"]: c for c in coco["categories"] if c.get("keypoints")}
    if not keyed:
        raise ValueError(f"{path}: no category has 'keypoints' names, so it is not a COCO "
                         f"keypoints file (categories: "
                         f"{[c.get('name') for c in coco['categories']][:10]}).")
    first = next(iter(keyed.values()))
    for category in keyed.values():
        if list(category["keypoints"]) != list(first["keypoints"]):
            raise ValueError(f"{path}: categories {first.get('name')!r} and "
                             f"{category.get('name')!r} name different keypoints.")
    layout = _agree(layout, coco_layout(first), f"{path} (category {first.get('name')!r})")
    count = layout.num_keypoints
    images, order = {}, []
    for number, image in enumerate(coco["images"]):
        try:
            images[image["id"]] = _Record(
                detection.coco_image_path(path, image["file_name"], image_dir), [], [],
                (int(image["height"]), int(image["width"])), path)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: images[{number}] needs id, file_name, height and "
                             f"width, got {image!r}.") from None
        order.append(image["id"])
    for number, ann in enumerate(coco["annotations"]):
        if ann.get("category_id") not in keyed or ann.get("iscrowd", 0):
            continue
        where = f"{path}: annotations[{number}] (id {ann.get('id')})"
        if ann.get("image_id") not in images:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not in images.")
        points = _coco_points(ann.get("keypoints"), count, where)
        record = images[ann["image_id"]]
        record.keypoints.append(points)
        record.boxes.append(_coco_box(ann.get("bbox"), points, where))
    records = []
    for image_id in order:
        record = images[image_id]
        record.keypoints = np.array(record.keypoints, "float64").reshape(-1, count, 3)
        record.boxes = np.array(record.boxes, "float64").reshape(-1, 4)
        records.append(record)
    return records, layout


def _coco_points(values, count, where):
    if not isinstance(values, (list, tuple)) or len(values) != 3 * count:
        size = len(values) if isinstance(values, (list, tuple)) else values
        raise ValueError(f"{where}: keypoints must be 3 x {count} numbers (x, y, v for "
                         f"each of the layout's {count} keypoints), got {size} "
                         f"(the keypoint count disagrees with the layout?).")
    points = np.array(values, "float64").reshape(count, 3)
    bad = ~np.isin(points[:, 2], (0, 1, 2))
    if bad.any():
        raise ValueError(f"{where}: visibility must be 0, 1 or 2, got "
                         f"{points[bad, 2][0]:g} for keypoint {int(np.argmax(bad))}.")
    return points


def _coco_box(bbox, points, where):
    if bbox is None:
        return _extent(points[None])[0]
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) for v in bbox)):
        raise ValueError(f"{where}: bbox must be [x, y, width, height] pixels, got {bbox!r}.")
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def _mpii_people(record, where):
    """``(n, 16, 3)`` x, y, visible (MPII's values) and ``(n, 3)`` objpos x, y and
    scale of a record's own person followed by its others."""
    try:
        people = [np.asarray(record["joint_self"], "float64").reshape(1, 16, 3)]
        places = [np.array([*record["objpos"], record["scale_provided"]], "float64")[None]]
        if record.get("joint_others"):     # jsonlab writes one other person unnested
            people.append(np.asarray(record["joint_others"], "float64").reshape(-1, 16, 3))
            places.append(np.column_stack([
                np.asarray(record["objpos_other"], "float64").reshape(-1, 2),
                np.asarray(record["scale_provided_other"], "float64").reshape(-1)]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: an MPII record needs img_paths, joint_self (16 x [x, "
                         f"y, visible]), objpos and scale_provided ({type(err).__name__}: "
                         f"{err}).") from None
    return np.concatenate(people), np.concatenate(places)


def _read_mpii(path, content, layout, split, image_dir):
    layout = _agree(layout, pose_layouts.MPII, f"{path} (MPII's 16 joints)")
    if split is not None and split not in MPII_SPLITS:
        raise ValueError(f"split must be one of {sorted(MPII_SPLITS)} (isValidation) or "
                         f"None for all, got {split!r}.")
    images = {}
    for number, record in enumerate(content):
        where = f"{path}: record {number}"
        if split is not None and bool(record.get("isValidation")) != MPII_SPLITS[split]:
            continue
        name = record.get("img_paths")
        if not isinstance(name, str):
            raise ValueError(f"{where}: img_paths must be the image's file name, got "
                             f"{name!r}.")
        if name not in images:
            file = detection.coco_image_path(path, name, image_dir)
            shape = ((int(record["img_height"]), int(record["img_width"]))
                     if "img_height" in record and "img_width" in record
                     else detection._image_size(file))
            images[name] = (_Record(file, [], [], shape, where), set())
        image, seen = images[name]
        for joints, place in zip(*_mpii_people(record, where)):
            key = np.concatenate([joints.ravel(), place]).round(3).tobytes()
            if key not in seen:             # each person once: as self and as other
                seen.add(key)
                image.keypoints.append(_from_mpii(joints))
                image.boxes.append(_mpii_box(place, image.keypoints[-1]))
    records = []
    for record, _ in images.values():
        record.keypoints = np.array(record.keypoints).reshape(-1, 16, 3)
        record.boxes = np.array(record.boxes).reshape(-1, 4)
        records.append(record)
    return records, layout


def _from_mpii(joints):
    """MPII's 1-based ``x, y, visible`` -> kvision's ``x, y, v`` (0 where unlabelled)."""
    labelled = (joints[:, 0] > 0) | (joints[:, 1] > 0)
    points = np.zeros((16, 3))
    points[labelled, :2] = joints[labelled, :2] - 0.5
    points[:, 2] = np.where(labelled, np.where(joints[:, 2] > 0, 2, 1), 0)
    return points


def _mpii_box(place, points):
    """MPII's person scale as a box: ``200 * scale`` pixels centred on objpos (the
    keypoints' extent when the record has no scale)."""
    x, y, scale = place
    if scale <= 0 or (x < 0 and y < 0):
        return _extent(points[None])[0]
    half = 100.0 * scale
    return [x - 0.5 - half, y - 0.5 - half, x - 0.5 + half, y - 0.5 + half]


# -- iBUG .pts -----------------------------------------------------------------------
def read_pts(path):
    """``(K, 2)`` points of an iBUG ``.pts`` file as written (1-based); a ValueError
    naming the file and line when it is not one."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    count, points, inside = None, [], False
    for number, line in enumerate(lines, start=1):
        if not line or line.startswith("version"):
            continue
        match = re.match(r"^n_points\s*:\s*(\d+)$", line)
        if match:
            count = int(match.group(1))
        elif line == "{":
            inside = True
        elif line == "}":
            inside = False
            break
        elif inside:
            try:
                x, y = (float(v) for v in line.split())
            except ValueError:
                raise ValueError(f"{path}, line {number}: expected 'x y', got "
                                 f"{line!r}.") from None
            points.append((x, y))
        else:
            raise ValueError(f"{path}, line {number}: expected 'version:', 'n_points:' "
                             f"or '{{', got {line!r}.")
    if count is None or inside or count != len(points):
        raise ValueError(f"{path}: n_points is {count} but {len(points)} points are "
                         f"between '{{' and '}}'" + (" (no closing '}')" if inside else "")
                         + ".")
    return np.array(points, "float64").reshape(-1, 2)


def _pts_image(path):
    stem = os.path.splitext(path)[0]
    for extension in folders.IMAGE_EXTENSIONS:
        for candidate in (stem + extension, stem + extension.upper()):
            if os.path.isfile(candidate):
                return candidate
    raise FileNotFoundError(f"{path}: no image beside it ({os.path.basename(stem)} with "
                            f"one of {' '.join(folders.IMAGE_EXTENSIONS)}).")


def _read_pts(path, layout):
    if os.path.isdir(path):
        files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path)
                       for name in names if name.lower().endswith(".pts"))
        if not files:
            raise FileNotFoundError(f"No .pts files under {path!r}.")
    else:
        files = [path]
    records = []
    for file in files:
        points = read_pts(file)
        found = (pose_layouts.IBUG68 if len(points) == pose_layouts.IBUG68.num_keypoints
                 else numbered_layout(len(points)))
        layout = _agree(layout, found, file)
        image = _pts_image(file)
        keypoints = np.concatenate([points - 0.5, np.full((len(points), 1), 2.0)], 1)[None]
        records.append(_Record(image, keypoints, _extent(keypoints),
                               detection._image_size(image), file))
    return records, layout


# -- TFDS ----------------------------------------------------------------------------
def _from_tfds(spec, split, layout, channels, max_examples, data_dir):
    import tensorflow as tf

    from kvision.data.sources import _tfds_builder, _to_channels

    name, _, requested = spec.partition(":")
    if not name:
        raise ValueError(f"Expected 'tfds:NAME' or 'tfds:NAME:SPLIT', got 'tfds:{spec}'.")
    if name.split("/")[0] not in TFDS_KEYPOINTS:
        raise ValueError(f"tfds:{name} is not a keypoint dataset kvision reads; it reads "
                         f"{', '.join('tfds:' + n for n in sorted(TFDS_KEYPOINTS))}.")
    feature, found = TFDS_KEYPOINTS[name.split("/")[0]]
    layout = _agree(layout, pose_layouts.LAYOUTS[found], f"tfds:{name}")
    split = requested or split or "train"
    builder = _tfds_builder(name, data_dir)

    def convert(example):
        image = _to_channels(example["image"], channels)
        size = tf.cast(tf.shape(image)[1::-1], tf.float32)          # width, height
        xy = tf.cast(example[feature], tf.float32) * size
        inside = tf.reduce_all((xy >= 0) & (xy <= size), axis=-1)
        v = tf.where(inside, 2.0, 0.0)[:, None]
        seen = tf.boolean_mask(xy, inside)
        box = tf.cond(tf.size(seen) > 0,
                      lambda: tf.concat([tf.reduce_min(seen, 0), tf.reduce_max(seen, 0)], 0),
                      lambda: tf.zeros(4))
        return {"images": tf.cast(image, tf.float32),
                "keypoints": tf.concat([xy, v], -1)[None], "boxes": box[None]}

    ds, count = detection.tfds_examples(builder, split, max_examples)
    return KeypointData(ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE), layout,
                        count, f"tfds:{name}")


# -- writing -------------------------------------------------------------------------
def _numbered_images(data, folder):
    """Save ``data.images`` as ``00000.png``... in ``folder``; their ``(name, (h,
    w))``."""
    names = []
    for i, image in enumerate(data.images):
        detection._save_image(image, os.path.join(folder, f"{i:05d}.png"))
        names.append((f"{i:05d}.png", np.asarray(image).shape[:2]))
    return names


def _write_json(content, path):
    """``content`` as JSON at ``path``, through a temporary file renamed over it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".json", delete=False,
                                     encoding="utf-8") as f:
        json.dump(content, f)
    os.replace(f.name, path)
    return path


def write_coco_keypoints(data, path, *, image_dir=None, layout=None, name="person"):
    """Write ``data`` (``images``, ``keypoints`` list of ``(n, K, 3)``, ``boxes`` list
    of ``(n, 4)`` xyxy) as a COCO keypoints JSON at ``path``: one category ``name``
    (id 1) with ``layout``'s keypoint names and 1-based skeleton (by default
    ``data.layout``), one annotation per instance (keypoints as they are, v=0 ones
    too; ``bbox`` ``[x, y, w, h]``). Images go as PNGs to ``image_dir`` (by default the
    JSON's folder) before the JSON. Returns ``path``."""
    from kvision.data.segmentation import _staged

    layout = _named_layout(layout) or data.layout
    image_dir = image_dir or os.path.dirname(os.path.abspath(path))
    images, annotations = [], []
    with _staged(image_dir) as stage:
        for i, (file, (h, w)) in enumerate(_numbered_images(data, stage)):
            images.append({"id": i + 1, "file_name": file, "height": int(h),
                           "width": int(w)})
            boxes = np.asarray(data.boxes[i]).reshape(-1, 4)
            for points, box in zip(data.keypoints[i], boxes):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                    "iscrowd": 0, "keypoints": [float(v) for v in np.ravel(points)],
                    "num_keypoints": int((np.asarray(points)[:, 2] > 0).sum()),
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    category = {"id": 1, "name": name, "supercategory": name,
                "keypoints": list(layout.names),
                "skeleton": [[a + 1, b + 1] for a, b in layout.skeleton]}
    return _write_json({"images": images, "annotations": annotations,
                        "categories": [category]}, path)


def write_mpii(data, path, *, image_dir=None, is_validation=False):
    """Write ``data`` (16 MPII joints per instance) as a bearpaw/pytorch-pose style
    ``mpii_annotations.json`` at ``path``: one record per instance with the image's
    other instances in ``joint_others``; 1-based coordinates, ``visible`` 1 for
    ``v = 2`` and 0 for ``v = 1``, unlabelled joints ``[0, 0, 0]``; ``objpos`` the
    box's centre and ``scale_provided`` its height / 200. Images go as PNGs to
    ``image_dir`` (by default the JSON's folder) before the JSON. Returns ``path``."""
    from kvision.data.segmentation import _staged

    image_dir = image_dir or os.path.dirname(os.path.abspath(path))
    records = []
    with _staged(image_dir) as stage:
        for i, (file, (h, w)) in enumerate(_numbered_images(data, stage)):
            points = np.asarray(data.keypoints[i], "float64").reshape(-1, 16, 3)
            people = [_to_mpii(p) for p in points]
            boxes = np.asarray(data.boxes[i], "float64").reshape(-1, 4)
            places = [_to_place(b) for b in boxes]
            for p in range(len(people)):
                others = [q for q in range(len(people)) if q != p]
                records.append({
                    "dataset": "kvision", "isValidation": float(bool(is_validation)),
                    "img_paths": file, "img_width": int(w), "img_height": int(h),
                    "objpos": places[p][:2], "scale_provided": places[p][2],
                    "joint_self": people[p], "numOtherPeople": len(others),
                    "joint_others": [people[q] for q in others],
                    "objpos_other": [places[q][:2] for q in others],
                    "scale_provided_other": [places[q][2] for q in others],
                    "people_index": p + 1, "annolist_index": i + 1})
    return _write_json(records, path)


def _to_mpii(points):
    """kvision's ``x, y, v`` -> MPII's 1-based ``x, y, visible`` (zeros unlabelled)."""
    return [[float(x + 0.5), float(y + 0.5), float(v == 2)] if v > 0 else [0.0, 0.0, 0.0]
            for x, y, v in points]


def _to_place(box):
    """A box -> MPII's ``[objpos x, objpos y, scale]`` (1-based centre, height / 200)."""
    return [float((box[0] + box[2]) / 2 + 0.5), float((box[1] + box[3]) / 2 + 0.5),
            float((box[3] - box[1]) / 200)]


def write_pts(data, folder):
    """Write each image of ``data`` as ``folder/NNNNN.png`` with ``NNNNN.pts`` beside
    it (iBUG's format: its one instance's points, 1-based; .pts has no visibility, so
    every point is written). An image with other than one instance is a ValueError
    naming it; nothing is written then. Returns ``folder``."""
    from kvision.data.segmentation import _staged

    counts = [len(k) for k in data.keypoints]
    bad = [i for i, n in enumerate(counts) if n != 1]
    if bad:
        raise ValueError(f"A .pts file holds one instance: image {bad[0]} has "
                         f"{counts[bad[0]]} ({len(bad)} image(s) do not have one).")
    with _staged(folder) as stage:
        for i, _ in enumerate(_numbered_images(data, stage)):
            points = np.asarray(data.keypoints[i], "float64")[0]
            lines = [f"{float(x + 0.5)!r} {float(y + 0.5)!r}" for x, y, _ in points]
            with open(os.path.join(stage, f"{i:05d}.pts"), "w", encoding="utf-8") as f:
                f.write(f"version: 1\nn_points: {len(points)}\n{{\n" + "\n".join(lines)
                        + "\n}\n")
    return folder
