"""SegNet: the Caffe reference's parameter count, overfitting one batch of digit scenes,
and TFLite exports (builtin ops only, unpooling included) that agree per pixel."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

import keras
from kvision import create, get_info
from kvision.data.synthetic import digit_scenes
from kvision.export import tflite
from kvision.export.litert import TFLiteModel, custom_ops
from kvision.layers import MaxUnpooling2D
from kvision.losses.segmentation import PixelCrossEntropy

SIZE, CLASSES, STEPS = 32, 11, 600


def mean_iou(truth, predicted, classes):
    """Mean IoU from scikit-learn's confusion matrix (classes absent from both out)."""
    cm = confusion_matrix(truth.ravel(), predicted.ravel(), labels=range(classes))
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    return float(np.mean(np.diag(cm)[union > 0] / union[union > 0]))


@pytest.fixture(scope="module")
def scenes():
    return digit_scenes(2, image_size=SIZE, objects=(1, 2), digit_size=(14, 24), seed=0)


@pytest.fixture(scope="module")
def trained(scenes):
    """A narrow SegNet (width 1/8) fit to one batch of two scenes."""
    keras.utils.set_random_seed(0)
    model = create("segnet", classes=CLASSES, input_shape=(SIZE, SIZE, 3), width=0.125)
    for layer in model.layers:  # statistics that follow the fit within ~50 steps
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, STEPS)
    model.compile(keras.optimizers.Adam(schedule), loss=PixelCrossEntropy())
    x, y = scenes.images.astype("float32"), scenes.semantic
    model.fit(np.repeat(x, STEPS, 0), np.repeat(y, STEPS, 0), batch_size=2, verbose=0)
    return model


def test_segnet_has_the_caffe_reference_parameter_count():
    # SegNet-Tutorial's segnet_train.prototxt (CamVid, 11 classes): 26 3x3 convs with
    # bias, BN scale + shift after all but the last; built at 360x480, no forward pass.
    model = create("segnet", classes=11, input_shape=(360, 480, 3))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 29_449_355 == get_info("segnet").num_params
    assert model.output_shape == (None, 360, 480, 11)  # odd sides: pad, then crop back
    unpools = [layer for layer in model.layers if isinstance(layer, MaxUnpooling2D)]
    assert len(unpools) == 5


def test_segnet_overfits_one_batch(trained, scenes):
    predicted = np.asarray(trained(scenes.images.astype("float32"))).argmax(-1)
    assert mean_iou(scenes.semantic, predicted, CLASSES) == 1.0


def _agreement(model, path, images):
    keras_labels = model.predict(images, verbose=0).argmax(-1)
    lite_labels = TFLiteModel(path).predict(images).argmax(-1)
    return float(np.mean(keras_labels == lite_labels))


def test_tflite_exports_agree_per_pixel(trained, tmp_path):
    images = digit_scenes(16, image_size=SIZE, objects=(1, 2), digit_size=(14, 24),
                          subset="test", seed=1).images.astype("float32")
    path = tmp_path / "segnet.tflite"
    # Not max-abs-diff: float rounding (XNNPACK's fused convolutions) can move a
    # near-tied maximum to the next pixel of its window, and unpooling then puts the
    # value one pixel over. What must hold is the per-pixel class.
    tflite(trained, path, check_data=images, atol=10.0)
    assert custom_ops(path.read_bytes()) == []  # builtin ops only
    assert _agreement(trained, path, images) >= 0.995
    int8 = tmp_path / "segnet_int8.tflite"
    tflite(trained, int8, quantize="int8", representative_data=images, check_data=images)
    assert custom_ops(int8.read_bytes()) == []
    assert _agreement(trained, int8, images) >= 0.97


def test_keras_file_round_trip_in_safe_mode(trained, scenes, tmp_path):
    trained.save(tmp_path / "segnet.keras")
    loaded = keras.saving.load_model(tmp_path / "segnet.keras", safe_mode=True)
    x = scenes.images.astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), trained.predict(x, verbose=0),
                               atol=1e-5)
