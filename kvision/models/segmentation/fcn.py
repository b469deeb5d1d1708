"""FCN (Long, Shelhamer & Darrell, 2015, "Fully Convolutional Networks for Semantic
Segmentation"): VGG16 with its fully-connected layers turned into convolutions (fc6 a
7x7 conv, fc7 a 1x1 conv), a 1x1 class scorer, and learnable upsampling
(``Conv2DTranspose`` initialized to bilinear interpolation) back to the input size.
FCN-32s upsamples the stride-32 scores at once; FCN-16s first fuses them with scores
from pool4, FCN-8s also with scores from pool3.

Differences from the Caffe reference, which change no parameter: fc6 pads "same" and
the transposed convolutions "same", so an input whose sides are multiples of 32 comes
back at its own size without Caffe's 100-pixel input padding and crops.
"""

from __future__ import annotations

import keras
import numpy as np

from kvision.layers.upsampling import BilinearKernel, ResizeLike
from kvision.models.backbone import build_backbone
from kvision.models.segmentation import _common
from kvision.registry import register

PAPER = "Fully Convolutional Networks for Semantic Segmentation"
VGG_POOLS = {8: "block3_pool", 16: "block4_pool", 32: "block5_pool"}
# The kernel of each "deconvolution" is twice its stride (as in the Caffe models).
SKIPS = {"fcn32s": (), "fcn16s": (16,), "fcn8s": (16, 8)}
PARAMS_SOURCE = ("wkentaro/pytorch-fcn torchfcn/models/{name}.py (= the Caffe "
                 "voc-{name} model), 21 classes, 500x500 input, all parameters")


def _levels(backbone, strides):
    """What FCN taps at ``strides``: a VGG's pool3/pool4/pool5 by name (the paper's
    taps, at the start of each stride), else the levels P3/P4/P5."""
    if _is_vgg(backbone):
        return [VGG_POOLS[s] for s in strides]
    return [f"P{s.bit_length() - 1}" for s in strides]


def _is_vgg(backbone):
    if isinstance(backbone, keras.Model):
        names = {layer.name for layer in backbone.layers}
        return set(VGG_POOLS.values()) <= names
    return isinstance(backbone, str) and backbone.lower().startswith("vgg")


def _upsample(x, classes, stride, name):
    return keras.layers.Conv2DTranspose(classes, 2 * stride, strides=stride, padding="same",
                                        use_bias=False, kernel_initializer=BilinearKernel(),
                                        name=name)(x)


def _fcn(registry_name, *, classes, input_shape, classifier_activation, weights, backbone,
         backbone_weights, trainable_backbone, fc_units, dropout, backbone_kwargs, name):
    activation = _common.check_classes(classes, classifier_activation)
    skips = SKIPS[registry_name]
    inputs, taps = build_backbone(backbone, _levels(backbone, (32, *skips)),
                                  input_shape=input_shape, weights=backbone_weights,
                                  trainable=trainable_backbone, task=registry_name,
                                  **(backbone_kwargs or {}))
    pool5, *pools = keras.tree.flatten(taps)
    x = keras.layers.Conv2D(fc_units, 7, padding="same", activation="relu", name="fc6")(pool5)
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(fc_units, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)
    x = keras.layers.Conv2D(classes, 1, name="score_fr")(x)
    previous = 32
    for stride, pool in zip(skips, pools):
        level = int(np.log2(stride))  # pool4 at stride 16, pool3 at stride 8
        up = "upscore2" if previous == 32 else f"upscore_pool{int(np.log2(previous))}"
        x = _upsample(x, classes, previous // stride, up)
        x = ResizeLike(name=f"fit_pool{level}")([x, pool])
        score = keras.layers.Conv2D(classes, 1, name=f"score_pool{level}")(pool)
        x = keras.layers.Add(name=f"fuse_pool{level}")([x, score])
        previous = stride
    x = _upsample(x, classes, previous, f"upscore{previous}")
    x = ResizeLike(name="fit_input")([x, inputs])
    outputs = keras.layers.Activation(activation, dtype="float32", name="predictions")(x)
    return _common.finish(inputs, outputs, name or registry_name, weights)


def convolutionalize(classifier, fcn):
    """Copy a VGG classifier's weights into ``fcn``: its conv layers (same names) and
    its Dense ``fc1``/``fc2`` reshaped into the 7x7 ``fc6`` / 1x1 ``fc7`` convolutions
    (the paper's "convolutionalization"). Returns ``fcn``.

    ``fc1``'s kernel ``(7*7*512, 4096)`` reads a Flatten of the ``(7, 7, 512)`` pool5
    map in (row, column, channel) order, the layout of a ``(7, 7, 512, 4096)`` conv
    kernel, so at 224x224 the center of fc6/fc7 equals the classifier's fc1/fc2.
    """
    backbone = fcn.get_layer("backbone")
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(classifier.get_layer(layer.name).get_weights())
    for dense, conv in (("fc1", "fc6"), ("fc2", "fc7")):
        kernel, bias = classifier.get_layer(dense).get_weights()
        target = fcn.get_layer(conv)
        shape = tuple(target.kernel.shape)
        if int(np.prod(shape[:-1])) != kernel.shape[0] or shape[-1] != kernel.shape[1]:
            raise ValueError(f"{dense} kernel {kernel.shape} does not fit {conv} kernel "
                             f"{shape}: build the FCN with fc_units={kernel.shape[1]}.")
        target.set_weights([kernel.reshape(shape), bias])
    return fcn


def _register(name, year_paper_idea, num_params):
    return register(
        name, task="segmentation", family="fcn", year=2015, paper=PAPER,
        key_idea=year_paper_idea, default_size=512, min_size=32,
        num_params=num_params, params_convention="trainable",
        params_source=PARAMS_SOURCE.format(name=name), default_classes=21,
        preprocessing="none")


_DOC = """{title} (Long et al., 2015): VGG16 convolutionalized, {what}.

    Input ``(H, W, C)`` raw pixels, default ``(512, 512, 3)``, sides multiples of 32
    ideally (others are resized back); output ``(N, H, W, classes)`` per-pixel
    softmax (sigmoid for ``classes=1``). ``backbone``: "vgg16" (the paper), any zoo /
    keras.applications name or a keras.Model, with ``backbone_weights`` and
    ``trainable_backbone`` (True, False, an int of last blocks or a regime), as
    :func:`kvision.models.backbone.build_backbone` takes them; ``fc_units`` is
    the width of fc6/fc7 (4096 in the paper); ``weights`` a file of this model.
    """


def _make(registry_name, builder_name, title, what, num_params):
    def builder(classes=21, input_shape=None, classifier_activation="softmax",
                weights=None, backbone="vgg16", backbone_weights=None,
                trainable_backbone=True, fc_units=4096, dropout=0.5,
                backbone_kwargs=None, name=None):
        return _fcn(**{**locals(), "registry_name": registry_name})

    builder.__name__ = builder.__qualname__ = builder_name
    builder.__doc__ = _DOC.format(title=title, what=what)
    return _register(registry_name, what, num_params)(builder)


FCN32s = _make("fcn32s", "FCN32s", "FCN-32s", "stride-32 scores upsampled 32x at once",
               136_152_917)
FCN16s = _make("fcn16s", "FCN16s", "FCN-16s", "scores fused with pool4, then 16x",
               134_815_994)
FCN8s = _make("fcn8s", "FCN8s", "FCN-8s", "scores fused with pool4 and pool3, then 8x",
              134_489_759)
