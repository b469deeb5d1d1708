"""R-CNN (Girshick, Donahue, Darrell & Malik, 2014): regions with CNN features.

The first of the two-stage lineage, a pipeline rather than one network::

    image -> selective search (kvision.data.proposals): ~2,000 boxes
          -> each box enlarged by 16 pixels of context and warped to the CNN's
             input (anisotropic, Appendix A)                         : warp_regions
          -> CNN features (any backbone, globally pooled)            : the model
          -> one linear SVM per class (hard negatives)               : train_svms
          -> class-specific box regression (ridge, Appendix C)      : train_box_regressors
          -> per-class NMS at IoU 0.3                                : detect

``kvision.create("rcnn", classes=..., backbone=...)`` builds the scorer, a Keras model
on warped crops ``(B, S, S, 3)`` (raw pixels) answering ``features (B, D)`` and three
linear heads on them: ``class_logits (B, K+1)`` (the softmax of the paper's
fine-tuning, background at 0), ``svm_scores (B, K)`` and ``box_deltas (B, 4K)``. The
SVMs and the regressors are linear, so they are Dense layers whose weights
:func:`fit` sets from scikit-learn's solvers (frozen: no gradient reaches them); the
whole scorer saves as one ``.keras`` file. :func:`detect` runs the pipeline and
answers the detector protocol (``boxes``, ``scores``, ``classes``,
``num_detections``); scores are the SVM margins through a sigmoid, so they lie in
[0, 1] in the order of the margins. From Python (``kvision train`` does not drive
this pipeline)::

    model = kvision.create("rcnn", classes=10, backbone=body, input_shape=(32, 32, 3))
    rcnn_classic.fit(model, images, boxes, classes, epochs=40, context=2, C=0.01,
                     cache_dir="proposals/")      # selective search once per image
    rcnn_classic.detect(model, images, context=2)  # the detector protocol, numpy

Departures from the paper, for small data on CPUs: the features are the backbone's
globally pooled output (its fc7 needs AlexNet's 4096-wide top) and the box regression
reads the same features (the paper's pool5 is the unpooled map); fine-tuning is
optional (``epochs``); hard negatives are mined over all images at once per round
rather than image by image.
"""

from __future__ import annotations

import keras
import numpy as np

from kvision.models.detection.yolo import check_classes, load_weights
from kvision.tasks.two_stage import RCNNDetector
from kvision.registry import register
from kvision.tasks.model import TaskModel

PAPER = "Rich feature hierarchies for accurate object detection and semantic segmentation"
CONTEXT = 16          # pixels of context around the box at the warped size (App. A)
SVM_C = 1e-3          # the released code's liblinear -c 0.001
SVM_POSITIVE_WEIGHT = 2.0   # and its -w1 2
SVM_BIAS = 10.0       # and its -B 10 (the bias feature's value)
NEGATIVE_IOU = 0.3    # proposals below this IoU with every instance of a class
FINETUNE_IOU = 0.5    # fine-tuning positives (section 2.3)
REGRESSION_IOU = 0.6  # box regression's training proposals (Appendix C)
RIDGE_LAMBDA = 1000.0
NMS_IOU = 0.3
FEATURE_NORM = 20.0   # features scaled to this mean L2 norm before the SVMs (the code's)
HEADS = ("class_logits", "svm_scores", "box_deltas")


# --- the scorer ------------------------------------------------------------------------

@register("rcnn", task="detection", family="rcnn", year=2014, paper=PAPER,
          key_idea="selective-search proposals warped to a CNN's input, CNN features, "
                   "one linear SVM per class and box regression",
          default_size=227, min_size=32, num_params=2_500_793, default_classes=20,
          params_source="kvision AlexNet's convolutions (torchvision's 61,100,840 less "
                        "fc6-fc8's 58,631,144) + on its 256 pooled features the heads "
                        "for 20 classes: softmax 5,397, SVMs 5,140, box regression "
                        "20,560")
def RCNN(classes=20, input_shape=None, backbone="alexnet", backbone_weights=None,
         trainable_backbone=True, crop_size=None, weights=None, name=None):
    """R-CNN's scorer (see the module docstring): warped crops ``(B, S, S, 3)`` raw
    pixels (default 227, the paper's) -> ``{"features" (B, D), "class_logits"
    (B, classes+1), "svm_scores" (B, classes), "box_deltas" (B, 4 classes)}``.

    ``backbone``: a zoo or keras.applications name or a functional ``keras.Model``
    (default AlexNet, the paper's network), its output globally average-pooled.
    ``crop_size``: the crops' side ``S`` when ``input_shape`` is the images' ``(H, W,
    C)`` (what ``kvision train`` passes); the scorer then keeps that shape as its
    ``image_shape`` attribute (not saved), for :func:`task_detector`. Default:
    ``input_shape`` is the crops'.
    """
    from kvision.models.backbone import build_backbone

    check_classes(classes)
    image_shape = None
    if crop_size is not None:
        if input_shape is None or len(input_shape) != 3:
            raise ValueError(f"crop_size needs input_shape, the images' (H, W, C); got "
                             f"{input_shape!r}.")
        image_shape = tuple(int(d) for d in input_shape)
        input_shape = (int(crop_size), int(crop_size), image_shape[-1])
    crops, features = build_backbone(backbone, (None,), input_shape=input_shape,
                                     weights=backbone_weights, trainable=trainable_backbone,
                                     task="rcnn", fixed_size=True)
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="features")(features)
    else:
        features = keras.layers.Identity(name="features")(features)
    logits = keras.layers.Dense(classes + 1, name="class_logits")(features)
    outputs = {"features": features, "class_logits": logits}
    # Set by fit() from scikit-learn; frozen so that fine-tuning leaves them alone.
    # Before that: random SVMs (tied scores make NMS pick at random) and no box moves.
    for head, width, start in (("svm_scores", classes, "glorot_uniform"),
                               ("box_deltas", 4 * classes, "zeros")):
        layer = keras.layers.Dense(width, kernel_initializer=start, name=head)
        layer.trainable = False
        outputs[head] = layer(features)
    model = TaskModel(crops, outputs, name=name or "rcnn", task="detection")
    model = load_weights(model, weights)
    if image_shape is not None:
        model.image_shape = image_shape
    return model


def model_classes(model):
    """Object classes of an R-CNN scorer (background excluded)."""
    return int(model.output["svm_scores"].shape[-1])


def losses(model):
    """Fine-tuning's loss: softmax cross-entropy on ``class_logits`` (K+1 classes,
    background 0); the SVM and regression heads are not trained by gradient."""
    del model
    return {"class_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}


# --- warping ----------------------------------------------------------------------------

def context_boxes(boxes, size, context=CONTEXT):
    """Boxes enlarged about their centres so that, warped to ``size`` (an int or
    ``(height, width)``), the original box fills ``size - 2 context`` pixels and
    ``context`` pixels of the image surround it (Appendix A's p = 16)."""
    height, width = (size, size) if np.ndim(size) == 0 else size
    if min(height, width) <= 2 * context:
        raise ValueError(f"The warped size {height}x{width} leaves no room for the box "
                         f"inside {context} pixels of context on each side.")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * np.array(
        [width / (width - 2 * context), height / (height - 2 * context)])
    return np.concatenate([centre - half, centre + half], axis=1)


def warp_regions(image, boxes, size, context=CONTEXT):
    """Each box of ``image`` with its context (:func:`context_boxes`) resampled to
    ``size x size``: ``(n, size, size, C)`` float32 raw pixels.

    Bilinear, half-pixel centres: output pixel ``j`` reads the enlarged box at
    ``x1 + (j + 0.5) w / size - 0.5``. Where the enlarged box leaves the image the
    crop holds the image's mean pixel (the paper's zero after mean subtraction).
    """
    import tensorflow as tf

    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}.")
    boxes = context_boxes(boxes, size, context)
    if not len(boxes):
        return np.zeros((0, size, size, image.shape[-1]), np.float32)
    height, width = image.shape[:2]
    step = (boxes[:, 2:] - boxes[:, :2]) / size
    first = boxes[:, :2] + 0.5 * step - 0.5         # the first and last sample (x, y)
    last = boxes[:, :2] + (size - 0.5) * step - 0.5
    # crop_and_resize spans [y1, y2] * (side - 1) with `size` samples, ends included.
    scale = np.array([max(width - 1, 1), max(height - 1, 1)], np.float64)
    first, last = first / scale, last / scale
    normalized = np.stack([first[:, 1], first[:, 0], last[:, 1], last[:, 0]], axis=1)
    mean = image.mean(axis=(0, 1))
    crops = tf.image.crop_and_resize((image - mean)[None], normalized.astype(np.float32),
                                     np.zeros(len(boxes), np.int32), (size, size),
                                     extrapolation_value=0.0)
    return crops.numpy() + mean


def _crop_size(model):
    height, width = (int(d) for d in model.input_shape[1:3])
    if height != width:
        raise ValueError(f"R-CNN warps to square crops; the model takes {height}x{width}.")
    return height


# --- training ---------------------------------------------------------------------------

def _box_iou(a, b):
    from kvision.metrics.detection import box_iou

    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return box_iou(np.asarray(a, np.float64), np.asarray(b, np.float64))


def regions(proposals, boxes):
    """One image's training regions: its ground truth first, then its proposals.

    Returns ``(regions (n, 4), is_gt (n,), overlaps (n, G))`` with ``overlaps`` the
    IoU of every region with every ground-truth box (``classes`` tells which class).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    found = np.concatenate([boxes, proposals])
    is_gt = np.arange(len(found)) < len(boxes)
    return found, is_gt, _box_iou(found, boxes)


def finetune_labels(overlaps, classes):
    """Fine-tuning's labels: the class (1..K) of the best-overlapping ground truth at
    IoU >= 0.5, else background 0 (section 2.3)."""
    if not overlaps.shape[1]:
        return np.zeros(len(overlaps), np.int64)
    best = overlaps.argmax(1)
    labels = np.asarray(classes, np.int64)[best] + 1
    return np.where(overlaps.max(1) >= FINETUNE_IOU, labels, 0)


def regression_targets(proposals, boxes):
    """Appendix C's targets of ``proposals`` P towards ``boxes`` G (both xyxy):
    ``tx = (Gx - Px) / Pw``, ``ty = (Gy - Py) / Ph``, ``tw = log(Gw / Pw)``,
    ``th = log(Gh / Ph)``, centres and sizes from the xyxy corners."""
    from kvision.ops.rcnn import encode_deltas

    if not len(proposals):
        return np.zeros((0, 4), np.float32)
    return np.asarray(encode_deltas(boxes, proposals, weights=(1.0, 1.0, 1.0, 1.0)))


def feature_scale(features):
    """The factor that brings the features' mean L2 norm to 20 (the released code's
    ``feat_norm_mean``): C = 0.001 and lambda = 1000 are meant for that scale."""
    norm = float(np.mean(np.linalg.norm(features, axis=1))) if len(features) else 0.0
    return FEATURE_NORM / norm if norm > 0 else 1.0


def _sklearn(module):
    """A scikit-learn module, which only R-CNN's training needs (the ``rcnn`` extra)."""
    import importlib

    try:
        return importlib.import_module(f"sklearn.{module}")
    except ImportError as error:
        raise ImportError("R-CNN's SVMs and box regressors are trained with scikit-learn: "
                          "pip install 'kvision[rcnn]' (or scikit-learn).") from error


def _fit_svm(x, y, C, seed):
    LinearSVC = _sklearn("svm").LinearSVC

    # liblinear's -s 3 (L2-regularized hinge, dual) as the released code ran it; its
    # own stopping tolerance there was 0.1, sklearn's 1e-4 does not converge in 20,000
    # passes with the bias feature at 10: 1e-3 does.
    svm = LinearSVC(C=C, loss="hinge", class_weight={1: SVM_POSITIVE_WEIGHT, 0: 1.0},
                    intercept_scaling=SVM_BIAS, dual=True, tol=1e-3, max_iter=20000,
                    random_state=seed)
    return svm.fit(x, y)


def train_svm(positives, negatives, *, C=SVM_C, rounds=2, first_negatives=None,
              hard_limit=None, seed=0):
    """One class's linear SVM with hard-negative mining: ``(w (D,), b)``.

    The first SVM sees every positive and a random ``first_negatives`` of the
    negatives (default: as many as 5 x the positives); each of ``rounds`` more
    scores every negative, keeps the cached ones not easy (margin above -1.2) and
    adds the hardest ones inside the margin (above -1), at most ``hard_limit``
    (default: 5 x the positives, at least 100), then trains again (section 2.3).
    """
    positives = np.asarray(positives, np.float64)
    negatives = np.asarray(negatives, np.float64)
    if not len(positives) or not len(negatives):
        raise ValueError(f"train_svm needs positives and negatives, got "
                         f"{len(positives)} and {len(negatives)}.")
    rng = np.random.default_rng(seed)
    first = first_negatives or 5 * len(positives)
    limit = hard_limit or max(100, 5 * len(positives))
    cache = rng.permutation(len(negatives))[:first]
    svm = None
    for round_ in range(int(rounds) + 1):
        if round_:
            margins = svm.decision_function(negatives)
            kept = cache[margins[cache] > -1.2]
            hard = np.setdiff1d(np.flatnonzero(margins > -1.0), kept)
            hard = hard[np.argsort(-margins[hard], kind="stable")][:limit]
            if not len(hard) and len(kept) == len(cache):
                break  # nothing new inside the margin: the SVM is final
            cache = np.concatenate([kept, hard])
            if not len(cache):
                break
        x = np.concatenate([positives, negatives[cache]])
        y = np.r_[np.ones(len(positives)), np.zeros(len(cache))]
        svm = _fit_svm(x, y, C, seed)
    return svm.coef_[0].astype(np.float32), np.float32(svm.intercept_[0])


def train_svms(features, is_gt, overlaps, gt_classes, classes, *, C=SVM_C, rounds=2,
               seed=0, progress=None):
    """Every class's SVM, kernel ``(D, K)`` and bias ``(K,)``: ground-truth boxes of
    the class are its positives, regions (proposals and other classes' ground truth)
    under IoU 0.3 with all its instances its negatives. ``overlaps`` and
    ``gt_classes``, ``(n, G)``: each region's IoU with its image's ground truth and
    their classes (-1 padding). A class without positives keeps a zero kernel and
    bias -1. ``progress``: called with a line after each class."""
    kernel = np.zeros((features.shape[1], classes), np.float32)
    bias = np.full(classes, -1.0, np.float32)
    own = gt_classes[np.arange(len(overlaps)), overlaps.argmax(1)] if len(overlaps) else \
        np.zeros(0, np.int64)
    for c in range(classes):
        of_class = gt_classes == c
        positive = is_gt & (own == c)
        near = np.max(np.where(of_class, overlaps, 0.0), axis=1, initial=0.0)
        negative = near < NEGATIVE_IOU  # other classes' ground truth too, as the code
        if positive.any() and negative.any():
            kernel[:, c], bias[c] = train_svm(features[positive], features[negative],
                                              C=C, rounds=rounds, seed=seed)
        if progress is not None:
            progress(f"SVM {c + 1}/{classes}: {int(positive.sum())} positives, "
                     f"{int(negative.sum())} negatives")
    return kernel, bias


def train_box_regressors(features, proposals, overlaps, gt_boxes, gt_classes, classes, *,
                         alpha=RIDGE_LAMBDA):
    """Each class's ridge regression from features to :func:`regression_targets`, on
    the proposals whose best ground truth is of that class at IoU > 0.6: kernel
    ``(D, 4K)`` (class-major: columns ``4c..4c+3``) and bias ``(4K,)``."""
    Ridge = _sklearn("linear_model").Ridge
    kernel = np.zeros((features.shape[1], 4 * classes), np.float32)
    bias = np.zeros(4 * classes, np.float32)
    if not overlaps.shape[1]:
        return kernel, bias
    best = overlaps.argmax(1)
    near = overlaps.max(1) > REGRESSION_IOU
    for c in range(classes):
        chosen = near & (gt_classes[np.arange(len(best)), best] == c)
        if not chosen.any():
            continue
        targets = regression_targets(proposals[chosen], gt_boxes[chosen, best[chosen]])
        ridge = Ridge(alpha=alpha).fit(features[chosen], targets)
        kernel[:, 4 * c:4 * c + 4] = ridge.coef_.T
        bias[4 * c:4 * c + 4] = ridge.intercept_
    return kernel, bias


def _proposals(images, proposals, cache_dir, mode, max_proposals, progress=None):
    if proposals is not None:
        if len(proposals) != len(images):
            raise ValueError(f"proposals: one (n, 4) array per image, got {len(proposals)} "
                             f"for {len(images)} images.")
        return [np.asarray(p, np.float32).reshape(-1, 4)[:max_proposals] for p in proposals]
    from kvision.data import proposals as proposal_lib

    step = max(1, -(-len(images) // 10))  # ten lines of progress at most
    found = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        found += (proposal_lib.cached_proposals(chunk, cache_dir, mode=mode,
                                                max_proposals=max_proposals)
                  if cache_dir is not None else
                  [proposal_lib.selective_search(image, mode, max_proposals)
                   for image in chunk])
        if progress is not None:
            progress(f"selective search: {len(found)}/{len(images)} images"
                     + (f" (cached in {cache_dir})" if cache_dir is not None else ""))
    return found


def _regions(images, boxes, classes, proposals, size, context):
    """Every image's regions, crops, overlaps and the matched ground truth, stacked."""
    found = {"crops": [], "regions": [], "is_gt": [], "labels": [], "overlaps": [],
             "gt_boxes": [], "gt_classes": []}
    widest = max([len(b) for b in boxes] + [1])
    for image, b, c, p in zip(images, boxes, classes, proposals):
        b = np.asarray(b, np.float32).reshape(-1, 4)
        c = np.asarray(c, np.int64).reshape(-1)
        region, is_gt, overlaps = regions(p, b)
        pad = widest - len(b)
        found["crops"].append(warp_regions(image, region, size, context))
        found["regions"].append(region)
        found["is_gt"].append(is_gt)
        found["labels"].append(finetune_labels(overlaps, c))
        found["overlaps"].append(np.pad(overlaps, ((0, 0), (0, pad))))
        found["gt_boxes"].append(np.broadcast_to(np.pad(b, ((0, pad), (0, 0)))[None],
                                                 (len(region), widest, 4)))
        found["gt_classes"].append(np.broadcast_to(
            np.pad(c, (0, pad), constant_values=-1)[None], (len(region), widest)))
    return {k: np.concatenate(v) for k, v in found.items()}


def finetune(model, crops, labels, *, epochs, batch_size=128, positive_fraction=0.25,
             learning_rate=3e-3, seed=0, callbacks=(), verbose=0):
    """Section 2.3's fine-tuning: softmax over K+1 classes on warped regions, each
    batch a quarter regions of objects (IoU >= 0.5) and the rest background, drawn
    with replacement. Adam, where the paper ran SGD at 0.001 from ImageNet weights.
    The batches are gathered as they are read (many epochs of a large crop set never
    sit in memory at once). Returns the Keras history."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    positive, negative = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
    steps = max(1, len(labels) // batch_size)
    take = int(round(batch_size * positive_fraction)) if len(negative) else batch_size
    batches = []
    for _ in range(steps * int(epochs)):
        picked = [rng.choice(positive, take)] if len(positive) else []
        if len(negative):
            picked.append(rng.choice(negative, batch_size - (take if picked else 0)))
        batches.append(np.concatenate(picked))
    crops, targets = tf.constant(crops, tf.float32), tf.constant(labels, tf.int64)
    data = tf.data.Dataset.from_tensor_slices(np.stack(batches)).map(
        lambda index: (tf.gather(crops, index),
                       {"class_logits": tf.gather(targets, index)})).prefetch(2)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=losses(model))
    return model.fit(data, epochs=1, verbose=verbose, callbacks=list(callbacks),
                     shuffle=False)  # the batches are drawn at random above


def fit(model, images, boxes, classes, *, proposals=None, cache_dir=None, mode="fast",
        max_proposals=2000, context=CONTEXT, epochs=0, C=SVM_C, rounds=2,
        alpha=RIDGE_LAMBDA, seed=0, batch_size=256, callbacks=(), verbose=0,
        learning_rate=3e-3, finetune_batch_size=128, progress=None):
    """Trains an R-CNN scorer on images with ground truth, as the paper does: optional
    fine-tuning (``epochs``), then per-class SVMs with hard negatives and box
    regressors on the scaled features, written into ``svm_scores`` and
    ``box_deltas``. ``proposals``: one ``(n, 4)`` array per image, else selective
    search (cached in ``cache_dir`` when given). ``callbacks``: Keras callbacks of the
    fine-tuning's ``fit`` (one may stop it early); ``learning_rate`` and
    ``finetune_batch_size`` its Adam rate and crops per batch. ``progress``: called
    with a line of progress at each step (selective search, warps, features, each
    SVM). Returns ``model``; its fine-tuning's history is ``model.history``."""
    classes_count = model_classes(model)
    if not len(images) == len(boxes) == len(classes):
        raise ValueError(f"images, boxes and classes: one entry per image each, got "
                         f"{len(images)}, {len(boxes)} and {len(classes)}.")
    for i, c in enumerate(classes):
        c = np.asarray(c)
        if c.size and (c.min() < 0 or c.max() >= classes_count):
            raise ValueError(f"classes[{i}]: ids must be in [0, {classes_count}), got "
                             f"{np.unique(c).tolist()}.")
    say = progress or (lambda line: None)
    found = _regions(images, boxes, classes,
                     _proposals(images, proposals, cache_dir, mode, max_proposals, progress),
                     _crop_size(model), context)
    size = _crop_size(model)
    say(f"warped {len(found['crops'])} regions to {size}x{size} ({len(images)} images: "
        f"ground truth and proposals; {int((found['labels'] > 0).sum())} of objects at "
        f"IoU >= {FINETUNE_IOU})")
    if epochs:
        say(f"fine-tuning: {epochs} epochs of softmax over {classes_count + 1} classes")
        finetune(model, found["crops"], found["labels"], epochs=epochs, seed=seed,
                 callbacks=callbacks, verbose=verbose, learning_rate=learning_rate,
                 batch_size=finetune_batch_size)
    say("features of every region")
    features = model.predict(found["crops"], batch_size=batch_size,
                             verbose=verbose)["features"]
    scale = feature_scale(features)
    scaled = features * scale
    kernel, bias = train_svms(scaled, found["is_gt"], found["overlaps"],
                              found["gt_classes"], classes_count, C=C, rounds=rounds,
                              seed=seed, progress=progress)
    model.get_layer("svm_scores").set_weights([kernel * scale, bias])
    say("box regression (ridge) per class")
    kernel, bias = train_box_regressors(scaled, found["regions"], found["overlaps"],
                                        found["gt_boxes"], found["gt_classes"],
                                        classes_count, alpha=alpha)
    model.get_layer("box_deltas").set_weights([kernel * scale, bias])
    return model


# --- inference --------------------------------------------------------------------------

def _decode(proposals, deltas, image_shape):
    """Class-specific boxes ``(P, K, 4)`` from the regressors' deltas, clipped."""
    from kvision.ops.rcnn import decode_deltas

    deltas = deltas.reshape(len(proposals), deltas.shape[-1] // 4, 4)
    boxes = np.asarray(decode_deltas(deltas, proposals[:, None],
                                     weights=(1.0, 1.0, 1.0, 1.0)))
    height, width = image_shape
    return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)


def detect(model, images, *, proposals=None, cache_dir=None, mode="fast",
           max_proposals=2000, context=CONTEXT, score_threshold=0.05,
           iou_threshold=NMS_IOU, max_detections=100, batch_size=256):
    """R-CNN's detections on ``images`` (``(N, H, W, 3)`` or a list of arrays, raw
    pixels): ``{"boxes" (N, K, 4) xyxy pixels, "scores" (N, K), "classes" (N, K)
    int32 (-1 padded), "num_detections" (N,)}`` numpy, ``K = max_detections``.

    Every proposal is warped, scored by every class's SVM and moved by that class's
    regressor; scores are ``sigmoid(margin)``; per-class NMS at ``iou_threshold``
    (0.3, the paper's) keeps those above ``score_threshold``.
    """
    from kvision.ops.boxes import batched_nms

    images = [np.asarray(image) for image in images]
    found = _proposals(images, proposals, cache_dir, mode, max_proposals)
    size = _crop_size(model)
    classes = model_classes(model)
    crops = [warp_regions(image, boxes, size, context)
             for image, boxes in zip(images, found)]
    # One predict over every image's crops: Keras' fixed cost per call is paid once.
    out = {"svm_scores": np.zeros((0, classes)), "box_deltas": np.zeros((0, 4 * classes))}
    if sum(len(c) for c in crops):
        out = model.predict(np.concatenate(crops), batch_size=batch_size, verbose=0)
    ends = np.cumsum([len(boxes) for boxes in found])
    answers = []
    for image, boxes, end in zip(images, found, ends):
        part = slice(end - len(boxes), end)
        moved = _decode(boxes, np.asarray(out["box_deltas"])[part], image.shape[:2])
        scores = 1 / (1 + np.exp(-np.asarray(out["svm_scores"], np.float64)[part]))
        labels = np.broadcast_to(np.arange(classes), scores.shape)
        answers.append(batched_nms(moved.reshape(1, -1, 4),
                                   scores.reshape(1, -1).astype(np.float32),
                                   labels.reshape(1, -1), iou_threshold=iou_threshold,
                                   score_threshold=score_threshold,
                                   max_detections=max_detections))
    if not answers:
        return {"boxes": np.zeros((0, max_detections, 4), np.float32),
                "scores": np.zeros((0, max_detections), np.float32),
                "classes": np.zeros((0, max_detections), np.int32),
                "num_detections": np.zeros((0,), np.int32)}
    return {k: np.concatenate([np.asarray(a[k]) for a in answers])
            for k in ("boxes", "scores", "classes", "num_detections")}


def inference_model(model, *, image_shape=None, score_threshold=0.05,
                    iou_threshold=NMS_IOU, max_detections=100, mode="fast",
                    max_proposals=2000, context=CONTEXT, cache_dir=None):
    """:class:`RCNNDetector` around a trained scorer: images -> the detector
    protocol. ``image_shape``: the ``(H, W, C)`` it reports (default the crops'
    own); it takes images of any size."""
    shape = image_shape or tuple(int(d) for d in model.input_shape[1:])
    return RCNNDetector(model, shape, dict(
        score_threshold=score_threshold, iou_threshold=iou_threshold,
        max_detections=max_detections, mode=mode, max_proposals=max_proposals,
        context=context, cache_dir=cache_dir))


def inference_graph(model, image_shape, *, score_threshold=0.05, iou_threshold=NMS_IOU,
                    max_detections=100, mode="fast", max_proposals=2000, context=CONTEXT):
    """:func:`detect` as one Keras graph of images ``(B, H, W, C)`` of
    ``image_shape``, raw pixels -> the detector protocol dict: selective search
    inside the graph (:class:`kvision.layers.proposals.SelectiveSearchProposals`, a
    host call), every proposal warped (:class:`~kvision.layers.proposals.
    WarpedRegions`), scored by the SVMs and moved by the regressors
    (:class:`~kvision.layers.proposals.SVMDecode`), per-class NMS. It saves as a
    ``.keras`` file that ``kvision evaluate`` and ``kvision predict`` take; ``kvision
    export --format savedmodel`` exports it with the proposals an input
    (:mod:`kvision.export.proposals`: a host call cannot be served)."""
    from kvision.layers.detection import NonMaxSuppression
    from kvision.layers.mask_rcnn import FoldRoIs, UnfoldRoIs
    from kvision.layers.proposals import SelectiveSearchProposals, SVMDecode, WarpedRegions

    image_shape = tuple(int(d) for d in image_shape)
    images = keras.Input(image_shape, name="images")
    proposals = SelectiveSearchProposals(max_proposals, mode, name="selective_search")(images)
    crops = WarpedRegions(_crop_size(model), context, name="warp")([images, proposals])
    answers = model(FoldRoIs(name="fold_regions")(crops))
    margins = UnfoldRoIs(name="svm_margins")([answers["svm_scores"], proposals])
    deltas = UnfoldRoIs(name="regressions")([answers["box_deltas"], proposals])
    decoded = SVMDecode(image_shape[:2], name="decode")(margins, deltas, proposals)
    nms = NonMaxSuppression(iou_threshold=iou_threshold, score_threshold=score_threshold,
                            max_detections=max_detections, name="nms")
    return TaskModel(images, nms(*decoded), name=f"{model.name}_detector", task="detection")


# --- kvision train rcnn ---------------------------------------------------------------

#: ``kvision train rcnn``'s crops and body (``--model-arg crop_size=…, backbone=…``):
#: 32-pixel crops of 96-pixel digit scenes through ResNet-18 from random weights.
TASK_CROP = 32
TASK_BACKBONE = "resnet18"
#: Its defaults on digit scenes: 300 training scenes (about 20 proposals each), 8
#: epochs of fine-tuning over their regions in batches of 128 crops, Adam at 3e-3.
TASK_DEFAULTS = {"max_images": 300, "epochs": 8, "batch_size": 128,
                 "learning_rate": 3e-3}
TASK_C = 0.01  # the SVMs' C: a class has tens of ground-truth boxes here, not hundreds
#: Proposals kept per image: a 96-pixel scene has about 20 (the saved detector pads
#: every image to this many crops, so 2,000 would score 100 times the padding).
TASK_MAX_PROPOSALS = 64


def data_arguments(name, box_sizes):
    """``kvision train rcnn``'s builder arguments: the images are the task's
    ``input_shape``, the crops :data:`TASK_CROP` (``--model-arg`` wins)."""
    del name, box_sizes
    return {"crop_size": TASK_CROP, "backbone": TASK_BACKBONE}


def scaled_context(size):
    """The paper's 16 pixels of context at 227, scaled to crops of ``size`` (2 at 32)."""
    return int(round(CONTEXT * size / 227))


def proposal_cache():
    """Where ``kvision train rcnn`` caches selective search: ``proposals/`` in kvision's
    Keras cache folder (one ``.npy`` per image, named by its pixels)."""
    import os

    from kvision.weights import cache_dir

    return os.path.join(cache_dir(), "proposals")


def fit_task(model, data, *, epochs, batch_size, learning_rate=None, seed=0, verbose=1):
    """:func:`fit` on a task's :class:`kvision.tasks.base.TrainingData` (what
    ``kvision train rcnn`` runs in place of ``model.fit``): selective search cached
    in :func:`proposal_cache`, ``epochs`` of fine-tuning in batches of ``batch_size``
    crops, the SVMs and the box regressors, each step printed. Returns the
    fine-tuning's history (``{"loss": [...]}``)."""
    images, boxes, classes = _task_examples(data.train)
    context = scaled_context(_crop_size(model))
    say = (lambda line: print(line, flush=True)) if verbose else None
    fit(model, images, boxes, classes, cache_dir=proposal_cache(), context=context,
        max_proposals=TASK_MAX_PROPOSALS, epochs=epochs, C=TASK_C, seed=seed, verbose=verbose,
        learning_rate=learning_rate or TASK_DEFAULTS["learning_rate"],
        finetune_batch_size=batch_size, progress=say)
    history = getattr(model, "history", None)
    return {k: list(v) for k, v in getattr(history, "history", {}).items()} if epochs \
        else {}


def _task_examples(train):
    """``(images, boxes, classes)`` lists of a task's training data: digit scenes as
    they are, a ``tf.data`` set of Keras' box dicts read once."""
    if hasattr(train, "images"):
        return (list(np.asarray(train.images, np.float32)), list(train.boxes),
                list(train.classes))
    images, boxes, classes = [], [], []
    for example in train.as_numpy_iterator():
        images.append(np.asarray(example["images"], np.float32))
        boxes.append(np.asarray(example["bounding_boxes"]["boxes"], np.float32))
        classes.append(np.asarray(example["bounding_boxes"]["labels"], np.int64))
    return images, boxes, classes


def task_detector(model, *, score_threshold=0.05):
    """The detector ``kvision train rcnn`` saves: :func:`inference_graph` at the
    images' shape the scorer was built for (``crop_size``; else its crops'), with
    the context and proposal budget :func:`fit_task` trained with."""
    shape = getattr(model, "image_shape", None) or tuple(model.input_shape[1:])
    return inference_graph(model, shape, score_threshold=score_threshold,
                           max_proposals=TASK_MAX_PROPOSALS,
                           context=scaled_context(_crop_size(model)))
