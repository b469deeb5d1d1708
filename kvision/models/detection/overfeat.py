"""OverFeat (Sermanet et al., 2013): sliding windows as one convolutional pass.

A window classifier (a backbone, then fully connected layers giving the class with a
background class, and a box regressor giving the object's box inside the window) is
trained on crops. :func:`fully_convolutional` turns it into a network of
convolutions with the same weights: each Dense layer after the Flatten becomes a
Conv2D whose kernel covers the whole feature map the Dense layer saw (the Dense
kernel reshaped, Flatten's row-major order), later Dense layers 1x1 Conv2D, global
pooling a pooling of the same window with stride 1. On the classifier's input size
it gives exactly the classifier's outputs; on a larger image it gives a map whose
cell ``(i, j)`` is the classifier on the window at ``(i * stride, j * stride)``
(exactly so when the backbone pads nothing: "valid" convolutions and pooling, as
LeNet-5 or ``OverFeat(padding="valid")``; with "same" padding, windows away from the
border see their neighbours instead of zeros, as in the paper).

:func:`inference_model` slides it over an image at several scales in one graph
(``Resizing`` -> the convolutional network -> :class:`~kvision.layers.overfeat.
WindowDecode` per scale), and merges every window's box by per-class non-max
suppression (:class:`~kvision.layers.NonMaxSuppression`): the detector protocol's
``boxes``/``scores``/``classes``/``num_detections``.

Conventions: classes ``0 .. classes - 1`` are objects, class ``classes`` (the last)
is background; a window's box is normalized ``(x_center, y_center, width, height)``
inside the window (``"yolo"`` format of the window).
"""

from __future__ import annotations

import keras
import numpy as np

from kvision import features
from kvision.layers.overfeat import WindowDecode
from kvision.losses.detection import BoxRegressionLoss
from kvision.models._builder import task_input
from kvision.models.detection.localization import _check_int, _nms_layer, backbone_map
from kvision.ops import boxes as box_ops
from kvision.registry import register
from kvision.tasks.model import TaskModel

# The "fast" model of the paper's Table 1: (filters, kernel, stride, pool) of layers 1-5.
FAST_BODY = ((96, 11, 4, 2), (256, 5, 1, 2), (512, 3, 1, 0), (1024, 3, 1, 0),
             (1024, 3, 1, 2))
MIN_WINDOW = 71  # the smallest window the fast body (padding "same") maps to 1x1


def _fast_body(channels, padding):
    """OverFeat-fast's layers 1-5 as a model on any input size (nested "backbone")."""
    inputs = keras.Input((None, None, channels), name="backbone_input")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescaling")(inputs)
    for i, (filters, kernel, stride, pool) in enumerate(FAST_BODY, start=1):
        x = keras.layers.Conv2D(filters, kernel, strides=stride, activation="relu",
                                padding="valid" if i <= 2 else padding,
                                name=f"conv{i}")(x)
        if pool:
            x = keras.layers.MaxPooling2D(pool, name=f"pool{i}")(x)
    return keras.Model(inputs, x, name="backbone")


@register("overfeat", task="detection", family="overfeat", year=2013,
          paper="OverFeat: Integrated Recognition, Localization and Detection using "
                "Convolutional Networks",
          key_idea="a classifier made fully convolutional slides over several "
                   "scales in one pass; a box regressor per window",
          default_size=231, min_size=MIN_WINDOW, default_classes=1000,
          num_params=301_123_437, params_convention="keras",
          params_source="paper Table 1 (fast model, 145,920,872 with 1000 classes) "
                        "+ a background class (+4,097) + the regressor of section 4.2 "
                        "(4096, 1024, 4: 155,198,468)")
def OverFeat(backbone=None, classes=1000, *, input_shape=None, weights=None,
             backbone_weights=None, trainable_backbone=True, regime=None,
             units=(3072, 4096), box_units=(4096, 1024), dropout=0.5, padding="same",
             preprocessing=None, name="overfeat", **backbone_kwargs):
    """OverFeat's window classifier and box regressor (Sermanet et al., 2013).

    Args:
        backbone: None for the paper's fast model (layers 1-5: 11x11/4 conv 96,
            5x5 conv 256, 3x3 convs 512, 1024, 1024, max pools; input 231x231),
            else a zoo name, keras.applications name or functional keras.Model.
        classes: object classes; the class head has ``classes + 1`` outputs, the
            last one background.
        input_shape: the window ``(S, S, C)``, raw pixels ``[0, 255]``; default
            231x231x3 (the paper's) or the backbone's default size.
        weights: a ``.weights.h5`` file of the whole model, or None.
        backbone_weights, trainable_backbone, regime, preprocessing,
            **backbone_kwargs: a named backbone, as
            :func:`kvision.models.detection.localization.backbone_map` builds it.
        units: the class head's hidden Dense layers (the paper: 3072, 4096).
        box_units: the regressor's hidden Dense layers (the paper: 4096, 1024).
        dropout: before each hidden class layer's successor (the paper: 0.5).
        padding: "same" (the paper) or "valid" for layers 3-5 of the paper body;
            "valid" makes every window exactly the classifier on its crop.

    Returns:
        A ``keras.Model`` from ``(B, S, S, C)`` windows to ``{"classes": (B,
        classes + 1) softmax, "boxes": (B, 4)}``, the box normalized center
        ``(x, y, w, h)`` in the window. :func:`fully_convolutional` and
        :func:`inference_model` slide it.
    """
    classes = _check_int("classes", classes)
    if padding not in ("same", "valid"):
        raise ValueError(f"`padding` must be 'same' or 'valid', got {padding!r}.")
    if backbone is None:
        inputs = task_input("overfeat", input_shape, fixed_size=True)
        x = _fast_body(inputs.shape[-1], padding)(inputs)
    else:  # (the fast body's 71-pixel minimum is not a named backbone's)
        inputs, x = backbone_map(backbone, input_shape, task=None,
                                 backbone_weights=backbone_weights,
                                 trainable_backbone=trainable_backbone, regime=regime,
                                 preprocessing=preprocessing, **backbone_kwargs)
    if None in x.shape[1:]:
        raise ValueError("OverFeat's window classifier needs a fixed window size: pass "
                         "input_shape=(S, S, C).")
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = {"classes": _head(x, "fc", units, classes + 1, "softmax", dropout),
               "boxes": _head(x, "box_fc", box_units, 4, "sigmoid", 0.0)}
    model = TaskModel(inputs, outputs, name=name, task="detection")
    if weights is not None:
        from kvision import weights as weights_lib

        weights_lib.load_file(model, features.check_weights(weights))
    return model


def _head(x, prefix, hidden, outputs, activation, dropout):
    """Dense layers ``hidden`` (relu, dropout after each) -> Dense -> activation."""
    for i, units in enumerate(hidden, start=1):
        x = keras.layers.Dense(_check_int("units", units), activation="relu",
                               name=f"{prefix}{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{prefix}{i}_dropout")(x)
    x = keras.layers.Dense(outputs, name=f"{prefix}{len(hidden) + 1}")(x)
    name = "classes" if activation == "softmax" else "boxes"
    return keras.layers.Activation(activation, name=name, dtype="float32")(x)


# --- Dense -> Conv2D ------------------------------------------------------------

def _dense_as_conv(dense, window):
    """A Conv2D computing ``dense`` at every ``window`` of a feature map."""
    kernel, *bias = dense.get_weights()
    channels = kernel.shape[0] // (window[0] * window[1])
    conv = keras.layers.Conv2D(dense.units, window, activation=dense.activation,
                               use_bias=dense.use_bias, name=f"{dense.name}_conv",
                               dtype=dense.dtype_policy)
    conv.build((None, None, None, channels))
    # Flatten is row-major over (H, W, C): the Dense kernel's rows in that order.
    conv.set_weights([kernel.reshape(*window, channels, dense.units), *bias])
    return conv


def _sliding_pool(layer, window):
    """Global pooling -> the same pooling over ``window`` with stride 1."""
    kind = (keras.layers.AveragePooling2D
            if isinstance(layer, keras.layers.GlobalAveragePooling2D)
            else keras.layers.MaxPooling2D)
    if getattr(layer, "keepdims", False):
        raise ValueError(f"Global pooling {layer.name!r} with keepdims=True is not "
                         f"supported by fully_convolutional.")
    return kind(window, strides=1, name=f"{layer.name}_sliding")


_GLOBAL_POOLS = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
# Layers after the flatten that act on the last axis alone: the same on maps.
_HEAD_LAYERS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.Softmax,
                keras.layers.Concatenate, keras.layers.Add,
                keras.layers.BatchNormalization)


def fully_convolutional(model, name=None) -> keras.Model:
    """The fully convolutional twin of a window classifier, weights copied.

    ``model`` is a functional keras.Model on fixed ``(S, S, C)`` windows whose top
    flattens (or globally pools) a feature map and then applies Dense layers (any
    kvision/keras.applications classifier with a Flatten top: LeNet-5, AlexNet,
    VGG16; OverFeat; a localizer). The twin takes ``(B, H, W, C)`` images of any
    size >= S and gives each output as a map ``(B, h, w, units)``; layers before the
    Flatten are shared with ``model`` (same weights), Dropout is dropped (identity
    at inference).
    """
    fn = features.functional(model)
    if len(fn.inputs) != 1 or len(fn.inputs[0].shape) != 4:
        raise ValueError(f"fully_convolutional takes a model with one image input, "
                         f"got {model.name!r} with inputs "
                         f"{[tuple(t.shape) for t in fn.inputs]}.")
    inputs = keras.Input((None, None, fn.inputs[0].shape[-1]), name="images")
    values = {id(fn.inputs[0]): inputs}
    window = None  # the feature map size the Dense layers after the flatten saw
    flat = set()   # tensors straight from the Flatten (Dropout passed)
    for node in features.ordered_nodes(fn):
        layer = node.operation
        source = node.input_tensors[0] if node.input_tensors else None
        if isinstance(layer, (keras.layers.Flatten,) + _GLOBAL_POOLS):
            if len(source.shape) != 4:
                raise ValueError(f"{layer.name!r} flattens a {len(source.shape)}-D "
                                 f"tensor; expected a feature map (B, H, W, C).")
            window = tuple(int(d) for d in source.shape[1:3])
            out = values[id(source)]
            if isinstance(layer, _GLOBAL_POOLS):
                out = _sliding_pool(layer, window)(out)
            else:
                flat.add(id(node.outputs[0]))
        elif isinstance(layer, keras.layers.Dense) and window is not None:
            if len(source.shape) != 2:
                raise ValueError(f"Dense layer {layer.name!r} after the flatten sees "
                                 f"a {len(source.shape)}-D input; only (B, units) heads "
                                 f"convert to convolutions.")
            kernel = window if id(source) in flat else (1, 1)
            out = _dense_as_conv(layer, kernel)(values[id(source)])
        elif isinstance(layer, keras.layers.Dropout):
            out = values[id(source)]  # identity at inference
            if id(source) in flat:
                flat.add(id(node.outputs[0]))
        elif window is not None and not isinstance(layer, _HEAD_LAYERS):
            raise ValueError(f"fully_convolutional cannot convert {type(layer).__name__} "
                             f"{layer.name!r} after the flatten (only Dense, Dropout, "
                             f"activations, Add, Concatenate and BatchNormalization).")
        else:
            out = _apply(node, values)
        for tensor, value in zip(node.outputs, keras.tree.flatten(out)):
            values[id(tensor)] = value
    if window is None:
        raise ValueError(f"{model.name!r} has no Flatten or global pooling before its "
                         f"Dense layers: it is already fully convolutional.")
    outputs = keras.tree.pack_sequence_as(
        fn._outputs_struct, [values[id(t)] for t in keras.tree.flatten(fn.outputs)])
    return keras.Model(inputs, outputs, name=name or f"{model.name}_fcn")


def _apply(node, values):
    """Call ``node``'s layer on the new tensors; a nested functional model (a
    backbone built for fixed windows) is replayed layer by layer, so that it takes
    any size."""
    feed = {id(t): values[id(t)] for t in node.input_tensors}
    args, kwargs = node.arguments.fill_in(feed)
    layer = node.operation
    if not features._is_nested(layer):
        return layer(*args, **kwargs)
    fn = features.functional(layer)
    inner = {id(t): v for t, v in zip(fn.inputs, keras.tree.flatten(args))}
    for inner_node in features.ordered_nodes(fn):
        out = _apply(inner_node, inner)
        for tensor, value in zip(inner_node.outputs, keras.tree.flatten(out)):
            inner[id(tensor)] = value
    return keras.tree.pack_sequence_as(
        fn._outputs_struct, [inner[id(t)] for t in keras.tree.flatten(fn.outputs)])


def window_stride(fcn, window) -> tuple:
    """``(y, x)`` pixels between neighbouring windows of a fully convolutional
    model: measured from its output size at two input sizes, symbolically."""
    channels = fcn.inputs[0].shape[-1]
    step = 1024  # divisible by every power-of-two stride up to 1024

    def cells(h, w):
        spec = fcn.compute_output_spec(keras.KerasTensor((1, h, w, channels)))
        return keras.tree.flatten(spec)[0].shape[1:3]

    base = cells(*window)
    grown = cells(window[0] + step, window[1] + step)
    strides = tuple(step / (g - b) for g, b in zip(grown, base))
    if any(s != int(s) for s in strides):
        raise ValueError(f"The network's window stride is not an integer: {strides}.")
    return tuple(int(s) for s in strides)


# --- detection ------------------------------------------------------------------

def inference_model(model, *, image_shape=None, scales=(1.0,), score_threshold=0.5,
                    iou_threshold=0.5, max_detections=100) -> keras.Model:
    """OverFeat's detector: ``model`` slid over an image at ``scales`` in one pass.

    Args:
        model: the window classifier (:func:`OverFeat`).
        image_shape: ``(H, W, C)`` of the images; default twice the window.
        scales: the image is resized by each (``Resizing``, bilinear) and the
            fully convolutional twin of ``model`` runs on it; at scale ``s`` a window
            covers ``S / s`` input pixels.
        score_threshold, iou_threshold, max_detections: of the per-class NMS that
            merges the windows of every scale.

    Returns:
        A keras.Model from ``(B, H, W, C)`` raw pixels to ``{"boxes" (B, K, 4) xyxy
        pixels, "scores" (B, K), "classes" (B, K) int32 (-1 padded),
        "num_detections" (B,)}``, K = ``max_detections``.
    """
    window = tuple(int(d) for d in model.input_shape[1:3])
    channels = int(model.input_shape[-1])
    if image_shape is None:
        image_shape = (2 * window[0], 2 * window[1], channels)
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or image_shape[-1] != channels:
        raise ValueError(f"image_shape must be (H, W, {channels}), got {image_shape!r}.")
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive factors, got {scales!r}.")
    fcn = fully_convolutional(model)
    stride = window_stride(fcn, window)
    inputs = keras.Input(image_shape, name="images")
    candidates = []
    for s in scales:
        size = (round(image_shape[0] * s), round(image_shape[1] * s))
        if min(size[0] - window[0], size[1] - window[1]) < 0:
            raise ValueError(f"At scale {s} the {image_shape[:2]} image is "
                             f"{size}, smaller than the {window} window.")
        x = inputs if size == image_shape[:2] else keras.layers.Resizing(
            *size, interpolation="bilinear", name=f"resize_{_label(s)}")(inputs)
        maps = fcn(x)
        candidates.append(WindowDecode(
            window, stride, (size[0] / image_shape[0], size[1] / image_shape[1]),
            name=f"windows_{_label(s)}")([maps["classes"], maps["boxes"]]))
    boxes, scores, classes = (
        parts[0] if len(parts) == 1
        else keras.layers.Concatenate(axis=1, name=f"all_{label}")(list(parts))
        for parts, label in zip(zip(*candidates), ("boxes", "scores", "classes")))
    detections = _nms_layer(score_threshold, iou_threshold, max_detections)(
        boxes, scores, classes)
    return TaskModel(inputs, detections, name=f"{model.name}_detector", task="detection")


def _label(scale):
    return f"{scale:g}".replace(".", "_")


# --- training windows -----------------------------------------------------------

def window_samples(images, boxes, classes, window, *, num_classes, positives=2,
                   negatives=2, fill=(0.5, 0.9), seed=0):
    """Training windows cut from scenes, with their targets.

    Each object gives ``positives`` windows: a square region in which the object's
    longer side fills a random fraction ``fill`` of the window, at a random position
    that keeps the object inside, resized to ``window`` (``tf.image.crop_and_resize``,
    bilinear). Each image gives ``negatives`` background windows: regions of the same
    sizes that hold no object's center and overlap every object by under 30% of its
    area.

    Boxes are checked first (:func:`kvision.ops.boxes.sanitize`): clipped to the image,
    zero-area, inverted or outside ones dropped with one counted
    :class:`~kvision.ops.boxes.BoxWarning`, class ids outside ``[0, num_classes)`` a
    ValueError. An image with no objects gives background windows only.

    Returns ``(windows (n, S, S, C) float32, {"classes": (n,) int32, "boxes": (n, 4)
    float32})``: the object's box as normalized center ``(x, y, w, h)`` in the window,
    background windows class ``num_classes`` and box zeros (no box loss).
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    images = np.asarray(images, "float32")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")
    if not len(images) == len(boxes) == len(classes):
        raise ValueError(f"{len(images)} images but {len(boxes)} box lists and "
                         f"{len(classes)} class lists; give one of each per image.")
    height, width = images.shape[1:3]
    boxes, classes = box_ops.sanitize_images(boxes, classes, (height, width),
                                             num_classes=num_classes,
                                             caller="window_samples")
    sides = np.concatenate([np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
                            for b in boxes] + [np.zeros(0)])
    regions, index, labels, targets = [], [], [], []
    for i, (image_boxes, image_classes) in enumerate(zip(boxes, classes)):
        image_boxes = image_boxes.astype("float64")
        for box, label in zip(image_boxes, image_classes):
            for _ in range(positives):
                side = max(box[2] - box[0], box[3] - box[1]) / rng.uniform(*fill)
                x0 = rng.uniform(box[2] - side, box[0])
                y0 = rng.uniform(box[3] - side, box[1])
                regions.append((y0, x0, y0 + side, x0 + side))
                index.append(i)
                labels.append(int(label))
                targets.append(((box[0] + box[2]) / 2 - x0, (box[1] + box[3]) / 2 - y0,
                                box[2] - box[0], box[3] - box[1]) / np.float64(side))
        for _ in range(negatives):
            region = _background_region(image_boxes, (height, width), fill, rng, sides)
            if region is not None:
                regions.append(region)
                index.append(i)
                labels.append(int(num_classes))
                targets.append((0.0, 0.0, 0.0, 0.0))
    if not regions:
        raise ValueError("window_samples found no window to cut: no objects and no "
                         "background region (give positives or negatives > 0).")
    scale = np.array([height, width, height, width], "float32")
    windows = tf.image.crop_and_resize(images, np.asarray(regions, "float32") / scale,
                                       np.asarray(index, "int32"), tuple(window[:2]))
    return np.asarray(windows), {"classes": np.asarray(labels, "int32"),
                                 "boxes": np.asarray(targets, "float32")}


def _background_region(boxes, size, fill, rng, fallback=(), tries=20):
    """A square region with no object's center and little of any object inside.

    Its side is an object's side over a ``fill`` fraction: one of this image's objects,
    else one of ``fallback`` (all images' object sides), else half the image."""
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    if not len(sides):
        sides = np.asarray(fallback, "float64") if len(fallback) else np.array(
            [min(size) / 2 * max(fill)])
    for _ in range(tries):
        side = min(rng.choice(sides) / rng.uniform(*fill), min(size))
        y0, x0 = rng.uniform(0, size[0] - side), rng.uniform(0, size[1] - side)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx > x0) & (cx < x0 + side) & (cy > y0) & (cy < y0 + side)
        overlap = (np.clip(np.minimum(boxes[:, 2], x0 + side) - np.maximum(boxes[:, 0], x0),
                           0, None)
                   * np.clip(np.minimum(boxes[:, 3], y0 + side) - np.maximum(boxes[:, 1], y0),
                             0, None))
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        if not inside.any() and np.all(overlap < 0.3 * areas):
            return (y0, x0, y0 + side, x0 + side)
    return None


def losses(box_loss="l2"):
    """The loss dict of OverFeat's window classifier: class cross-entropy (with the
    background class) and the box loss on object windows only."""
    if isinstance(box_loss, str):
        box_loss = BoxRegressionLoss(box_loss)
    return {"classes": keras.losses.SparseCategoricalCrossentropy(), "boxes": box_loss}


def encode_targets(boxes, classes, window_box, *, num_classes):
    """Ground truth -> one window's ``y_true``: the object whose center is in
    ``window_box`` (xyxy pixels; the largest if several) as class and normalized box
    in the window, else background (``num_classes``, zero box)."""
    boxes = np.reshape(np.asarray(boxes, "float64"), (-1, 4))
    classes = np.reshape(np.asarray(classes), (-1,))
    x0, y0, x1, y1 = (float(v) for v in window_box)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    if not inside.any():
        return {"classes": np.int32(num_classes), "boxes": np.zeros(4, "float32")}
    areas = np.where(inside, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), -1)
    best = int(np.argmax(areas))
    w, h = x1 - x0, y1 - y0
    box = boxes[best]
    return {"classes": np.int32(classes[best]),
            "boxes": np.array([(cx[best] - x0) / w, (cy[best] - y0) / h,
                               (box[2] - box[0]) / w, (box[3] - box[1]) / h], "float32")}
