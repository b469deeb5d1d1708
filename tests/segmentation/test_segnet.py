"""SegNet: the Caffe reference's parameter count, overfitting one batch of digit scenes,
and TFLite exports (builtin ops only, unpooling included) that agree per pixel."""

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import confusion_matrix

import keras
from kvision import create, get_info
from kvision.data.synthetic import digit_scenes
from kvision.export import tflite
from kvision.export.litert import TFLiteModel, custom_ops
from kvision.layers import MaxUnpooling2D
from kvision.losses.segmentation import PixelCrossEntropy
from kvision.testing import assert_float32_close

# The module-scoped trained fixture is built once, on one worker.
pytestmark = pytest.mark.xdist_group("segnet")

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
    result = tflite(trained, path, check_data=images, atol=None)  # per-pixel check only
    assert result.parity["top1_agreement"] >= 0.995
    assert custom_ops(path.read_bytes()) == []  # builtin ops only
    assert _agreement(trained, path, images) >= 0.995
    int8 = tmp_path / "segnet_int8.tflite"
    result = tflite(trained, int8, quantize="int8", representative_data=images,
                    check_data=images)  # refused below 97% of pixels
    assert result.parity["top1_agreement"] >= 0.97
    assert custom_ops(int8.read_bytes()) == []
    assert _agreement(trained, int8, images) >= 0.97


def test_export_figures_are_per_pixel_agreement():
    """For (N, H, W, classes) outputs the exports' agreement figure is per pixel, and
    check() refuses an export below its bar."""
    from kvision.export.parity import check, compare

    rng = np.random.default_rng(0)
    reference = rng.uniform(size=(2, 6, 5, 4))
    candidate = reference.copy()
    candidate[0, 0, :3] = candidate[0, 0, :3, ::-1]  # 3 of 60 pixels change class
    changed = reference[0, 0, :3].argmax(-1) != candidate[0, 0, :3].argmax(-1)
    figures = compare(reference, candidate)
    assert figures["top1_agreement"] == pytest.approx(1 - changed.sum() / 60)
    with pytest.raises(ValueError, match="top-1 agreement"):
        check(figures, min_top1_agreement=0.995)


def test_savedmodel_export_agrees_per_pixel(trained, tmp_path):
    """SavedModel, unpooling included, run in TF Serving's session loader: every
    pixel's class is the Keras model's."""
    from kvision.export import saved_model

    images = digit_scenes(2, image_size=SIZE, objects=(1, 2), digit_size=(14, 24),
                          subset="test", seed=1).images.astype("float32")
    result = saved_model(trained, tmp_path / "segnet", check_inputs=images,
                         image_bytes=False, warmup=False)
    # Run here in TF's session-based loader (TF Serving's C++ LoadSavedModel, NOTES.md)
    # without kvision's code, and compared with the Keras model here, not through the
    # exporter's own verdict.
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], result.path)
        signature = meta.signature_def["serving_default"]
        (name,) = signature.outputs  # the per-pixel scores
        served = session.run(signature.outputs[name].name,
                             {signature.inputs["images"].name: images})
    expected = trained.predict(images, verbose=0)
    assert served.shape == expected.shape == (2, SIZE, SIZE, CLASSES)
    assert np.mean(served.argmax(-1) == expected.argmax(-1)) == 1.0
    # The same TF kernels, fused otherwise by the loader's graph optimizer: float32
    # rounding through 26 convolutions of at most 3x3x64 terms.
    assert_float32_close(served, expected, terms=3 * 3 * 64, depth=26, scale=1.0)


def _tiny_unpooling_segmenter(size=16, classes=3):
    """SegNet's pattern at its smallest: argmax pooling, a convolution, unpooling."""
    from kvision.layers import MaxPoolingWithArgmax2D

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    pooled, indices = MaxPoolingWithArgmax2D(2)(x)
    y = keras.layers.Conv2D(4, 3, padding="same")(pooled)
    y = MaxUnpooling2D(2)([y, indices, x])
    outputs = keras.layers.Conv2D(classes, 1, activation="softmax")(y)
    return keras.Model(inputs, outputs, name="tiny_segnet")


def test_export_command_checks_a_segmenter_per_pixel(tmp_path, capsys):
    """``kvision export SEGMENTER --data FOLDER``: checked on the folder's images (no
    labels), by the share of pixels whose class agrees."""
    import tensorflow as tf

    from kvision import cli

    keras.utils.set_random_seed(0)
    model = _tiny_unpooling_segmenter()
    model.save(tmp_path / "seg.keras")
    (tmp_path / "images").mkdir()
    images = digit_scenes(3, image_size=16, objects=1, digit_size=(10, 12), seed=4).images
    for i, image in enumerate(images):
        (tmp_path / "images" / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    code = cli.main(["export", str(tmp_path / "seg.keras"), "--format", "tflite",
                     "--data", str(tmp_path / "images")])
    assert code == 0, capsys.readouterr().err
    x = images.astype("float32")
    lite = TFLiteModel(tmp_path / "seg.tflite").predict(x).argmax(-1)
    assert np.mean(lite == model.predict(x, verbose=0).argmax(-1)) >= 0.995


def test_keras_file_round_trip_in_safe_mode(trained, scenes, tmp_path):
    trained.save(tmp_path / "segnet.keras")
    loaded = keras.saving.load_model(tmp_path / "segnet.keras", safe_mode=True)
    x = scenes.images.astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), trained.predict(x, verbose=0),
                               atol=1e-5)
