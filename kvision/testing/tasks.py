"""The task table of the model contract: one row per task, used by one test over
every registered network (``tests/models/test_contract.py``).

A row says, for the models of one task, how to build them small, how to make one
batch of inputs and training targets, which losses they train with, how to get the
task's inference model and what that model must answer. The targets come from
:func:`kvision.data.synthetic.digit_scenes` (exact boxes, masks and label maps; for
pose, random keypoints on random images) through the task's own target code, so the
contract trains each model as a user would.

A new task adds one row to :data:`TASKS`; a new network of a known task needs nothing
here unless its builder has knobs that make it small (its row's ``small`` table;
unlisted networks are built at their minimum size with their defaults).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import keras
import numpy as np

from kvision import registry

# The named backbone of the task models that take one: the registry's smallest network
# with stage outputs at strides 4..32, so that the zoo-name path of every task builder
# is exercised without paying for VGG16 or Darknet-53 again (the classification rows
# of the contract build, save and train those).
SMALL_BACKBONE = "shufflenet_v2_x1_0"
BATCH = 2  # images per contract batch
DETECTION_KEYS = ("boxes", "scores", "classes", "num_detections")


@dataclasses.dataclass(frozen=True)
class TaskCase:
    """How the contract test drives the models of one task.

    Attributes:
        small: ``name -> builder kwargs`` that make the network small (input shape
            included); :func:`sizes` turns a table of them into one.
        batch: ``(model, name) -> (x, y)``: ``BATCH`` raw-pixel inputs and their
            training targets, in what ``model.fit`` takes.
        loss: ``(model, name) -> what model.compile(loss=...) takes``.
        inference: ``(model, name) -> the task's inference model``.
        check: ``(inference model, images, its outputs on them)``: raises
            AssertionError when the outputs are not the task's documented structure.
    """

    small: Callable
    batch: Callable
    loss: Callable
    inference: Callable
    check: Callable


def default_small(name):
    """A network at its minimum side (at least 32) with its default arguments."""
    info = registry.get_info(name)
    size = max(info.min_size, 32)
    return {"input_shape": (size, size, info.input_channels)}


def sizes(table):
    """``name -> kwargs`` from ``table``, :func:`default_small` for names not in it."""
    return lambda name: table[name] if name in table else default_small(name)


def build_small(name):
    """``(model, case)``: ``name`` built small, and its task's row."""
    case = TASKS[registry.get_info(name).task]
    return registry.create(name, **case.small(name)), case


def _module(name):
    """The module holding ``name``'s builder: where its targets, losses and inference
    model live for the task models of today."""
    return importlib.import_module(registry.get_info(name).builder.__module__)


def _shape(model):
    return tuple(int(d) for d in model.inputs[0].shape[1:])  # the images


def inference_images(model):
    """``BATCH`` digit scenes, float32 raw pixels, at ``model``'s input size: what an
    inference model that is not its network itself answers in the contract (it may
    take other images than the network: OverFeat's slides over whole scenes)."""
    scenes = _scenes(model)
    images = scenes.images.astype("float32")
    if len(model.inputs) == 2:  # Fast R-CNN's detector: the proposals too
        return [images, _proposals_for(model, scenes)]
    return images


def _scenes(model, *, objects=(1, 2), size=None, seed=0):
    """``BATCH`` digit scenes at the model's input size (or ``size``)."""
    from kvision.data.synthetic import digit_scenes

    height, _, channels = _shape(model)
    size = size or height
    return digit_scenes(BATCH, image_size=size, objects=objects,
                        digit_size=(size // 3, size // 2), channels=channels, seed=seed)


# --- classification -----------------------------------------------------------------

CLASSIFIER_CLASSES = 7  # not the default 1000: the top is rebuilt at another size


def _classification_batch(model, name):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (BATCH, *_shape(model))).astype("float32")
    return x, rng.integers(0, model.output_shape[-1], BATCH)


def _check_probabilities(model, x, outputs):
    """``(N, classes)`` (or ``(N, H, W, classes)``) probabilities: each row sums to 1."""
    (probabilities,) = keras.tree.flatten(outputs)
    probabilities = np.asarray(probabilities)
    per = (len(x),) if probabilities.ndim == 2 else x.shape[:3]  # image or pixel
    assert probabilities.shape[:-1] == per, \
        f"{model.name}: probabilities of shape {probabilities.shape} for input {x.shape}"
    assert np.all(probabilities >= 0) and np.all(np.isfinite(probabilities)), \
        f"{model.name}: outputs are not probabilities (negative or not finite)"
    if probabilities.shape[-1] > 1:  # softmax; one channel is a sigmoid
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=0,
                                   atol=probabilities.shape[-1] * 1e-6)


# --- localization and detection -----------------------------------------------------

def _check_detections(model, x, outputs):
    """The detector protocol: ``boxes (N, K, 4)``, ``scores (N, K)``, ``classes (N, K)``
    int (-1 after the detections), ``num_detections (N,)`` in ``[0, K]``."""
    assert set(DETECTION_KEYS) <= set(outputs), \
        f"{model.name}: outputs {sorted(outputs)}, expected {DETECTION_KEYS}"
    boxes, scores, classes, count = (np.asarray(outputs[k]) for k in DETECTION_KEYS)
    k = boxes.shape[1]
    assert boxes.shape == (len(x), k, 4) and scores.shape == classes.shape == (len(x), k)
    assert count.shape == (len(x),) and np.all((count >= 0) & (count <= k))
    assert np.issubdtype(classes.dtype, np.integer)
    assert np.issubdtype(count.dtype, np.integer)
    for i, n in enumerate(count):
        assert np.all(classes[i, n:] == -1), f"{model.name}: image {i} pads wrongly"
        assert np.all((scores[i, :n] >= 0) & (scores[i, :n] <= 1))
        assert np.all(np.isfinite(boxes[i, :n])), f"{model.name}: boxes not finite"


def _localization_batch(model, name):
    from kvision.models.detection import localization

    scenes = _scenes(model, objects=1)
    classes = model.output["classes"].shape[-1]
    y = localization.encode_scenes(scenes.boxes, scenes.classes, _shape(model)[:2],
                                   num_classes=classes)
    return scenes.images.astype("float32"), y


def _yolo_batch(model, name):
    """Boxes encoded by the model's own target encoder (YOLOv3 or v1)."""
    scenes = _scenes(model)
    encode = _module(name).target_encoder(model)
    per_image = [encode(b, c) for b, c in zip(scenes.boxes, scenes.classes)]
    y = keras.tree.map_structure(lambda *t: np.stack([np.asarray(a) for a in t]),
                                 *per_image)
    return scenes.images.astype("float32"), list(y) if isinstance(y, tuple) else y


def _overfeat_batch(model, name):
    """OverFeat trains on windows cut from scenes (one object, one background)."""
    from kvision.models.detection import overfeat

    window = _shape(model)
    scenes = _scenes(model, objects=1, size=2 * window[0])
    classes = model.output["classes"].shape[-1] - 1  # the last is background
    x, y = overfeat.window_samples(scenes.images, scenes.boxes, scenes.classes,
                                   window[:2], num_classes=classes, positives=1,
                                   negatives=1, seed=0)
    return x[:BATCH], {k: v[:BATCH] for k, v in y.items()}


def _rcnn_batch(model, name):
    """Ground-truth boxes and classes, padded, as the module's training_dataset
    batches them (two-stage detectors sample their targets inside the step)."""
    scenes = _scenes(model)
    batch = next(iter(_module(name).training_dataset(scenes, model, batch_size=BATCH,
                                                    shuffle=False, max_boxes=4)))
    return batch[0].numpy(), {k: v.numpy() for k, v in batch[1].items()}


def _proposals_for(model, scenes):
    """Fast R-CNN's second input: each scene's boxes, then their top-left quarters,
    padded to the model's proposal count."""
    from kvision.models.detection import fast_rcnn

    count = int(model.inputs[1].shape[1])
    found = [np.concatenate([b, (b + np.tile(b[:, :2], 2)) / 2]) for b in scenes.boxes]
    return fast_rcnn.pad_proposals(found, count)


def _fast_rcnn_batch(model, name):
    """Fast R-CNN: ``[images, proposals]`` and the padded ground truth (as Faster
    R-CNN's batches hold it)."""
    from kvision.models.detection import rcnn

    scenes = _scenes(model)
    images, y = next(iter(rcnn.training_dataset(scenes, model, batch_size=BATCH,
                                                shuffle=False, max_boxes=4)))
    return [images.numpy(), _proposals_for(model, scenes)], {k: v.numpy()
                                                             for k, v in y.items()}


def _rcnn_classic_batch(model, name):
    """R-CNN fine-tunes on warped regions: the scenes' ground-truth boxes warped to the
    model's crops, labelled with their class + 1 (0 is the background)."""
    scenes = _scenes(model)
    module = _module(name)
    crops = np.concatenate([module.warp_regions(image, boxes, _shape(model)[0], context=2)
                            for image, boxes in zip(scenes.images, scenes.boxes)])
    labels = np.concatenate(scenes.classes) + 1
    return crops[:BATCH], {"class_logits": labels[:BATCH]}


# Detectors differ in targets and losses by family module; a new detector in one of
# these modules is covered, a new module adds an entry.
_DETECTORS = {
    "yolo": (_yolo_batch, lambda module, model: module.losses(model)),
    "yolo_v1": (_yolo_batch, lambda module, model: module.loss(model)),
    "overfeat": (_overfeat_batch, lambda module, model: module.losses()),
    "rcnn": (_rcnn_batch, lambda module, model: module.losses(model)),
    "fast_rcnn": (_fast_rcnn_batch, lambda module, model: module.losses(model)),
    "rcnn_classic": (_rcnn_classic_batch, lambda module, model: module.losses(model)),
}


def _detector(name):
    module = _module(name)
    return module, _DETECTORS[module.__name__.rsplit(".", 1)[-1]]


def _detection_batch(model, name):
    return _detector(name)[1][0](model, name)


def _detection_loss(model, name):
    module, (_, loss) = _detector(name)
    return loss(module, model)


def _inference(model, name):
    """The module's ``inference_model``, keeping every candidate (score threshold 0)
    so that the check sees real detections from an untrained network."""
    return _module(name).inference_model(model, score_threshold=0.0)


# --- segmentation ---------------------------------------------------------------------

SEGMENTATION_CLASSES = 11  # the digit scenes' label maps: background and 10 digits


def _segmentation_batch(model, name):
    scenes = _scenes(model)
    return scenes.images.astype("float32"), scenes.semantic


def _segmentation_loss(model, name):
    from kvision.losses.segmentation import PixelCrossEntropy

    return PixelCrossEntropy()


def _instance_batch(model, name):
    from kvision.models.segmentation import instance

    if _module(name) is not instance:  # Mask R-CNN: boxes, classes and masks, padded
        return _rcnn_batch(model, name)
    scenes = _scenes(model, objects=2)
    return scenes.images.astype("float32"), instance.training_targets(scenes.semantic,
                                                                      scenes.masks)


def _check_instances(model, x, outputs):
    """The detector protocol plus ``instance_map (N, H, W)``: 0 or an instance's
    number, never above its image's ``num_detections``."""
    _check_detections(model, x, outputs)
    instance_map = np.asarray(outputs["instance_map"])
    assert instance_map.shape == x.shape[:3], \
        f"{model.name}: instance_map {instance_map.shape} for images {x.shape}"
    count = np.asarray(outputs["num_detections"])
    assert np.all((instance_map >= 0) & (instance_map <= count[:, None, None]))


def _small_segmenter(**kwargs):
    return {"classes": SEGMENTATION_CLASSES, "input_shape": (32, 32, 3), **kwargs}


# --- pose -----------------------------------------------------------------------------

def _pose_batch(model, name):
    """``BATCH`` random images with keypoints in them (some unlabelled, v = 0) through
    the model module's own ``training_dataset``: the targets of every stack."""
    import tensorflow as tf

    height, width, channels = _shape(model)
    joints = model.outputs[-1].shape[-1]
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (BATCH, height, width, channels)).astype("float32")
    keypoints = np.concatenate([rng.uniform(0, 1, (BATCH, joints, 2)) * [width, height],
                                rng.integers(0, 3, (BATCH, joints, 1))], -1)
    data = tf.data.Dataset.from_tensor_slices({"images": images,
                                               "keypoints": keypoints.astype("float32")})
    x, y = next(iter(_module(name).training_dataset(data, model, batch_size=BATCH,
                                                    shuffle=False)))
    return np.asarray(x), [np.asarray(t) for t in y]


def _check_keypoints(model, x, outputs):
    """The pose protocol: ``keypoints (N, K, 2)`` x, y within the image and finite
    ``scores (N, K)``."""
    assert set(outputs) == {"keypoints", "scores"}, \
        f"{model.name}: outputs {sorted(outputs)}, expected keypoints and scores"
    keypoints, scores = np.asarray(outputs["keypoints"]), np.asarray(outputs["scores"])
    assert keypoints.shape[:1] == scores.shape[:1] == (len(x),)
    assert keypoints.shape == (*scores.shape, 2), f"{model.name}: {keypoints.shape}"
    assert np.all(np.isfinite(scores)), f"{model.name}: scores not finite"
    height, width = x.shape[1:3]
    assert np.all((keypoints >= 0) & (keypoints <= [width, height])), \
        f"{model.name}: keypoints outside the {width}x{height} image"


# --- embedding -------------------------------------------------------------------------

def _embedding_batch(model, name):
    """``BATCH`` random images, two of each identity: a positive pair's contrastive
    loss is half its squared distance, above 0 for two different images, so the step
    always has a gradient. (A lone negative pair of unit vectors farther apart than
    the margin, 1, has none: with alternating identities one step moved no weight on
    one initialization in the fresh-clone suite.)"""
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (BATCH, *_shape(model))).astype("float32")
    return images, np.arange(BATCH) // 2


def _embedding_loss():
    from kvision.losses.embedding import ContrastiveLoss

    return ContrastiveLoss()


def _check_embeddings(model, x, outputs):
    """The embedding protocol: finite ``(N, D)`` vectors, unit length when the model
    ends in ``UnitNormalization``."""
    embeddings = np.asarray(outputs)
    assert embeddings.ndim == 2 and len(embeddings) == len(x), \
        f"{model.name}: embeddings {embeddings.shape} for images {x.shape}"
    assert np.all(np.isfinite(embeddings)), f"{model.name}: embeddings not finite"
    if isinstance(model.layers[-1], keras.layers.UnitNormalization):
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


_NAMED = {"backbone": SMALL_BACKBONE}

TASKS = {
    "classification": TaskCase(
        small=lambda name: {**default_small(name), "classes": CLASSIFIER_CLASSES},
        batch=_classification_batch,
        loss=lambda model, name: keras.losses.SparseCategoricalCrossentropy(),
        inference=lambda model, name: model,  # it answers probabilities itself
        check=_check_probabilities),
    "localization": TaskCase(
        small=sizes({"localizer": dict(**_NAMED, classes=10, hidden_units=8,
                                       input_shape=(32, 32, 3))}),
        batch=_localization_batch,
        loss=lambda model, name: _module(name).losses(),
        inference=_inference,
        check=_check_detections),
    "detection": TaskCase(
        small=sizes({
            "yolov1": dict(classes=10, input_shape=(64, 64, 3), grid=2, width=1 / 16,
                           dropout=0.0),
            "yolov3": dict(**_NAMED, classes=10, input_shape=(32, 32, 3)),
            "yolov3_tiny": dict(classes=10, input_shape=(32, 32, 3), width=1 / 8),
            "overfeat": dict(classes=10, input_shape=(71, 71, 3), units=(16,),
                             box_units=(16,)),
            "faster_rcnn": dict(**_NAMED, classes=10, input_shape=(64, 64, 3),
                                fpn_channels=8, representation=16,
                                rpn_pre_nms_top_n=(64, 64), rpn_post_nms_top_n=(32, 16),
                                sampling={"box_batch_size_per_image": 16}),
            "rcnn": dict(classes=10, backbone="alexnet", input_shape=(63, 63, 3)),
            "fast_rcnn": dict(**_NAMED, classes=10, input_shape=(64, 64, 3),
                              representation=16, max_proposals=8),
        }),
        batch=_detection_batch,
        loss=_detection_loss,
        inference=_inference,
        check=_check_detections),
    "segmentation": TaskCase(
        small=sizes({
            **{fcn: _small_segmenter(**_NAMED, fc_units=16)
               for fcn in ("fcn8s", "fcn16s", "fcn32s")},
            "deeplabv1": _small_segmenter(**_NAMED, fc_units=16, atrous_rate=2),
            "deeplabv3_plus": _small_segmenter(**_NAMED, filters=16, low_level_filters=8),
            "segnet": _small_segmenter(width=1 / 16),
            "unet": _small_segmenter(filters=4),
        }),
        batch=_segmentation_batch,
        loss=_segmentation_loss,
        inference=lambda model, name: model,  # per-pixel probabilities
        check=_check_probabilities),
    "instance_segmentation": TaskCase(
        small=sizes({"two_network_instance": _small_segmenter(network="unet",
                                                               filters=4),
                     "mask_rcnn": dict(**_NAMED, classes=10, input_shape=(64, 64, 3),
                                       fpn_channels=8, representation=16, mask_channels=8,
                                       rpn_pre_nms_top_n=(64, 64),
                                       rpn_post_nms_top_n=(32, 16),
                                       sampling={"box_batch_size_per_image": 16})}),
        batch=_instance_batch,
        loss=lambda model, name: _module(name).losses(),
        inference=_inference,
        check=_check_instances),
    "pose": TaskCase(
        small=sizes({"stacked_hourglass": dict(keypoints=16, input_shape=(64, 64, 3),
                                               stacks=2, features=16)}),
        batch=_pose_batch,
        loss=lambda model, name: _module(name).losses(model),
        inference=lambda model, name: _module(name).inference_model(model),
        check=_check_keypoints),
    "embedding": TaskCase(
        # Its default 32x32: BatchNorm over a batch of two sets the two images
        # 0.93 apart in training mode, inside the contrastive margin (1); at 64x64
        # (16,384 features flattened) they came out past it and no weight moved.
        small=sizes({"embedding_net": dict(input_shape=(32, 32, 3))}),
        batch=_embedding_batch,
        loss=lambda model, name: _embedding_loss(),
        inference=lambda model, name: model,  # it answers embeddings itself
        check=_check_embeddings),
}
