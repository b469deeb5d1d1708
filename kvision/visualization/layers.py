"""Layers addressed by path through nested models, first-layer filters and
activation maps.

A *path* is a layer name (``"block5_conv3"``) or ``"outer/inner/..."`` through nested
models (``"backbone/block5_conv3"`` in a :func:`kvision.transfer.build_classifier`
model, ``"yolov3_tiny/backbone/conv1"`` in a detector's inference model). A name
that is unique in the whole flattened graph needs no prefix.

A tool that builds ``keras.Model(model.inputs, model.get_layer("backbone")
.get_layer("conv1").output)`` fails with "Graph disconnected" (tensorflow#44462): the
inner layer's output hangs off the nested model's own input, not the outer one.
:func:`layer_output` instead re-calls the nested model's sub-graph on the tensors the
outer model fed it (:func:`kvision.features.tap`), so the result runs from the
outer model's raw input.
"""

from __future__ import annotations

import difflib
import os

import keras
import numpy as np

from kvision import features

__all__ = ["activations", "activations_grid", "find_layer", "filters_grid",
           "first_conv", "last_spatial_layer", "layer_output", "resolve", "save_png"]


def layer_output(model, path) -> keras.Model:
    """A ``keras.Model`` from ``model``'s input to the output of the layer at
    ``path`` (a name or ``"outer/inner/..."``; see the module docstring).

    The layers and weights are ``model``'s own (nothing is copied). An unknown path
    is a ValueError naming the closest layer names.
    """
    found = resolve(model, path)
    tensor = features.tap(model, [found])[0]
    label = "_".join(found).replace("/", "_")
    return keras.Model(features.model_inputs(model), tensor,
                       name=f"{model.name}_{label}_output")


def resolve(model, path) -> tuple:
    """``path`` as the tuple of names through nested models (``("backbone",
    "conv1")``); a ValueError naming the closest layer paths when it is unknown."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"A layer path is a layer name or 'outer/inner/...', got "
                         f"{path!r}.")
    try:
        return features.resolve_path(model, path)
    except ValueError:
        steps = features.graph(model).steps
        paths = sorted({"/".join(s.path) for s in steps} | {s.path[-1] for s in steps})
        close = difflib.get_close_matches(path, paths, n=5, cutoff=0.5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ValueError(f"No layer {path!r} in model {model.name!r}.{hint} "
                         f"(kvision.features.layer_steps(model) lists all "
                         f"{len(steps)}.)") from None


def find_layer(model, path) -> keras.layers.Layer:
    """The layer object at ``path`` (a name or ``"outer/inner/..."``)."""
    layer = model
    found = resolve(model, path)
    for name in found:
        layer = features.functional(layer).get_layer(name)
    return layer


def _spatial_steps(model):
    """``[(path string, output shape)]`` of every single-output step whose output is
    ``(N, H, W, C)``, in topological order (nested models inlined)."""
    g = features.graph(model)
    found = []
    for step in g.steps:
        if len(step.node.outputs) == 1 and len(step.node.outputs[0].shape) == 4:
            found.append(("/".join(step.path), tuple(step.node.outputs[0].shape)))
    return found


def last_spatial_layer(model) -> str:
    """The path of the last layer with a spatial map ``(N, H, W, C)``, where
    Grad-CAM looks by default: the last one larger than 1x1 (a 1x1 map localizes
    nothing), else the last 4-D one. Padding and cropping layers are skipped (they
    move borders, compute nothing). A ValueError when there is none."""
    steps = [(p, s) for p, s in _spatial_steps(model)
             if not isinstance(find_layer(model, p), features._GEOMETRY_ONLY)]
    if not steps:
        raise ValueError(f"Model {model.name!r} has no layer with a spatial output "
                         f"(N, H, W, C): Grad-CAM needs one.")
    larger = [p for p, s in steps if s[1] is None or s[2] is None or s[1] * s[2] > 1]
    return (larger or [p for p, _ in steps])[-1]


def first_conv(model) -> str:
    """The path of the first ``Conv2D`` of ``model`` (nested models inlined)."""
    for step in features.graph(model).steps:
        if type(step.op) is keras.layers.Conv2D:  # not a depthwise or transposed one
            return "/".join(step.path)
    raise ValueError(f"Model {model.name!r} has no Conv2D layer: give `path`.")


# --- images -------------------------------------------------------------------------

def _unit_range(array, axis=None):
    """``array`` scaled to [0, 1] (per slice along the axes not in ``axis``)."""
    low = array.min(axis=axis, keepdims=True)
    high = array.max(axis=axis, keepdims=True)
    return (array - low) / np.maximum(high - low, 1e-12)


def _grid(tiles, columns=None, gap=1):
    """``tiles`` (K, h, w, 3) in [0, 1] -> one uint8 image of them in rows, with a
    ``gap``-pixel white border between them."""
    k, h, w, c = tiles.shape
    columns = columns or int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / columns))
    out = np.ones((rows * (h + gap) + gap, columns * (w + gap) + gap, c), "float32")
    for i, tile in enumerate(tiles):
        r, q = divmod(i, columns)
        y, x = gap + r * (h + gap), gap + q * (w + gap)
        out[y:y + h, x:x + w] = tile
    return (np.clip(out, 0, 1) * 255).round().astype("uint8")


def _enlarge(image, smallest=256):
    """Whole-factor nearest enlargement so that tiny grids stay visible."""
    factor = max(1, -(-smallest // max(image.shape[:2])))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def save_png(image, path) -> str:
    """Write ``image`` (H, W, 3 or H, W uint8) to ``path`` as PNG through a temporary
    file in the same folder, then rename: never a half-written file."""
    from PIL import Image

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    try:
        Image.fromarray(np.asarray(image, "uint8")).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def filters_grid(model, path=None, out=None) -> np.ndarray:
    """The kernels of a convolution as an image grid, uint8 ``(H, W, 3)``.

    ``path``: the layer (default the first ``Conv2D``, :func:`first_conv`). Each
    filter is one tile scaled to [0, 1] on its own (its pattern matters, not its
    norm): in colour when the layer reads 3 channels, else the mean over its input
    channels in grey. Written to ``out`` as PNG when given.
    """
    path = path or first_conv(model)
    layer = find_layer(model, path)
    kernel = getattr(layer, "kernel", None)
    if kernel is None or len(kernel.shape) != 4:
        raise ValueError(f"Layer {path!r} ({type(layer).__name__}) has no 2-D "
                         f"convolution kernel (kh, kw, in, out).")
    kernel = np.transpose(keras.ops.convert_to_numpy(kernel), (3, 0, 1, 2))
    if kernel.shape[-1] != 3:
        kernel = np.repeat(kernel.mean(axis=-1, keepdims=True), 3, axis=-1)
    image = _enlarge(_grid(_unit_range(kernel, axis=(1, 2, 3))))
    if out is not None:
        save_png(image, out)
    return image


def activations(model, images, path) -> np.ndarray:
    """The output of the layer at ``path`` for ``images`` (the model's input, a
    batch), as a NumPy array, computed in inference mode."""
    sub = layer_output(model, path)
    return keras.ops.convert_to_numpy(sub(np.asarray(images, "float32"), training=False))


def activations_grid(maps, out=None, most=64) -> np.ndarray:
    """One image's activation maps ``(h, w, C)`` as a grid of grey tiles, uint8.

    Each channel is scaled to [0, 1] on its own; the first ``most`` channels are
    shown. Written to ``out`` as PNG when given.
    """
    maps = np.asarray(maps, "float32")
    if maps.ndim != 3:
        raise ValueError(f"activations_grid takes one image's maps (h, w, C), got "
                         f"shape {maps.shape}: index the batch first (maps[0]).")
    tiles = np.transpose(maps[..., :most], (2, 0, 1))[..., None]
    image = _enlarge(_grid(np.repeat(_unit_range(tiles, axis=(1, 2, 3)), 3, axis=-1)))
    if out is not None:
        save_png(image, out)
    return image
