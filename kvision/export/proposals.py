"""Exporting a detector whose proposals come from selective search (Fast R-CNN and
R-CNN as ``kvision train`` saves them): the caller supplies the proposals.

Their saved detectors run OpenCV's selective search inside the graph
(:class:`kvision.layers.proposals.SelectiveSearchProposals`, a Python call on the
host), which neither TensorFlow Serving nor TFLite can run. :func:`proposal_model`
cuts the graph there: the same layers and weights, with the proposals a second input
``proposals (B, P, 4)`` float32 xyxy in the image's pixels (``P`` the search's
budget, the layer's ``max_proposals``; rows with no area are padding). The SavedModel
of that model (:func:`kvision.export.saved_model`) answers ``boxes``, ``scores``,
``classes`` and ``num_detections`` for ``images`` and ``proposals`` given together:
any count of proposals per image is taken (cut to the first ``P``, padded with zero
rows below it, :func:`fit_count`), computed by the client, e.g. with
:func:`kvision.data.proposals.selective_search` (what the Keras detector runs) or
OpenCV's ``cv2.ximgproc.segmentation`` directly. The export is checked detection by
detection against the Keras two-input model given the same proposals.
"""

from __future__ import annotations

import numpy as np

PROPOSALS = "proposals"
#: What a client is told (the export's table and README text).
CALLER_SUPPLIES = ("the SavedModel's serving_default takes images and proposals "
                   "(B, any count, 4) float32 xyxy image pixels, zero rows padding: the "
                   "caller runs selective search, e.g. kvision.data.proposals."
                   "selective_search or kvision.layers.proposals.SelectiveSearchProposals or "
                   "OpenCV's cv2.ximgproc.segmentation")


def search_layer(model):
    """The :class:`SelectiveSearchProposals` layer of ``model`` (nested models
    included), or None."""
    from kvision.layers.proposals import SelectiveSearchProposals

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, SelectiveSearchProposals):
            return layer
    return None


def proposal_model(model):
    """``model`` (images -> detections, selective search inside) as a model of
    ``[images, proposals (B, P, 4)]`` -> the same detections, the search cut out
    (same layers, same weights); None when ``model`` runs no selective search. A model
    with another host call, or whose search is not called on its own input, is a
    ValueError naming it."""
    import keras

    from kvision.layers.proposals import host_layers
    from kvision.tasks.model import TaskModel

    search = search_layer(model)
    if search is None:
        return None
    others = [name for name in host_layers(model) if name != search.name]
    if others or search not in model.layers or len(model.inputs) != 1 \
            or search.input is not model.inputs[0]:
        raise ValueError(f"{model.name!r} runs {', '.join(host_layers(model))} on the "
                         f"host in a way kvision cannot cut out (expected one selective "
                         f"search on its image input); it cannot be exported.")
    cut = keras.Model([model.inputs[0], search.output], model.output, name="detector")
    images = keras.Input(tuple(model.inputs[0].shape[1:]), name="images")
    proposals = keras.Input((search.max_proposals, 4), name=PROPOSALS)
    outputs = cut([images, proposals])
    task = getattr(model, "task", None) or "detection"
    return TaskModel([images, proposals], outputs, name=model.name, task=task)


def proposal_count(model):
    """``P`` when ``model`` takes ``[images (B, H, W, C), proposals (B, P, 4)]``
    (:func:`proposal_model`'s form), else None."""
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 2:
        return None
    shape = tuple(inputs[1].shape)
    if len(shape) != 3 or shape[2] != 4 or shape[1] is None or len(inputs[0].shape) != 4:
        return None
    return int(shape[1])


def fit_count(proposals, count):
    """``proposals (B, M, 4)`` (any ``M``) -> ``(B, count, 4)`` float32 in the graph:
    the first ``count`` rows, zero rows after (padding, no area: not proposals)."""
    import tensorflow as tf

    proposals = tf.cast(proposals, tf.float32)[:, :count]
    missing = count - tf.shape(proposals)[1]
    return tf.ensure_shape(tf.pad(proposals, [[0, 0], [0, missing], [0, 0]]),
                           (None, count, 4))


def search_proposals(images, count, mode="fast"):
    """Selective search of each image (:func:`kvision.data.proposals.selective_search`,
    what the Keras detector's layer runs) padded to ``(N, count, 4)`` float32: the
    proposals an export is checked with."""
    from kvision.data.proposals import selective_search

    out = np.zeros((len(images), count, 4), np.float32)
    for i, image in enumerate(images):
        boxes = selective_search(np.clip(image, 0, 255), mode, count)
        out[i, :len(boxes)] = boxes
    return out


def pooling_keys(model, proposals):
    """What the pooling of ``model`` reads of each proposal ``(..., 4)``: per
    :class:`kvision.layers.RoIPooling` layer, the box's edges in feature pixels rounded
    as that layer rounds them (``float32`` box times ``spatial_scale``, halves away
    from zero); the box itself when ``model`` has no such layer (RoIAlign, R-CNN's
    warps: only an identical box reads the same). Int64 or float32 ``(..., 4k)``."""
    from kvision.layers.roi import RoIPooling, _round

    boxes = np.asarray(proposals, np.float32)
    scales = sorted({layer.spatial_scale for layer in
                     model._flatten_layers(include_self=False, recursive=True)
                     if isinstance(layer, RoIPooling)})
    if not scales:
        return boxes
    keys = []
    for scale in scales:  # the layer's own rounding of the scaled boxes
        keys.append(np.asarray(_round(boxes * np.float32(scale))))
    return np.concatenate(keys, -1).astype(np.int64)


def distinct_pooling(model, proposals):
    """``proposals (N, M, 4)`` with each proposal that ``model`` pools exactly as an
    earlier one of its image (:func:`pooling_keys`) dropped, the rest moved up in
    order and zero rows (padding) after; and how many were dropped. Two such
    proposals score exactly alike, and per-class NMS may keep either of a tie (the
    SavedModel one, the Keras model the other, by float32's last bit): an export
    checked with them could be refused though correct."""
    proposals = np.asarray(proposals, np.float32)
    keys = pooling_keys(model, proposals)
    out = np.zeros_like(proposals)
    dropped = 0
    for i, (boxes, image_keys) in enumerate(zip(proposals, keys)):
        seen, kept = set(), []
        for box, key in zip(boxes, image_keys):
            if not (box[2] > box[0] and box[3] > box[1]):
                continue  # padding
            key = key.tobytes()
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            kept.append(box)
        out[i, :len(kept)] = kept
    return out, dropped


def tflite_refusal(model) -> str:
    """The one line ``kvision export`` refuses TFLite with for such a model."""
    from kvision.layers.proposals import WarpedRegions

    warps = any(isinstance(layer, WarpedRegions)
                for layer in model._flatten_layers(include_self=False, recursive=True))
    why = ("its per-proposal warp is tf.image.crop_and_resize, which has no TFLite "
           "builtin (tensorflow#44201), and " if warps else "")
    return (f"{model.name!r} takes its proposals from selective search (OpenCV, a "
            f"Python call on the host, which no TFLite interpreter runs): {why}kvision "
            f"has no TFLite export of its two-input (images, proposals) form; export it "
            f"with --format savedmodel, whose serving signature takes the images and the "
            f"proposals.")
