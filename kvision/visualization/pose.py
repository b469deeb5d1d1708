"""Skeletons drawn on images: keypoints as dots, the layout's limbs as lines (PNG)."""

from __future__ import annotations

import os

import numpy as np

from kvision.visualization.masks import _auto_scale

LEFT, RIGHT, MIDDLE = (64, 160, 255), (255, 96, 64), (96, 220, 96)


def draw_skeleton(image, keypoints, *, layout=None, threshold=0.0, scale="auto"):
    """``image`` ``(H, W, C)`` with ``keypoints`` ``(K, 2|3)`` drawn: a dot per joint
    whose score (third column) reaches ``threshold``, a line per limb of ``layout``'s
    skeleton between two such joints; left joints blue, right orange (by the layout's
    joint names), others green. Returns ``(H * s, W * s, 3)`` uint8 (``scale="auto"``
    enlarges small images by a whole factor ``s``)."""
    from PIL import Image, ImageDraw

    image = np.asarray(image)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
    points = np.asarray(keypoints, "float64")
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise ValueError(f"keypoints must be (K, 2) or (K, 3), got shape {points.shape}.")
    if layout is not None and len(points) != layout.num_keypoints:
        raise ValueError(f"{len(points)} keypoints for the {layout.name} layout's "
                         f"{layout.num_keypoints}.")
    shown = points[:, 2] >= threshold if points.shape[1] == 3 else np.ones(len(points), bool)
    s = _auto_scale(image, scale)
    canvas = Image.fromarray(np.clip(image, 0, 255).astype("uint8")).resize(
        (image.shape[1] * s, image.shape[0] * s), Image.NEAREST)
    pen = ImageDraw.Draw(canvas)
    xy = points[:, :2] * s
    names = layout.names if layout is not None else ()
    for a, b in (layout.skeleton if layout is not None else ()):
        if shown[a] and shown[b]:
            pen.line([tuple(xy[a]), tuple(xy[b])], fill=_colour(names, b), width=max(1, s))
    radius = max(2, s + 1)
    for j, (x, y) in enumerate(xy):
        if shown[j]:
            pen.ellipse([x - radius, y - radius, x + radius, y + radius],
                        fill=_colour(names, j), outline=(0, 0, 0))
    return np.asarray(canvas)


def _colour(names, joint):
    name = names[joint] if joint < len(names) else ""
    if name.startswith(("l_", "left")):
        return LEFT
    if name.startswith(("r_", "right")):
        return RIGHT
    return MIDDLE


def save_skeleton(image, keypoints, path, *, layout=None, threshold=0.0):
    """:func:`draw_skeleton` of ``image`` (an array or an image file's path) written
    to ``path`` as a PNG (through a temporary file: never half written); returns
    ``path``."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            image = np.asarray(opened.convert("RGB"))
    drawn = draw_skeleton(image, keypoints, layout=layout, threshold=threshold, scale=1)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.png")
    Image.fromarray(drawn).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
