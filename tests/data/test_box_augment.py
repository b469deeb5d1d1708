import numpy as np
import pytest

from kvision.data.box_augment import DropSmallBoxes, Mosaic, ResizeWithBoxes, box_augmentation

H, W = 96, 128
# two rectangles per image, told apart by colour: red is label 0, green label 1
RECTS = 2 * np.array([[[6, 8, 30, 26], [36, 20, 58, 42]],
                      [[20, 4, 44, 20], [4, 28, 22, 44]],
                      [[30, 10, 60, 40], [2, 2, 14, 14]],
                      [[10, 24, 40, 46], [44, 4, 62, 18]]], "float32")


def _rect_batch(repeat=4):
    boxes = np.tile(RECTS, (repeat, 1, 1))
    images = np.zeros((len(boxes), H, W, 3), "float32")
    for image, pair in zip(images, boxes):
        for channel, (x1, y1, x2, y2) in enumerate(pair.astype(int)):
            image[y1:y2, x1:x2, channel] = 255.0
    labels = np.tile(np.array([[0, 1]], "int32"), (len(boxes), 1))
    return {"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}}


def _pixel_box(mask):
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], "float32")


def _iou(a, b):
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(hi - lo, 0, None))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def _numpy(out):
    return (np.asarray(out["images"]), np.asarray(out["bounding_boxes"]["boxes"]),
            np.asarray(out["bounding_boxes"]["labels"]))


def test_horizontal_flip_moves_boxes_exactly():
    batch = _rect_batch()
    flip = box_augmentation(flip=True, translation=0, zoom=0, colour=0, seed=3)
    images, boxes, labels = _numpy(flip(_rect_batch(), training=True))
    flipped = 0
    originals = batch["bounding_boxes"]["boxes"]
    for image, out_boxes, original, source in zip(images, boxes, originals, batch["images"]):
        mirrored = np.array_equal(image, source[:, ::-1])
        assert mirrored or np.array_equal(image, source)
        expected = original.copy()
        if mirrored:
            expected[:, [0, 2]] = W - original[:, [2, 0]]
            flipped += 1
        np.testing.assert_array_equal(out_boxes, expected)
        for channel, box in enumerate(out_boxes):
            np.testing.assert_array_equal(_pixel_box(image[..., channel] > 127), box)
    assert 0 < flipped < len(images)
    np.testing.assert_array_equal(labels, batch["bounding_boxes"]["labels"])


def test_translation_zoom_and_colour_keep_boxes_on_their_pixels():
    augment = box_augmentation(translation=0.25, zoom=0.3, colour=0.3, seed=5)
    images, boxes, labels = _numpy(augment(_rect_batch(), training=True))
    assert labels.dtype == np.int32
    checked = dropped = 0
    for image, out_boxes, out_labels in zip(images, boxes, labels):
        for channel in range(2):
            box = out_boxes[channel]
            # colour jitter shifts all channels alike; blue holds no rectangle anywhere
            excess = image[..., channel] - image[..., 2]
            ink = excess > max(30.0, excess.max() / 2)      # pixels more than half covered
            pixels = _pixel_box(ink)
            if out_labels[channel] == -1:
                dropped += 1
                assert pixels is None or np.prod(pixels[2:] - pixels[:2]) < 4 * 4
                np.testing.assert_array_equal(box, 0)
                continue
            assert out_labels[channel] == channel
            assert _iou(box, pixels) >= 0.9, (box, pixels)
            checked += 1
    assert checked >= 24


def test_label_maps_move_with_the_pixels_in_tf_data():
    from kvision.data.synthetic import digit_scenes

    scenes = digit_scenes(8, image_size=48, digit_size=(12, 20), objects=(1, 2), seed=6)
    augment = box_augmentation(translation=0.2, zoom=0.2, colour=0, seed=1)
    ds = scenes.as_dataset().ragged_batch(8).map(lambda d: augment(d, training=True))
    out = next(iter(ds))
    images, masks = out["images"].numpy(), out["segmentation_masks"].numpy()[..., 0]
    assert masks.dtype == np.int32 and set(np.unique(masks)) <= set(range(11))
    ink = images.max(-1) >= 64           # the scenes' ink threshold (a quarter of 255)

    def agreement(labelled):
        return (ink & labelled).sum() / (ink | labelled).sum()

    assert agreement(masks > 0) >= 0.85                    # 1.0 before, less by resampling
    assert agreement(scenes.semantic > 0) < 0.5            # they did move


def test_mosaic_tiles_four_images_and_their_boxes():
    import tensorflow as tf

    batch = _rect_batch(repeat=2)
    values = np.array([40.0, 80, 120, 160, 200, 240, 60, 100])  # one grey level per image
    for image, value in zip(batch["images"], values):
        image[image > 0] = value
    mosaic = Mosaic(min_visible=0.3, seed=4)
    images, boxes, labels = _numpy(mosaic(batch, training=True))
    assert images.shape == (8, H, W, 3) and boxes.shape == (8, 8, 4)
    kept = 0
    for i, (image, out_boxes, out_labels) in enumerate(zip(images, boxes, labels)):
        for slot, (box, label) in enumerate(zip(out_boxes, out_labels)):
            q, channel = divmod(slot, 2)
            source = (i + q) % 8
            if label == -1:
                np.testing.assert_array_equal(box, 0)
                continue
            kept += 1
            assert label == channel
            pixels = _pixel_box(image[..., channel] == values[source])
            np.testing.assert_array_equal(pixels, box)
    assert kept >= 8
    # not training: the batch as it was; in a tf.data map it runs as a graph
    same = mosaic(_rect_batch(), training=False)
    np.testing.assert_array_equal(same["images"], _rect_batch()["images"])
    ds = tf.data.Dataset.from_tensors(_rect_batch()).map(lambda d: mosaic(d, training=True))
    assert next(iter(ds))["bounding_boxes"]["boxes"].shape == (16, 8, 4)


def test_resize_keeps_boxes_tight_and_layers_round_trip(tmp_path):
    import keras

    batch = _rect_batch(repeat=1)
    batch["segmentation_masks"] = (batch["images"][..., :1] > 0).astype("int32")
    images, boxes, _ = _numpy(ResizeWithBoxes(32, 32)(batch))
    for image, out_boxes in zip(images, boxes):
        for channel, box in enumerate(out_boxes):
            assert _iou(box, _pixel_box(image[..., channel] > 127)) >= 0.9
    layers = [Mosaic(min_visible=0.4, seed=2), DropSmallBoxes(3.0), ResizeWithBoxes(20, 30)]
    for layer in layers:
        config = keras.saving.serialize_keras_object(layer)
        again = keras.saving.deserialize_keras_object(config, safe_mode=True)
        assert type(again) is type(layer) and again.get_config() == layer.get_config()


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one"):
        box_augmentation(flip=False, translation=0, zoom=0, colour=0)
    single = {"images": np.zeros((H, W, 3), "float32"),
              "bounding_boxes": {"boxes": RECTS[0], "labels": np.array([0, 1])}}
    with pytest.raises(ValueError, match="batches"):
        Mosaic()(single, training=True)
    with pytest.raises(ValueError, match="bounding-box dict"):
        DropSmallBoxes()(np.zeros((1, H, W, 3), "float32"))
    with pytest.raises(ValueError, match="min_visible"):
        Mosaic(min_visible=2)
    with pytest.raises(ValueError, match="'instance_masks' would stay"):
        DropSmallBoxes()(dict(_rect_batch(), instance_masks=np.zeros((16, 2, H, W), bool)))
