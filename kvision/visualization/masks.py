"""Segmentation overlays: class label maps and instances drawn on the image, as PNG.

- :func:`draw_label_map`: a label map (or per-pixel probabilities) blended over the
  image in one colour per class, with keras' ``keras.visualization.
  draw_segmentation_masks``; a legend of the classes present below it.
- :func:`draw_instances`: each instance in its own colour, outlined, and labelled
  with its class name and score.
- :func:`save_overlay`: either of them written to a PNG file.

Images are ``(H, W, 3)`` or ``(H, W, 1)``, uint8 or float in [0, 255]; the functions
return ``(H', W', 3)`` uint8 arrays (``scale`` times larger, plus the legend).
Text is drawn with Pillow (installed with matplotlib).
"""

from __future__ import annotations

import os

import keras
import numpy as np

__all__ = ["draw_instances", "draw_label_map", "palette", "save_overlay"]


def palette(count):
    """``count`` distinct RGB colours (matplotlib's tab20, repeated), uint8 (count, 3)."""
    from matplotlib import colormaps

    colours = (np.asarray(colormaps["tab20"].colors) * 255).round().astype(np.uint8)
    # Strong colours first (tab20 alternates dark and light).
    colours = np.concatenate([colours[0::2], colours[1::2]])
    return colours[np.arange(count) % len(colours)]


def _image(image):
    image = np.asarray(keras.ops.convert_to_numpy(image))
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image must be (H, W, 3) or (H, W, 1), got shape {image.shape}.")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.clip(image.astype("float32"), 0, 255)


def _check_size(image, mask, what):
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"The {what} is {mask.shape[0]}x{mask.shape[1]} pixels but the "
                         f"image is {image.shape[0]}x{image.shape[1]}; they must match.")


def _blend(image, ids, count, alpha, colours):
    """Pixels with id 1..count coloured ``colours[id - 1]``; id 0 left as is."""
    mapping = {0: (0, 0, 0), **{i + 1: tuple(int(v) for v in c)
                                for i, c in enumerate(colours[:count])}}
    out = keras.visualization.draw_segmentation_masks(
        image[None], ids[None, ..., None].astype("int32"), num_classes=count + 1,
        color_mapping=mapping, alpha=alpha, ignore_index=0)
    return np.asarray(out[0], np.uint8)


def _upscale(array, scale):
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}.")
    return array if scale == 1 else array.repeat(scale, 0).repeat(scale, 1)


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_label_map(image, labels, *, class_names=None, alpha=0.6, background=0,
                   ignore_index=None, scale=1, legend=True):
    """A class label map blended over ``image``; returns uint8 (H', W', 3).

    ``labels``: (H, W) int class ids, or (H, W, C) probabilities (argmax; a single
    sigmoid channel is thresholded at 0.5). ``background`` and ``ignore_index``
    pixels are not coloured. ``class_names`` (one per class) name the legend rows.
    """
    image = _image(image)
    labels = np.asarray(keras.ops.convert_to_numpy(labels))
    if labels.ndim == 3:
        labels = (labels[..., 0] >= 0.5).astype(int) if labels.shape[-1] == 1 else \
            labels.argmax(-1)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a label map (H, W) or probabilities (H, W, C), "
                         f"got shape {labels.shape}.")
    _check_size(image, labels, "label map")
    labels = labels.astype(np.int64)
    drawn = labels.copy()
    if ignore_index is not None:
        drawn[labels == ignore_index] = background
    if drawn.min(initial=0) < 0:
        raise ValueError(f"labels hold negative values {np.unique(drawn[drawn < 0])[:5]} "
                         f"other than ignore_index={ignore_index}.")
    count = max(int(drawn.max(initial=0)), len(class_names or ()) - 1, 1)
    colours = palette(count + 1)
    ids = np.where(drawn == background, 0, drawn + 1)  # colour of class c: colours[c]
    out = _upscale(_blend(image, ids, count + 1, alpha, colours), scale)
    if legend:
        present = [int(c) for c in np.unique(drawn) if c != background]
        names = [class_names[c] if class_names is not None and c < len(class_names)
                 else str(c) for c in present]
        out = _legend(out, names, colours[present])
    return out


def _legend(image, names, colours):
    """A strip under ``image`` with a colour swatch and name per entry."""
    from PIL import Image, ImageDraw

    if not names:
        return image
    size = 12
    width = image.shape[1]
    per_row = max(1, width // 90)
    rows = -(-len(names) // per_row)
    strip = Image.new("RGB", (width, rows * (size + 6) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font = _font(size)
    for i, (name, colour) in enumerate(zip(names, colours)):
        x = 4 + (i % per_row) * (width // per_row)
        y = 4 + (i // per_row) * (size + 6)
        draw.rectangle([x, y, x + size, y + size], fill=tuple(int(v) for v in colour))
        draw.text((x + size + 4, y - 1), str(name), fill=(0, 0, 0), font=font)
    return np.concatenate([image, np.asarray(strip)], axis=0)


def _instances_as_masks(instances, shape):
    """(n, H, W) bool masks from masks or an instance id map."""
    instances = np.asarray(keras.ops.convert_to_numpy(instances))
    if instances.ndim == 2:  # an id map, 0 = none
        count = int(instances.max(initial=0))
        instances = instances[None] == np.arange(1, count + 1)[:, None, None]
    if instances.ndim != 3:
        raise ValueError(f"instances must be masks (n, H, W) or an id map (H, W), got "
                         f"shape {instances.shape}.")
    if instances.shape[1:] != tuple(shape):
        raise ValueError(f"The instance masks are {instances.shape[1]}x"
                         f"{instances.shape[2]} pixels but the image is "
                         f"{shape[0]}x{shape[1]}; they must match.")
    return instances.astype(bool)


def draw_instances(image, instances, classes=None, scores=None, *, class_names=None,
                   alpha=0.6, scale=1, outline=True, captions=True):
    """Each instance in its own colour, outlined and labelled "name score".

    ``instances``: (n, H, W) bool masks or an (H, W) id map (0 = none, id k + 1 = row
    k); ``classes`` (n,) object classes, ``scores`` (n,) or None; ``class_names``
    names the classes. Returns uint8 (H * scale, W * scale, 3).
    """
    image = _image(image)
    masks = _instances_as_masks(instances, image.shape[:2])
    n = len(masks)
    for what, values in (("classes", classes), ("scores", scores)):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {what} for {n} instances.")
    colours = palette(max(n, 1))
    ids = np.zeros(image.shape[:2], np.int32)
    for k, mask in enumerate(masks):
        ids[mask & (ids == 0)] = k + 1
    out = _upscale(_blend(image, ids, max(n, 1), alpha, colours), scale)
    if outline and n:
        from kvision.ops.masks import boundaries

        for k, mask in enumerate(masks):
            edge = _upscale(np.asarray(boundaries(mask[None])), scale)
            out[edge] = colours[k]
    if captions and n:
        out = _label_instances(out, masks, classes, scores, class_names, colours, scale)
    return out


def _label_instances(out, masks, classes, scores, class_names, colours, scale):
    from PIL import Image, ImageDraw

    picture = Image.fromarray(out)
    draw = ImageDraw.Draw(picture)
    size = max(10, 4 * scale)
    font = _font(size)
    for k, mask in enumerate(masks):
        rows, cols = np.nonzero(mask)
        if not len(rows):
            continue
        text = ""
        if classes is not None:
            c = int(classes[k])
            text = class_names[c] if class_names is not None and 0 <= c < len(
                class_names) else str(c)
        if scores is not None:
            text = f"{text} {float(scores[k]):.2f}".strip()
        if not text:
            continue
        x, y = cols.min() * scale, max(0, rows.min() * scale - size - 2)
        box = draw.textbbox((x, y), text, font=font)
        draw.rectangle(box, fill=tuple(int(v) for v in colours[k]))
        draw.text((x, y), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def _auto_scale(image, scale):
    if scale != "auto":
        return scale
    side = max(np.asarray(image).shape[:2])
    return max(1, -(-256 // side))


def save_overlay(path, image, labels=None, *, instances=None, classes=None, scores=None,
                 class_names=None, alpha=0.6, scale="auto", **kwargs):
    """Write an overlay PNG to ``path`` and return the path.

    Give ``labels`` (a label map or probabilities: :func:`draw_label_map`) or
    ``instances`` (masks or an id map, with ``classes`` and ``scores``:
    :func:`draw_instances`; a dict of :func:`kvision.models.segmentation.instance.
    to_instances` also works). ``scale="auto"`` enlarges images smaller than 256
    pixels by a whole factor so that the labels stay readable.
    """
    from PIL import Image

    if (labels is None) == (instances is None):
        raise ValueError("save_overlay draws either `labels` (a class label map) or "
                         "`instances` (instance masks), exactly one of them.")
    scale = _auto_scale(image, scale)
    if instances is not None:
        if isinstance(instances, dict):
            classes = instances.get("classes") if classes is None else classes
            scores = instances.get("scores") if scores is None else scores
            instances = instances["masks"]
        out = draw_instances(image, instances, classes, scores, class_names=class_names,
                             alpha=alpha, scale=scale, **kwargs)
    else:
        out = draw_label_map(image, labels, class_names=class_names, alpha=alpha,
                             scale=scale, **kwargs)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    Image.fromarray(out).save(path, format="PNG")
    return path
