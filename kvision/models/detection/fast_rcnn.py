"""Fast R-CNN (Girshick, 2015): one backbone pass, regions from outside.

The image goes through the backbone once; each region proposal (selective search in
the paper: :func:`kvision.data.proposals.selective_search`) is projected onto the
stride-16 feature map and max-pooled on a 7x7 grid
(:class:`kvision.layers.RoIPooling`, the paper's Caffe layer), and two fully
connected layers answer a class (background included) and class-specific box
deltas per region::

    images (B, H, W, 3) raw pixels, proposals (B, P, 4) xyxy pixels (zero rows: none)
      -> backbone at stride 16 (P4) -> RoIPooling 7x7 -> fc6, fc7
      -> class_logits (B, P, K+1), box_deltas (B, P, 4(K+1))

Training (:class:`ProposalDetector`): RoIs sampled from the given proposals and the
ground truth, 25% foreground at IoU >= 0.5, background in [0.1, 0.5); cross-entropy
+ smooth-L1 (lambda = 1), the paper's multi-task loss. The same
:class:`~kvision.models.detection.rcnn.TwoStageDetector` machinery as Faster R-CNN,
without the RPN: Faster R-CNN is this network with the proposals learnt::

    model = kvision.models.create("fast_rcnn", classes=10, backbone="resnet18",
                                  input_shape=(96, 96, 3), representation=256)
    model.compile(optimizer="adam")
    model.fit(fast_rcnn.training_dataset(scenes, model), epochs=...)  # selective search
    detector = fast_rcnn.inference_model(model)
    detector([images, proposals])  # {"boxes", "scores", "classes", "num_detections"}
    fast_rcnn.inference_model(model, search="fast")(images)  # proposals in the graph

``kvision train fast_rcnn`` trains it on selective search's proposals; its saved
detector searches inside the graph (``kvision evaluate`` and ``predict`` take it, as
any detector; ``kvision export --format savedmodel`` exports it with the proposals
a second input, computed by the caller: :mod:`kvision.export.proposals`).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kvision.layers.detection import NonMaxSuppression
from kvision.layers.proposals import SelectiveSearchProposals
from kvision.layers.rcnn import BoxHeadDecode, InferenceOnly, ValidBoxes
from kvision.models.detection import rcnn
from kvision.models.detection.yolo import backbone_features, check_classes, load_weights
from kvision.registry import register
from kvision.tasks.model import TaskModel
from kvision.tasks.two_stage import HEAD_LOSSES, ProposalDetector  # noqa: F401

PAPER = "Fast R-CNN"


def _build(name, registry_name, *, classes, input_shape, backbone, backbone_weights,
           trainable_backbone, representation, pooling, max_proposals, sampling, weights):
    check_classes(classes)
    images, (features,) = backbone_features(
        registry_name, backbone, input_shape, ("P4",), backbone_weights=backbone_weights,
        trainable_backbone=trainable_backbone, paper_body=None)
    proposals = keras.Input((max_proposals, 4), name="proposals")
    valid = ValidBoxes(name="proposal_valid")(proposals)
    rois = InferenceOnly(name="head_rois")(proposals)
    pooler = rcnn._pooler(False, pooling)
    head = rcnn.box_head(features.shape[-1], 7, representation, classes)
    answers = head(pooler([rois, features]))
    outputs = {"proposals": proposals, "proposal_valid": valid,
               "class_logits": answers["class_logits"],
               "box_deltas": answers["box_deltas"], "P4": features}
    recipe = {"box_batch_size_per_image": 64, **(sampling or {})}  # the paper's 128 / 2
    model = ProposalDetector(
        [images, proposals], outputs, name=name or registry_name, task="detection",
        sampling=dataclasses.asdict(rcnn.Sampling(**recipe)))
    return load_weights(model, weights)


@register("fast_rcnn", task="detection", family="rcnn", year=2015, paper=PAPER,
          key_idea="one backbone pass: proposals projected onto the feature map, "
                   "RoI max pooling, a multi-task loss for class and box",
          default_size=512, min_size=64, num_params=134_690_729, default_classes=20,
          params_source="kvision's VGG-16 body + fc6, fc7 (4096) and the 21-way "
                        "classifier and 84 box outputs of the paper's PASCAL VOC model")
def FastRCNN(classes=20, input_shape=None, backbone="vgg16", backbone_weights=None,
             trainable_backbone=True, representation=4096, pooling="max",
             max_proposals=2000, sampling=None, weights=None, name=None):
    """Fast R-CNN (see the module docstring).

    Inputs ``[images (B, H, W, 3) raw pixels, proposals (B, max_proposals, 4) xyxy
    pixels]`` (rows with no area are padding), sides multiples of 16. Outputs (a
    dict): ``proposals``, ``proposal_valid (B, P)``, ``class_logits (B, P,
    classes+1)`` (0 the background), ``box_deltas (B, P, 4(classes+1))`` and ``P4``
    (the pooled feature map). ``pooling``: ``"max"`` (RoIPooling, the paper's) or
    ``"align"``; ``sampling``: overrides of
    :class:`kvision.models.detection.rcnn.Sampling` (64 RoIs per image by default,
    the paper's 128 per two-image batch).
    """
    return _build(name, "fast_rcnn", classes=classes, input_shape=input_shape,
                  backbone=backbone, backbone_weights=backbone_weights,
                  trainable_backbone=trainable_backbone, representation=representation,
                  pooling=pooling, max_proposals=int(max_proposals), sampling=sampling,
                  weights=weights)


# --- data ---------------------------------------------------------------------------

def pad_proposals(proposals, count):
    """A list of ``(n_i, 4)`` proposal arrays -> ``(N, count, 4)`` float32, the first
    ``count`` of each (sorted as given: selective search's own ranking), zero rows
    after."""
    out = np.zeros((len(proposals), count, 4), "float32")
    for i, boxes in enumerate(proposals):
        boxes = np.asarray(boxes, "float32").reshape(-1, 4)[:count]
        out[i, :len(boxes)] = boxes
    return out


def training_dataset(data, model, *, proposals=None, batch_size=2, shuffle=True, seed=0,
                     max_boxes=100, mode="fast", cache_dir=None):
    """``([images, proposals], {"boxes", "classes"})`` batches for ``model.fit``:
    :func:`kvision.models.detection.rcnn.training_dataset`'s targets, with each
    image's proposals padded to the model's count. Two images per batch by default,
    as the paper.

    ``proposals``: one ``(n_i, 4)`` array per image of ``data`` (a
    :class:`~kvision.data.synthetic.Scenes`); by default selective search's
    (``mode``), computed once per scene here (cached in ``cache_dir`` when given) or,
    for a ``tf.data`` dataset of Keras' box dicts, as each image is read.
    """
    import tensorflow as tf

    count = int(model.input[1].shape[1])
    scenes = hasattr(data, "images")
    if proposals is None and scenes:
        proposals = _search(data.images, count, mode, cache_dir)
    targets = rcnn.training_dataset(data, model, batch_size=1, shuffle=False,
                                    max_boxes=max_boxes).unbatch()
    if proposals is not None:
        padded = pad_proposals(proposals, count)
        if not scenes or len(padded) != len(data.images):
            raise ValueError(f"one proposal array per image of a Scenes object: "
                             f"{len(data.images) if scenes else 'a tf.data set of'} "
                             f"images, {len(padded)} proposal arrays.")
        joined = tf.data.Dataset.zip((targets, tf.data.Dataset.from_tensor_slices(padded)))
        joined = joined.map(lambda pair, boxes: ((pair[0], boxes), pair[1]))
    else:
        search = SelectiveSearchProposals(count, mode)
        joined = targets.map(lambda image, y: ((image, search.call(image[None])[0]), y))
    if shuffle:
        joined = joined.shuffle(1024, seed=seed)
    return joined.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _search(images, count, mode, cache_dir):
    """Selective search on every image, with a line of progress now and then (about
    0.05 s a 96-pixel scene here: minutes for thousands)."""
    from kvision.data import proposals as proposal_lib

    if cache_dir is not None:
        return proposal_lib.cached_proposals(images, cache_dir, mode=mode,
                                             max_proposals=count)
    found, every = [], max(1, len(images) // 10)
    for i, image in enumerate(images):
        found.append(proposal_lib.selective_search(image, mode, count))
        if len(images) >= 200 and (i + 1) % every == 0:
            print(f"selective search: {i + 1}/{len(images)} images", flush=True)
    return found


losses = rcnn.losses


# --- inference ----------------------------------------------------------------------

def inference_model(model, *, score_threshold=0.05, iou_threshold=0.3, max_detections=100,
                    search=None):
    """``[images, proposals]`` -> the detector protocol dict (boxes, scores, classes,
    num_detections): class-specific boxes decoded and clipped, softmax scores above
    ``score_threshold``, per-class NMS at ``iou_threshold`` (the paper's 0.3).

    ``search``: ``"fast"`` or ``"quality"`` makes a detector of images alone, its
    proposals from selective search inside the graph
    (:class:`kvision.layers.proposals.SelectiveSearchProposals`: it predicts and
    saves; exported with its proposals an input, :mod:`kvision.export.proposals`);
    what ``kvision train`` saves.
    """
    images = keras.Input(model.input_shape[0][1:], name="images")
    if search is None:
        proposals = keras.Input(model.input_shape[1][1:], name="proposals")
        inputs = [images, proposals]
    else:
        proposals = SelectiveSearchProposals(model.input_shape[1][1], search,
                                             name="selective_search")(images)
        inputs = images
    raw = model([images, proposals])
    decoded = BoxHeadDecode(model.input_shape[0][1:3], name="decode")(
        raw["class_logits"], raw["box_deltas"], raw["proposals"], raw["proposal_valid"])
    nms = NonMaxSuppression(iou_threshold=iou_threshold, score_threshold=score_threshold,
                            max_detections=max_detections, name="nms")
    return TaskModel(inputs, nms(*decoded), name=f"{model.name}_detector",
                     task="detection")
