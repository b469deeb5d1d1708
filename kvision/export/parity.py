"""Proving an export: it must answer as the Keras model does before it is kept.

:func:`compare` measures an export against the Keras model on the same inputs,
:func:`check` turns the figures into a pass or a :class:`ParityError` (a
``ValueError``) that reports them and the number of images they rest on,
and :func:`as_float32` gives the float32 twin of a mixed-precision model (exports
are float32 unless asked otherwise).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from kvision.tasks import DETECTION_OUTPUTS, output_names  # noqa: F401  (this API too)


@dataclasses.dataclass
class ExportResult:
    """What one export wrote and measured.

    Attributes:
        path: the file or version directory written.
        format: ``"savedmodel"``, ``"tflite"``, ``"tflite-float16"``,
            ``"tflite-dynamic"`` or ``"tflite-int8"``.
        size_mb: size on disk in MB (a directory: all its files).
        parity: the figures of :func:`compare` on the check inputs.
        latency_ms: mean time of one batch-1 call, where measured.
    """

    path: str
    format: str
    size_mb: float
    parity: dict = dataclasses.field(default_factory=dict)
    latency_ms: float | None = None

    def __fspath__(self):
        return self.path

    def __str__(self):
        return self.path


def size_mb(path) -> float:
    """Size of a file, or of all files under a directory, in MB (10^6 bytes)."""
    if os.path.isfile(path):
        return os.path.getsize(path) / 1e6
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6


class ParityError(ValueError):
    """An export that does not answer as the Keras model does: ``figures`` holds what
    was measured, ``failed`` the names of the figures outside their thresholds
    (``kvision export`` adds what to try to the message)."""

    def __init__(self, message, figures, failed=()):
        super().__init__(message)
        self.figures = figures
        self.failed = tuple(failed)


# Agreement intervals are 95% Wilson score intervals: unlike the normal approximation
# they stay inside [0, 1] and stay honest at 16 images or at 100% agreement.
Z_95 = 1.959963984540054


def wilson_interval(successes, n, z=Z_95) -> tuple:
    """The Wilson score interval ``(low, high)`` of a proportion ``successes / n``
    (95% by default); ``(0.0, 1.0)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def compare(reference, candidate, labels=None) -> dict:
    """Figures of ``candidate`` outputs against ``reference`` outputs.

    Args:
        reference: Keras outputs, ``(N, ...)``; for classifiers ``(N, classes)``.
        candidate: the export's outputs for the same inputs, same shape.
        labels: optional true labels ``(N,)``: adds both accuracies.
    Returns:
        ``{"max_abs_diff", "top1_agreement"}`` (agreement of the argmax over the last
        axis, for 2-D outputs; for a segmenter's per-pixel scores ``(N, H, W,
        classes)``, classes > 1, the share of pixels whose argmax class agrees) and,
        with labels (2-D outputs), ``"accuracy_reference"``,
        ``"accuracy_candidate"`` and ``"accuracy_drop"`` (reference minus
        candidate, in points of accuracy, i.e. percent).
    """
    reference = np.asarray(reference, dtype="float64")
    candidate = np.asarray(candidate, dtype="float64")
    if reference.shape != candidate.shape:
        raise ValueError(f"The export's outputs have shape {candidate.shape}, the Keras "
                         f"model's {reference.shape}: they should be the same.")
    figures = {"max_abs_diff": float(np.max(np.abs(reference - candidate), initial=0.0)),
               "num_images": len(reference)}
    if reference.ndim == 2:
        ref_top = reference.argmax(-1)
        cand_top = candidate.argmax(-1)
        figures["top1_agreement"] = float(np.mean(ref_top == cand_top))
        figures["top1_interval"] = wilson_interval(int(np.sum(ref_top == cand_top)),
                                                   len(ref_top))
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            figures["accuracy_reference"] = float(np.mean(ref_top == labels))
            figures["accuracy_candidate"] = float(np.mean(cand_top == labels))
            figures["accuracy_drop"] = 100.0 * (figures["accuracy_reference"]
                                                - figures["accuracy_candidate"])
    elif reference.ndim == 4 and reference.shape[-1] > 1:
        figures["top1_agreement"] = float(np.mean(reference.argmax(-1)
                                                  == candidate.argmax(-1)))
    return figures


# An export of a detector is the same detector when every detection finds its twin:
# same class, boxes at IoU >= 0.99, scores within 1e-3 (float32).
MIN_MATCHED_IOU = 0.99
MAX_SCORE_DIFF = 1e-3


def export_kind(model) -> str:
    """How ``model`` is exported and checked, as its task says
    (:func:`kvision.tasks.base.export_kind`): ``"detector"``, ``"segmenter"``,
    ``"classifier"``, ``"keypoints"`` or ``"outputs"``; a model with no task it can
    tell is exported
    by its outputs: ``"classifier"`` for one ``(N, classes)`` output."""
    from kvision.tasks import task_of
    from kvision.tasks.base import export_kind as kind_of_task

    try:
        return kind_of_task(task_of(model))
    except (AttributeError, ValueError):
        return "outputs"


def is_detector(model) -> bool:
    """Whether ``model``'s task answers the detector protocol's four outputs
    (``boxes``, ``scores``, ``classes``, ``num_detections``): what its task says, not
    a guess from output names (files saved before models carried their task aside)."""
    return export_kind(model) == "detector" and set(DETECTION_OUTPUTS) <= set(
        output_names(model))


def _iou_matrix(a, b):
    """Pairwise IoU of xyxy boxes ``(n, 4)`` and ``(m, 4)``: COCO's (the metric's), with
    identical boxes at 1 even when they have no area (a box clipped flat at the edge)."""
    from kvision.metrics.detection import box_iou

    identical = np.all(a[:, None, :] == b[None, :, :], axis=-1)
    return np.where(identical, 1.0, box_iou(a, b))


def compare_detections(reference, candidate) -> dict:
    """Figures of an exported detector's outputs against the Keras model's.

    Both are dicts of the four detection outputs for the same images. Each
    reference detection is matched to the candidate detection of the same class with
    the highest IoU, greedily by score (ties in NMS may order equal scores either
    way). Returns ``{"num_images", "num_detections", "matched", "top1_agreement"}``
    (the share of detections matched at IoU >= 0.99, 1.0 when there are none),
    ``"top1_interval"`` (its 95% Wilson interval over the detections), ``"min_iou"`` and
    ``"max_abs_diff"`` (the largest score difference of a matched pair), and
    ``"count_mismatch"`` (images whose ``num_detections`` differ).
    """
    total = matched = mismatched = 0
    min_iou, max_diff = 1.0, 0.0
    for i in range(len(reference["num_detections"])):
        n, m = int(reference["num_detections"][i]), int(candidate["num_detections"][i])
        mismatched += n != m
        total += max(n, m)
        ref_boxes = np.asarray(reference["boxes"][i][:n], "float64")
        cand_boxes = np.asarray(candidate["boxes"][i][:m], "float64")
        ious = _iou_matrix(ref_boxes, cand_boxes)
        same_class = (np.asarray(reference["classes"][i][:n])[:, None]
                      == np.asarray(candidate["classes"][i][:m])[None, :])
        ious = np.where(same_class, ious, -1.0)
        free = np.ones(m, bool)
        for r in np.argsort(-np.asarray(reference["scores"][i][:n]), kind="stable"):
            options = np.where(free, ious[r], -1.0)
            c = int(np.argmax(options)) if m else -1
            if c < 0 or options[c] < MIN_MATCHED_IOU:
                min_iou = min(min_iou, float(max(options[c], 0.0)) if c >= 0 else 0.0)
                continue
            free[c] = False
            matched += 1
            min_iou = min(min_iou, float(options[c]))
            max_diff = max(max_diff, abs(float(reference["scores"][i][r])
                                         - float(candidate["scores"][i][c])))
    return {"num_images": len(reference["num_detections"]), "num_detections": total,
            "matched": matched, "top1_agreement": matched / total if total else 1.0,
            "top1_interval": wilson_interval(matched, total), "min_iou": min_iou,
            "max_abs_diff": max_diff, "count_mismatch": mismatched}


def check_detections(figures, *, what="The export", max_score_diff=MAX_SCORE_DIFF):
    """Raise :class:`ParityError` unless every detection has its twin (see
    :func:`compare_detections`) with scores within ``max_score_diff``."""
    failures, failed = [], []
    if figures["count_mismatch"]:
        failures.append(f"{figures['count_mismatch']} images with another number of "
                        f"detections")
    if figures["matched"] < figures["num_detections"]:
        failures.append(f"{figures['num_detections'] - figures['matched']} of "
                        f"{figures['num_detections']} detections without a twin of the "
                        f"same class at IoU >= {MIN_MATCHED_IOU} (lowest IoU "
                        f"{figures['min_iou']:.4f})")
        failed.append("top1_agreement")
    if max_score_diff is not None and figures["max_abs_diff"] > max_score_diff:
        failures.append(f"score diff {figures['max_abs_diff']:.3g} > {max_score_diff:g}")
        failed.append("max_abs_diff")
    if failures:
        raise ParityError(f"{what} does not detect what the Keras model detects: "
                          f"{'; '.join(failures)}{measured_on(figures)}. Nothing was "
                          f"written.", figures, failed)
    return figures


# A keypoint model's export answers the same keypoints when they lie, on average,
# within half a heatmap pixel of the Keras model's (issue 18): float rounding may
# move an arg-max to a near-tied neighbour, which is one heatmap pixel away.
MAX_KEYPOINT_DISTANCE = 0.5


def keypoint_strides(model) -> tuple:
    """``(y, x)`` input pixels per heatmap pixel of a keypoint model: the strides of
    its :class:`~kvision.layers.HeatmapDecode` (input side / heatmap side)."""
    from kvision.layers.pose import HeatmapDecode

    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, HeatmapDecode):
            return tuple(float(s) for s in layer.strides)
    raise ValueError(f"{model.name!r} answers keypoints but has no HeatmapDecode layer "
                     f"to tell its heatmap pixel; expected the inference model of a "
                     f"pose network.")


def compare_keypoints(reference, candidate, strides) -> dict:
    """Figures of an exported keypoint model's outputs against the Keras model's.

    Both are dicts with ``keypoints`` ``(N, K, 2)`` x, y in input pixels and
    ``scores`` ``(N, K)``; ``strides`` ``(y, x)`` input pixels per heatmap pixel.
    Returns ``{"num_images", "keypoint_distance"}`` (the mean Euclidean distance
    between twin keypoints, in heatmap pixels), ``"max_keypoint_distance"`` and
    ``"max_abs_diff"`` (the largest score difference).
    """
    ref, cand = (np.asarray(d["keypoints"], "float64") for d in (reference, candidate))
    if ref.shape != cand.shape:
        raise ValueError(f"The export's keypoints have shape {cand.shape}, the Keras "
                         f"model's {ref.shape}: they should be the same.")
    stride_y, stride_x = strides
    distance = np.hypot((ref[..., 0] - cand[..., 0]) / stride_x,
                        (ref[..., 1] - cand[..., 1]) / stride_y)
    scores = np.abs(np.asarray(reference["scores"], "float64")
                    - np.asarray(candidate["scores"], "float64"))
    return {"num_images": len(ref), "keypoint_distance": float(distance.mean()),
            "max_keypoint_distance": float(distance.max(initial=0.0)),
            "max_abs_diff": float(scores.max(initial=0.0))}


def check_keypoints(figures, *, what="The export", max_distance=MAX_KEYPOINT_DISTANCE):
    """Raise :class:`ParityError` unless the mean keypoint distance of
    :func:`compare_keypoints` is at most ``max_distance`` heatmap pixels."""
    if not np.isfinite(figures["keypoint_distance"]) \
            or figures["keypoint_distance"] > max_distance:
        raise ParityError(f"{what} does not find the Keras model's keypoints: mean "
                          f"distance {figures['keypoint_distance']:.3g} heatmap pixels > "
                          f"{max_distance:g} (largest "
                          f"{figures['max_keypoint_distance']:.3g}){measured_on(figures)}. "
                          f"Nothing was written.", figures,
                          ("keypoint_distance",))
    return figures


def check(figures, *, what="The export", max_abs_diff=None, min_top1_agreement=None,
          max_accuracy_drop=None):
    """Raise ``ValueError`` naming every figure outside its threshold.

    A threshold of None is not checked (``max_accuracy_drop`` also needs labels).
    """
    failures, failed = [], []
    if max_abs_diff is not None and figures["max_abs_diff"] > max_abs_diff:
        failures.append(f"max abs diff {figures['max_abs_diff']:.3g} > {max_abs_diff:g}")
        failed.append("max_abs_diff")
    agreement = figures.get("top1_agreement")
    if min_top1_agreement is not None and agreement is not None \
            and agreement < min_top1_agreement:
        failures.append(f"{'top-1' if 'num_detections' not in figures else 'detection'} "
                        f"agreement {agreement:.2%} < {min_top1_agreement:.2%}")
        failed.append("top1_agreement")
    drop = figures.get("accuracy_drop")
    if max_accuracy_drop is not None and drop is not None and drop > max_accuracy_drop:
        failures.append(f"accuracy {figures['accuracy_candidate']:.2%} is {drop:.2f} points "
                        f"below the Keras model's {figures['accuracy_reference']:.2%} "
                        f"(allowed {max_accuracy_drop:g})")
        failed.append("accuracy_drop")
    if failures:
        raise ParityError(f"{what} does not answer as the Keras model does: "
                          f"{'; '.join(failures)}{measured_on(figures)}. Nothing was "
                          f"written.", figures, failed)
    return figures


def measured_on(figures) -> str:
    """`` on N images (agreement's 95% interval a-b%)``: what the figures rest on."""
    n = figures.get("num_images")
    if n is None:
        return ""
    notes = []
    if "num_detections" in figures:
        notes.append(f"{figures['num_detections']} detections")
    if figures.get("top1_interval") is not None:
        low, high = figures["top1_interval"]
        notes.append(f"agreement's 95% interval {low:.1%}-{high:.1%}")
    return f" on {n} image{'s' * (n != 1)}" + (f" ({'; '.join(notes)})" if notes else "")


def _float32_config(config):
    """The config with every mixed dtype policy replaced by float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            name = config["config"].get("name", "")
            if str(name).startswith("mixed_"):
                return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    if isinstance(config, str) and config.startswith("mixed_"):
        return "float32"
    return config


def is_mixed(model) -> bool:
    """Whether any layer of ``model`` computes in a reduced-precision policy."""
    return any(getattr(layer, "compute_dtype", "float32") in ("float16", "bfloat16")
               for layer in model._flatten_layers(include_self=False))


def as_float32(model):
    """``model`` itself if it is float32 everywhere, else a float32 twin.

    A model trained under ``mixed_float16`` keeps float32 variables; its twin is the
    same architecture with float32 policies everywhere and the same weights, so an
    export of it is an ordinary float32 graph.
    """
    import keras

    if not is_mixed(model):
        return model
    config = _float32_config(model.get_config())
    twin = model.__class__.from_config(config) if not isinstance(model, keras.Sequential) \
        else keras.Sequential.from_config(config)
    twin.set_weights([np.asarray(w, dtype="float32") if np.asarray(w).dtype.kind == "f"
                      else np.asarray(w) for w in model.get_weights()])
    return twin
