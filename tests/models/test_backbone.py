"""One backbone contract (kvision.models.backbone): every task builder that takes a
backbone, given a zoo name, a keras.applications name or a keras.Model, takes raw
pixels through the backbone's own preprocessing on an input named "images", copies a
user's model, and reads ``trainable`` one way.

VGG16 is the backbone: the zoo's "vgg16" and keras.applications' "VGG16" are one
architecture with "caffe" preprocessing (the mode the old segmentation builders
replaced by "tf" for a random backbone), and it builds in a fraction of a second.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision import create, features, registry, transfer
from kvision.layers import InferenceBackbone
from kvision.models.backbone import build_backbone

SHAPE = (64, 64, 3)


def _classifier(backbone, weights, trainable):
    if isinstance(trainable, str):
        return transfer.build_classifier(backbone, 2, weights=weights, input_shape=SHAPE,
                                         regime=trainable)
    layers = {True: "all", False: None}[trainable] if isinstance(trainable, bool) \
        else trainable
    return transfer.build_classifier(backbone, 2, weights=weights, input_shape=SHAPE,
                                     trainable_layers=layers)


def _task(name, **options):
    def build(backbone, weights, trainable):
        key = "encoder" if name == "unet" else "backbone"
        return create(name, classes=2, input_shape=SHAPE, backbone_weights=weights,
                      trainable_backbone=trainable, **{key: backbone}, **options)
    return build


# Every builder that takes a backbone (SegNet has only its own VGG encoder; YOLOv3-
# tiny's and OverFeat's default bodies are the papers', here replaced).
BUILDERS = {
    "yolov3": _task("yolov3"),
    "yolov3_tiny": _task("yolov3_tiny"),
    "yolov1": _task("yolov1", width=0.0625, grid=2),
    "localizer": _task("localizer", hidden_units=8),
    "overfeat": _task("overfeat", units=(8,), box_units=(8,)),
    "fcn8s": _task("fcn8s", fc_units=8),
    "unet": _task("unet", filters=8),
    "deeplabv1": _task("deeplabv1", fc_units=8),
    "deeplabv3_plus": _task("deeplabv3_plus", filters=8, low_level_filters=8),
    "two_network_instance": lambda b, w, t: create(
        "two_network_instance", classes=2, input_shape=SHAPE, network="unet", encoder=b,
        backbone_weights=w, trainable_backbone=t, filters=8),
    "build_classifier": _classifier,
    "extractor": lambda b, w, t: features.extractor(b, weights=w, input_shape=SHAPE,
                                                    trainable=t),
}
KINDS = ("zoo", "keras", "model")


@pytest.fixture(scope="module")
def vgg():
    """The user's model: keras.applications' VGG16 without its top, random."""
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=SHAPE)


def _backbone_arg(kind, vgg):
    return {"zoo": "vgg16", "keras": "VGG16", "model": vgg}[kind]


def _parts(model):
    """``(the task model's input names, its preprocessing layer, its nested backbones)``
    (the instance model holds two networks, each with its backbone)."""
    nets = ([model.get_layer("semantic"), model.get_layer("separation")]
            if "semantic" in [layer.name for layer in model.layers] else [model])
    return ([t.name for t in model.inputs], nets[0].get_layer("preprocessing"),
            [net.get_layer("backbone") for net in nets])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_the_backbones_own_preprocessing_on_one_input(builder, kind, vgg):
    model = BUILDERS[builder](_backbone_arg(kind, vgg), None, True)
    inputs, preprocessing, backbones = _parts(model)
    # The registry's mode for the zoo name, keras' own preprocess_input for the
    # keras.applications name, none for a model (called on what its input takes).
    expected = {"zoo": registry.get_info("vgg16").preprocessing,
                "keras": transfer.keras_preprocessing("VGG16"), "model": "none"}[kind]
    assert preprocessing.mode == expected == ("none" if kind == "model" else "caffe")
    assert inputs == ["images"]
    # A user's model is pretrained (an InferenceBackbone); a random name is not.
    assert all(isinstance(b, InferenceBackbone) == (kind == "model") for b in backbones)


def test_the_mode_is_the_same_random_or_pretrained_and_rgb_only_falls_back(vgg, tmp_path):
    path = str(tmp_path / "vgg16.weights.h5")
    vgg.save_weights(path)
    for name in ("unet", "yolov3"):
        modes = {_parts(BUILDERS[name]("vgg16", w, True))[1].mode for w in (None, path)}
        assert modes == {"caffe"}, name
    gray = create("unet", classes=2, input_shape=(64, 64, 1), encoder="vgg16", filters=8)
    assert gray.get_layer("preprocessing").mode == "tf"  # caffe needs RGB


def _loss(model, x):
    return sum(tf.reduce_mean(tf.square(tf.cast(o, "float32") - 0.3))
               for o in keras.tree.flatten(model(x, training=True)))


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_a_users_model_is_copied_with_its_weights(builder, vgg):
    original = [np.array(w) for w in vgg.weights]
    model = BUILDERS[builder](vgg, None, True)
    backbone = _parts(model)[2][0]
    copied = [np.array(w) for w in backbone.weights]
    assert len(copied) == len(original)  # VGG16 has no classifier to cut here
    for mine, theirs in zip(copied, original):
        np.testing.assert_array_equal(mine, theirs)  # its weights, not new ones
    x = np.random.default_rng(0).uniform(0, 255, (1, *SHAPE)).astype("float32")
    with tf.GradientTape() as tape:
        loss = _loss(model, x)
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    keras.optimizers.SGD(0.1).apply(
        [tf.zeros_like(v) if g is None else g for g, v in zip(gradients, variables)],
        variables)
    assert any(not np.array_equal(np.array(w), c) for w, c in zip(backbone.weights, copied))
    for now, before in zip(vgg.weights, original):  # the caller's model: untouched
        np.testing.assert_array_equal(np.array(now), before)


def _reference_counts():
    """Trainable parameters of VGG16's layers that each ``trainable`` selects, read
    off a plain keras.applications VGG16: all, none, the last two blocks (its last
    two convolutions), and regime large-different (all after the stride-4 stage
    output block3_conv3: blocks 4 and 5)."""
    plain = keras.applications.VGG16(include_top=False, weights=None, input_shape=SHAPE)
    params = {layer.name: layer.count_params() for layer in plain.layers}
    convs = [n for n in params if "conv" in n]
    return {True: sum(params.values()), False: 0,
            2: sum(params[n] for n in convs[-2:]),
            "large-different": sum(params[n] for n in convs
                                   if n.startswith(("block4", "block5")))}


def _trainable_count(layer):
    return int(sum(np.prod(v.shape) for v in layer.trainable_weights))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("trainable", [True, False, 2, "large-different"],
                         ids=["true", "false", "int", "regime"])
def test_trainable_means_the_same_in_every_task(trainable, kind, vgg):
    expected = _reference_counts()[trainable]
    for builder, build in sorted(BUILDERS.items()):
        model = build(_backbone_arg(kind, vgg), None, trainable)
        for backbone in _parts(model)[2]:
            assert _trainable_count(backbone) == expected, (builder, trainable)


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_anything_else_is_refused_by_name(builder):
    # (build_classifier's trainable_layers also takes a regex or layer names.)
    with pytest.raises(ValueError, match=r"must be .*an int"):
        BUILDERS[builder]("vgg16", None, 1.5)
    if builder != "build_classifier":
        with pytest.raises(ValueError, match=r"True \(all of it trains\), False "
                                             r"\(frozen\), an int N >= 0"):
            BUILDERS[builder]("vgg16", None, "large")


def test_a_missing_level_names_the_levels_the_backbone_has():
    with pytest.raises(ValueError, match=r"yolov3 needs the backbone's levels \['P3', "
                                         r"'P4', 'P5'\] .*; 'lenet5' has \['P2'\]"):
        create("yolov3", classes=2, input_shape=(64, 64, 3), backbone="lenet5")
    # small-different cuts at stride 16: a task that needs P5 says so; one that
    # needs the backbone's output gets the cut, the same in every such task.
    with pytest.raises(ValueError, match=r"has \['P2', 'P3', 'P4'\] \(P5 is missing\)"):
        create("unet", classes=2, input_shape=SHAPE, encoder="vgg16", filters=8,
               trainable_backbone="small-different")
    counts = {_trainable_count(_parts(build("vgg16", None, "small-different"))[2][0])
              for build in (BUILDERS["build_classifier"], BUILDERS["localizer"])}
    assert counts == {0}


def test_levels_are_the_registrys_stage_outputs():
    images, (p3, p5) = build_backbone("vgg16", ("P3", "P5"), input_shape=SHAPE)
    net = p3._keras_history.operation
    stages = registry.get_info("vgg16").stage_outputs
    assert [t._keras_history.operation.name for t in net.outputs] == [stages[8], stages[32]]
    assert tuple(p3.shape[1:3]) == (8, 8) and tuple(p5.shape[1:3]) == (2, 2)
