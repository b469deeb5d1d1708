"""kvision.features: stage outputs checked against a brute-force reference (cut
points by graph reachability, strides from the built model's own shapes), and
extractors against plain Keras sub-models."""

import math

import keras
import numpy as np
import pytest

from kvision import features, registry, transfer


# --- independent references ----------------------------------------------------------

def _edges(model):
    """``{id(operation): [next operations]}`` of ``model``'s own graph (its nodes
    only: layers shared with other models have more)."""
    ops = model.operations
    nexts = {id(op): [] for op in ops}
    for op in ops:
        for index, node in enumerate(op._inbound_nodes):
            if f"{id(op)}_ib-{index}" not in model._nodes:
                continue
            for t in node.input_tensors:
                parent = t._keras_history.operation
                if parent is not None and id(parent) in nexts:
                    nexts[id(parent)].append(op)
    return nexts


def _is_cut(model, name, nexts):
    """True if every input-to-output path passes through layer ``name`` (BFS with
    it removed cannot reach the output)."""
    source = model.inputs[0]._keras_history.operation
    sink = model.outputs[0]._keras_history.operation
    removed = model.get_layer(name)
    if removed is sink:
        return True
    seen, todo = {id(source)}, [source]
    while todo:
        op = todo.pop()
        for nxt in nexts[id(op)]:
            if nxt is removed or id(nxt) in seen:
                continue
            if nxt is sink:
                return False
            seen.add(id(nxt))
            todo.append(nxt)
    return True


def _stride(model, layer):
    """The stride of ``layer``'s output in ``model`` as built (its static shape)."""
    side = layer.output.shape[1]
    return 2 ** round(math.log2(model.input_shape[1] / side))


def _assert_last_cut_points(model, found):
    """Each found layer is a cut point at its stride, and no later layer at that
    stride is one (padding layers excepted: they compute nothing)."""
    nexts = _edges(model)
    order = [layer.name for layer in model.layers]
    for stride, name in found.items():
        layer = model.get_layer(name)
        assert _stride(model, layer) == stride, (name, stride)
        assert _is_cut(model, name, nexts), f"{name} is not a cut point"
        for later in model.layers[order.index(name) + 1:]:
            if (len(later.output.shape) == 4 and _stride(model, later) == stride
                    and not isinstance(later, keras.layers.ZeroPadding2D)):
                assert not _is_cut(model, later.name, nexts), (
                    f"{later.name} is a later cut point at stride {stride} than {name}")


# --- shared models ------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet50():
    return keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")


# --- stage outputs ------------------------------------------------------------------

def test_resnet50_stage_outputs(resnet50):
    found = features.stage_outputs(resnet50)
    # keras-hub's / keras-cv's ResNet50 pyramid taps.
    assert found == {4: "conv2_block3_out", 8: "conv3_block4_out",
                     16: "conv4_block6_out", 32: "conv5_block3_out"}
    _assert_last_cut_points(resnet50, found)


def test_inception_v3_reduction_branches_never_picked():
    model = keras.applications.InceptionV3(weights=None, include_top=False,
                                           input_shape=(299, 299, 3))
    found = features.stage_outputs(model)
    # "valid" padding: mixed7 is 17x17 at 299 (299/17 = 17.6 -> stride 16).
    assert {s: found[s] for s in (8, 16, 32)} == {8: "mixed2", 16: "mixed7",
                                                  32: "mixed10"}
    assert isinstance(model.get_layer(found[4]), keras.layers.Activation)
    _assert_last_cut_points(model, found)


def test_mobilenet_v2_taps_and_none_input_size():
    fixed = registry.create("mobilenet_v2", include_top=False, input_shape=(224, 224, 3))
    found = features.stage_outputs(fixed)
    # The taps keras-io's MobileNetV2 U-Net and DeepLab use: each stride's last
    # expansion (the whole signal passes it; block adds come before it).
    assert found == {4: "block_3_expand_relu", 8: "block_6_expand_relu",
                     16: "block_13_expand_relu", 32: "out_relu"}
    _assert_last_cut_points(fixed, found)
    assert registry.get_info("mobilenet_v2").stage_outputs == found  # one convention
    free = registry.create("mobilenet_v2", include_top=False)
    assert free.input_shape == (None, None, None, 3)
    assert features.stage_outputs(free) == found
    maps = features.extractor(free, [4, 8, 16, 32], pooling=None)(
        np.zeros((1, 96, 96, 3), "float32"))
    assert {s: tuple(m.shape[1:3]) for s, m in maps.items()} == {
        4: (24, 24), 8: (12, 12), 16: (6, 6), 32: (3, 3)}


# The registry's stage outputs are the graph's last cut points (the contract test
# holds all 50 classifiers to it); here the brute-force reference checks them, one
# network of each layout: plain, inverted residual (the stride's last cut point is
# the next block's 1x1 expansion, after the stage's last add), pre-activation (the
# strided block's shortcut bypasses its pre-activation: the previous `_out` is the
# last), dense (the transition's 1x1 conv, before its pooling halves the map).
REGISTRY_CASES = ("lenet5", "alexnet", "zfnet", "vgg16", "vgg11_bn", "squeezenet1_1",
                  "mobilenet_v1", "resnet18", "mobilenet_v3_small", "resnet50_v2",
                  "densenet121", "efficientnet_b0")


@pytest.mark.slow
def test_registry_stage_outputs_are_the_last_cut_points():
    for name in REGISTRY_CASES:
        info = registry.get_info(name)
        size = 299 if info.default_size >= 299 else 224
        model = registry.create(name, include_top=False,
                                input_shape=(size, size, info.input_channels))
        assert features.stage_outputs(model) == info.stage_outputs, name
        _assert_last_cut_points(model, info.stage_outputs)


def test_nested_sub_model_stage_outputs_and_taps():
    backbone = registry.create("mobilenet_v1", include_top=False, alpha=0.25,
                               input_shape=(64, 64, 3))
    model = transfer.build_classifier("mobilenet_v1", 4, weights=None, alpha=0.25,
                                      input_shape=(64, 64, 3))
    assert features.stage_outputs(model) == features.stage_outputs(backbone)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    taps = features.extractor(model, ["conv_pw_5_relu", "backbone/conv_pw_11_relu", 32,
                                      None], pooling=None)(x)
    # Reference: the same weights in a plain model on numpy-preprocessed pixels.
    inner = model.get_layer("backbone")
    backbone.set_weights(inner.get_weights())
    reference = keras.Model(backbone.input, [backbone.get_layer(n).output for n in (
        "conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_13_relu")])(x / 127.5 - 1.0)
    for key, ref in zip(["conv_pw_5_relu", "backbone/conv_pw_11_relu", "32"], reference):
        np.testing.assert_allclose(np.asarray(taps[key]), np.asarray(ref), atol=1e-5)
    np.testing.assert_allclose(np.asarray(taps["avg_pool"]),
                               np.asarray(reference[2]).mean(axis=(1, 2)), atol=1e-5)


# --- extractor ----------------------------------------------------------------------

def test_default_layer_is_before_the_classifier(resnet50, images):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(8, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(6, activation="relu", name="fc2")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    vgg_like = keras.Model(inputs, keras.layers.Dense(3, activation="softmax",
                                                      name="predictions")(x))
    assert features.feature_layer(vgg_like) == "fc2"  # dropout skipped
    assert features.feature_layer(resnet50) == "avg_pool"
    headless = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(
        vgg_like.get_layer("conv").output))
    assert features.feature_layer(headless) == "gap"
    got = features.extractor(resnet50)(images)
    reference = keras.Model(resnet50.input, resnet50.get_layer("avg_pool").output)(images)
    assert got.shape == (2, 2048)
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference), atol=1e-5)


def test_multi_scale_dict_and_pooling(resnet50, images):
    names = {4: "conv2_block3_out", 8: "conv3_block4_out", 16: "conv4_block6_out",
             32: "conv5_block3_out"}
    reference = keras.Model(resnet50.input,
                            {s: resnet50.get_layer(n).output for s, n in names.items()})
    expected = {s: np.asarray(v) for s, v in reference(images).items()}
    maps = features.extractor(resnet50, [4, 8, 16, 32], pooling=None)(images)
    for s in names:
        assert maps[s].shape == (2, 64 // s, 64 // s, expected[s].shape[-1])
        np.testing.assert_allclose(np.asarray(maps[s]), expected[s], atol=1e-5)
    pooled = features.extractor(resnet50, ["P3", "conv4_block6_out"], pooling="max")(images)
    assert set(pooled) == {"P3", "conv4_block6_out"}
    np.testing.assert_allclose(np.asarray(pooled["P3"]), expected[8].max(axis=(1, 2)),
                               atol=1e-5)
    single = features.extractor(resnet50, 16, pooling="avg")(images)
    np.testing.assert_allclose(np.asarray(single), expected[16].mean(axis=(1, 2)),
                               atol=1e-5)


def test_extractor_from_names():
    # A name is its backbone, as in every task: built without its top, raw pixels in
    # through its own preprocessing.
    lenet = features.extractor("lenet5")
    assert lenet.output_shape == (None, 16)  # LeNet-5's S4 (16 maps), averaged
    assert lenet.get_layer("preprocessing").mode == registry.get_info("lenet5").preprocessing
    mobile = features.extractor("MobileNet", "P4", pooling=None, weights=None,
                                input_shape=(64, 64, 3), alpha=0.25)
    assert mobile.output_shape == (None, 4, 4, 128)  # stride 16, 512 * 0.25 channels
    from keras.applications import mobilenet

    x = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    expected = mobile.get_layer("backbone")(mobilenet.preprocess_input(x.copy()))
    np.testing.assert_allclose(np.asarray(mobile(x)), np.asarray(expected), atol=1e-5)


def test_extractor_errors(resnet50):
    with pytest.raises(ValueError, match="conv2_block3_out"):
        features.extractor(resnet50, "conv2_block3_output")
    lenet = registry.create("lenet5")
    with pytest.raises(ValueError, match=r"stride 32.*available strides: \[4\]"):
        features.extractor(lenet, 32)
    with pytest.raises(ValueError, match="pooling"):
        features.extractor(lenet, pooling="mean")
    with pytest.raises(ValueError, match="a layer name, a stride"):
        features.extractor(lenet, 4.0)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        features.stage_outputs(Subclassed())
    with pytest.raises(ValueError, match="Close matches: ResNet50") as error:
        features.extractor("Resnet50")
    assert "resnet50" in str(error.value)  # the kvision name too
