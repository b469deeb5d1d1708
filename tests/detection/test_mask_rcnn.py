"""Mask R-CNN (kvision/models/detection/mask_rcnn.py): torchvision's mask-head count,
the mask targets against a NumPy roi_align, the mask loss against a NumPy BCE, the
paste into the image, finite losses without objects, a safe_mode round trip, and four
scenes overfitted to mask AP@0.5 = 1.0."""

import math

import keras
import numpy as np
import pytest

import kvision
from kvision import testing
from kvision.data.synthetic import digit_scenes
from kvision.layers.mask_rcnn import PasteMasks
from kvision.metrics.detection import evaluate
from kvision.models.detection import mask_rcnn, rcnn
from kvision.models.segmentation import instance
from kvision.testing.contract import assert_same_outputs

pytestmark = pytest.mark.xdist_group("rcnn")
SIDE = 64


def _conv(k, cin, cout):
    return k * k * cin * cout + cout


def test_the_mask_head_adds_torchvisions_count():
    """torchvision's MaskRCNNHeads (four 3x3 convs, 256 channels) and
    MaskRCNNPredictor (2x2 transposed conv, 256; 1x1 conv to 91): 2,646,107 on top of
    Faster R-CNN with a ResNet-50 body."""
    head = 4 * _conv(3, 256, 256) + _conv(2, 256, 256) + _conv(1, 256, 91)
    assert head == 2_646_107
    with testing.built_at_once(values=False):
        model = kvision.create("mask_rcnn", classes=90, input_shape=(128, 128, 3))
        faster = kvision.create("faster_rcnn", classes=90, input_shape=(128, 128, 3))
    masks = model.get_layer("mask_head")
    names = ["mask_fcn1", "mask_fcn2", "mask_fcn3", "mask_fcn4", "conv5_mask",
             "mask_fcn_logits"]
    assert sum(masks.get_layer(n).count_params() for n in names) == head
    assert masks.count_params() == head
    assert model.count_params() - faster.count_params() == head
    assert model.get_layer("mask_roi_pool").output_size == 14
    assert model.output["mask_logits"].shape[2:] == (28, 28, 91)


def _bilinear(image, y, x):
    """torchvision's roi_align_kernel bilinear_interpolate, one sample."""
    height, width = image.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * image[y0, x0] + (1 - ly) * lx * image[y0, x1]
            + ly * (1 - lx) * image[y1, x0] + ly * lx * image[y1, x1])


def _project(mask, box, size):
    """project_masks_on_boxes in loops: roi_align(mask, box, size, 1.0, -1,
    aligned=False)."""
    x1, y1, x2, y2 = box
    roi_w, roi_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    bin_w, bin_h = roi_w / size, roi_h / size
    grid_h, grid_w = math.ceil(roi_h / size), math.ceil(roi_w / size)
    out = np.zeros((size, size))
    for ph in range(size):
        for pw in range(size):
            total = 0.0
            for iy in range(grid_h):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    total += _bilinear(mask, y, x)
            out[ph, pw] = total / (grid_h * grid_w)
    return out


def test_mask_targets_are_the_matched_masks_cropped_and_resized():
    """Two gt masks in one image (a filled rectangle and a diagonal), RoIs matched to
    each; in the second image (one gt) one RoI larger than 28 pixels (adaptive
    sampling: 2 samples a bin) partly outside the image, and one of zero size."""
    masks = np.zeros((2, 2, 40, 72), "float32")
    masks[0, 0, 5:20, 8:30] = 1.0
    masks[0, 1, np.arange(40), np.arange(40)] = 1.0
    masks[1, 0, 10:35, 40:70] = 1.0
    rois = np.array([[[6, 3, 33, 21.5], [0, 0, 40, 40], [2.5, 1, 30, 30]],
                     [[36, 8, 80, 37], [0, 0, 0, 0], [38, 9, 71, 36]]], "float32")
    matched = np.array([[0, 1, 1], [0, 0, 0]], "int32")
    got = np.asarray(mask_rcnn.mask_targets(masks, rois, matched, 28))
    assert got.shape == (2, 3, 28, 28)
    for b in range(2):
        for r in range(3):
            expected = _project(masks[b, matched[b, r]], rois[b, r], 28)
            atol = testing.float32_atol(expected, terms=40 * 72, scale=1.0)
            np.testing.assert_allclose(got[b, r], expected, rtol=0, atol=atol)


def test_mask_loss_is_the_true_class_bce_over_foreground_rois():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 3, 4, 4, 5)).astype("float32")
    targets = rng.uniform(0, 1, (2, 3, 4, 4)).astype("float32")
    labels = np.array([[2, 0, -1], [4, 1, 0]])
    got = float(mask_rcnn.mask_loss(logits, labels, targets))
    terms = []
    for b, r in zip(*np.nonzero(labels > 0)):
        x, t = logits[b, r, ..., labels[b, r]].astype("float64"), targets[b, r]
        p = 1 / (1 + np.exp(-x))
        terms.append(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    expected = np.mean(terms)
    assert got == pytest.approx(expected, rel=1e-5)
    none = float(mask_rcnn.mask_loss(logits, np.zeros((2, 3), "int32"), targets))
    assert none == 0.0


def test_masks_are_pasted_at_their_boxes_and_overlaps_go_to_the_higher_score():
    """Two detections whose boxes overlap, masks all-on (logit 10) in their own class
    channel and all-off in the others; the lower-scoring one is listed first."""
    logits = np.full((1, 3, 28, 28, 4), -10.0, "float32")
    logits[0, 0, ..., 2] = 10.0  # detection 0: class 1 -> channel 2
    logits[0, 1, ..., 1] = 10.0  # detection 1: class 0 -> channel 1
    logits[0, 2] = 10.0          # padding: must claim nothing
    boxes = np.array([[[4.0, 4.0, 20.0, 16.0], [12.0, 8.0, 30.0, 28.0], [0, 0, 32, 32]]],
                     "float32")
    classes = np.array([[1, 0, -1]])
    scores = np.array([[0.6, 0.9, 0.0]], "float32")
    layer = PasteMasks((32, 32), 0.5)
    got = np.asarray(layer(logits, boxes, classes, scores, np.array([2])))
    expected = np.zeros((32, 32), "int32")
    expected[4:16, 4:20] = 1
    expected[8:28, 12:30] = 2
    np.testing.assert_array_equal(got[0], expected)
    # The other class's channel is off: nothing pasted.
    wrong = np.asarray(layer(logits, boxes, np.array([[0, 1, -1]]), scores, np.array([2])))
    assert not wrong.any()


def _body():
    """Five stride-2 convolutions, no BatchNorm (random BatchNorm statistics lag the
    batch statistics for hundreds of steps: tests/detection/test_rcnn.py)."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = inputs
    for i, filters in enumerate((16, 32, 32, 48, 64)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                                name=f"c{i}")(x)
    return keras.Model(inputs, x, name="tiny_body")


def _small(scenes, **kwargs):
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in scenes.boxes])
    arguments = dict(classes=10, input_shape=(SIDE, SIDE, 3), backbone=_body(),
                     fpn_channels=32, representation=128, mask_channels=32,
                     rpn_pre_nms_top_n=(200, 200), rpn_post_nms_top_n=(100, 50),
                     sampling={"box_batch_size_per_image": 32},
                     **mask_rcnn.data_arguments("mask_rcnn", wh))
    arguments.update(kwargs)
    return kvision.create("mask_rcnn", **arguments)


STEPS, EVERY = 300, 25  # at most 300 steps; checked every 25


@pytest.fixture(scope="module")
def overfitted():
    """Four scenes, Adam on a cosine over 300 steps, stopping at the first check
    (every 25 steps) where every digit's mask is found (mask IoU >= 0.5) above any
    false detection, through the instance-segmentation protocol; the network and
    figures ``{"map_50", "history"}`` read then, before any test touches it.

    First, on the same untrained network, the empty-batch test's two steps (an
    empty batch of the training batch's shapes, then the batch itself), their logs
    kept, and every variable (weights, seed states, Adam's) put back: both tests
    share one trace of the train step (about 14 s of CPU), and the overfit starts
    where it would have."""
    keras.utils.set_random_seed(0)
    scenes = digit_scenes(4, image_size=SIDE, digit_size=(10, 24), subset="train", seed=1)
    model = _small(scenes)
    model.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(3e-3, STEPS)))
    batches = mask_rcnn.training_dataset(scenes, model, batch_size=4, shuffle=False)
    images, targets = next(iter(batches))
    model.optimizer.build(model.trainable_variables)
    variables = list({id(v): v for v in (*model.variables,
                                         *model.optimizer.variables)}.values())
    state = [np.array(v.numpy()) for v in variables]
    empty = {"boxes": np.zeros(targets["boxes"].shape, "float32"),
             "classes": np.full(targets["classes"].shape, -1, "int32"),
             "masks": np.zeros(targets["masks"].shape, "uint8")}

    def step(data):  # through fit, as batches (B unknown): fit's trace, not another
        history = model.fit(data, shuffle=False, verbose=0).history
        return {k: v[-1] for k, v in history.items()}

    import tensorflow as tf

    empty_logs = step(tf.data.Dataset.from_tensor_slices((images, empty)).batch(4))
    batch_logs = step(batches.take(1))
    for variable, value in zip(variables, state):
        variable.assign(value)

    segmenter = mask_rcnn.inference_model(model, score_threshold=0.3)  # shares weights

    def map_50():
        found = instance.predict_instances(segmenter, scenes.images)
        return evaluate(scenes.ground_truth(), found, iou_type="segm",
                        num_classes=10)["map_50"]

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if map_50() == 1.0:
                self.model.stop_training = True

    history = model.fit(batches.cache().repeat(), epochs=STEPS // EVERY,
                        steps_per_epoch=EVERY, callbacks=[Stop()], verbose=0)
    return {"model": model, "images": images, "empty": empty, "empty_logs": empty_logs,
            "batch_logs": batch_logs, "history": history.history, "map_50": map_50()}


def test_one_batch_is_overfitted_to_mask_ap_50_of_one(overfitted):
    """Within 300 steps: with ``set_random_seed`` 0, 1, 2, there after 175, 150 and 125
    steps (300 steps, the test before, ended there on all three)."""
    assert {*rcnn.LOSS_PARTS, "mask_loss"} <= set(overfitted["history"])
    assert overfitted["map_50"] == 1.0


def test_images_without_objects_give_a_finite_loss_and_no_mask_loss(overfitted):
    """An empty batch: every loss finite, the mask loss 0 (not NaN); the next batch,
    with objects, trains the masks (both steps on the untrained network: see the
    fixture). Targets without masks are refused by name."""
    logs = overfitted["empty_logs"]
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert logs["mask_loss"] == 0.0
    logs = overfitted["batch_logs"]
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert logs["mask_loss"] > 0.0
    empty = overfitted["empty"]
    with pytest.raises(ValueError, match="'masks'"):
        overfitted["model"].train_on_batch(overfitted["images"],
                                           {k: empty[k] for k in ("boxes", "classes")})


def test_the_keras_file_loads_in_safe_mode(tmp_path):
    """The training class, its five loss trackers and the segmenter survive the file
    (the contract's round trip compares the network's outputs)."""
    scenes = digit_scenes(2, image_size=SIDE, digit_size=(10, 24), seed=4)
    model = _small(scenes)
    path = tmp_path / "mask_rcnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, mask_rcnn.MaskRCNNModel)
    assert loaded.task == "instance_segmentation"
    assert [t.name for t in loaded.loss_trackers] == [*rcnn.LOSS_PARTS, "mask_loss"]
    assert_same_outputs(mask_rcnn.inference_model(model, score_threshold=0.0),
                        mask_rcnn.inference_model(loaded, score_threshold=0.0),
                        scenes.images.astype("float32"),
                        what="segmenter of the reloaded network")


def test_the_segmenter_converts_to_tflite_builtins_and_answers_the_same():
    """TFLite has no CropAndResize (tensorflow#44201): RoIAlign, the mask head and the
    paste must convert with builtin operations only, and LiteRT's answers be Keras'."""
    import tensorflow as tf

    from kvision.export.litert import _interpreter_class, custom_ops

    keras.utils.set_random_seed(5)
    scenes = digit_scenes(1, image_size=SIDE, digit_size=(10, 24), seed=5)
    model = _small(scenes, rpn_post_nms_top_n=(100, 20))
    segmenter = mask_rcnn.inference_model(model, score_threshold=0.0, max_detections=8,
                                          mask_threshold=0.5)
    converter = tf.lite.TFLiteConverter.from_keras_model(segmenter)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content = converter.convert()
    assert custom_ops(content) == []
    images = scenes.images.astype("float32")
    runner = _interpreter_class()(model_content=content).get_signature_runner()
    got = runner(images=images)
    expected = keras.tree.map_structure(np.asarray, segmenter(images))
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    np.testing.assert_array_equal(got["classes"], expected["classes"])
    for key in ("boxes", "scores"):
        np.testing.assert_allclose(got[key], expected[key], rtol=0,
                                   atol=testing.float32_atol(expected[key], depth=12))
    assert expected["num_detections"][0] > 0 and expected["instance_map"].any()
    # A pixel whose mask probability is within float32 rounding of the threshold may
    # go either way; no more than a few of the 4,096.
    assert np.mean(got["instance_map"] != expected["instance_map"]) < 1e-3
