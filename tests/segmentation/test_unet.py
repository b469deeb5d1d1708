"""U-Net: the paper's network (parameters, output size), encoders, and the overfitting
check of every architecture (SegNet's is in test_segnet.py: its trained model feeds
the export tests there)."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

import keras
from kvision import create, get_info
from kvision.data.synthetic import digit_scenes
from kvision.losses.segmentation import PixelCrossEntropy

SIZE, CLASSES = 32, 11


def mean_iou(truth, predicted, classes):
    """Mean IoU from scikit-learn's confusion matrix (classes absent from both out)."""
    cm = confusion_matrix(truth.ravel(), predicted.ravel(), labels=range(classes))
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    return float(np.mean(np.diag(cm)[union > 0] / union[union > 0]))


def test_unet_is_the_papers_network():
    model = create("unet", classes=2, input_shape=(572, 572, 1), padding="valid")
    assert model.output_shape == (None, 388, 388, 2)  # Fig. 1 of the paper
    assert model.count_params() == 31_030_658 == get_info("unet").num_params
    ups = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2DTranspose)]
    assert [layer.filters for layer in ups] == [512, 256, 128, 64]  # up-convs halve


def test_same_padding_keeps_the_size_and_bad_sizes_say_which_fit():
    model = create("unet", classes=1, input_shape=(48, 40, 3), filters=4)
    assert model.output_shape == (None, 48, 40, 1)
    assert model.get_layer("predictions").activation.__name__ == "sigmoid"
    with pytest.raises(ValueError, match=r"Close sizes: \[.*572"):
        create("unet", input_shape=(570, 570, 1), padding="valid")
    # 140 stays even down to a 5x5 bottom, whose 1x1 output cannot grow back up.
    with pytest.raises(ValueError, match=r"140 does not\. Close sizes: \[188"):
        create("unet", input_shape=(140, 140, 1), padding="valid")


def _encoder(size=SIZE):
    """A small functional encoder (strides 2..32, BatchNorm), scaling its input."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    for b, width in enumerate((8, 16, 16, 32, 32), start=1):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False,
                                name=f"s{b}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"s{b}_bn")(x)
        x = keras.layers.ReLU(name=f"s{b}_relu")(x)
    return keras.Model(inputs, x, name="encoder")


def _vgg_like(size=SIZE):
    """A narrow VGG: block{i}_pool layers, as kvision's and keras' VGG16 name them."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    for b, width in enumerate((8, 16, 16, 32, 32), start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                name=f"block{b}_conv1")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    return keras.Model(inputs, x, name="vgg_like")


def test_keras_applications_encoder_frozen():
    model = create("unet", classes=3, input_shape=(64, 64, 3), filters=8,
                   encoder="MobileNetV2", backbone_kwargs={"alpha": 0.35},
                   trainable_backbone=False)
    assert model.output_shape == (None, 64, 64, 3)
    backbone = model.get_layer("backbone")
    assert backbone.count_params() > 0 and not backbone.trainable_weights
    assert model.trainable_weights  # the decoder trains
    # Skips at strides 32 (bottom), 16, 8, 4 of a 64-pixel input.
    assert [tuple(s[1:3]) for s in backbone.output_shape] == [(2, 2), (4, 4), (8, 8),
                                                              (16, 16)]


def test_zoo_encoder_by_name_trains_with_the_decoder():
    model = create("unet", classes=3, input_shape=(64, 64, 3), filters=8,
                   encoder="resnet18")
    assert model.output_shape == (None, 64, 64, 3)
    backbone = model.get_layer("backbone")
    assert backbone.trainable and backbone.trainable_weights  # not frozen by default
    assert [tuple(s[1:3]) for s in backbone.output_shape] == [(2, 2), (4, 4), (8, 8),
                                                              (16, 16)]


# DeepLab upsamples its logits bilinearly from stride 8 (v1) / 4 (v3+): it cannot
# draw finer than that (the paper refines boundaries with a CRF afterwards). Its
# targets are the scenes' maps on that grid (each cell the class at its center), and
# its logits must get every cell right. The others learn their upsampling
# (deconvolutions, unpooling, skips) and must get every pixel right.
def _fcn():
    return dict(backbone=_vgg_like(), fc_units=32, dropout=0.0)


# name: (cell, initial learning rate (cosine decay), steps, builder arguments)
ARCHITECTURES = {
    "fcn32s": (1, 1e-2, 400, _fcn),
    "fcn16s": (1, 1e-2, 400, _fcn),
    "fcn8s": (1, 1e-2, 400, _fcn),
    "unet": (1, 1e-2, 600, lambda: dict(filters=8)),
    "unet-encoder": (1, 1e-2, 600, lambda: dict(encoder=_encoder(), filters=8)),
    "deeplabv1": (8, 1e-2, 400, lambda: dict(backbone=_vgg_like(), fc_units=32,
                                             dropout=0.0, atrous_rate=2)),
    "deeplabv3_plus": (4, 1e-2, 400, lambda: dict(backbone=_encoder(), filters=16,
                                                  low_level_filters=8)),
}


@pytest.fixture(scope="module")
def scenes():
    return digit_scenes(2, image_size=SIZE, objects=(1, 2), digit_size=(14, 24), seed=0)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_each_architecture_overfits_one_batch(architecture, scenes):
    cell, rate, steps, arguments = ARCHITECTURES[architecture]
    cells = scenes.semantic[:, cell // 2::cell, cell // 2::cell]
    labels = np.kron(cells, np.ones((1, cell, cell), cells.dtype))
    keras.utils.set_random_seed(0)
    model = create(architecture.split("-")[0], classes=CLASSES,
                   input_shape=(SIZE, SIZE, 3), **arguments())
    assert model.output_shape == (None, SIZE, SIZE, CLASSES)
    schedule = keras.optimizers.schedules.CosineDecay(rate, steps)
    model.compile(keras.optimizers.Adam(schedule), loss=PixelCrossEntropy())
    x = scenes.images.astype("float32")
    model.fit(np.repeat(x, steps, 0), np.repeat(labels, steps, 0), batch_size=2, verbose=0)
    if cell > 1:
        logits = keras.Model(model.input, model.get_layer("logits").output)
        assert mean_iou(cells, np.asarray(logits(x)).argmax(-1), CLASSES) == 1.0
    else:
        assert mean_iou(labels, np.asarray(model(x)).argmax(-1), CLASSES) == 1.0


@pytest.mark.parametrize("architecture", ["fcn8s", "unet", "deeplabv3_plus"])
def test_tflite_float32_export_agrees_per_pixel(architecture, scenes, tmp_path):
    """Learned upsampling, bilinear resizes, skips and atrous convolutions convert with
    builtin operators; the exporter holds the file to the per-pixel bar (99.5%)."""
    from kvision.export import tflite
    from kvision.export.litert import TFLiteModel, custom_ops

    keras.utils.set_random_seed(0)
    _, _, _, arguments = ARCHITECTURES[architecture]
    model = create(architecture, classes=CLASSES, input_shape=(SIZE, SIZE, 3),
                   **arguments())
    x = scenes.images.astype("float32")
    path = tmp_path / f"{architecture}.tflite"
    result = tflite(model, path, check_data=x, atol=None)
    assert result.parity["top1_agreement"] >= 0.995
    assert custom_ops(path.read_bytes()) == []
    lite = TFLiteModel(path).predict(x).argmax(-1)
    assert np.mean(lite == model.predict(x, verbose=0).argmax(-1)) >= 0.995
