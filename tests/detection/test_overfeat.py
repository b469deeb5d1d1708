"""OverFeat: a window classifier made fully convolutional, slid at several scales."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kvision
from kvision.data.synthetic import digit_scenes
from kvision.models.detection import overfeat as O
from kvision.ops import boxes as box_ops
from kvision.testing import assert_float32_close

WINDOW = 32


@pytest.fixture(scope="module")
def classifier():
    """A small OverFeat window classifier on LeNet-5 (valid convolutions)."""
    keras.utils.set_random_seed(0)
    return kvision.create("overfeat", backbone="lenet5", classes=10,
                          input_shape=(WINDOW, WINDOW, 1), units=(24, 16),
                          box_units=(8,), dropout=0.5)


def _pixels(shape, seed):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


def test_conv_twin_equals_the_dense_classifier_on_every_window(classifier):
    fcn = O.fully_convolutional(classifier)
    assert not any(isinstance(layer, keras.layers.Dense) for layer in fcn.layers)
    x = _pixels((2, WINDOW, WINDOW, 1), 0)
    dense, conv = classifier(x), fcn(x)
    for key in ("classes", "boxes"):  # on the classifier's own size: one cell
        assert tuple(conv[key].shape[1:3]) == (1, 1)
        # Convolutions and dense layers sum in other orders (LeNet-5's C5: 400 terms).
        assert_float32_close(np.asarray(conv[key])[:, 0, 0], dense[key], terms=400, depth=3,
                             scale=max(1.0, np.abs(dense[key]).max()))
    # A larger image: cell (i, j) is the classifier on the crop at (4i, 4j).
    assert O.window_stride(fcn, (WINDOW, WINDOW)) == (4, 4)  # LeNet-5's two 2x2 pools
    big = _pixels((1, 44, 48, 1), 1)
    maps = fcn(big)
    assert tuple(maps["classes"].shape) == (1, 4, 5, 11)
    crops = np.stack([big[0, 4 * i:4 * i + WINDOW, 4 * j:4 * j + WINDOW]
                      for i in range(4) for j in range(5)])
    reference = classifier(crops)
    for key in ("classes", "boxes"):
        assert_float32_close(np.asarray(maps[key])[0].reshape(20, -1), reference[key],
                             terms=400, depth=3,
                             scale=max(1.0, np.abs(reference[key]).max()))


def test_global_pooling_classifier_slides_too():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(5, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    fcn = O.fully_convolutional(model)
    image = _pixels((1, 15, 14, 3), 2)
    maps = np.asarray(fcn(image))
    assert maps.shape == (1, 4, 3, 5)
    reference = model(np.stack([image[0, i:i + 12, j:j + 12]
                                for i in range(4) for j in range(3)]))
    # A 3x3x3 convolution, then a 10x10 mean (100 terms) and a dense layer summed in
    # another order by the twin; probabilities, whose logits are of size ~1.
    assert_float32_close(maps[0].reshape(12, 5), reference, terms=100, depth=3, scale=1.0)


def test_paper_body_has_the_papers_layout_and_stride():
    keras.utils.set_random_seed(2)
    model = O.OverFeat(classes=3, input_shape=(71, 71, 3), units=(8, 8), box_units=(4,))
    body = model.get_layer("backbone")
    convs = [layer for layer in body.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [96, 256, 512, 1024, 1024]
    assert [c.kernel_size[0] for c in convs] == [11, 5, 3, 3, 3]
    fcn = O.fully_convolutional(model)
    # Subsampling 4 (conv1) x 2 x 2 x 2 (pools): 32 pixels between windows, as the
    # paper's fast model (Sermanet et al., 2013, section 3.5).
    assert O.window_stride(fcn, (71, 71)) == (32, 32)
    x = _pixels((1, 71, 71, 3), 3)
    assert_float32_close(np.asarray(fcn(x)["classes"])[:, 0, 0], model(x)["classes"],
                         terms=3 * 3 * 1024, depth=8, scale=1.0)  # probabilities


def test_multiscale_detector_merges_every_window_by_nms(classifier, tmp_path):
    """The one-pass detector against a reference built from crops of resized images,
    decoded here in numpy and merged with kvision.ops.boxes.batched_nms."""
    image_shape, scales = (40, 44, 1), (1.0, 0.8)
    detector = O.inference_model(classifier, image_shape=image_shape, scales=scales,
                                 score_threshold=0.05, iou_threshold=0.4,
                                 max_detections=30)
    images = _pixels((2, *image_shape), 4)
    got = {k: np.asarray(v) for k, v in detector(images).items()}
    boxes, scores, classes = [], [], []
    for s in scales:
        size = (round(40 * s), round(44 * s))
        resized = np.asarray(tf.image.resize(images, size, method="bilinear"))
        for i in range(0, size[0] - WINDOW + 1, 4):
            for j in range(0, size[1] - WINDOW + 1, 4):
                out = classifier(resized[:, i:i + WINDOW, j:j + WINDOW])
                probabilities = np.asarray(out["classes"])[:, :-1]  # no background
                cx, cy, w, h = np.asarray(out["boxes"]).T * WINDOW
                box = np.stack([j + cx - w / 2, i + cy - h / 2, j + cx + w / 2,
                                i + cy + h / 2], -1)
                sx, sy = size[1] / 44, size[0] / 40
                boxes.append(box / np.array([sx, sy, sx, sy]))
                scores.append(probabilities.max(-1))
                classes.append(probabilities.argmax(-1))
    reference = box_ops.batched_nms(np.stack(boxes, 1).astype("float32"),
                                    np.stack(scores, 1), np.stack(classes, 1),
                                    iou_threshold=0.4, score_threshold=0.05,
                                    max_detections=30)
    np.testing.assert_array_equal(got["num_detections"], reference["num_detections"])
    assert got["num_detections"].min() > 0
    np.testing.assert_array_equal(got["classes"], reference["classes"])
    np.testing.assert_allclose(got["boxes"], reference["boxes"], atol=1e-3)
    np.testing.assert_allclose(got["scores"], reference["scores"], atol=1e-5)
    path = str(tmp_path / "overfeat.keras")
    detector.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(loaded(images)["boxes"]), got["boxes"], atol=1e-5)


def test_training_windows_hold_their_objects():
    scenes = digit_scenes(6, image_size=64, objects=1, digit_size=(14, 24),
                          channels=1, seed=0)
    windows, targets = O.window_samples(scenes.images, scenes.boxes, scenes.classes,
                                        (WINDOW, WINDOW), num_classes=10, positives=2,
                                        negatives=1, seed=0)
    positive = targets["classes"] < 10
    assert positive.sum() == 2 * sum(len(b) for b in scenes.boxes)
    assert 0 < (~positive).sum() <= 6
    assert windows.shape == (len(positive), WINDOW, WINDOW, 1)
    yolo = targets["boxes"][positive]
    # Objects lie inside their windows and fill 50-90% of the longer side.
    corners = np.asarray(box_ops.convert_format(yolo, "yolo", "rel_xyxy",
                                                image_shape=(1, 1)))
    assert corners.min() >= -1e-5 and corners.max() <= 1 + 1e-5
    assert np.all((yolo[:, 2:].max(1) > 0.5 - 1e-5) & (yolo[:, 2:].max(1) < 0.9 + 1e-5))
    # Each window shows its digit (one per scene): the window's ink is in its box.
    for window, box in zip(windows[positive], corners * WINDOW):
        x0, y0, x1, y1 = np.round(box).astype(int)
        inside = window[max(y0, 0):y1, max(x0, 0):x1].sum()
        assert inside > 0.9 * window.sum()
    np.testing.assert_array_equal(targets["boxes"][~positive], 0.0)


def test_bad_arguments_say_what_was_expected(classifier):
    with pytest.raises(ValueError, match="padding"):
        O.OverFeat(padding="full")
    with pytest.raises(ValueError, match="at least 71x71"):
        O.OverFeat(input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="smaller than"):
        O.inference_model(classifier, image_shape=(40, 40, 1), scales=(0.5,))
    with pytest.raises(ValueError, match="image_shape"):
        O.inference_model(classifier, image_shape=(64, 64, 3))
    flat = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="already fully convolutional"):
        O.fully_convolutional(flat)


def test_training_windows_from_bad_boxes_are_clipped_dropped_or_refused():
    import warnings

    scenes = digit_scenes(2, image_size=64, objects=1, digit_size=(14, 24), channels=1,
                          seed=1)
    box = scenes.boxes[0][0]
    # Image 0: its digit reaching 10 px past the left edge, and a zero-area box;
    # image 1: no objects at all.
    boxes = [np.array([[box[0] - box[0] - 10, box[1], box[2], box[3]],
                       [5, 5, 5, 20]], "float32"), np.zeros((0, 4), "float32")]
    classes = [np.array([scenes.classes[0][0], 3]), np.zeros(0, "int32")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        windows, targets = O.window_samples(scenes.images, boxes, classes, (WINDOW, WINDOW),
                                            num_classes=10, positives=2, negatives=2)
    assert [str(w.message) for w in caught if issubclass(w.category, box_ops.BoxWarning)
            ] == ["window_samples dropped 1 of 2 boxes smaller than 1.0 px after clipping "
                  "to their image (zero-area, inverted or outside) in 1 of 2 images, e.g. "
                  "['image 0']."]
    positive = targets["classes"] < 10
    assert positive.sum() == 2 and (~positive).sum() >= 2  # image 1: background only
    assert np.all(np.isfinite(targets["boxes"])) and np.all(np.isfinite(windows))
    with pytest.raises(ValueError, match=r"image 0: class ids must be in \[0, 10\)"):
        O.window_samples(scenes.images, [boxes[0][:1], boxes[1]],
                         [np.array([12]), classes[1]], (WINDOW, WINDOW), num_classes=10)
    with pytest.raises(ValueError, match="2 images but 1 box lists"):
        O.window_samples(scenes.images, boxes[:1], classes[:1], (WINDOW, WINDOW),
                         num_classes=10)
