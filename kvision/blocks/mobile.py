"""Mobile blocks: depthwise convolution units, the depthwise-separable block
(MobileNetV1) and one inverted-residual block (MobileNetV2, MobileNetV3, EfficientNet).

The block is parametrized rather than copied: what differs between the three
families (expansion, SE and its layout, activations, BatchNorm momentum, drop-connect,
the order of the residual sum, layer names) is an argument. Layer names come from a
naming style (:data:`V2_NAMES`, :data:`V3_NAMES`, :data:`EFFICIENTNET_NAMES`) so
that each family keeps its keras.applications names.
"""

from __future__ import annotations

import keras

from kvision.blocks.conv import activation_layer, conv_bn_act
from kvision.blocks.se import squeeze_excite


def make_divisible(value, divisor=8, min_value=None):
    """``value`` rounded to a multiple of ``divisor``, never 10% below it.

    The channel rounding of MobileNetV2/V3 and EfficientNet (``_make_divisible``
    in keras.applications), which keeps widths friendly to hardware.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def correct_pad(x, kernel_size):
    """Zero padding that makes a stride-2 "valid" conv match TF's "same" one.

    keras.applications' ``correct_pad``: an odd size is padded symmetrically, an
    even (or unknown) one gets one pixel less on the top/left.
    """
    size = x.shape[1:3]
    adjust = (1, 1) if size[0] is None else (1 - size[0] % 2, 1 - size[1] % 2)
    half = kernel_size // 2
    return ((half - adjust[0], half), (half - adjust[1], half))


def depthwise_bn_act(x, kernel_size=3, strides=1, *, pad=None, depth_multiplier=1,
                     activation="relu6", bn_momentum=0.99, initializer="glorot_uniform",
                     name, bn_name=None, act_name=None, pad_name=None):
    """DepthwiseConv2D -> BatchNorm -> activation, layers ``name``, ``bn_name``…

    Stride 1 uses "same" padding; stride 2 an explicit ``ZeroPadding2D(pad)`` before
    a "valid" conv, as keras.applications does to get TF's asymmetric "same"
    padding in every backend. ``pad`` defaults to :func:`correct_pad`.
    Shapes: ``(N, H, W, C) -> (N, H/s, W/s, C * depth_multiplier)``.
    """
    if strides != 1:
        pad = correct_pad(x, kernel_size) if pad is None else pad
        x = keras.layers.ZeroPadding2D(pad, name=pad_name or f"{name}_pad")(x)
    x = keras.layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding="same" if strides == 1 else "valid",
        depth_multiplier=depth_multiplier, use_bias=False,
        depthwise_initializer=initializer, name=name)(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum,
                                        name=bn_name or f"{name}_bn")(x)
    return activation_layer(activation, act_name or f"{name}_act")(x)


def conv_bn(x, filters, kernel_size=1, strides=1, *, padding="same", bn_momentum=0.99,
            initializer="glorot_uniform", name, bn_name=None):
    """Conv2D (no bias) -> BatchNorm, with free layer names (``bn_Conv1``…).

    The linear bottleneck projection when 1x1; the stems and last convs of the
    mobile families otherwise, whose BatchNorm names do not follow one suffix rule.
    """
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                            use_bias=False, kernel_initializer=initializer, name=name)(x)
    return keras.layers.BatchNormalization(momentum=bn_momentum,
                                           name=bn_name or f"{name}_bn")(x)


def depthwise_separable(x, filters, strides=1, *, depth_multiplier=1, block_id):
    """MobileNetV1's block: 3x3 depthwise -> BN -> ReLU6 -> 1x1 conv -> BN -> ReLU6.

    keras.applications' layout and names (``conv_dw_{id}``, ``conv_pw_{id}``); a
    stride-2 block pads bottom/right by one before its "valid" depthwise conv.
    Shapes: ``(N, H, W, C) -> (N, H/s, W/s, filters)``.
    """
    x = depthwise_bn_act(x, 3, strides, pad=((0, 1), (0, 1)),
                         depth_multiplier=depth_multiplier, name=f"conv_dw_{block_id}",
                         act_name=f"conv_dw_{block_id}_relu",
                         pad_name=f"conv_pad_{block_id}")
    return conv_bn_act(x, filters, 1, use_bias=False, activation="relu6",
                       name=f"conv_pw_{block_id}", suffixes=("", "_bn", "_relu"))


# Layer-name styles of the inverted-residual block, one per keras.applications
# family: role -> suffix appended to the block's prefix.
V2_NAMES = dict(expand="expand", expand_bn="expand_BN", expand_act="expand_relu",
                pad="pad", dw="depthwise", dw_bn="depthwise_BN", dw_act="depthwise_relu",
                se="squeeze_excite_", se_suffixes=("squeeze", "reduce", "reduce_act",
                                                   "expand", "excite"),
                project="project", project_bn="project_BN", drop="drop", add="add")
V3_NAMES = dict(V2_NAMES, expand_bn="expand_bn", expand_act="expand_act",
                pad="depthwise_pad", dw_bn="depthwise_bn", dw_act="depthwise_act",
                se="squeeze_excite_", se_suffixes=("avg_pool", "conv", "relu", "conv_1",
                                                   "mul"),
                project_bn="project_bn")
EFFICIENTNET_NAMES = dict(expand="expand_conv", expand_bn="expand_bn",
                          expand_act="expand_activation", pad="dwconv_pad", dw="dwconv",
                          dw_bn="bn", dw_act="activation", se="se_",
                          se_suffixes=("squeeze", "reduce", "reduce_activation",
                                       "expand", "excite"),
                          project="project_conv", project_bn="project_bn", drop="drop",
                          add="add")


def inverted_residual(x, filters, *, expanded_filters=None, kernel_size=3, strides=1,
                      activation="relu6", se_filters=0, se_activation="relu",
                      se_gate="sigmoid", se_reshape=False, bn_momentum=0.99,
                      drop_rate=0.0, id_skip=True, shortcut_first=True,
                      initializer="glorot_uniform", names=V2_NAMES, name):
    """Inverted residual with linear bottleneck (Sandler et al., 2018), optional SE.

    [1x1 expand to ``expanded_filters`` -> BN -> act] -> kxk depthwise (stride
    ``strides``) -> BN -> act -> [squeeze-excite to ``se_filters``] -> 1x1 project to
    ``filters`` -> BN (linear) -> [drop-connect] -> [+ input when the shapes allow
    and ``id_skip``].

    ``expanded_filters=None`` skips the expansion (expansion ratio 1);
    ``se_filters=0`` skips SE. ``shortcut_first`` orders the residual sum's inputs
    (MobileNet sums ``[input, x]``, EfficientNet ``[x, input]``), and ``names`` is a
    naming style (``V2_NAMES``…) applied after the ``name`` prefix, so the layers are
    created in the reference's order with its names. Drop-connect drops the whole
    residual branch per sample (``noise_shape=(None, 1, 1, 1)``).
    Shapes: ``(N, H, W, C) -> (N, H/s, W/s, filters)``.
    """
    n = {role: f"{name}{suffix}" for role, suffix in names.items() if role != "se_suffixes"}
    inputs = x
    if expanded_filters is not None:
        x = conv_bn(x, expanded_filters, bn_momentum=bn_momentum, initializer=initializer,
                    name=n["expand"], bn_name=n["expand_bn"])
        x = activation_layer(activation, n["expand_act"])(x)
    x = depthwise_bn_act(x, kernel_size, strides, activation=activation,
                         bn_momentum=bn_momentum, initializer=initializer, name=n["dw"],
                         bn_name=n["dw_bn"], act_name=n["dw_act"], pad_name=n["pad"])
    if se_filters:
        x = squeeze_excite(x, se_filters, activation=se_activation, gate=se_gate,
                           reshape=se_reshape, name=n["se"], suffixes=names["se_suffixes"],
                           kernel_initializer=initializer)
    x = conv_bn(x, filters, bn_momentum=bn_momentum, initializer=initializer,
                name=n["project"], bn_name=n["project_bn"])
    if id_skip and strides == 1 and inputs.shape[-1] == filters:
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1),
                                     name=n["drop"])(x)
        pair = [inputs, x] if shortcut_first else [x, inputs]
        x = keras.layers.Add(name=n["add"])(pair)
    return x
