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
- :class:`kvision.layers.InstanceLabeling` (a registered layer): the combination, in
  the graph; :class:`kvision.losses.segmentation.SeparationLoss` trains the separation
  network.
- :func:`inference_model`: raw pixels -> ``{"instance_map", "boxes", "scores",
  "classes", "num_detections"}``; :func:`to_instances` turns that into per-image
  masks for ``kvision.metrics.detection.evaluate(..., iou_type="segm")``.
"""

from __future__ import annotations


import keras
import numpy as np

from kvision import registry
from kvision.layers.labeling import InstanceLabeling
from kvision.losses.segmentation import SeparationLoss
from kvision.ops import masks as mask_ops
from kvision.tasks.model import TaskModel

OUTPUTS = ("instance_map", "boxes", "scores", "classes", "num_detections")


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
    # Every task's input name; the size is checked by the networks' own builders
    # (two keras.Models of the user's may take what they like).
    image = keras.Input(shape=tuple(input_shape), name="images")
    model = TaskModel(image, {"semantic": semantic(image), "separation": separation(image)},
                      name=name, task="instance_segmentation")
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
    return TaskModel(model.input, labeling(probabilities, separation),
                     name=f"{model.name}_inference", task="instance_segmentation")


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
