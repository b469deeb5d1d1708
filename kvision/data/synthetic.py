"""Digit scenes: a seeded detection and segmentation dataset made of real handwriting.

``digit_scenes(n)`` places the handwritten digits embedded in kvision (scikit-learn's
8x8 digits, :mod:`kvision.data.digits`) at random positions and sizes on black
canvases and records, for every digit, its exact box, its class and the mask of its
visible ink. Everything is drawn with numpy from one seed: the same arguments give the
same bytes, and 1,000 scenes of 96x96 take about two seconds.

How a scene is drawn
--------------------
* Each digit is upscaled bilinearly (half-pixel centres, as ``tf.image.resize``) from
  8x8 to a square side drawn from ``digit_size``. Its **ink** is where the upscaled
  level reaches ``INK_THRESHOLD`` (a quarter of full ink); fainter edge pixels are drawn
  but belong to no object.
* The **mask** of an object is its ink that stays visible (later digits cover earlier
  ones); the **box** is the tight ``xyxy`` pixel box of that mask, right/bottom edges
  exclusive (a mask whose columns are 3..7 has x1=3, x2=8: COCO's convention).
* By default (``occlusion=0``) digits neither overlap nor touch: each one's ink keeps a
  one-pixel gap (8-connectivity) from every other.
* ``occlusion``: the probability that a digit is put on top of an earlier one. A
  position that would hide more than ``MAX_HIDDEN`` (half) of any digit's ink is
  rejected, so that digit is dropped rather than annotated while mostly hidden; no ink
  in a scene is ever left without its object.
* ``touching``: the probability that a digit is a second example of an earlier digit's
  class placed so that their inks touch (8-connected, no overlap): two instances of one
  class stuck together, the hard case of instance segmentation.
* ``clutter``: that many strokes and fragments of digits per scene, which are not
  objects (no box, no mask, background in the label map); they never touch a digit.
* ``distortion``: the strength (0..1) of a random affine warp of each digit before it
  is drawn: rotation up to ``distortion * 25`` degrees, shear up to ``distortion *
  0.4``, and each axis squeezed by up to ``distortion * 30%``, the warp sampled
  bilinearly from the 8x8 source (zero ink outside it). Boxes and masks are those of
  the warped ink, so they stay exact. Handwriting variety for training sets drawn from
  half of 1,797 digits; 0 (the default) draws every digit unwarped.
* ``subset``: "train" and "test" draw digits from two fixed, disjoint, class-stratified
  halves of the 1,797 digits, so held-out scenes hold handwriting never seen in training.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvision.data import digits as digits_lib

INK_THRESHOLD = 0.25     # ink level (0..1) from which a pixel belongs to its digit
MAX_HIDDEN = 0.5         # the largest fraction of a digit's ink that later ones may cover
SUBSETS = ("train", "test")
_SUBSET_SPLIT_SEED = 0   # the fixed train/test halves of the source digits
_TRIES = 40              # random positions tried for one digit before giving up


@dataclasses.dataclass
class Scenes:
    """Images and their annotations, one entry per scene.

    ``images``: ``(N, H, W, C)`` uint8. ``boxes``: list of ``(n_i, 4)`` float32 ``xyxy``
    pixel boxes. ``classes``: list of ``(n_i,)`` int32 digits 0..9. ``masks``: list of
    ``(n_i, H, W)`` bool masks of visible ink (disjoint). ``semantic``: ``(N, H, W)``
    int32 label map, 0 for background and ``1 + digit`` on ink. ``sources``: list of
    ``(n_i,)`` indices of the source digits in :func:`kvision.data.digits.load_raw`.
    """

    images: np.ndarray
    boxes: list
    classes: list
    masks: list
    semantic: np.ndarray
    sources: list
    class_names: tuple = digits_lib.CLASS_NAMES

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        """A slice or index array -> :class:`Scenes`; an int -> that scene's dict
        (``{"images", "bounding_boxes": {"boxes", "labels"}, "segmentation_masks"}``,
        numpy, what Keras' augmentation layers take)."""
        if isinstance(index, (int, np.integer)):
            return self._example(int(index))
        picked = np.arange(len(self))[index]
        return Scenes(self.images[picked], [self.boxes[i] for i in picked],
                      [self.classes[i] for i in picked], [self.masks[i] for i in picked],
                      self.semantic[picked], [self.sources[i] for i in picked],
                      self.class_names)

    def _example(self, i):
        return {"images": self.images[i].astype("float32"),
                "bounding_boxes": {"boxes": self.boxes[i], "labels": self.classes[i]},
                "segmentation_masks": self.semantic[i][..., None]}

    def ground_truth(self):
        """``[{"boxes", "classes", "masks"}]`` per scene, for
        ``kvision.metrics.detection.evaluate``."""
        return [{"boxes": b, "classes": c, "masks": m}
                for b, c, m in zip(self.boxes, self.classes, self.masks)]

    def as_dataset(self, *, segmentation_masks=True, instance_masks=False):
        """An unbatched ``tf.data.Dataset`` in Keras' bounding-box dict format.

        Each element is ``{"images": float32 (H, W, C) in [0, 255], "bounding_boxes":
        {"boxes": (n, 4) float32 xyxy, "labels": (n,) int32}}``, plus
        ``"segmentation_masks"``: ``(H, W, 1)`` int32 label map (what Keras'
        augmentation layers move with the image) and, if asked, ``"instance_masks"``:
        ``(n, H, W)`` bool.
        """
        import tensorflow as tf

        data = {"images": self.images.astype("float32"),
                "bounding_boxes": {
                    "boxes": _ragged(self.boxes, (4,), "float32"),
                    "labels": _ragged(self.classes, (), "int32")}}
        if segmentation_masks:
            data["segmentation_masks"] = self.semantic[..., None]
        if instance_masks:
            data["instance_masks"] = _ragged(self.masks, self.images.shape[1:3], "bool")
        return tf.data.Dataset.from_tensor_slices(data)


def _ragged(arrays, inner_shape, dtype):
    import tensorflow as tf

    lengths = np.array([len(a) for a in arrays], "int64")
    flat = (np.concatenate(arrays).astype(dtype) if len(arrays) and lengths.sum()
            else np.zeros((0,) + tuple(inner_shape), dtype))
    return tf.RaggedTensor.from_row_lengths(flat, lengths)


# -- drawing -------------------------------------------------------------------------
def _resize_matrix(size, source=8):
    """``(size, source)`` bilinear weights, half-pixel centres (tf.image.resize's)."""
    centres = np.clip((np.arange(size) + 0.5) * source / size - 0.5, 0, source - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, source - 1)
    frac = centres - low
    matrix = np.zeros((size, source))
    matrix[np.arange(size), low] += 1 - frac
    matrix[np.arange(size), high] += frac
    return matrix


def _warp(raw, side, inverse):
    """``(side, side)`` bilinear samples of the 8x8 ``raw`` digit warped by the 2x2
    ``inverse`` (output -> source offsets about the centre), half-pixel centres as
    :func:`_resize_matrix`; outside the 8x8 grid the ink is zero."""
    centres = (np.arange(side) + 0.5) * 8 / side - 0.5 - 3.5
    grid = np.stack(np.meshgrid(centres, centres, indexing="ij"))
    y, x = np.clip(np.einsum("ij,jhw->ihw", inverse, grid) + 3.5 + 1, 0, 9)
    y0, x0 = np.minimum(np.floor(y), 8).astype(int), np.minimum(np.floor(x), 8).astype(int)
    fy, fx = y - y0, x - x0
    padded = np.pad(raw, 1)
    return ((1 - fy) * ((1 - fx) * padded[y0, x0] + fx * padded[y0, x0 + 1])
            + fy * ((1 - fx) * padded[y0 + 1, x0] + fx * padded[y0 + 1, x0 + 1]))


def _dilate(mask):
    """3x3 binary dilation (8-connectivity) of a 2-D bool array."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    rows = out.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


class _Canvas:
    """One scene while it is drawn: pixels, owner of each ink pixel, objects."""

    def __init__(self, size, channels):
        self.size = size
        self.pixels = np.zeros((size, size, channels))
        self.owner = np.full((size, size), -1, np.int32)    # object index per ink pixel
        self.near = np.zeros((size, size), bool)            # ink of all objects, dilated
        self.objects = []                                   # (class, source, ink count)

    def visible(self, j):
        return (self.owner == j).sum()

    def fits_apart(self, ink, y, x, near=None):
        s = ink.shape[0]
        near = self.near if near is None else near
        return not (ink & near[y:y + s, x:x + s]).any()

    def hides_too_much(self, ink, y, x):
        s = ink.shape[0]
        covered = self.owner[y:y + s, x:x + s][ink]
        covered = covered[covered >= 0]
        for j, count in zip(*np.unique(covered, return_counts=True)):
            if self.visible(j) - count < (1 - MAX_HIDDEN) * self.objects[j][2]:
                return True
        return False

    def draw(self, level, ink, y, x, colour, label, source):
        s = level.shape[0]
        window = self.pixels[y:y + s, x:x + s]
        paint = level[..., None] * colour
        window[:] = np.where(ink[..., None], paint, np.maximum(window, paint))
        self.owner[y:y + s, x:x + s][ink] = len(self.objects)
        self.near[y:y + s, x:x + s] |= _dilate(ink)
        self.objects.append((label, source, int(ink.sum())))

    def draw_clutter(self, level, y, x, colour):
        s0, s1 = level.shape
        window = self.pixels[y:y + s0, x:x + s1]
        window[:] = np.maximum(window, level[..., None] * colour)


class _Painter:
    """Draws the scenes of one call; owns the random generator and the digit pool."""

    def __init__(self, raw, labels, pool, image_size, digit_size, channels, rng,
                 distortion=0.0):
        self.raw, self.labels, self.pool = raw.astype("float64") / 16.0, labels, pool
        self.size, self.digit_size, self.channels, self.rng = (
            image_size, digit_size, channels, rng)
        self.distortion = distortion
        self.matrices = {}

    def digit(self, source, side):
        if self.distortion:
            level = _warp(self.raw[source].reshape(8, 8), side, self.inverse_warp())
        else:
            if side not in self.matrices:
                self.matrices[side] = _resize_matrix(side)
            matrix = self.matrices[side]
            level = matrix @ self.raw[source] @ matrix.T
        level = np.clip(level, 0.0, 1.0)
        return level, level >= INK_THRESHOLD

    def inverse_warp(self):
        """A random rotation x shear x squeeze of strength ``distortion``, inverted."""
        angle, shear, *squeeze = self.rng.uniform(-1, 1, 4) * self.distortion
        angle = np.deg2rad(25 * angle)
        rotation = np.array([[np.cos(angle), -np.sin(angle)],
                             [np.sin(angle), np.cos(angle)]])
        forward = rotation @ np.array([[1, 0], [0.4 * shear, 1]]) @ np.diag(
            1 - 0.3 * np.abs(squeeze))
        return np.linalg.inv(forward)

    def colour(self):
        if self.channels == 1:
            return np.ones(1)
        colour = self.rng.uniform(0.35, 1.0, 3)
        return colour / colour.max()

    def side(self):
        return int(self.rng.integers(self.digit_size[0], self.digit_size[1] + 1))

    def free_spot(self, canvas, ink):
        limit = self.size - ink.shape[0] + 1
        for _ in range(_TRIES):
            y, x = self.rng.integers(0, limit, 2)
            if canvas.fits_apart(ink, y, x):
                return y, x
        return None

    def covering_spot(self, canvas, ink):
        s, limit = ink.shape[0], self.size - ink.shape[0]
        for _ in range(_TRIES):
            j = self.rng.integers(len(canvas.objects))
            ys, xs = np.nonzero(canvas.owner == j)
            cy, cx = ys.mean(), xs.mean()
            y = int(np.clip(round(cy - s / 2 + self.rng.uniform(-s / 2, s / 2)), 0, limit))
            x = int(np.clip(round(cx - s / 2 + self.rng.uniform(-s / 2, s / 2)), 0, limit))
            if not canvas.hides_too_much(ink, y, x):
                return y, x
        return None

    def touching_spot(self, canvas, ink, j):
        """Slide ``ink`` towards object ``j`` until their inks touch (8-connected)."""
        s, limit = ink.shape[0], self.size - ink.shape[0]
        target = canvas.owner == j
        around = _dilate(target)
        others = _dilate((canvas.owner >= 0) & ~target)
        ys, xs = np.nonzero(target)
        for _ in range(4):
            y = int(np.clip(round(ys.mean() - s / 2 + self.rng.uniform(-s / 4, s / 4)),
                            0, limit))
            step = 1 if self.rng.random() < 0.5 else -1
            x = xs.max() + 1 if step == -1 else xs.min() - s
            for x in range(x, x + step * (s + xs.max() - xs.min() + 2), step):
                if 0 <= x <= limit and (ink & around[y:y + s, x:x + s]).any():
                    if (not (ink & target[y:y + s, x:x + s]).any()
                            and canvas.fits_apart(ink, y, x, near=others)):
                        return y, x
                    break
        return None

    def scene(self, count, occlusion, touching, clutter):
        canvas = _Canvas(self.size, self.channels)
        for _ in range(count):
            spot = None
            if canvas.objects and self.rng.random() < touching:
                j = int(self.rng.integers(len(canvas.objects)))
                same = self.pool[self.labels[self.pool] == canvas.objects[j][0]]
                source = int(self.rng.choice(same))
                level, ink = self.digit(source, self.side())
                spot = self.touching_spot(canvas, ink, j)
            if spot is None:
                source = int(self.rng.choice(self.pool))
                level, ink = self.digit(source, self.side())
                if canvas.objects and self.rng.random() < occlusion:
                    spot = self.covering_spot(canvas, ink)
                if spot is None:
                    spot = self.free_spot(canvas, ink)
            if spot is not None and ink.any():
                canvas.draw(level, ink, *spot, self.colour(), self.labels[source], source)
        for _ in range(clutter):
            self.clutter(canvas)
        return canvas

    def clutter(self, canvas):
        """A stroke or a piece of a digit, drawn where it touches no digit's ink."""
        side = self.side()
        if self.rng.random() < 0.5:
            level = np.zeros((side, side))
            t = np.linspace(0, 1, 4 * side)
            (y0, x0), (y1, x1) = self.rng.uniform(0, side - 1, (2, 2))
            level[np.round(y0 + t * (y1 - y0)).astype(int),
                  np.round(x0 + t * (x1 - x0)).astype(int)] = 1.0
            level = np.maximum(level, 0.5 * _dilate(level > 0))
        else:
            level, _ = self.digit(int(self.rng.choice(self.pool)), side)
            h, w = (self.rng.uniform(0.25, 0.45, 2) * side).astype(int) + 1
            top, left = self.rng.integers(0, side - h + 1), self.rng.integers(0, side - w + 1)
            level = level[top:top + h, left:left + w]
        drawn = level > 0
        (h, w), colour = level.shape, self.colour()
        for _ in range(_TRIES // 4 if drawn.any() else 0):
            y = self.rng.integers(0, self.size - h + 1)
            x = self.rng.integers(0, self.size - w + 1)
            if not (drawn & canvas.near[y:y + h, x:x + w]).any():
                canvas.draw_clutter(level, y, x, colour)
                return


def _annotations(canvas):
    """Masks, boxes, classes, sources and the label map of a finished canvas."""
    n = len(canvas.objects)
    masks = canvas.owner[None] == np.arange(n)[:, None, None]
    boxes = np.zeros((n, 4), "float32")
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    classes = np.array([o[0] for o in canvas.objects], "int32")
    sources = np.array([o[1] for o in canvas.objects], "int64")
    semantic = np.where(canvas.owner >= 0,
                        np.append(classes, 0)[canvas.owner] + 1, 0).astype("int32")
    return masks, boxes, classes, sources, semantic


def _check(num_images, image_size, objects, digit_size, channels, occlusion, clutter,
           touching, subset, distortion=0.0):
    if int(num_images) < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}.")
    if int(image_size) < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}.")
    lo, hi = objects if isinstance(objects, (tuple, list)) else (objects, objects)
    if not 0 <= lo <= hi:
        raise ValueError(f"objects must be (min, max) with 0 <= min <= max, got {objects}.")
    small, large = (digit_size if isinstance(digit_size, (tuple, list))
                    else (digit_size, digit_size))
    if not 4 <= small <= large <= image_size:
        raise ValueError(f"digit_size must be (min, max) with 4 <= min <= max <= "
                         f"image_size ({image_size}), got {digit_size}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    for name, value in (("occlusion", occlusion), ("touching", touching)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}.")
    if not 0.0 <= distortion <= 1.0:
        raise ValueError(f"distortion must be a strength in [0, 1], got {distortion}.")
    if int(clutter) < 0:
        raise ValueError(f"clutter must be a count >= 0, got {clutter}.")
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}.")
    return (int(lo), int(hi)), (int(small), int(large))


def subset_indices(subset):
    """The indices (into :func:`kvision.data.digits.load_raw`) of a subset's digits."""
    _, labels = digits_lib.load_raw()
    train, test = digits_lib.split_indices(labels, 0.5, _SUBSET_SPLIT_SEED)
    return {"train": train, "test": test}[subset]


def digit_scenes(num_images, *, image_size=96, objects=(1, 4), digit_size=(12, 32),
                 channels=3, occlusion=0.0, clutter=0, touching=0.0, distortion=0.0,
                 subset="train", seed=0):
    """``num_images`` scenes of handwritten digits with boxes, classes and masks.

    ``image_size``: the side of the square canvases. ``objects``: ``(min, max)`` digits
    per scene (or one int), fewer when no room is left. ``digit_size``: ``(min, max)``
    side in pixels of an upscaled digit. ``channels``: 1 (white ink) or 3 (each digit in
    a random bright colour). ``occlusion``, ``touching``: probabilities per digit (see
    the module docstring); ``clutter``: non-object strokes per scene;
    ``distortion``: strength in [0, 1] of each digit's random affine warp. ``subset``:
    "train" or "test" (disjoint source digits). Returns :class:`Scenes`.
    """
    objects, digit_size = _check(num_images, image_size, objects, digit_size, channels,
                                 occlusion, clutter, touching, subset, distortion)
    raw, labels = digits_lib.load_raw()
    rng = np.random.default_rng([int(seed), SUBSETS.index(subset)])
    painter = _Painter(raw, labels, subset_indices(subset), int(image_size), digit_size,
                       channels, rng, float(distortion))
    images = np.zeros((int(num_images), image_size, image_size, channels), np.uint8)
    semantic = np.zeros((int(num_images), image_size, image_size), np.int32)
    boxes, classes, masks, sources = [], [], [], []
    for i in range(int(num_images)):
        count = int(rng.integers(objects[0], objects[1] + 1))
        canvas = painter.scene(count, occlusion, touching, int(clutter))
        images[i] = np.round(np.clip(canvas.pixels, 0, 1) * 255)
        mask, box, cls, src, semantic[i] = _annotations(canvas)
        masks.append(mask)
        boxes.append(box)
        classes.append(cls)
        sources.append(src)
    return Scenes(images, boxes, classes, masks, semantic, sources)
