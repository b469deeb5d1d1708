"""The two-network instance method: touching digits of one class, mask AP (COCO's
segm evaluation through kvision.metrics.detection), the model, the overlays."""

import os
import tempfile

import keras
import numpy as np
import pytest
from scipy import ndimage

import kvision
from kvision.data.synthetic import digit_scenes
from kvision.layers import InstanceLabeling
from kvision.losses.segmentation import SeparationLoss
from kvision.metrics.detection import evaluate
from kvision.models.segmentation import instance
from kvision.visualization import masks as overlays

CLASSES = 11  # background + digits


@pytest.fixture(scope="module")
def touching():
    """Scenes where same-class digits touch; those with a digit whose ink falls in two
    pieces are left out (any connected-components method splits such a digit)."""
    scenes = digit_scenes(12, image_size=48, objects=(2, 3), digit_size=(12, 18),
                          touching=1.0, seed=3)
    whole = [i for i, masks in enumerate(scenes.masks)
             if all(ndimage.label(m, np.ones((3, 3)))[1] == 1 for m in masks)]
    assert len(whole) >= 10
    return scenes[np.array(whole)]


def _oracle(scenes, use_separation):
    """The combination step on exact maps: one-hot classes, true separation map."""
    probs = np.eye(CLASSES, dtype="float32")[scenes.semantic]
    separation = instance.training_targets(scenes.semantic, scenes.masks)["separation"]
    labeling = InstanceLabeling(min_area=1, grow=2)
    return instance.to_instances(labeling(probs, separation if use_separation else None))


def test_separation_map_splits_touching_digits_of_one_class(touching):
    truth = touching.ground_truth()
    merged = _oracle(touching, use_separation=False)
    split = _oracle(touching, use_separation=True)
    objects = sum(len(c) for c in touching.classes)
    # Alone, the class map joins each pair of touching same-class digits into one.
    assert sum(len(d["classes"]) for d in merged) < objects
    assert evaluate(truth, merged, iou_type="segm", num_classes=10)["map"] < 0.5
    # Cut by the separation map and grown back: every digit is its own instance.
    assert sum(len(d["classes"]) for d in split) == objects
    result = evaluate(truth, split, iou_type="segm", num_classes=10)
    assert result["map"] == pytest.approx(1.0)
    for found, scene_masks, scene_classes in zip(split, touching.masks, touching.classes):
        order = np.lexsort((found["boxes"][:, 1], found["boxes"][:, 0]))
        boxes = np.stack([np.argwhere(m)[:, ::-1].min(0) for m in scene_masks])
        expected = np.lexsort((boxes[:, 1], boxes[:, 0]))
        np.testing.assert_array_equal(found["masks"][order], scene_masks[expected])
        np.testing.assert_array_equal(found["classes"][order], scene_classes[expected])


def test_labeling_layer_outputs(touching):
    probs = np.eye(CLASSES, dtype="float32")[touching.semantic[:2]] * 0.9 + 0.01
    sep = instance.training_targets(touching.semantic[:2], touching.masks[:2])["separation"]
    out = InstanceLabeling(min_area=1, max_detections=2)(probs, sep)
    # Two instances kept per image at most, scores = mean class probability (0.91).
    np.testing.assert_array_equal(out["num_detections"], [2, 2])
    np.testing.assert_allclose(out["scores"], 0.91, atol=1e-5)
    assert set(np.unique(out["instance_map"])) == {0, 1, 2}
    boxes = np.asarray(out["boxes"])[0]
    for k in range(2):
        rows, cols = np.nonzero(np.asarray(out["instance_map"])[0] == k + 1)
        np.testing.assert_array_equal(boxes[k], [cols.min(), rows.min(), cols.max() + 1,
                                                 rows.max() + 1])


def _tiny_network(classes, activation, name):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(classes, 1, activation=activation)(x)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture(scope="module")
def tiny_model():
    """Two tiny networks (a U-Net's first training step takes ~30 s to trace here)."""
    keras.utils.set_random_seed(0)
    return instance.TwoNetworkInstance(
        CLASSES, (32, 32, 3), network=_tiny_network(CLASSES, "softmax", "semantic"),
        separation_network=_tiny_network(1, "sigmoid", "separation"))


def test_registered_builder_puts_two_unets_side_by_side():
    model = kvision.create("two_network_instance", classes=CLASSES,
                           input_shape=(32, 32, 3), network="unet", filters=4)
    unet = [kvision.create("unet", classes=c, input_shape=(32, 32, 3), filters=4)
            for c in (CLASSES, 1)]
    assert model.count_params() == sum(u.count_params() for u in unet)
    assert model.output["semantic"].shape == (None, 32, 32, CLASSES)
    assert model.output["separation"].shape == (None, 32, 32, 1)


def test_two_networks_train_together_and_round_trip(tiny_model, tmp_path):
    scenes = digit_scenes(4, image_size=32, objects=2, digit_size=(12, 14), touching=1.0,
                          seed=5)
    targets = instance.training_targets(scenes.semantic, scenes.masks)
    model = tiny_model
    assert set(model.output) == {"semantic", "separation"}
    before = {n.name: [w.numpy().copy() for w in n.trainable_weights]
              for n in (model.get_layer("semantic"), model.get_layer("separation"))}
    model.compile(keras.optimizers.Adam(1e-2), loss=instance.losses())
    model.fit(scenes.images.astype("float32"), targets, batch_size=4, epochs=1, verbose=0)
    for name, weights in before.items():  # both networks learn from their own loss
        after = model.get_layer(name).trainable_weights
        assert any(not np.allclose(a, b.numpy()) for a, b in zip(weights, after)), name
    runner = instance.inference_model(model, score_threshold=0.0)
    path = os.path.join(tmp_path, "instances.keras")
    runner.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = scenes.images.astype("float32")
    expected, got = runner(x), loaded(x)
    assert set(got) == set(instance.OUTPUTS)
    for key in instance.OUTPUTS:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)


def test_separation_loss_balances_rare_pixels():
    y = np.zeros((1, 10, 10, 1), "float32")
    y[0, 0, :2] = 1.0
    p = np.full_like(y, 0.2)
    pos, neg = -np.log(0.2), -np.log(0.8)
    balanced = float(SeparationLoss()(y, p))
    assert balanced == pytest.approx(0.5 * pos + 0.5 * neg, rel=1e-5)
    weighted = float(SeparationLoss(positive_weight=3.0)(y, p))
    assert weighted == pytest.approx((3 * 2 * pos + 98 * neg) / 100, rel=1e-5)


def test_bad_input_names_the_sample(touching):
    masks = list(touching.masks[:3])
    masks[1] = masks[1][:, :40]
    with pytest.raises(ValueError, match=r"Sample 1: instance masks of shape \(\d, 40, 48\)"):
        instance.training_targets(touching.semantic[:3], masks)
    with pytest.raises(ValueError, match="2 sets of instance masks for 3 label maps"):
        instance.training_targets(touching.semantic[:3], masks[:2])
    with pytest.raises(ValueError, match="must output"):
        inputs = keras.Input((32, 32, 3))
        wrong = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
        instance.TwoNetworkInstance(CLASSES, (32, 32, 3), network=wrong)


def test_overlays(touching, tmp_path):
    image, labels = touching.images[0], touching.semantic[0]
    drawn = overlays.draw_label_map(image, labels, alpha=0.6, legend=False)
    colours = overlays.palette(CLASSES)
    fg = labels > 0
    expected = (0.4 * image[fg] + 0.6 * colours[labels[fg]]).astype(np.uint8)
    np.testing.assert_allclose(drawn[fg], expected, atol=1)  # float -> uint8 rounding
    np.testing.assert_array_equal(drawn[~fg], image[~fg])
    found = _oracle(touching[:1], use_separation=True)[0]
    path = overlays.save_overlay(os.path.join(tmp_path, "o.png"), image, instances=found,
                                 class_names=touching.class_names, scale=1, captions=False,
                                 outline=False)
    from PIL import Image

    written = np.asarray(Image.open(path))
    for k, mask in enumerate(found["masks"]):  # each instance in its own colour
        np.testing.assert_allclose(
            written[mask], (0.4 * image[mask] + 0.6 * overlays.palette(k + 1)[k]).astype(
                np.uint8), atol=1)
    with pytest.raises(ValueError, match="label map is 40x48 pixels but the image is 48x48"):
        overlays.draw_label_map(image, labels[:40])
    with pytest.raises(ValueError, match="either `labels`.*or `instances`"):
        overlays.save_overlay(os.path.join(tmp_path, "x.png"), image)


def test_labeling_exports_to_tflite_builtins(touching):
    """The components loop, NMS-free ranking and boxes convert with TFLite builtin
    operators only, and the interpreter gives the Keras outputs exactly."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from kvision.export.litert import custom_ops

    inputs = keras.Input((48, 48, CLASSES + 1))
    labeling = InstanceLabeling(min_area=1, max_detections=4)
    model = keras.Model(inputs, labeling(inputs[..., :CLASSES], inputs[..., CLASSES:]))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x),
                         input_signature=[tf.TensorSpec((None, 48, 48, CLASSES + 1))])
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        content = converter.convert()
    assert custom_ops(content) == []
    probs = np.eye(CLASSES, dtype="float32")[touching.semantic[:2]]
    sep = instance.training_targets(touching.semantic[:2], touching.masks[:2])["separation"]
    x = np.concatenate([probs, sep], axis=-1)
    runner = Interpreter(model_content=content).get_signature_runner()
    got = runner(**{runner.get_input_details().popitem()[0]: x})
    expected = model(x)
    for key in instance.OUTPUTS:
        np.testing.assert_array_equal(got[key], expected[key])
