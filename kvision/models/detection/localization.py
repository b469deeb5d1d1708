"""Classification + localization: one backbone, a class head and a box head.

"Localization as regression" (the slides of Li, Karpathy and Johnson after
Sermanet et al., 2013): a backbone's feature map is flattened (localization needs
*where*, which global pooling throws away) and feeds two branches of fully connected
layers, one giving the class (softmax), one the box, trained as regression (L2, or
smooth-L1 / GIoU). The K-object variant (``objects=K``) multiplies both outputs by K.

Conventions:

- Boxes are normalized ``(x_center, y_center, width, height)`` in ``[0, 1]`` of the
  image: ``kvision.ops.boxes``' ``"yolo"`` format (what YOLO ``.txt`` labels hold). The
  box head ends in a sigmoid, so every prediction is a valid normalized box.
- One object: outputs ``{"classes": (B, classes) softmax, "boxes": (B, 4)}``.
- K objects: ``{"classes": (B, K, classes + 1), "boxes": (B, K, 4)}``; the extra last
  class means "no object in this slot". The loss is *slot-ordered*:
  :func:`encode_targets` sorts the ground truth left to right (by box center x, then
  y) and pads empty slots with the "no object" class and an all-zero box, which the
  box loss skips. A fixed spatial order is a rule a fully connected head can learn
  (slot k looks at the k-th object from the left); unlike a matching-based (Hungarian)
  loss it keeps one loss per output, so plain ``model.fit`` with a loss dict trains it,
  and the targets are computed once in the tf.data pipeline instead of in every step.

:func:`inference_model` gives the detector protocol's four outputs (``boxes`` xyxy
pixels, ``scores``, ``classes``, ``num_detections``); :func:`evaluate` measures
accuracy and IoU.
"""

from __future__ import annotations

import keras
import numpy as np

from kvision import features, transfer
from kvision.layers.overfeat import LocalizerDecode
from kvision.losses.detection import (  # noqa: F401  (their old home)
    BOX_LOSSES, BoxRegressionLoss)
from kvision.models.backbone import build_backbone
from kvision.ops import boxes as box_ops
from kvision.registry import register
from kvision.tasks.model import TaskModel

HIDDEN_UNITS = 256


# --- the backbone (shared with overfeat.py) ---------------------------------------

def backbone_map(backbone, input_shape, *, task, backbone_weights=None,
                 trainable_backbone=True, regime=None, preprocessing=None,
                 **backbone_kwargs):
    """``(images, feature map)``: the backbone's output, as every task builds it
    (:func:`kvision.models.backbone.build_backbone`), which must be a map.

    ``input_shape`` defaults to the backbone's own default size (the heads flatten
    the map, so it is fixed); ``regime`` is ``trainable_backbone`` given by name.
    """
    if regime is not None and trainable_backbone is not True:
        raise ValueError("Pass either regime= or trainable_backbone=, not both.")
    if input_shape is None and isinstance(backbone, str):
        from kvision import registry

        input_shape = (224, 224, 3)  # keras.applications' usual size
        if features.resolve_name(backbone) == "kvision":
            info = registry.get_info(backbone)
            input_shape = (info.default_size, info.default_size, info.input_channels)
    images, x = build_backbone(backbone, input_shape=input_shape,
                               weights=backbone_weights,
                               trainable=trainable_backbone if regime is None else regime,
                               preprocessing=preprocessing, task=task, **backbone_kwargs)
    if len(x.shape) != 4:
        raise ValueError(f"The backbone must end in a feature map (N, H, W, C); "
                         f"{getattr(backbone, 'name', backbone)!r} gives "
                         f"{tuple(x.shape)}.")
    return images, x


def _check_int(label, value, low=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{label}` must be an integer >= {low}, got {value!r}.")
    return int(value)


# --- the model -------------------------------------------------------------------

@register("localizer", task="localization", family="localizer", year=2014,
          paper="OverFeat: Integrated Recognition, Localization and Detection using "
                "Convolutional Networks (localization as regression)",
          key_idea="one backbone, a softmax class head and an (x, y, w, h) box "
                   "regression head",
          default_size=224, min_size=32, default_classes=1000,
          num_params=27_818_284, params_convention="keras",
          params_source="built here: VGG16 conv body (14,714,688) + two FC branches "
                        "of 256 on its flattened 7x7x512 map (6,422,784 + 257,000 "
                        "and 6,422,784 + 1,028)")
def Localizer(backbone="vgg16", classes=1000, objects=1, *, input_shape=None,
              weights=None, backbone_weights=None, trainable_backbone=True,
              regime=None, hidden_units=HIDDEN_UNITS, dropout=0.0, pooling=None,
              preprocessing=None, name="localizer", **backbone_kwargs):
    """Classification + localization (localization as regression).

    Args:
        backbone: zoo name, keras.applications name or functional keras.Model.
        classes: number of object classes.
        objects: K, the boxes and labels predicted per image (slot-ordered, see
            the module docstring).
        input_shape: ``(H, W, C)`` raw pixels in ``[0, 255]``; default the
            backbone's default size. Fixed: the heads flatten the feature map.
        weights: a ``.weights.h5`` file of this whole model, or None.
        backbone_weights, trainable_backbone, regime, preprocessing,
            **backbone_kwargs: the backbone as :func:`backbone_map` builds it.
        hidden_units: units of each branch's hidden Dense layer (0: none).
        dropout: dropout before each branch's output layer.
        pooling: None (flatten, keeps position), "avg" or "max".

    Returns:
        A ``keras.Model`` from ``(B, H, W, C)`` pixels to ``{"classes", "boxes"}``:
        ``(B, classes)`` and ``(B, 4)`` for one object, ``(B, K, classes + 1)`` and
        ``(B, K, 4)`` for K; boxes normalized center ``(x, y, w, h)``.
    """
    classes = _check_int("classes", classes)
    objects = _check_int("objects", objects)
    hidden_units = _check_int("hidden_units", hidden_units, low=0)
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'; got {pooling!r}.")
    inputs, x = backbone_map(backbone, input_shape, task="localizer",
                             backbone_weights=backbone_weights,
                             trainable_backbone=trainable_backbone, regime=regime,
                             preprocessing=preprocessing, **backbone_kwargs)
    if None in x.shape[1:] and pooling is None:
        raise ValueError("The localizer flattens the feature map, which needs a fixed "
                         "input size: pass input_shape=(H, W, C).")
    x = transfer._pool(x, pooling)
    slots = classes if objects == 1 else classes + 1
    outputs = {"classes": _branch(x, "class", objects * slots, hidden_units, dropout,
                                  (objects, slots), "softmax", objects),
               "boxes": _branch(x, "box", objects * 4, hidden_units, dropout,
                                (objects, 4), "sigmoid", objects)}
    model = TaskModel(inputs, outputs, name=name, task="localization")
    if weights is not None:
        from kvision import weights as weights_lib

        weights_lib.load_file(model, features.check_weights(weights))
    return model


def _branch(x, label, units, hidden_units, dropout, shape, activation, objects):
    """Dense(hidden, relu) -> dropout -> Dense(units) -> (reshape) -> activation."""
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name=f"{label}_fc")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{label}_dropout")(x)
    x = keras.layers.Dense(units, name=f"{label}_logits")(x)
    if objects > 1:
        x = keras.layers.Reshape(shape, name=f"{label}_slots")(x)
    name = "classes" if label == "class" else "boxes"
    return keras.layers.Activation(activation, name=name, dtype="float32")(x)


# --- targets and loss ------------------------------------------------------------

def encode_targets(boxes, classes, image_shape, *, objects=1, num_classes=None):
    """Ground truth of one image -> the localizer's ``y_true``.

    Args:
        boxes: ``(n, 4)`` xyxy pixels: numpy, or tensors in a tf.data map.
        classes: ``(n,)`` class ids.
        image_shape: ``(height, width)`` of the image in pixels.
        objects: K of the model. With K = 1 the largest box is the target.
        num_classes: the model's classes: ids must lie in ``[0, num_classes)``; with
            K > 1 (where it is required) also the "no object" id of empty slots.

    Boxes are clipped to the image; padding (label -1) and boxes of zero area after
    clipping are left out. Class ids out of range, or (K = 1) no box left, are a
    ValueError for numpy inputs and a failed assertion (stopping the tf.data
    pipeline with the same message) for tensors.

    Returns:
        ``{"classes": () or (K,) int32, "boxes": (4,) or (K, 4) float32}`` (numpy for
        numpy inputs, else tensors), boxes as normalized center ``(x, y, w, h)``,
        K > 1 sorted left to right (center x, then y) and padded with
        ``num_classes`` and zero boxes; objects beyond K are dropped (the rightmost).
    """
    objects = _check_int("objects", objects)
    if objects > 1 and num_classes is None:
        raise ValueError("encode_targets with objects > 1 needs num_classes (the id of "
                         "the 'no object' class of empty slots).")
    numpy = isinstance(boxes, (np.ndarray, list, tuple))
    xp = _array_ops(numpy=numpy)
    height, width = (float(s) for s in image_shape[:2])
    boxes = xp.reshape(xp.cast(boxes, "float32"), (-1, 4))
    classes = xp.reshape(xp.cast(classes, "int32"), (-1,))
    boxes = xp.clip(boxes, np.array([width, height, width, height], "float32"))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (classes != -1)
    boxes, classes = xp.mask(boxes, keep), xp.mask(classes, keep)
    classes = _checked_classes(classes, num_classes, objects == 1, numpy)
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    yolo = xp.stack([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height,
                     (x1 - x0) / width, (y1 - y0) / height])
    if objects == 1:
        largest = xp.argmax(yolo[:, 2] * yolo[:, 3])
        return {"classes": xp.take(classes, largest), "boxes": xp.take(yolo, largest)}
    # Left to right; y breaks ties (a rank that mixes both keeps the sort stable).
    order = xp.argsort(yolo[:, 0] * 4.0 + yolo[:, 1] * 1e-3)[:objects]
    pad = objects - xp.size(order)
    return {"classes": xp.concat([xp.take(classes, order),
                                  xp.full([pad], num_classes, "int32")], (objects,)),
            "boxes": xp.concat([xp.take(yolo, order), xp.full([pad, 4], 0.0, "float32")],
                               (objects, 4))}


def _checked_classes(classes, num_classes, need_one, numpy):
    """Class ids in ``[0, num_classes)`` (``>= 0`` without it) and, with
    ``need_one``, at least one: a ValueError for numpy, assertions for tensors."""
    expected = f"[0, {num_classes})" if num_classes is not None else ">= 0"
    range_message = (f"encode_targets: class ids must be in {expected} (the model's "
                     f"classes); the data has a class the model does not know")
    empty_message = ("encode_targets with objects=1 needs at least one box of positive "
                     "area in the image (after clipping), got none")
    if numpy:
        limit = num_classes if num_classes is not None else np.inf
        wrong = classes[(classes < 0) | (classes >= limit)]
        if wrong.size:
            raise ValueError(f"{range_message}: {sorted(set(wrong.tolist()))}.")
        if need_one and not classes.size:
            raise ValueError(f"{empty_message}.")
        return classes
    import tensorflow as tf

    checks = [tf.debugging.assert_non_negative(classes, message=range_message)]
    if num_classes is not None:
        checks.append(tf.debugging.assert_less(classes, tf.constant(num_classes, tf.int32),
                                               message=range_message))
    if need_one:
        checks.append(tf.debugging.assert_positive(tf.size(classes), message=empty_message))
    with tf.control_dependencies(checks):
        return tf.identity(classes)


def _array_ops(numpy):
    """The array functions :func:`encode_targets` needs: numpy (fast on arrays) or
    TensorFlow (graph-safe in a tf.data map)."""
    import types

    if numpy:
        return types.SimpleNamespace(
            cast=lambda x, dtype: np.asarray(x, dtype), reshape=np.reshape,
            stack=lambda xs: np.stack(xs, axis=-1), argmax=np.argmax,
            take=lambda x, i: np.take(x, i, axis=0),
            argsort=lambda x: np.argsort(x, kind="stable"), size=len,
            full=np.full, concat=lambda xs, shape: np.concatenate(xs).reshape(shape),
            clip=lambda x, high: np.clip(x, 0.0, high), mask=lambda x, m: x[m])
    import tensorflow as tf

    return types.SimpleNamespace(
        cast=tf.cast, reshape=tf.reshape, stack=lambda xs: tf.stack(xs, axis=-1),
        argmax=tf.argmax, take=tf.gather,
        argsort=lambda x: tf.argsort(x, stable=True), size=lambda x: tf.shape(x)[0],
        full=lambda shape, value, dtype: tf.fill(shape, tf.constant(value, dtype)),
        concat=lambda xs, shape: tf.ensure_shape(tf.concat(xs, 0), shape),
        clip=lambda x, high: tf.clip_by_value(x, 0.0, high), mask=tf.boolean_mask)


def encode_scenes(boxes, classes, image_shape, *, objects=1, num_classes=None):
    """:func:`encode_targets` of many images (lists of per-image ``(n_i, 4)`` xyxy
    boxes and ``(n_i,)`` classes, e.g. ``Scenes.boxes``/``Scenes.classes``) ->
    numpy ``{"classes": (N,) or (N, K), "boxes": (N, 4) or (N, K, 4)}``.

    The boxes go through :func:`kvision.ops.boxes.sanitize_images` first (clipped;
    degenerate ones dropped with a counted warning; class ids outside
    ``[0, num_classes)`` an error, so pass the model's ``num_classes`` with one object
    too); an image left with no object is an error."""
    boxes, classes = box_ops.sanitize_images(boxes, classes, image_shape[:2],
                                             num_classes=num_classes,
                                             caller="encode_scenes")
    targets = []
    for i, (image_boxes, image_classes) in enumerate(zip(boxes, classes)):
        if len(image_boxes) == 0:
            raise ValueError(f"Image {i} has no object; a localizer's targets need at "
                             f"least one per image.")
        targets.append(encode_targets(np.asarray(image_boxes), np.asarray(image_classes),
                                      image_shape, objects=objects,
                                      num_classes=num_classes))
    return {key: np.stack([t[key] for t in targets]) for key in ("classes", "boxes")}


def to_dataset(dataset, *, objects=1, num_classes=None, batch_size=32):
    """A dataset in Keras' bounding-box dict format -> ``(images, y_true)`` batches."""
    def encode(example):
        shape = example["images"].shape
        target = encode_targets(example["bounding_boxes"]["boxes"],
                                example["bounding_boxes"]["labels"], shape[:2],
                                objects=objects, num_classes=num_classes)
        return example["images"], target

    import tensorflow as tf

    return dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)


def losses(box_loss="l2", *, objects=1):
    """The loss dict of a localizer: class cross-entropy and the box loss."""
    if isinstance(box_loss, str):
        box_loss = BoxRegressionLoss(box_loss)
    return {"classes": keras.losses.SparseCategoricalCrossentropy(), "boxes": box_loss}


def compile_localizer(model, *, box_loss="l2", box_weight=None, learning_rate=1e-3,
                      **compile_kwargs):
    """``model.compile`` with Adam, :func:`losses` and the box loss weighted
    (default 5 for L2 / smooth-L1, whose values are small; 1 for GIoU)."""
    kind = box_loss if isinstance(box_loss, str) else getattr(box_loss, "kind", "l2")
    if box_weight is None:
        box_weight = 1.0 if kind == "giou" else 5.0
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=losses(box_loss),
                  loss_weights={"classes": 1.0, "boxes": float(box_weight)},
                  **compile_kwargs)
    return model


# --- inference and evaluation ----------------------------------------------------

def _nms_layer(score_threshold, iou_threshold, max_detections):
    from kvision.layers.detection import NonMaxSuppression

    return NonMaxSuppression(iou_threshold=iou_threshold, score_threshold=score_threshold,
                             max_detections=max_detections, name="nms")


def inference_model(model, *, score_threshold=0.5, iou_threshold=0.5, max_detections=100):
    """A localizer -> a detector: raw pixels in, the four detection outputs out.

    ``boxes`` ``(B, K', 4)`` float32 xyxy pixels, ``scores`` ``(B, K')``, ``classes``
    ``(B, K')`` int32 (-1 padded), ``num_detections`` ``(B,)`` int32, with K' =
    ``max_detections``: the K slots decoded in the graph
    (:class:`~kvision.layers.overfeat.LocalizerDecode`), empty ("no object") and
    low-score slots dropped and overlapping duplicates suppressed by
    :class:`~kvision.layers.NonMaxSuppression` (a TFLite builtin).
    """
    outputs = model.output
    if not (isinstance(outputs, dict) and set(outputs) == {"classes", "boxes"}):
        raise ValueError(f"Expected a localizer with outputs 'classes' and 'boxes', "
                         f"got {model.name!r} with outputs {list(model.output_names)}.")
    height, width = model.input_shape[1:3]
    inputs = keras.Input(model.input_shape[1:], name="images")
    raw = model(inputs)
    background = len(raw["boxes"].shape) == 3
    boxes, scores, classes = LocalizerDecode((height, width), background=background,
                                             name="decode")([raw["classes"], raw["boxes"]])
    detections = _nms_layer(score_threshold, iou_threshold, max_detections)(
        boxes, scores, classes)
    return TaskModel(inputs, detections, name=f"{model.name}_detector", task="localization")


def evaluate(model, images, targets, *, batch_size=32):
    """Accuracy and IoU of a localizer on images and :func:`encode_targets` targets.

    ``targets``: ``{"classes": (N,) or (N, K), "boxes": (N, 4) or (N, K, 4)}``.
    Returns ``{"accuracy", "mean_iou", "localization_accuracy"}``: the class right,
    the mean IoU of predicted and true boxes, and the share with the class right
    *and* IoU >= 0.5 (the ILSVRC localization criterion), all over real objects
    (K-object slots holding one).
    """
    predicted = model.predict(np.asarray(images, "float32"), batch_size=batch_size,
                              verbose=0)
    true_classes = np.asarray(targets["classes"])
    true_boxes = np.asarray(targets["boxes"], "float64")
    if len(true_classes) != len(images):
        raise ValueError(f"{len(images)} images but {len(true_classes)} targets.")
    labels = np.argmax(predicted["classes"], axis=-1)
    ious = np.asarray(box_ops.aligned_iou(predicted["boxes"], true_boxes, format="yolo"))
    real = true_boxes[..., 2] > 0
    right = labels == true_classes
    return {"accuracy": float(np.mean(right[real])),
            "mean_iou": float(np.mean(ious[real])),
            "localization_accuracy": float(np.mean((right & (ious >= 0.5))[real]))}
