"""What every segmentation builder shares: the classes check, atrous ("dilated")
backbones, the pixel-wise classifier and the weights. The input and the backbone are
every task's (:func:`kvision.models._builder.task_input`,
:func:`kvision.models.backbone.build_backbone`).

A segmentation network maps raw pixels ``(N, H, W, C)`` in ``[0, 255]`` to per-pixel
probabilities ``(N, H, W, classes)``: softmax over the classes, or one sigmoid channel
when ``classes=1`` (binary segmentation).
"""

from __future__ import annotations

import keras

from kvision import features
from kvision.layers.upsampling import ResizeLike
from kvision.tasks.model import TaskModel

_STRIDED = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "MaxPooling2D",
            "AveragePooling2D")
_DILATABLE = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D")


def check_classes(classes, classifier_activation):
    """``classifier_activation`` for ``classes`` (sigmoid for one class)."""
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"`classes` must be an integer >= 1, got {classes!r}.")
    if classes == 1 and classifier_activation == "softmax":
        return "sigmoid"  # a softmax over one channel is constantly 1
    return classifier_activation


def dilate(model, output_stride):
    """A copy of ``model`` (same weights) whose features stop shrinking at
    ``output_stride``: every stride past it becomes 1 and later convolutions get
    the matching atrous rate (DeepLab's "atrous" backbone).

    A layer whose input has stride ``s >= output_stride`` loses its stride and, if it
    is a convolution with a kernel larger than 1, gets ``dilation_rate = s /
    output_stride`` and "same" padding; explicit zero-padding there is removed.
    """
    if output_stride not in (4, 8, 16, 32):
        raise ValueError(f"output_stride must be 4, 8, 16 or 32, got {output_stride!r}.")
    strides = features.layer_strides(model)
    config = model.get_config()
    unstrided = set()
    for layer in config["layers"]:
        cfg, cls = layer["config"], layer["class_name"]
        out = strides.get(cfg["name"])
        if out is None:
            continue
        factor = 1
        if cls in _STRIDED:
            step = cfg.get("strides") or cfg.get("pool_size")
            factor = step[0] if isinstance(step, (list, tuple)) else int(step)
        stride_in = out // factor
        if factor > 1 and stride_in >= output_stride:
            cfg["strides"] = (1, 1)
            cfg["padding"] = "same"
            unstrided.add(cfg["name"])
        if (cls in _DILATABLE and max(cfg["kernel_size"]) > 1
                and stride_in >= output_stride and (factor > 1 or stride_in > output_stride)):
            rate = stride_in // output_stride
            cfg["dilation_rate"] = (rate, rate)
            cfg["padding"] = "same"
    # Explicit padding before a convolution that lost its stride ("valid" + pad, as
    # MobileNetV2 does) would now grow the map: "same" padding does its work.
    feeding = {name for layer in config["layers"] if layer["config"]["name"] in unstrided
               for name in _inbound_names(layer)}
    for layer in config["layers"]:
        if layer["class_name"] == "ZeroPadding2D" and layer["config"]["name"] in feeding:
            layer["config"]["padding"] = ((0, 0), (0, 0))
    changed = bool(unstrided)
    if not changed:
        return model
    dilated = keras.Model.from_config(config)
    dilated.set_weights(model.get_weights())
    return dilated


def _inbound_names(layer) -> set:
    """Names of the layers whose outputs feed ``layer`` (from its config)."""
    found = set()

    def walk(value):
        if isinstance(value, dict):
            history = value.get("config", {}).get("keras_history") \
                if value.get("class_name") == "__keras_tensor__" else None
            if history:
                found.add(history[0])
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(layer.get("inbound_nodes", []))
    return found


def classifier(x, classes, classifier_activation, reference=None, name="predictions"):
    """1x1 convolution to ``classes`` logits, resized to ``reference``'s size (bilinear)
    if given, then the per-pixel activation (layer ``name``)."""
    x = keras.layers.Conv2D(classes, 1, name="logits")(x)
    if reference is not None:
        x = ResizeLike(name="upsample_logits")([x, reference])
    return keras.layers.Activation(classifier_activation, dtype="float32", name=name)(x)


def finish(inputs, outputs, name, weights):
    """The model, with ``weights`` (None or a ``.weights.h5`` file) loaded."""
    model = TaskModel(inputs, outputs, name=name, task="segmentation")
    if weights is not None:
        weights = features.check_weights(weights)
        if weights == "imagenet":
            raise ValueError(f"{name} has no ImageNet weights of its own; pass "
                             f"backbone_weights='imagenet' for its backbone, or a "
                             f"weights file.")
        model.load_weights(weights)
    return model
