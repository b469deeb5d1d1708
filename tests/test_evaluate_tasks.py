"""``kvision evaluate`` on detectors and semantic segmenters: the command's figures
equal independent computations on the same model's predictions (pycocotools'
COCOeval for boxes, numpy IoU counts for label maps), ``--json`` agrees with the
text, and data of the wrong kind is one clear error line."""

import json
import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import kvision
from kvision import cli
from kvision.data.detection import write_coco
from kvision.data.synthetic import digit_scenes
from kvision.metrics import segmentation as seg_metrics
from kvision.models.detection import localization as L

SIZE = 32  # the models' input side
IMAGE = (48, 64)  # the COCO files' size: boxes scale back by 1.5 and 2


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """An untrained localizer's inference model (4 detections an image), saved."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("evaluate_detector")
    model = kvision.create("localizer", backbone="lenet5", classes=10, objects=4,
                           input_shape=(SIZE, SIZE, 1), hidden_units=16)
    inference = L.inference_model(model, score_threshold=0.0, max_detections=4)
    inference.save(root / "det.keras")
    return root, inference


def _detections(inference, images):
    """The detector on each image resized by tf.image, boxes scaled to its pixels."""
    resized = tf.image.resize(np.stack(images).astype("float32"), (SIZE, SIZE))
    out = {k: np.asarray(v) for k, v in inference(resized).items()}
    scale = np.array([IMAGE[1] / SIZE, IMAGE[0] / SIZE] * 2)
    return [{"boxes": out["boxes"][i][:int(n)] * scale, "scores": out["scores"][i][:int(n)],
             "classes": out["classes"][i][:int(n)].astype(int)}
            for i, n in enumerate(out["num_detections"])]


def _ground_truth(found, rng):
    """Objects near the detector's own boxes (shifted 0..6 pixels, some of another
    class, some missed), so its AP is neither 0 nor 1 and varies with the IoU
    threshold."""
    truth = []
    for det in found:
        keep = rng.random(len(det["boxes"])) < 0.8
        boxes = det["boxes"][keep] + rng.integers(0, 7, (keep.sum(), 4)) * [1, 1, -1, -1]
        classes = np.where(rng.random(keep.sum()) < 0.2, (det["classes"][keep] + 1) % 10,
                           det["classes"][keep])
        good = (boxes[:, 2] - boxes[:, 0] > 2) & (boxes[:, 3] - boxes[:, 1] > 2)
        truth.append({"boxes": boxes[good].astype("float32"), "classes": classes[good]})
    return truth


@pytest.fixture(scope="module")
def coco(detector, tmp_path_factory, coco_reference):
    """A COCO JSON of six 48x64 grey scenes labelled near the detector's answers, with
    COCOeval's figures on that ground truth and the detector's reference boxes."""
    root, inference = detector
    scenes = digit_scenes(6, image_size=64, objects=2, channels=1, seed=3)
    images = [image[8:56] for image in scenes.images]  # 48 x 64
    found = _detections(inference, images)
    truth = _ground_truth(found, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("coco") / "scenes.json"
    data = types.SimpleNamespace(images=images, boxes=[t["boxes"] for t in truth],
                                 classes=[t["classes"] for t in truth])
    write_coco(data, str(path), class_names=[str(i) for i in range(10)])
    return str(path), coco_reference(truth, found)


def _run(args, capsys):
    code = cli.main(["evaluate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _figure(text, label):
    return float(re.search(re.escape(label) + r" (\d\.\d{4})", text).group(1))


def test_detector_map_equals_cocoeval_on_the_same_predictions(detector, coco, capsys):
    root, _ = detector
    path, reference = coco
    assert 0 < reference["map"] < reference["map_50"] < 1  # a case that tells
    code, out, _ = _run([str(root / "det.keras"), "--data", path, "--json"], capsys)
    assert code == 0
    figures = json.loads(out)
    for key in ("map", "map_50", "map_75"):
        assert figures[key] == pytest.approx(reference[key], abs=1e-4), key
    per_class = {int(name): v["ap"] for name, v in figures["per_class"].items()
                 if v["ap"] is not None}
    assert per_class.keys() == reference["per_class"].keys()
    for c, ap in reference["per_class"].items():
        assert per_class[c] == pytest.approx(ap, abs=1e-4), c


def test_detector_text_agrees_with_json(detector, coco, capsys):
    root, _ = detector
    path, _ = coco
    _, text, _ = _run([str(root / "det.keras"), "--data", path], capsys)
    _, out, _ = _run([str(root / "det.keras"), "--data", path, "--json"], capsys)
    figures = json.loads(out)
    assert f"on {figures['images']} images of {path}" in text
    assert _figure(text, "mAP@[.5:.95]") == pytest.approx(figures["map"], abs=5e-5)
    assert _figure(text, "mAP@0.5") == pytest.approx(figures["map_50"], abs=5e-5)
    for name, row in figures["per_class"].items():
        shown = "-" if row["ap"] is None else f"{row['ap']:.4f}"
        assert re.search(rf"^{name} +{re.escape(shown)} +{row['objects']}$", text, re.M)


def _brightness_segmenter():
    """11 classes (background and the digits) by a hand-set 1x1 convolution: class 4
    ("3") where a pixel is brighter than 100, background elsewhere."""
    inputs = keras.Input((SIZE, SIZE, 1))
    conv = keras.layers.Conv2D(11, 1)
    outputs = keras.layers.Activation("softmax")(conv(inputs))
    kernel = np.zeros((1, 1, 1, 11), "float32")
    kernel[0, 0, 0, 4] = 1.0
    bias = np.zeros(11, "float32")
    bias[0] = 100.0
    conv.set_weights([kernel, bias])
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluate_segmenter") / "seg.keras"
    _brightness_segmenter().save(path)
    # The held-out scenes the command draws for a 32-pixel grey model, by hand.
    scenes = digit_scenes(5, image_size=SIZE, digit_size=(4, 11), channels=1,
                          subset="test", seed=0)
    return str(path), scenes


def test_segmenter_miou_equals_the_metric_and_plain_counts(segmenter, capsys):
    path, scenes = segmenter
    code, out, _ = _run([path, "--max-images", "5", "--json"], capsys)
    assert code == 0
    figures = json.loads(out)
    predicted = np.where(scenes.images[..., 0] > 100, 4, 0)
    # Plain counts: IoU of background and of "3", the only classes predicted.
    truth = scenes.semantic
    ious = {}
    for c in np.union1d(np.unique(truth), [0, 4]):
        inter = np.sum((truth == c) & (predicted == c))
        ious[c] = inter / np.sum((truth == c) | (predicted == c))
    assert 0 < ious[4] < ious[0] < 1
    assert figures["mean_iou"] == pytest.approx(np.mean(list(ious.values())), rel=1e-6)
    assert figures["pixel_accuracy"] == pytest.approx(np.mean(truth == predicted), rel=1e-6)
    names = ("background", *scenes.class_names)
    direct = seg_metrics.evaluate(truth, predicted, 11, class_names=names)
    assert figures["mean_dice"] == pytest.approx(direct["mean_dice"], rel=1e-6)
    for name, row in figures["per_class"].items():
        assert row["iou"] == direct["per_class_iou"].get(name)
        assert row["pixels"] == int(np.sum(truth == names.index(name)))


def test_segmenter_text_agrees_with_json(segmenter, capsys):
    path, _ = segmenter
    _, text, _ = _run([path, "--max-images", "5"], capsys)
    _, out, _ = _run([path, "--max-images", "5", "--json"], capsys)
    figures = json.loads(out)
    assert "on 5 held-out scenes of digit-scenes" in text
    assert _figure(text, "mIoU") == pytest.approx(figures["mean_iou"], abs=5e-5)
    assert _figure(text, "pixel accuracy") == pytest.approx(figures["pixel_accuracy"],
                                                            abs=5e-5)
    for name, row in figures["per_class"].items():
        shown = "-" if row["iou"] is None else f"{row['iou']:.4f}"
        assert re.search(rf"^{name} +{re.escape(shown)} ", text, re.M)


@pytest.mark.parametrize("which, data, says", [
    ("detector", "digits", "a COCO .json file or digit-scenes"),
    ("detector", "__FOLDER__", "is not detection data"),
    ("segmenter", "digits", "is measured on digit-scenes"),
])
def test_wrong_data_for_the_task_is_one_error_line(which, data, says, detector, segmenter,
                                                   tmp_path, capsys):
    model = str(detector[0] / "det.keras") if which == "detector" else segmenter[0]
    data = str(tmp_path) if data == "__FOLDER__" else data
    code, out, err = _run([model, "--data", data], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and says in err


def test_a_yolo_folder_gives_the_coco_files_figures(detector, coco, tmp_path, capsys):
    from kvision.data.detection import load_detection, write_yolo

    root, _ = detector
    path, reference = coco
    data = load_detection(path, channels=1)
    examples = list(data.dataset.as_numpy_iterator())
    write_yolo(types.SimpleNamespace(
        images=[e["images"].astype("uint8") for e in examples],
        boxes=[e["bounding_boxes"]["boxes"] for e in examples],
        classes=[e["bounding_boxes"]["labels"] for e in examples]),
        str(tmp_path / "yolo"), class_names=data.class_names)
    code, out, err = _run([str(root / "det.keras"), "--data", str(tmp_path / "yolo"),
                           "--json"], capsys)
    assert code == 0, err
    figures = json.loads(out)
    # YOLO's labels are normalized to 6 decimals: boxes move by under 1e-4 pixels.
    for key in ("map", "map_50", "map_75"):
        assert figures[key] == pytest.approx(reference[key], abs=1e-4), key
