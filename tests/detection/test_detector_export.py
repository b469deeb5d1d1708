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

# One worker: the module's trained detectors (about 30 s each) are built once.
pytestmark = pytest.mark.xdist_group("detector_export")
NAMES = [f"digit{i}" for i in range(10)]
SHAPE = (48, 48, 1)


def _overfeat():
    """OverFeat on LeNet-5 slid at two scales, NMS inside: many detections."""
    keras.utils.set_random_seed(0)
    classifier = kvision.create("overfeat", backbone="lenet5", classes=10,
                                input_shape=(32, 32, 1), units=(16,), box_units=(8,))
    detector = O.inference_model(classifier, image_shape=SHAPE, scales=(1.0, 0.8),
                                 score_threshold=0.1, iou_threshold=0.5, max_detections=20)
    scenes = digit_scenes(3, image_size=48, objects=(1, 2), channels=1, seed=4)
    return detector, scenes.images.astype("float32")


def _faster_rcnn():
    """Faster R-CNN (FPN, RoIAlign, proposals and NMS in the graph) on a small body,
    trained 120 steps on four scenes so that its detections are real ones."""
    from kvision.models.detection import rcnn

    keras.utils.set_random_seed(0)
    scenes = digit_scenes(4, image_size=64, digit_size=(10, 24), seed=1)
    inputs = keras.Input((64, 64, 3))
    x = inputs
    for i, filters in enumerate((16, 32, 32, 48, 64)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                                name=f"c{i}")(x)
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in scenes.boxes])
    model = kvision.create("faster_rcnn", classes=10, input_shape=(64, 64, 3),
                           backbone=keras.Model(inputs, x), fpn_channels=16,
                           representation=64, rpn_pre_nms_top_n=(100, 100),
                           rpn_post_nms_top_n=(50, 50),
                           sampling={"box_batch_size_per_image": 32},
                           **rcnn.data_arguments("faster_rcnn", wh))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(rcnn.training_dataset(scenes, model, batch_size=4, shuffle=False).repeat(),
              steps_per_epoch=120, epochs=1, verbose=0)
    detector = rcnn.inference_model(model, score_threshold=0.2, max_detections=20)
    return detector, scenes.images.astype("float32")


@pytest.fixture(scope="module", params=["overfeat", "faster_rcnn"])
def exported(request):
    """``(detector, images)`` for each kind of detector graph: one-stage sliding
    windows, and two-stage with RoIAlign and proposals built from builtins."""
    return {"overfeat": _overfeat, "faster_rcnn": _faster_rcnn}[request.param]()


@pytest.fixture(scope="module")
def detector(exported):
    return exported[0]


@pytest.fixture(scope="module")
def images(exported):
    return exported[1]


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
               representative_data=np.zeros((2, *detector.input_shape[1:]), "float32"))


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
