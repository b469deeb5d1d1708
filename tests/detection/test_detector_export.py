"""Detectors exported with decoding and NMS in the graph: SavedModel and TFLite.

References: TensorFlow's session-based SavedModel loader (what ``saved_model_cli run``
and TF Serving use), the LiteRT interpreter, and IoU computed here in numpy.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kvision
from kvision import cli
from kvision.data.synthetic import digit_scenes
from kvision.export import saved_model
from kvision.export.litert import custom_ops
from kvision.export.tflite import run_detector
from kvision.models.detection import overfeat as O

NAMES = [f"digit{i}" for i in range(10)]
SHAPE = (48, 48, 1)


@pytest.fixture(scope="module")
def detector():
    """OverFeat on LeNet-5 slid at two scales, NMS inside: many detections."""
    keras.utils.set_random_seed(0)
    classifier = kvision.create("overfeat", backbone="lenet5", classes=10,
                                input_shape=(32, 32, 1), units=(16,), box_units=(8,))
    return O.inference_model(classifier, image_shape=SHAPE, scales=(1.0, 0.8),
                             score_threshold=0.1, iou_threshold=0.5, max_detections=20)


@pytest.fixture(scope="module")
def images():
    scenes = digit_scenes(3, image_size=48, objects=(1, 2), channels=1, seed=4)
    return scenes.images.astype("float32")


def _iou(a, b):
    lt, rb = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda x: np.prod(x[..., 2:] - x[..., :2], -1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _assert_same_detections(got, reference):
    """Same counts and classes; boxes at IoU >= 0.99, scores within 1e-3."""
    np.testing.assert_array_equal(got["num_detections"], reference["num_detections"])
    assert int(np.sum(reference["num_detections"])) > 0
    np.testing.assert_array_equal(got["classes"], reference["classes"])
    for i, n in enumerate(reference["num_detections"]):
        assert np.all(_iou(got["boxes"][i][:n], reference["boxes"][i][:n]) >= 0.99)
    np.testing.assert_allclose(got["scores"], reference["scores"], atol=1e-3)


def test_saved_model_serves_the_four_outputs_in_tf_servings_loader(detector, images,
                                                                    tmp_path):
    result = saved_model(detector, tmp_path / "overfeat", class_names=NAMES,
                         check_inputs=images, warmup=False, image_bytes=False)
    assert result.parity["matched"] == result.parity["num_detections"] > 0
    # TF's session-based loader: what `saved_model_cli run` and TF Serving's C++
    # LoadSavedModel use (NOTES.md), read here without kvision's code.
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], result.path)
        signature = meta.signature_def["serving_default"]
        assert set(signature.outputs) == {"boxes", "scores", "classes", "num_detections",
                                          "labels"}
        got = session.run({k: v.name for k, v in signature.outputs.items()},
                          {signature.inputs["images"].name: images})
    reference = {k: np.asarray(v) for k, v in detector(images).items()}
    _assert_same_detections(got, reference)
    labels = [[b.decode() for b in row] for row in got["labels"]]
    expected = [[NAMES[c] if c >= 0 else "" for c in row] for row in got["classes"]]
    assert labels == expected


def test_tflite_export_from_the_command_uses_builtin_ops_only(detector, images,
                                                              tmp_path, capsys):
    detector.save(tmp_path / "det.keras")
    folder = tmp_path / "check"
    folder.mkdir()
    for i, image in enumerate(images):
        (folder / f"{i}.png").write_bytes(tf.io.encode_png(image.astype("uint8")).numpy())
    code = cli.main(["export", str(tmp_path / "det.keras"), "--format", "tflite",
                     "--data", str(folder)])
    assert code == 0, capsys.readouterr().err
    assert "tflite" in capsys.readouterr().out
    path = tmp_path / "det.tflite"
    assert custom_ops(path.read_bytes()) == []  # no Flex or custom operator: NMS builtin
    got, _ = run_detector(path, images)
    reference = {k: np.asarray(v) for k, v in detector(images).items()}
    _assert_same_detections(got, reference)


def test_int8_is_refused_for_detectors(detector, tmp_path):
    from kvision.export import tflite

    with pytest.raises(ValueError, match="int8"):
        tflite(detector, tmp_path / "d.tflite", quantize="int8",
               representative_data=np.zeros((2, *SHAPE), "float32"))


def test_detection_parity_uses_cocos_iou_and_matches_identical_flat_boxes():
    """compare_detections' IoU is the metric's (pycocotools' bbIou); a box clipped flat
    at the image edge matches its identical twin, a flat box elsewhere does not."""
    from kvision.export.parity import compare_detections
    from kvision.metrics.detection import box_iou

    boxes = np.array([[[0, 0, 10, 10], [20, 5, 20, 15]]], "float32")  # 2nd: zero width
    reference = {"boxes": boxes, "scores": np.array([[0.9, 0.8]]),
                 "classes": np.array([[1, 2]]), "num_detections": np.array([2])}
    same = compare_detections(reference, reference)
    assert same["matched"] == 2 and same["max_abs_diff"] == 0.0
    moved = dict(reference, boxes=np.array([[[0, 0, 10, 10], [30, 5, 30, 15]]], "float32"))
    figures = compare_detections(reference, moved)
    assert figures["matched"] == 1 and figures["top1_agreement"] == 0.5
    shifted = dict(reference, boxes=np.array([[[1, 0, 11, 10], [20, 5, 20, 15]]], "float32"))
    assert compare_detections(reference, shifted)["min_iou"] == pytest.approx(
        box_iou(boxes[0, :1], shifted["boxes"][0, :1])[0, 0])
