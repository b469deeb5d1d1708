"""Instance segmentation with two networks: one segments classes, one separates objects.

The simplest instance method (DCAN, Chen et al., CVPR 2016, fuses an object map and a
contour map the same way; U-Net, 2015, weights the "separation border" of touching
cells): a *semantic* network labels every pixel with its class, a second *separation*
network marks the pixels where two objects touch. Subtracting the second map from the
first cuts objects of one class that stick together apart; the connected components
of each class, grown back over the cut pixels, are the instances, each with its class
and a score (the mean class probability over its pixels).

- :func:`TwoNetworkInstance` (registered ``two_network_instance``): the two networks
  side by side on one input, outputs ``{"semantic": (B, H, W, C) softmax,
  "separation": (B, H, W, 1) sigmoid}``; trains with ``model.fit`` and :func:`losses`.
- :func:`training_targets`: the semantic label maps and the separation maps computed
  from instance masks (:func:`kvision.ops.masks.separation_map`).
- :class:`InstanceLabeling` (a registered layer): the combination, in the graph.
- :func:`inference_model`: raw pixels -> ``{"instance_map", "boxes", "scores",
  "classes", "num_detections"}``; :func:`to_instances` turns that into per-image
  masks for ``kvision.metrics.detection.evaluate(..., iou_type="segm")``.
"""

from __future__ import annotations


import keras
import numpy as np
from keras import ops

from kvision import registry
from kvision.ops import masks as mask_ops

OUTPUTS = ("instance_map", "boxes", "scores", "classes", "num_detections")


@keras.saving.register_keras_serializable(package="kvision")
class InstanceLabeling(keras.layers.Layer):
    """Semantic probabilities (+ a separation map) -> instances, with graph ops only.

    Inputs: ``probabilities`` (B, H, W, C) softmax of the semantic network (class
    ``background`` is no object) and ``separation`` (B, H, W, 1) in [0, 1], or None
    (plain connected components of the class map). Pixels with separation
    ``>= separation_threshold`` are cut; each class's components are grown back over
    ``grow`` rings into the cut pixels of that class. Components smaller than
    ``min_area`` pixels or scoring below ``score_threshold`` are dropped; the best
    ``max_detections`` by score are kept.

    Outputs (a dict): ``instance_map`` (B, H, W) int32, 0 = no instance, ``k + 1`` =
    the k-th instance; ``boxes`` (B, K, 4) float32 ``xyxy`` pixels (right/bottom
    exclusive, COCO's convention); ``scores`` (B, K) mean class probability;
    ``classes`` (B, K) int32 object classes (the semantic classes without the
    background, numbered from 0), -1 padded; ``num_detections`` (B,) int32.
    Instances are sorted by decreasing score.
    """

    def __init__(self, separation_threshold=0.5, score_threshold=0.0, min_area=4, grow=2,
                 max_detections=32, connectivity=8, background=0, **kwargs):
        super().__init__(**kwargs)
        mask_ops._check_connectivity(connectivity)
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections!r}.")
        self.separation_threshold = float(separation_threshold)
        self.score_threshold = float(score_threshold)
        self.min_area = int(min_area)
        self.grow = int(grow)
        self.max_detections = int(max_detections)
        self.connectivity = int(connectivity)
        self.background = None if background is None else int(background)

    def call(self, probabilities, separation=None):
        if len(probabilities.shape) != 4:
            raise ValueError(f"InstanceLabeling takes probabilities (B, H, W, classes), "
                             f"got shape {tuple(probabilities.shape)}.")
        if separation is not None and (len(separation.shape) != 4
                                       or separation.shape[-1] != 1):
            raise ValueError(f"The separation map must be (B, H, W, 1) beside "
                             f"probabilities {tuple(probabilities.shape)}, got "
                             f"{tuple(separation.shape)}.")
        num_classes = probabilities.shape[-1]
        confidence = ops.max(probabilities, axis=-1)
        # argmax as the first class reaching the max: keras.ops.argmax on floats
        # tests the sign bit (tf.BitwiseAnd), which TFLite has no builtin for.
        classes = ops.arange(num_classes, dtype="int32")
        class_map = ops.min(ops.where(probabilities >= confidence[..., None], classes,
                                      num_classes), axis=-1)
        cut = None
        if separation is not None:
            cut = separation[..., 0] >= self.separation_threshold
        labels = mask_ops.class_components(class_map, num_classes, cut=cut, grow=self.grow,
                                           connectivity=self.connectivity,
                                           background=self.background)
        shape = ops.shape(labels)
        batch, h, w = shape[0], shape[1], shape[2]
        n = h * w
        flat = ops.reshape(labels, (batch, n))
        # Per-component sums over the whole batch: segment ids offset per image.
        offset = ops.arange(batch, dtype="int32")[:, None] * (n + 1)
        segments = ops.reshape(flat + offset, (-1,))
        count = batch * (n + 1)
        area = ops.reshape(ops.segment_sum(ops.ones_like(segments, "float32"), segments,
                                           count), (batch, n + 1))
        total = ops.reshape(ops.segment_sum(ops.reshape(confidence, (-1,)), segments,
                                            count), (batch, n + 1))
        score = total / ops.maximum(area, 1.0)
        is_object = ops.arange(n + 1) > 0
        valid = ops.logical_and(ops.logical_and(area >= self.min_area, is_object),
                                score >= self.score_threshold)
        k = self.max_detections
        best, ids = ops.top_k(ops.where(valid, score, -1.0), k)
        keep = best >= 0.0
        # New id (rank + 1) of every kept component, 0 for the others.
        rank = ops.where(keep, ops.arange(1, k + 1, dtype="int32")[None], 0)
        table = ops.segment_max(ops.reshape(rank, (-1,)),
                                ops.reshape(ids + offset, (-1,)), count)
        table = ops.maximum(ops.reshape(table, (batch, n + 1)), 0)
        new = ops.take_along_axis(table, flat, axis=1)
        return {"instance_map": ops.reshape(new, (batch, h, w)),
                "boxes": self._boxes(new, batch, h, w),
                "scores": ops.where(keep, best, 0.0),
                "classes": self._classes(new, class_map, keep, batch),
                "num_detections": ops.sum(ops.cast(keep, "int32"), axis=1)}

    def _per_instance_max(self, new, values, batch):
        k = self.max_detections + 1
        segments = ops.reshape(new + ops.arange(batch, dtype="int32")[:, None] * k, (-1,))
        out = ops.segment_max(ops.reshape(values, (-1,)), segments, batch * k)
        return ops.reshape(out, (batch, k))[:, 1:]

    def _classes(self, new, class_map, keep, batch):
        semantic = ops.reshape(class_map, ops.shape(new))
        cls = self._per_instance_max(new, semantic, batch)
        if self.background is not None:
            cls = cls - ops.cast(cls > self.background, "int32")
        return ops.where(keep, cls, -1)

    def _boxes(self, new, batch, h, w):
        ys = ops.repeat(ops.arange(h, dtype="float32"), w)
        xs = ops.tile(ops.arange(w, dtype="float32"), [h])
        ys = ops.broadcast_to(ys[None], ops.shape(new))
        xs = ops.broadcast_to(xs[None], ops.shape(new))
        x1 = -self._per_instance_max(new, -xs, batch)
        y1 = -self._per_instance_max(new, -ys, batch)
        x2 = self._per_instance_max(new, xs, batch) + 1.0
        y2 = self._per_instance_max(new, ys, batch) + 1.0
        boxes = ops.stack([x1, y1, x2, y2], axis=-1)
        # Empty segments come back as the lowest float: no box.
        return ops.where(ops.abs(boxes) < 1e30, boxes, 0.0)

    def compute_output_spec(self, probabilities, separation=None):
        b, h, w = probabilities.shape[:3]
        k = self.max_detections
        spec = keras.KerasTensor
        return {"instance_map": spec((b, h, w), "int32"), "boxes": spec((b, k, 4), "float32"),
                "scores": spec((b, k), "float32"), "classes": spec((b, k), "int32"),
                "num_detections": spec((b,), "int32")}

    def get_config(self):
        return {**super().get_config(), "separation_threshold": self.separation_threshold,
                "score_threshold": self.score_threshold, "min_area": self.min_area,
                "grow": self.grow, "max_detections": self.max_detections,
                "connectivity": self.connectivity, "background": self.background}


@keras.saving.register_keras_serializable(package="kvision")
class SeparationLoss(keras.losses.Loss):
    """Class-balanced binary cross-entropy of the separation map (HED, Xie & Tu, 2015).

    Touching pixels are about one in two hundred: an unweighted cross-entropy settles
    on "never". By default (``positive_weight=None``) each image's positive and
    negative pixels weigh half of its loss each (HED's balancing of sparse edges);
    a number weights the positives by that fixed factor instead.
    """

    def __init__(self, positive_weight=None, name="separation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weight = None if positive_weight is None else float(positive_weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        p = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        positive, negative = -y_true * ops.log(p), -(1.0 - y_true) * ops.log(1.0 - p)
        axes = tuple(range(1, len(y_pred.shape)))
        if self.positive_weight is not None:
            return ops.mean(self.positive_weight * positive + negative, axis=axes)
        count = ops.sum(y_true, axis=axes)
        total = ops.cast(ops.prod(ops.shape(y_true)[1:]), y_pred.dtype)
        return 0.5 * (ops.sum(positive, axis=axes) / ops.maximum(count, 1.0)
                      + ops.sum(negative, axis=axes) / ops.maximum(total - count, 1.0))

    def get_config(self):
        return {**super().get_config(), "positive_weight": self.positive_weight}


def losses(positive_weight=None):
    """The two losses for ``model.compile(loss=...)``: sparse categorical cross-entropy
    for ``"semantic"`` and :class:`SeparationLoss` for ``"separation"``."""
    return {"semantic": keras.losses.SparseCategoricalCrossentropy(),
            "separation": SeparationLoss(positive_weight)}


def training_targets(semantic, instance_masks, *, width=1):
    """The ``y`` of :func:`TwoNetworkInstance`: ``{"semantic": (N, H, W) int32,
    "separation": (N, H, W, 1) float32}`` from label maps ``(N, H, W)`` and, per image,
    instance masks ``(n_i, H, W)`` (as :class:`kvision.data.synthetic.Scenes` holds
    them). Raises ``ValueError`` naming the sample whose masks do not fit its map."""
    semantic = np.asarray(semantic)
    if semantic.ndim == 4 and semantic.shape[-1] == 1:
        semantic = semantic[..., 0]
    if semantic.ndim != 3:
        raise ValueError(f"semantic must be label maps (N, H, W), got shape {semantic.shape}.")
    if len(instance_masks) != len(semantic):
        raise ValueError(f"{len(instance_masks)} sets of instance masks for "
                         f"{len(semantic)} label maps.")
    separation = np.zeros(semantic.shape + (1,), "float32")
    for i, masks in enumerate(instance_masks):
        masks = np.asarray(masks, bool)
        if masks.ndim != 3 or masks.shape[1:] != semantic.shape[1:]:
            raise ValueError(f"Sample {i}: instance masks of shape {masks.shape} for a "
                             f"label map of {semantic.shape[1:]}; expected (n, "
                             f"{semantic.shape[1]}, {semantic.shape[2]}).")
        separation[i, ..., 0] = np.asarray(mask_ops.separation_map(masks, width=width))
    return {"semantic": semantic.astype("int32"), "separation": separation}


def _network(spec, classes, input_shape, kwargs, name):
    if isinstance(spec, keras.Model):
        channels = spec.output.shape[-1] if not isinstance(spec.output, (list, dict)) else None
        if channels != classes:
            raise ValueError(f"The {name} network must output (B, H, W, {classes}); "
                             f"{spec.name!r} outputs {getattr(spec.output, 'shape', None)}.")
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"The {name} network must be a registered segmentation model "
                         f"name or a keras.Model, got {type(spec).__name__}.")
    info = registry.get_info(spec)
    if info.task != "segmentation":
        raise ValueError(f"{spec!r} is a {info.task} model; the {name} network must be a "
                         f"segmentation model ({registry.list_models(task='segmentation')}).")
    return registry.create(spec, classes=classes, input_shape=input_shape, name=name,
                           **kwargs)


@registry.register(
    "two_network_instance", task="instance_segmentation", family="two_network", year=2016,
    paper="DCAN: Deep Contour-Aware Networks for Accurate Gland Segmentation",
    key_idea="a class map minus a map of where objects touch; components are instances",
    default_size=96, min_size=32, num_params=62_064_140,
    params_source="built here: two U-Nets (filters 64, 'same' padding) with 11 and 1 "
                  "classes at 96x96x3, count_params(); no reference for the pair")
def TwoNetworkInstance(classes=11, input_shape=None, network="unet", separation_network=None,
                       weights=None, name="two_network_instance", **network_kwargs):
    """Two networks on one input: semantic classes and the separation map.

    ``classes``: semantic classes, background (0) included (11 for digit scenes).
    ``network`` / ``separation_network`` (default: the same): registered segmentation
    model names, built with ``network_kwargs`` (``filters=``…), or ``keras.Model``\ s
    from pixels to ``(B, H, W, classes)`` and ``(B, H, W, 1)``. ``weights``: None or a
    ``.weights.h5`` file of this model.

    Input ``(B, H, W, 3)`` raw pixels in [0, 255] (default 96x96x3). Outputs
    ``{"semantic": (B, H, W, classes) softmax, "separation": (B, H, W, 1) sigmoid}``;
    train with ``compile(loss=losses())`` on :func:`training_targets`, run with
    :func:`inference_model`.
    """
    if input_shape is None:
        input_shape = (96, 96, 3)
    semantic = _network(network, classes, input_shape, network_kwargs, "semantic")
    separation = _network(separation_network or network, 1, input_shape, network_kwargs,
                          "separation")
    image = keras.Input(shape=tuple(input_shape), name="image")
    model = keras.Model(image, {"semantic": semantic(image),
                                "separation": separation(image)}, name=name)
    if weights is not None:
        from kvision import weights as weights_lib
        weights_lib.load_file(model, weights)
    return model


def inference_model(model, *, separation_threshold=0.5, score_threshold=0.5, min_area=4,
                    grow=2, max_detections=32, use_separation=True):
    """Raw pixels -> instances, decoding in the graph (:class:`InstanceLabeling`).

    ``model``: a :func:`TwoNetworkInstance` model, or a plain segmenter (then the
    instances are its class map's connected components). ``use_separation=False``
    ignores the separation map (the one-network baseline). Outputs the dict of
    :class:`InstanceLabeling`: ``instance_map``, ``boxes``, ``scores``, ``classes``,
    ``num_detections``.
    """
    outputs = model.output
    if isinstance(outputs, dict):
        if "semantic" not in outputs:
            raise ValueError(f"{model.name!r} outputs {sorted(outputs)}; expected "
                             f"'semantic' (and 'separation').")
        probabilities, separation = outputs["semantic"], outputs.get("separation")
    else:
        probabilities, separation = outputs, None
    if not use_separation:
        separation = None
    labeling = InstanceLabeling(separation_threshold=separation_threshold,
                                score_threshold=score_threshold, min_area=min_area,
                                grow=grow, max_detections=max_detections, name="instances")
    return keras.Model(model.input, labeling(probabilities, separation),
                       name=f"{model.name}_inference")


def to_instances(outputs):
    """The dict of :func:`inference_model` (numpy or tensors) -> one dict per image:
    ``{"masks": (n, H, W) bool, "boxes": (n, 4), "scores": (n,), "classes": (n,)}``,
    what ``kvision.metrics.detection.evaluate(..., iou_type="segm")`` and
    :func:`kvision.visualization.masks.draw_instances` take."""
    out = {k: np.asarray(keras.ops.convert_to_numpy(outputs[k])) for k in OUTPUTS}
    images = []
    for i, n in enumerate(out["num_detections"].astype(int)):
        images.append({"masks": mask_ops.instance_masks(out["instance_map"][i], n),
                       "boxes": out["boxes"][i, :n], "scores": out["scores"][i, :n],
                       "classes": out["classes"][i, :n]})
    return images


def predict_instances(model, images, *, batch_size=16, **kwargs):
    """``to_instances`` of ``inference_model(model, **kwargs)`` on ``images``
    (N, H, W, C), batch by batch (``model.predict``)."""
    runner = model if _is_inference(model) else inference_model(model, **kwargs)
    images = np.asarray(images, "float32")
    expected = tuple(runner.input.shape[1:])
    if images.ndim != 4 or any(e is not None and e != g
                               for e, g in zip(expected, images.shape[1:])):
        raise ValueError(f"images must be (N, {', '.join(map(str, expected))}) for "
                         f"{model.name!r}, got {images.shape}.")
    return to_instances(runner.predict(images, batch_size=batch_size, verbose=0))


def _is_inference(model):
    return isinstance(model.output, dict) and set(OUTPUTS) <= set(model.output)
