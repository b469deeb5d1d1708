"""kvision.transfer: layout, freezing, BatchNorm in inference mode, regimes,
two-phase fine-tuning and scikit-learn heads."""

import importlib
import os
import re
import tempfile

import keras
import numpy as np
import pytest

from kvision import features, registry, transfer
from kvision.data import digits
from kvision.layers import ImagePreprocessing

# --- helpers ------------------------------------------------------------------------


def _values(variables):
    return {v.path: np.array(v) for v in variables}


def _trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def _trainable_names(backbone):
    return {layer.name for layer in backbone.layers if layer.trainable and layer.weights}


class _Snapshots(keras.callbacks.Callback):
    """Weights at the start and end of every ``fit``, and each fit's optimizer."""

    def __init__(self):
        super().__init__()
        self.begin, self.end, self.optimizers = [], [], []

    def on_train_begin(self, logs=None):
        self.begin.append(_values(self.model.weights))
        optimizer = self.model.optimizer
        self.optimizers.append((optimizer, float(np.array(optimizer.learning_rate))))

    def on_train_end(self, logs=None):
        self.end.append(_values(self.model.weights))


def _random_data(n=16, size=32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32"), np.arange(n) % classes


# --- keras.applications backbones ---------------------------------------------------

def test_keras_backbones_and_their_preprocessing():
    names = transfer.keras_backbones()
    for expected in ("VGG16", "ResNet50", "ResNet50V2", "InceptionV3", "Xception",
                     "DenseNet121", "MobileNet", "MobileNetV2", "MobileNetV3Small",
                     "EfficientNetB0", "EfficientNetV2B0", "ConvNeXtTiny", "NASNetMobile",
                     "InceptionResNetV2"):
        assert expected in names
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    for name in names:  # the layer gives what the model's own module gives
        module = importlib.import_module(getattr(keras.applications, name).__module__)
        mode = transfer.keras_preprocessing(name)
        np.testing.assert_allclose(np.asarray(ImagePreprocessing(mode)(x)),
                                   np.asarray(module.preprocess_input(x.copy())),
                                   atol=2e-5, err_msg=name)
    assert transfer.keras_preprocessing("ResNet50") == "caffe"
    assert transfer.keras_preprocessing("DenseNet121") == "torch"


def _calibrate_batchnorm(backbone, x):
    """Set every BatchNorm's statistics to those of one training-mode pass on ``x``
    (momentum 0), as pretrained weights would have: with the initial (0, 1) the
    signal of an untrained MobileNetV2 in inference mode fades to ~1e-10 and
    gradients vanish below float32 resolution."""
    norms = [layer for layer in backbone.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.trainable, layer.momentum = True, 0.0
    keras.Model(backbone.input, backbone.output)(x, training=True)  # a plain view
    for layer in norms:
        layer.momentum = 0.999


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """MobileNetV2 (alpha 0.35, BatchNorm everywhere) at 32x32, head only, pretrained:
    its weights file holds calibrated BatchNorm statistics (a pretrained backbone is
    one given weights; weights=None is a random one, whose BatchNorm learns)."""
    keras.utils.set_random_seed(0)  # the backbone's and the head's initial values
    net = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                         input_shape=(32, 32, 3))
    pixels = _random_data(64, seed=1)[0]
    _calibrate_batchnorm(net, pixels / 127.5 - 1.0)
    path = str(tmp_path_factory.mktemp("mobilenet") / "backbone.weights.h5")
    net.save_weights(path)
    return transfer.build_classifier("MobileNetV2", 3, weights=path,
                                     input_shape=(32, 32, 3), alpha=0.35)


def test_layout_and_raw_pixel_input(mobilenet):
    assert [layer.name for layer in mobilenet.layers] == [
        "images", "preprocessing", "backbone", "avg_pool", "head_dropout", "predictions"]
    assert mobilenet.get_layer("preprocessing").mode == "tf"
    backbone = mobilenet.get_layer("backbone")
    assert backbone._inbound_nodes[-1].arguments.kwargs["training"] is False
    assert not backbone.trainable_weights and not _trainable_names(backbone)  # head only
    assert {v.path for v in mobilenet.trainable_weights} == {
        "predictions/kernel", "predictions/bias"}
    x, _ = _random_data(2)
    # Reference: keras' own preprocess_input outside, the same layers after it.
    from keras.applications import mobilenet_v2

    pooled = np.asarray(backbone(mobilenet_v2.preprocess_input(x.copy()))).mean(axis=(1, 2))
    expected = mobilenet.get_layer("predictions")(pooled)
    np.testing.assert_allclose(np.asarray(mobilenet(x)), np.asarray(expected), atol=1e-5)


@pytest.fixture(scope="module")
def tuned(mobilenet):
    """fine_tune of the MobileNetV2 classifier: 2 steps per phase, snapshots.
    Eager (no tracing, 3x faster here): the same Python path sets ``training``."""
    keras.utils.set_random_seed(1)  # dropout and the order of the batches
    snapshots = _Snapshots()
    x, y = _random_data()
    history = transfer.fine_tune(mobilenet, (x, y), head_epochs=1, epochs=1,
                                 unfreeze_blocks=1, learning_rate=1e-2,
                                 fine_tune_learning_rate=1e-5, batch_size=8,
                                 callbacks=[snapshots], verbose=0,
                                 compile_kwargs=dict(run_eagerly=True))
    return mobilenet, snapshots, history


def test_frozen_batchnorm_backbone_unchanged_by_fit(tuned):
    model, snapshots, _ = tuned
    backbone = model.get_layer("backbone")
    before, after = snapshots.begin[0], snapshots.end[0]
    backbone_paths = [v.path for v in backbone.weights]
    assert sum("moving_mean" in p for p in backbone_paths) >= 30
    for path in backbone_paths:  # moving means/variances included
        np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    assert not np.array_equal(after["predictions/kernel"], before["predictions/kernel"])


def test_fine_tune_second_phase(tuned):
    model, snapshots, history = tuned
    backbone = model.get_layer("backbone")
    unfrozen = features.blocks(backbone)[-1]
    assert unfrozen == ["Conv_1", "Conv_1_bn", "out_relu"]  # 1x1 conv to 1280, BN, ReLU6
    before, after = snapshots.begin[1], snapshots.end[1]
    for layer in backbone.layers:
        trainable = {v.path for v in layer.trainable_weights}
        for variable in layer.weights:
            changed = not np.array_equal(after[variable.path], before[variable.path])
            assert changed == (layer.name in unfrozen and variable.path in trainable), \
                variable.path
    assert not np.array_equal(after["predictions/kernel"], before["predictions/kernel"])
    (first, first_rate), (second, second_rate) = snapshots.optimizers
    assert second is not first and second is model.optimizer
    assert first_rate == pytest.approx(1e-2) and second_rate == pytest.approx(1e-5)
    assert history.head.epoch == [0] and history.fine_tune.epoch == [1]
    # Control: Conv_1_bn trained in phase 2 with unchanged statistics because the
    # backbone stays in inference mode even when asked for training; the same
    # layers in a plain functional model, in training mode, move them.
    bn = backbone.get_layer("Conv_1_bn")
    assert bn.trainable and isinstance(backbone, transfer.InferenceBackbone)
    mean = np.array(bn.moving_mean)
    x = _random_data()[0] / 127.5 - 1.0
    backbone(x, training=True)
    np.testing.assert_array_equal(np.array(bn.moving_mean), mean)
    keras.Model(backbone.input, backbone.output)(x, training=True)
    assert not np.allclose(np.array(bn.moving_mean), mean)


def test_unfrozen_batchnorm_keeps_statistics_under_graph_fit():
    """Graph-mode fit with every backbone layer trainable: BatchNorm statistics stay,
    its gamma trains. Control: a plain nested functional model called with
    training=False does update them under fit (Keras 3 overrides the flag)."""
    def tiny():
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        return keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))

    x, y = _random_data(16, size=8)
    model = transfer.build_classifier(tiny(), 3, trainable_layers="all", dropout=0.0)
    bn = model.get_layer("backbone").get_layer("bn")
    mean, gamma = np.array(bn.moving_mean), np.array(bn.gamma)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(np.array(bn.moving_mean), mean)
    assert not np.array_equal(np.array(bn.gamma), gamma)

    plain = tiny()
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(plain(inputs, training=False)))
    control = keras.Model(inputs, outputs)
    mean = np.array(plain.get_layer("bn").moving_mean)
    control.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    control.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(np.array(plain.get_layer("bn").moving_mean), mean)


def test_regimes_ordered_as_documented(mobilenet):
    backbone = mobilenet.get_layer("backbone")
    order = [layer.name for layer in backbone.layers]
    counts = {}
    for regime in ("small-similar", "large-similar", "large-different"):
        transfer.set_trainable(mobilenet, regime=regime)
        counts[regime] = _trainable_count(mobilenet)
        trainable = {layer.name for layer in backbone.layers[1:] if layer.trainable}
        if regime == "large-similar":  # the stride-32 stage
            assert trainable == set(order[order.index("block_13_expand_relu") + 1:])
        if regime == "large-different":  # all but the stem (stride <= 4)
            assert trainable == set(order[order.index("block_3_expand_relu") + 1:])
    transfer.set_trainable(mobilenet, None)
    shallow = transfer.build_classifier("MobileNetV2", 3, weights=None, alpha=0.35,
                                        input_shape=(32, 32, 3), regime="small-different")
    cut = shallow.get_layer("backbone")
    assert cut.layers[-1].name == "block_13_expand_relu"
    assert cut.output_shape[1:3] == (2, 2)  # stride 16 at 32 px
    counts["small-different"] = _trainable_count(shallow)
    ordered = [counts[r] for r in ("small-different", "small-similar", "large-similar",
                                   "large-different")]
    assert ordered == sorted(set(ordered)), counts
    for name, preset in transfer.REGIMES.items():
        assert name in transfer.__doc__ and preset.why


def test_regime_fallbacks_on_a_small_network():
    """LeNet-5 has one stage output (stride 4, its last layer): large-similar trains
    its last block, small-different has nothing shallower to cut."""
    model = transfer.build_classifier("lenet5", 3, weights=None, regime="large-similar")
    backbone = model.get_layer("backbone")
    assert _trainable_names(backbone) == {"c3_conv"}  # c3_conv -> s4_pool
    with pytest.raises(ValueError, match="small-similar"):
        transfer.build_classifier("lenet5", 3, weights=None, regime="small-different")


# --- trainable layers ---------------------------------------------------------------

def test_trainable_layers_by_blocks_regex_and_names():
    model = transfer.build_classifier("resnet18", 2, weights=None,
                                      input_shape=(64, 64, 3), trainable_layers=1)
    backbone = model.get_layer("backbone")
    names = [layer.name for layer in backbone.layers if layer.weights]
    assert _trainable_names(backbone) == {n for n in names if n.startswith("conv5_block2_")}
    expected_weights = sum(len(backbone.get_layer(n).trainable_weights)
                           for n in _trainable_names(backbone))
    assert len(model.trainable_weights) == expected_weights + 2  # + predictions
    transfer.set_trainable(model, 2)
    assert _trainable_names(backbone) == {n for n in names if n.startswith("conv5_")}
    transfer.set_trainable(model, "conv4_block1_[0-9]_conv")
    assert _trainable_names(backbone) == {"conv4_block1_0_conv", "conv4_block1_1_conv",
                                          "conv4_block1_2_conv"}
    transfer.set_trainable(model, ["conv1_conv", "conv1_bn"])
    assert _trainable_names(backbone) == {"conv1_conv", "conv1_bn"}
    transfer.set_trainable(model, "all")
    assert _trainable_names(backbone) == set(names)
    with pytest.raises(ValueError, match="Close names: conv1_conv"):
        transfer.set_trainable(model, ["conv1_convv"])
    with pytest.raises(ValueError, match=">= 0"):
        transfer.set_trainable(model, -1)
    with pytest.raises(ValueError, match="matches no layer"):
        transfer.set_trainable(model, "^nothing$")
    vgg = transfer.build_classifier("vgg11", 2, weights=None, input_shape=(32, 32, 3),
                                    trainable_layers=2)
    assert _trainable_names(vgg.get_layer("backbone")) == {"block5_conv1", "block5_conv2"}


# --- a network trained here as the backbone, and scikit-learn heads -----------------

@pytest.fixture(scope="module")
def lenet_digits():
    """LeNet-5 trained 2 epochs on the digits, and the digits."""
    (x_train, y_train), (x_test, y_test) = digits.load_digits()
    keras.utils.set_random_seed(0)
    lenet = registry.create("lenet5")
    lenet.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    lenet.fit(x_train, y_train, batch_size=32, epochs=2, verbose=0)
    return lenet, (x_train, y_train), (x_test, y_test)


def test_fit_sklearn_head_on_digits(lenet_digits):
    import tensorflow as tf
    from sklearn.ensemble import RandomForestClassifier

    lenet, (x_train, y_train), (x_test, y_test) = lenet_digits
    head = transfer.fit_sklearn_head(features.extractor(lenet), (x_train, y_train),
                                     RandomForestClassifier(30, random_state=0))
    # Reference: scikit-learn fitted on features from a plain Keras sub-model.
    f6 = keras.Model(lenet.input, lenet.get_layer("f6_fc").output)
    reference = RandomForestClassifier(30, random_state=0).fit(
        f6.predict(x_train, verbose=0), y_train)
    test_features = f6.predict(x_test, verbose=0)
    predictions = head.predict(x_test)
    np.testing.assert_array_equal(predictions, reference.predict(test_features))
    np.testing.assert_allclose(head.predict_proba(x_test),
                               reference.predict_proba(test_features))
    accuracy = head.score(x_test, y_test)
    assert accuracy == pytest.approx(np.mean(predictions == y_test))
    assert accuracy > 0.8  # chance is 0.1 (0.97 measured)
    dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(100)
    from_dataset = transfer.fit_sklearn_head(features.extractor(lenet), dataset,
                                             RandomForestClassifier(30, random_state=0))
    np.testing.assert_array_equal(from_dataset.predict(x_test), predictions)


def test_transfer_from_a_trained_model(lenet_digits):
    lenet, (x_train, y_train), (x_test, _) = lenet_digits
    original = [np.array(w) for w in lenet.weights]
    model = transfer.build_classifier(lenet, 5, dropout=0.0, trainable_layers="all")
    assert model.get_layer("preprocessing").mode == "none"
    backbone = model.get_layer("backbone")
    assert backbone.layers[-1].name == "f6_fc" and backbone.output_shape == (None, 84)
    f6 = keras.Model(lenet.input, lenet.get_layer("f6_fc").output)
    np.testing.assert_allclose(np.asarray(backbone(x_test[:8])),
                               np.asarray(f6(x_test[:8])), atol=1e-6)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x_train[:64], y_train[:64] % 5, epochs=1, verbose=0)
    for before, after in zip(original, lenet.weights):  # the user's model is a copy
        np.testing.assert_array_equal(np.array(after), before)
    assert not np.allclose(np.array(backbone.get_layer("c1_conv").kernel), original[0])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "transfer.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x_test[:8], verbose=0),
                               model.predict(x_test[:8], verbose=0), atol=1e-6)


def test_heads_pooling_and_local_weights_file():
    source = registry.create("lenet5", include_top=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lenet5_notop.weights.h5")
        source.save_weights(path)
        model = transfer.build_classifier("lenet5", 3, weights=path, head="mlp")
        for a, b in zip(model.get_layer("backbone").weights, source.weights):
            np.testing.assert_array_equal(np.array(a), np.array(b))
        missing = os.path.join(tmp, "missing.weights.h5")
        with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
            transfer.build_classifier("lenet5", 3, weights=missing)
    assert model.get_layer("head_dense").units == 256
    assert [layer.name for layer in model.layers][-3:] == ["head_dense", "head_dropout",
                                                           "predictions"]
    custom = transfer.build_classifier("lenet5", 3, weights=None,
                                       head=keras.layers.Dense(7, name="my_head"))
    assert custom.get_layer("predictions").kernel.shape == (7, 3)
    flat = transfer.build_classifier("lenet5", 3, weights=None, pooling=None,
                                     input_shape=(32, 32, 1),
                                     head=lambda x: x, preprocessing="tf")
    assert flat.get_layer("predictions").kernel.shape == (5 * 5 * 16, 3)
    assert flat.get_layer("preprocessing").mode == "tf"


def test_argument_errors():
    with pytest.raises(ValueError, match="Close matches: ResNet50") as error:
        transfer.build_classifier("Resnet50", 2, weights=None)
    assert "resnet50" in str(error.value)
    with pytest.raises(ValueError, match="either regime= or trainable_layers="):
        transfer.build_classifier("lenet5", 2, weights=None, regime="small-similar",
                                  trainable_layers=1)
    with pytest.raises(ValueError, match="Unknown regime 'tiny'"):
        transfer.build_classifier("lenet5", 2, weights=None, regime="tiny")
    with pytest.raises(ValueError, match="head must be one of"):
        transfer.build_classifier("lenet5", 2, weights=None, head="transformer")
    with pytest.raises(ValueError, match="classes"):
        transfer.build_classifier("lenet5", 0, weights=None)
    with pytest.raises(ValueError, match="mode must be one of"):
        transfer.build_classifier("lenet5", 2, weights=None, preprocessing="imagenet")
    with pytest.raises(ValueError, match="'backbone'"):
        transfer.fine_tune(registry.create("lenet5"), (np.zeros((1, 32, 32, 1)), [0]),
                           head_epochs=1, epochs=1, unfreeze_blocks=1)
    with pytest.raises(ValueError, match="fit"):
        transfer.fit_sklearn_head(None, ([], []), object())


def test_imagenet_weights_offline_raise_connection_error():
    with pytest.raises(ConnectionError, match=re.escape("local weights file")):
        transfer.build_classifier("MobileNet", 2, weights="imagenet", alpha=0.25,
                                  input_shape=(128, 128, 3))
