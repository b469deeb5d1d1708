"""Articulated figures: a seeded pose dataset with exact keypoints in MPII's 16 joints.

``figures(n)`` draws stick-and-slab figures (a torso, a neck, a head, two-part arms and
legs) with limbs of random lengths, widths and angles on cluttered backgrounds, and
records every figure's 16 joints in MPII's layout
(:data:`kvision.data.pose_layouts.MPII`). Everything is drawn with OpenCV and numpy
from one seed: the same arguments give the same bytes, and 2,000 images of 64x64 take
about three seconds here (one core).

How an image is drawn
---------------------
* **The main figure** (the first of each image's figures) is centred and scaled as
  MPII's person-centric crops are: the box of its joints is centred in the image (a
  few percent of jitter) and 55-75% of the image high. The figure faces the viewer,
  so its right limbs are on the image's left (a horizontal flip with
  ``MPII.flip_permutation()`` gives a figure of the same kind). ``people``: ``(min,
  max)`` figures per image; the others are 40-90% of the main one's size, anywhere
  in the image, each in front of or behind it at random.
* **Body**: a kinematic tree in units of the torso (pelvis -> thorax): the torso
  tilted up to 20 degrees, shoulders and hips of random widths, a neck and head, upper
  arms anywhere from across the body to overhead with elbows bent up to 120 degrees,
  thighs and shins with random spread and bend, every segment foreshortened by up to
  25%. Each limb is drawn in front of the torso or behind it at random.
* **Look**: each figure has a head, top and bottom colour with striped textures;
  the background is a gradient under ``clutter`` random ellipses, rectangles and
  limb-like sticks of any colour; Gaussian noise of ``noise`` grey levels on top.
  Pixels are drawn without anti-aliasing, so every pixel belongs to one thing.
* **Visibility** (COCO's ``v``): 2 when the joint's pixel is drawn by one of its own
  limbs (a wrist by its forearm, an elbow by its upper arm or forearm...), 1 when it
  lies in the image but under something else (another limb of the same figure,
  another figure, or an occluder: ``occlusion`` is the probability per image that a
  shape is dropped over one of the main figure's joints), 0 when it lies outside the
  image (``truncation`` is the probability per image that the main figure is moved
  20-40% of the image off centre, so the border cuts it). The coordinates of a joint
  outside the image are kept as they are (beyond the border), not zeroed.
* **Subsets**: "train" and "test" draw their figures' colours from disjoint hues
  (alternate 30-degree bins of the colour wheel) and their poses from separate seed
  streams, so held-out figures wear colours never seen in training.

Keypoints are ``x, y`` in image pixels with the pixel grid's corner at 0 (pixel ``i``
spans ``[i, i + 1)``), as everywhere in kvision.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvision.data import pose_layouts

LAYOUT = pose_layouts.MPII
SUBSETS = ("train", "test")
HUE_BINS = 12              # colour-wheel bins; train's figures use the even ones, test's odd
MAX_ITEMS = 255            # the owner map is uint8: parts, clutter and occluders per image
_J = {name: i for i, name in enumerate(LAYOUT.names)}

# What a figure is drawn of: (name, the joints it spans, width in torso lengths).
PARTS = (
    ("torso", ("r_shoulder", "l_shoulder", "l_hip", "r_hip"), 0.08),  # filled quad
    ("neck", ("thorax", "upper_neck"), 0.22),
    ("head", ("upper_neck", "head_top"), 0.0),                        # a disc
    ("r_upper_arm", ("r_shoulder", "r_elbow"), 0.2),
    ("r_forearm", ("r_elbow", "r_wrist"), 0.16),
    ("l_upper_arm", ("l_shoulder", "l_elbow"), 0.2),
    ("l_forearm", ("l_elbow", "l_wrist"), 0.16),
    ("r_thigh", ("r_hip", "r_knee"), 0.28),
    ("r_shin", ("r_knee", "r_ankle"), 0.22),
    ("l_thigh", ("l_hip", "l_knee"), 0.28),
    ("l_shin", ("l_knee", "l_ankle"), 0.22),
)
PART_NAMES = tuple(p[0] for p in PARTS)
LIMBS = {"r_arm": (3, 4), "l_arm": (5, 6), "r_leg": (7, 8), "l_leg": (9, 10)}
# The parts on whose pixels a joint counts as visible: those it ends, and the torso
# for the pelvis and thorax (the middles of its bottom and top edges).
JOINT_PARTS = tuple(
    tuple(i for i, (_, joints, _) in enumerate(PARTS) if name in joints)
    + ((0,) if name in ("pelvis", "thorax") else ())
    for name in LAYOUT.names)
_LOOK = {"head": 0, "neck": 0, "torso": 1, "r_upper_arm": 1, "l_upper_arm": 1,
         "r_forearm": 0, "l_forearm": 0}           # 0 head/skin, 1 top, 2 bottom


@dataclasses.dataclass
class Body:
    """One figure to draw: ``joints`` ``(16, 2)`` image pixels (MPII's order),
    ``widths`` ``(11,)`` pixels per part of :data:`PARTS`, ``colours`` ``(11, 3)`` RGB
    in 0..1 per part, ``stripes`` ``(11, 4)`` (amplitude, x and y frequency in radians
    per pixel, phase) per part, ``behind``: the :data:`LIMBS` drawn behind the torso."""

    joints: np.ndarray
    widths: np.ndarray
    colours: np.ndarray
    stripes: np.ndarray
    behind: tuple = ()

    def order(self):
        """The parts in drawing order, back to front."""
        back = [p for limb in self.behind for p in LIMBS[limb]]
        front = [p for limb in LIMBS if limb not in self.behind for p in LIMBS[limb]]
        return back + [0, 1, 2] + front


@dataclasses.dataclass
class Shape:
    """A clutter or occluding shape: ``kind`` "ellipse" (``points``: centre, ``size``:
    the two semi-axes and the angle in degrees), "rect" (``points``: its 4 corners) or
    "stick" (``points``: both ends, ``size``: the width); ``colour`` RGB 0..1,
    ``stripes`` as :class:`Body`'s."""

    kind: str
    points: np.ndarray
    size: tuple
    colour: np.ndarray
    stripes: np.ndarray


@dataclasses.dataclass
class Figures:
    """Images and their figures' keypoints.

    ``images``: ``(N, H, W, C)`` uint8. ``keypoints``: list of ``(n_i, 16, 3)`` float32
    ``x, y, v`` per figure, the main figure first. ``boxes``: list of ``(n_i, 4)``
    float32 ``xyxy`` pixel boxes of each figure's visible pixels (right/bottom edges
    exclusive). ``masks``: ``(N, H, W)`` uint8, ``i + 1`` where figure ``i`` is seen,
    0 elsewhere. ``layout``: MPII's.
    """

    images: np.ndarray
    keypoints: list
    boxes: list
    masks: np.ndarray
    layout: pose_layouts.Layout = LAYOUT

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        """A slice or index array -> :class:`Figures`; an int -> that image's
        ``{"images", "keypoints", "boxes"}`` (numpy, every figure)."""
        if isinstance(index, (int, np.integer)):
            return {"images": self.images[index].astype("float32"),
                    "keypoints": self.keypoints[index], "boxes": self.boxes[index]}
        picked = np.arange(len(self))[index]
        return Figures(self.images[picked], [self.keypoints[i] for i in picked],
                       [self.boxes[i] for i in picked], self.masks[picked], self.layout)

    @property
    def main_keypoints(self):
        """``(N, 16, 3)``: the main figure's keypoints of every image."""
        return np.stack([k[0] for k in self.keypoints]) if len(self) else np.zeros(
            (0, self.layout.num_keypoints, 3), "float32")

    def ground_truth(self):
        """``[{"keypoints": (n, 16, 3), "boxes": (n, 4)}]`` per image, every figure,
        for ``kvision.metrics.pose.evaluate``."""
        return [{"keypoints": k, "boxes": b} for k, b in zip(self.keypoints, self.boxes)]

    def as_dataset(self, *, main_only=True):
        """An unbatched ``tf.data.Dataset`` of ``{"images": float32 (H, W, C) in [0,
        255], "keypoints", "boxes"}``: with ``main_only`` the main figure's
        ``(16, 3)`` keypoints and ``(4,)`` box (what a single-person model learns);
        otherwise every figure's ``(n, 16, 3)`` and ``(n, 4)``, the form of
        :func:`kvision.data.keypoints.load_keypoints`."""
        import tensorflow as tf

        images = self.images.astype("float32")
        if main_only:
            return tf.data.Dataset.from_tensor_slices({
                "images": images, "keypoints": self.main_keypoints,
                "boxes": np.stack([b[0] for b in self.boxes]).reshape(-1, 4)})
        lengths = np.array([len(k) for k in self.keypoints], "int64")
        flat = lambda arrays, inner: tf.RaggedTensor.from_row_lengths(  # noqa: E731
            np.concatenate(arrays).reshape((-1,) + inner).astype("float32"), lengths)
        return tf.data.Dataset.from_tensor_slices({
            "images": images,
            "keypoints": flat(self.keypoints, (self.layout.num_keypoints, 3)),
            "boxes": flat(self.boxes, (4,))})


# -- drawing -------------------------------------------------------------------------
_SHIFT = 4                 # OpenCV's fixed-point bits: joints are drawn to 1/16 pixel


def _fixed(points):
    """Pixel coordinates (corner at 0) -> OpenCV's fixed-point ints (centres at 0)."""
    return np.round((np.asarray(points, "float64") - 0.5) * (1 << _SHIFT)).astype(np.int32)


def _line(owner, a, b, width, ident):
    import cv2

    cv2.line(owner, tuple(map(int, _fixed(a))), tuple(map(int, _fixed(b))), int(ident),
             max(2, int(round(width))), cv2.LINE_8, _SHIFT)


def _draw_part(owner, body, part, ident):
    """One part of ``body`` into ``owner`` with value ``ident``."""
    import cv2

    joints = body.joints[[_J[j] for j in PARTS[part][1]]]
    if PART_NAMES[part] == "torso":
        quad = _fixed(joints)
        cv2.fillPoly(owner, [quad], int(ident), cv2.LINE_8, _SHIFT)
        cv2.polylines(owner, [quad], True, int(ident),
                      max(1, int(round(body.widths[part]))), cv2.LINE_8, _SHIFT)
    elif PART_NAMES[part] == "head":
        # a disc through both joints' pixels: one pixel wider than the head is long
        centre, radius = joints.mean(0), np.linalg.norm(joints[1] - joints[0]) / 2 + 1
        cv2.circle(owner, tuple(map(int, _fixed(centre))), int(radius * (1 << _SHIFT)),
                   int(ident), -1, cv2.LINE_8, _SHIFT)
    else:
        _line(owner, joints[0], joints[1], body.widths[part], ident)


def _draw_shape(owner, shape, ident):
    import cv2

    if shape.kind == "ellipse":
        (a, b, angle), centre = shape.size, _fixed(shape.points)
        axes = (int(a * (1 << _SHIFT)), int(b * (1 << _SHIFT)))
        cv2.ellipse(owner, tuple(map(int, centre)), axes, float(angle), 0, 360, int(ident),
                    -1, cv2.LINE_8, _SHIFT)
    elif shape.kind == "rect":
        cv2.fillPoly(owner, [_fixed(shape.points)], int(ident), cv2.LINE_8, _SHIFT)
    else:
        _line(owner, shape.points[0], shape.points[1], shape.size[0], ident)


def _shade(owner, looks, background):
    """The RGB picture (0..1) of an owner map: each item's colour times its stripes,
    ``background`` where nothing is drawn."""
    colours = np.array([look[0] for look in looks], "float64")
    stripes = np.array([look[1] for look in looks], "float64")
    size = owner.shape[0]
    y, x = np.mgrid[0:size, 0:size] + 0.5
    amp, fx, fy, phase = (stripes[:, i][owner] for i in range(4))
    shaded = colours[owner] * (1 + amp * np.sin(fx * x + fy * y + phase))[..., None]
    return np.where(owner[..., None] == 0, background, shaded)


def draw(bodies, background, *, clutter=(), occluders=(), depth=None):
    """Draw figures: ``bodies`` (:class:`Body`, annotation order), ``background``
    ``(H, W, 3)`` RGB 0..1, ``clutter`` shapes under every figure, ``occluders`` over
    them; ``depth``: the order the bodies are drawn in, back to front (default theirs).

    Returns ``(pixels (H, W, 3) float 0..1, keypoints (n, 16, 3) float32, masks (H, W)
    uint8 (figure i + 1 where it is seen))``. A joint's ``v`` is 2 when its pixel is
    drawn by one of its own parts (:data:`JOINT_PARTS`), 1 when that pixel is in the
    image but drawn by anything else, 0 outside the image.
    """
    owner = np.zeros(background.shape[:2], np.uint8)
    looks = [(np.zeros(3), np.zeros(4))]           # 0: the background
    figure_of = [-1]                               # the figure each item belongs to
    if 1 + len(clutter) + len(occluders) + len(PARTS) * len(bodies) > MAX_ITEMS:
        raise ValueError(f"At most {MAX_ITEMS} things per image: {len(bodies)} figures "
                         f"and {len(clutter) + len(occluders)} shapes is too many.")
    idents = np.zeros((len(bodies), len(PARTS)), int)
    for shape in clutter:
        _draw_shape(owner, shape, len(looks))
        looks.append((shape.colour, shape.stripes))
        figure_of.append(-1)
    for f in (range(len(bodies)) if depth is None else depth):
        for part in bodies[f].order():
            idents[f, part] = len(looks)
            _draw_part(owner, bodies[f], part, len(looks))
            looks.append((bodies[f].colours[part], bodies[f].stripes[part]))
            figure_of.append(f)
    for shape in occluders:
        _draw_shape(owner, shape, len(looks))
        looks.append((shape.colour, shape.stripes))
        figure_of.append(-1)
    keypoints = np.stack([_visibility(body.joints, owner, idents[f])
                          for f, body in enumerate(bodies)]).astype("float32") if bodies \
        else np.zeros((0, LAYOUT.num_keypoints, 3), "float32")
    masks = (np.array(figure_of) + 1).astype(np.uint8)[owner]
    return _shade(owner, looks, background), keypoints, masks


def _visibility(joints, owner, idents):
    """``(16, 3)`` x, y, v of one figure's joints on a finished owner map."""
    height, width = owner.shape
    out = np.zeros((len(joints), 3))
    out[:, :2] = joints
    for j, (x, y) in enumerate(joints):
        if 0 <= x < width and 0 <= y < height:
            seen = owner[int(y), int(x)]
            out[j, 2] = 2 if seen in idents[list(JOINT_PARTS[j])] else 1
    return out


def _boxes(masks, count):
    """``(count, 4)`` xyxy boxes of each figure's pixels (zeros when none are seen)."""
    boxes = np.zeros((count, 4), "float32")
    for i in range(count):
        mine = masks == i + 1
        rows, cols = np.nonzero(mine.any(1))[0], np.nonzero(mine.any(0))[0]
        if len(rows):
            boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return boxes


# -- sampling ------------------------------------------------------------------------
def _unit(angle):
    return np.array([np.cos(angle), np.sin(angle)])


def _hsv(h, s, v):
    """RGB (0..1) of a hue in degrees, saturation and value."""
    c = v * s
    k = (np.array([5.0, 3.0, 1.0]) + h / 60.0) % 6
    return v - c * np.clip(np.minimum(k, 4 - k), 0, 1)


class _Sampler:
    """The random choices of one call: poses, looks, shapes."""

    def __init__(self, rng, size, subset):
        self.rng, self.size = rng, size
        self.hue_bins = np.arange(SUBSETS.index(subset), HUE_BINS, 2)

    def uniform(self, low, high):
        return float(self.rng.uniform(low, high))

    def pose(self):
        """``(16, 2)`` joints in torso lengths, pelvis at 0, y down; ``(11,)`` widths."""
        u = _unit(np.deg2rad(-90 + self.uniform(-20, 20)))   # pelvis -> thorax
        p = np.array([-u[1], u[0]])                          # towards the figure's left
        j = np.zeros((LAYOUT.num_keypoints, 2))
        j[_J["thorax"]] = u
        j[_J["upper_neck"]] = u + 0.22 * self._turn(u, 15)
        j[_J["head_top"]] = j[_J["upper_neck"]] + self.uniform(0.42, 0.55) * self._turn(u, 20)
        hips, shoulders = self.uniform(0.16, 0.25), self.uniform(0.28, 0.4)
        arms, legs = self.uniform(0.85, 1.15), self.uniform(0.85, 1.15)
        for side, sign in (("r", -1), ("l", 1)):
            out = sign * p
            hip, shoulder = sign * hips * p, u + sign * shoulders * p
            j[_J[f"{side}_hip"]], j[_J[f"{side}_shoulder"]] = hip, shoulder
            j[_J[f"{side}_elbow"]], j[_J[f"{side}_wrist"]] = self._limb(
                shoulder, -u, out, (-40, 170), (-120, 120), 0.62 * arms, 0.55 * arms)
            j[_J[f"{side}_knee"]], j[_J[f"{side}_ankle"]] = self._limb(
                hip, -u, out, (-15, 50), (-40, 40), 0.85 * legs, 0.8 * legs)
        widths = np.array([w for _, _, w in PARTS]) * self.rng.uniform(0.8, 1.25, len(PARTS))
        return j, widths

    def _turn(self, vector, degrees):
        """``vector`` turned by up to ``degrees`` either way."""
        return self._rotate(vector, self.uniform(-degrees, degrees))

    def _limb(self, start, down, out, spread, bend, upper, lower):
        """Middle and end joints of a two-segment limb hanging from ``start``:
        ``spread`` degrees from ``down`` towards ``out``, the lower segment ``bend``
        degrees off the upper one; lengths foreshortened by up to 25%."""
        angle = np.deg2rad(self.uniform(*spread))
        direction = np.cos(angle) * down + np.sin(angle) * out
        middle = start + upper * self.uniform(0.75, 1.0) * direction
        direction = self._rotate(direction, self.uniform(*bend))
        return middle, middle + lower * self.uniform(0.75, 1.0) * direction

    @staticmethod
    def _rotate(vector, degrees):
        c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
        return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1]])

    def figure_colour(self):
        hue = (self.rng.choice(self.hue_bins) + self.uniform(0.15, 0.85)) * 360 / HUE_BINS
        # value <= 0.75 so that stripes (x 1.3 at most) never clip, keeping the hue
        return _hsv(hue, self.uniform(0.5, 1.0), self.uniform(0.4, 0.75))

    def any_colour(self):
        return _hsv(self.uniform(0, 360), self.uniform(0, 1), self.uniform(0.2, 1.0))

    def stripes(self, amplitude):
        angle, period = self.uniform(0, np.pi), self.size * self.uniform(0.05, 0.15)
        frequency = 2 * np.pi / period
        return np.array([self.uniform(0, amplitude), frequency * np.cos(angle),
                         frequency * np.sin(angle), self.uniform(0, 2 * np.pi)])

    def body(self, centre, height):
        """A :class:`Body` whose joints' box is ``height`` pixels high (or at most 90%
        of the image wide) and centred on ``centre``."""
        joints, widths = self.pose()
        low, high = joints.min(0), joints.max(0)
        scale = min(height / (high[1] - low[1]), 0.9 * self.size / (high[0] - low[0]))
        joints = (joints - (low + high) / 2) * scale + centre
        looks = [self.figure_colour() for _ in range(3)]
        patterns = [self.stripes(0.3) for _ in range(3)]
        kind = [_LOOK.get(name, 2) for name in PART_NAMES]
        behind = tuple(limb for limb in LIMBS
                       if self.rng.random() < (0.3 if "arm" in limb else 0.5))
        return Body(joints, widths * scale, np.array([looks[k] for k in kind]),
                    np.array([patterns[k] for k in kind]), behind)

    def main_body(self, truncation):
        centre = np.full(2, self.size / 2) + self.rng.uniform(-0.05, 0.05, 2) * self.size
        if self.rng.random() < truncation:
            centre += _unit(self.uniform(0, 2 * np.pi)) * self.uniform(0.2, 0.4) * self.size
        return self.body(centre, self.uniform(0.55, 0.75) * self.size)

    def shape(self, near=None):
        """A random shape (anywhere, or centred on ``near``)."""
        s = self.size
        centre = self.rng.uniform(0, s, 2) if near is None else np.asarray(near, float)
        kind = ("ellipse", "rect", "stick")[int(self.rng.integers(3))]
        colour, stripes = self.any_colour(), self.stripes(0.3)
        if kind == "ellipse":
            axes = (self.uniform(0.04, 0.15) * s, self.uniform(0.04, 0.15) * s)
            return Shape(kind, centre, (*axes, self.uniform(0, 180)), colour, stripes)
        half = _unit(self.uniform(0, 2 * np.pi)) * self.uniform(0.05, 0.2) * s
        if kind == "rect":
            across = np.array([-half[1], half[0]]) * self.uniform(0.3, 1.0)
            corners = centre + np.array([half + across, half - across, -half - across,
                                         -half + across])
            return Shape(kind, corners, (), colour, stripes)
        return Shape(kind, np.array([centre - half, centre + half]),
                     (self.uniform(0.03, 0.07) * s,), colour, stripes)

    def background(self, channels_size):
        a, b = self.any_colour(), self.any_colour()
        angle = self.uniform(0, 2 * np.pi)
        y, x = (np.mgrid[0:channels_size, 0:channels_size] + 0.5) / channels_size
        t = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)
        return a + (b - a) * t[..., None]


def _range(value, name, low):
    lo, hi = value if isinstance(value, (tuple, list)) else (value, value)
    if not low <= int(lo) <= int(hi):
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max (or one "
                         f"int), got {value}.")
    return int(lo), int(hi)


def _check(num_images, image_size, people, channels, clutter, occlusion, truncation,
           noise, subset):
    if int(num_images) < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}.")
    if int(image_size) < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}.")
    people = _range(people, "people", 1)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    for name, value in (("occlusion", occlusion), ("truncation", truncation)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}.")
    if not 0 <= int(clutter) <= 100:
        raise ValueError(f"clutter must be a count of shapes in 0..100, got {clutter}.")
    if people[1] * len(PARTS) + int(clutter) + 1 >= MAX_ITEMS:
        raise ValueError(f"people={people} with clutter={clutter} is more than "
                         f"{MAX_ITEMS} things per image.")
    if noise < 0:
        raise ValueError(f"noise must be >= 0 grey levels, got {noise}.")
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}.")
    return people


def figures(num_images, *, image_size=64, people=(1, 1), channels=3, clutter=6,
            occlusion=0.1, truncation=0.1, noise=4.0, subset="train", seed=0):
    """``num_images`` images of articulated figures with their keypoints.

    ``image_size``: the side of the square images. ``people``: ``(min, max)`` figures
    per image (or one int), the first the centred main figure. ``channels``: 3 (RGB)
    or 1 (grey). ``clutter``: background shapes per image. ``occlusion``,
    ``truncation``: probabilities per image of an occluder over the main figure and of
    the main figure moved so that the border cuts it. ``noise``: the standard
    deviation of Gaussian pixel noise, in grey levels. ``subset``: "train" or "test"
    (disjoint colours, separate poses). See the module docstring. Returns
    :class:`Figures`.
    """
    people = _check(num_images, image_size, people, channels, clutter, occlusion,
                    truncation, noise, subset)
    size, count = int(image_size), int(num_images)
    rng = np.random.default_rng([int(seed), SUBSETS.index(subset)])
    sampler = _Sampler(rng, size, subset)
    images = np.zeros((count, size, size, channels), np.uint8)
    masks = np.zeros((count, size, size), np.uint8)
    keypoints, boxes = [], []
    for i in range(count):
        pixels, kept, masks[i], box = _image(sampler, people, int(clutter), occlusion,
                                              truncation)
        if noise:
            pixels = pixels + rng.normal(0, noise / 255, pixels.shape)
        if channels == 1:
            pixels = pixels @ np.array([[0.299], [0.587], [0.114]])
        images[i] = np.round(np.clip(pixels, 0, 1) * 255)
        keypoints.append(kept)
        boxes.append(box)
    return Figures(images, keypoints, boxes, masks)


def _image(sampler, people, clutter, occlusion, truncation):
    """One image: ``(pixels, keypoints, masks, boxes)``, figures never seen dropped
    (the main figure always kept)."""
    rng, size = sampler.rng, sampler.size
    count = int(rng.integers(people[0], people[1] + 1))
    main = sampler.main_body(truncation)
    height = main.joints[:, 1].max() - main.joints[:, 1].min()
    bodies = [main] + [sampler.body(rng.uniform(0, size, 2),
                                    height * sampler.uniform(0.4, 0.9))
                       for _ in range(count - 1)]
    depth = [0]
    for f in range(1, count):      # each other figure in front of the main one or behind
        depth = depth + [f] if rng.random() < 0.5 else [f] + depth
    shapes = [sampler.shape() for _ in range(clutter)]
    occluders = []
    if rng.random() < occlusion:
        joint = main.joints[int(rng.integers(len(main.joints)))]
        occluders.append(sampler.shape(near=joint))
    pixels, keypoints, masks = draw(bodies, sampler.background(size), clutter=shapes,
                                    occluders=occluders, depth=depth)
    box = _boxes(masks, count)
    seen = [0] + [f for f in range(1, count) if (masks == f + 1).any()]
    if len(seen) < count:          # renumber the mask without the figures never seen
        renumber = np.zeros(count + 1, np.uint8)
        renumber[np.array(seen) + 1] = np.arange(1, len(seen) + 1)
        masks = renumber[masks]
    return pixels, keypoints[seen], masks, box[seen]
