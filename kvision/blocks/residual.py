"""Residual blocks (He et al., 2015/2016): basic, bottleneck and pre-activation.

One parametrized :func:`bottleneck_block` serves ResNet (both keras.applications'
layout and torchvision's), ResNeXt (``groups``, ``base_width``) and SE-Net
(``se_ratio``). Layer names follow keras.applications' ResNet
(``conv2_block1_1_conv``, ``…_0_conv`` for the projection shortcut, ``…_out``), and
layers are created in its order, so its ``.weights.h5`` files load.

Padding: a stride-1 3x3 conv uses "same"; a strided one pads one pixel on every
side first (PyTorch/Caffe semantics; Keras' "same" would pad only bottom/right),
so torchvision/timm weights give the same outputs.
"""

from __future__ import annotations

import keras

from kvision.blocks.conv import conv_bn_act
from kvision.blocks.se import squeeze_excite

# Layer-name suffixes of keras.applications' ResNet units.
SUFFIXES = ("_conv", "_bn", "_relu")


def _pad(kernel_size, stride):
    """"same" at stride 1, else symmetric explicit padding (PyTorch semantics)."""
    return "same" if stride == 1 else kernel_size // 2


def se_filters(channels, se_ratio, divisor=8):
    """Reduced SE width: ``channels * se_ratio`` rounded to a multiple of ``divisor``.

    timm's ``SEModule`` rule (``make_divisible(..., round_limit=0)``), so timm's
    SE-ResNet/SE-ResNeXt weights fit: 256 channels at 1/16 -> 16.
    """
    return max(divisor, int(channels * se_ratio + divisor / 2) // divisor * divisor)


def projection_shortcut(x, filters, stride=1, *, use_bias=False, bn_epsilon=1e-5,
                        name):
    """1x1 conv (``stride``) -> BatchNorm, the shortcut where the shape changes.

    Shapes: ``(N, H, W, C) -> (N, H/stride, W/stride, filters)``.
    """
    return conv_bn_act(x, filters, 1, stride, padding="valid", use_bias=use_bias,
                       activation=None, bn_epsilon=bn_epsilon, name=f"{name}_0",
                       suffixes=SUFFIXES)


def _shortcut(x, filters, stride, conv_shortcut, use_bias, bn_epsilon, name):
    # None: project exactly when the shape changes (torchvision's rule; it also
    # gives keras.applications' choice, a projection in each stage's first block).
    if conv_shortcut is None:
        conv_shortcut = stride != 1 or x.shape[-1] != filters
    if not conv_shortcut:
        return x
    return projection_shortcut(x, filters, stride, use_bias=use_bias,
                               bn_epsilon=bn_epsilon, name=name)


def _merge(shortcut, residual, se_ratio, name):
    """Optional SE on the residual branch, add (``…_add``), ReLU (``…_out``)."""
    if se_ratio:
        # Hu et al.: the SE recalibrates the residual branch before the addition.
        residual = squeeze_excite(residual, se_filters(residual.shape[-1], se_ratio),
                                  name=f"{name}_se_")
    x = keras.layers.Add(name=f"{name}_add")([shortcut, residual])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def basic_block(x, filters, stride=1, *, conv_shortcut=None, use_bias=False,
                bn_epsilon=1e-5, se_ratio=None, name):
    """ResNet-18/34's block: two 3x3 convs, the first with ``stride``.

    ``conv_shortcut``: True/False forces a projection/identity shortcut; None
    projects when the shape changes. ``se_ratio`` adds an SE block.
    Shapes: ``(N, H, W, C) -> (N, H/stride, W/stride, filters)``.
    """
    shortcut = _shortcut(x, filters, stride, conv_shortcut, use_bias, bn_epsilon, name)
    common = dict(use_bias=use_bias, bn_epsilon=bn_epsilon, suffixes=SUFFIXES)
    x = conv_bn_act(x, filters, 3, stride, padding=_pad(3, stride), name=f"{name}_1",
                    **common)
    x = conv_bn_act(x, filters, 3, padding="same", activation=None, name=f"{name}_2",
                    **common)
    return _merge(shortcut, x, se_ratio, name)


def bottleneck_block(x, filters, stride=1, *, groups=1, base_width=64, expansion=4,
                     conv_shortcut=None, stride_in_1x1=False, use_bias=False,
                     bn_epsilon=1e-5, se_ratio=None, name):
    """1x1 reduce -> 3x3 (grouped) -> 1x1 expand to ``expansion * filters``.

    The inner width is ``int(filters * base_width / 64) * groups`` (torchvision's
    rule): ``filters`` for ResNet, 128 for ResNeXt 32x4d at ``filters=64``.
    ``stride_in_1x1`` puts the stride in the first 1x1 (the paper and
    keras.applications) instead of the 3x3 (torchvision, "ResNet v1.5").
    ``use_bias``/``bn_epsilon``: keras.applications uses ``True``/``1.001e-5``.
    Shapes: ``(N, H, W, C) -> (N, H/stride, W/stride, expansion * filters)``.
    """
    out_filters = expansion * filters
    width = int(filters * base_width / 64) * groups
    stride1, stride3 = (stride, 1) if stride_in_1x1 else (1, stride)
    shortcut = _shortcut(x, out_filters, stride, conv_shortcut, use_bias, bn_epsilon,
                         name)
    common = dict(use_bias=use_bias, bn_epsilon=bn_epsilon, suffixes=SUFFIXES)
    x = conv_bn_act(x, width, 1, stride1, padding="valid", name=f"{name}_1", **common)
    x = conv_bn_act(x, width, 3, stride3, padding=_pad(3, stride3), groups=groups,
                    name=f"{name}_2", **common)
    x = conv_bn_act(x, out_filters, 1, padding="valid", activation=None,
                    name=f"{name}_3", **common)
    return _merge(shortcut, x, se_ratio, name)


def preact_bottleneck_block(x, filters, stride=1, *, conv_shortcut=False,
                            bn_epsilon=1.001e-5, name):
    """ResNet v2's block (He et al., 2016, "Identity Mappings in Deep Residual
    Networks"): BN-ReLU first, shared by the projection shortcut and the branch;
    the sum is not activated.

    keras.applications' ``residual_block_v2`` exactly: stride in the 3x3, a 1x1
    max-pool (subsampling) on an identity shortcut that strides, biases only on the
    shortcut and the last 1x1. Shapes: ``(N, H, W, C) -> (N, H/s, W/s, 4 * filters)``.
    """
    preact = keras.layers.BatchNormalization(epsilon=bn_epsilon,
                                             name=f"{name}_preact_bn")(x)
    preact = keras.layers.Activation("relu", name=f"{name}_preact_relu")(preact)
    if conv_shortcut:
        shortcut = keras.layers.Conv2D(4 * filters, 1, strides=stride,
                                       name=f"{name}_0_conv")(preact)
    elif stride > 1:
        shortcut = keras.layers.MaxPooling2D(1, strides=stride,
                                             name=f"{name}_0_pool")(x)
    else:
        shortcut = x
    common = dict(use_bias=False, bn_epsilon=bn_epsilon, suffixes=SUFFIXES)
    y = conv_bn_act(preact, filters, 1, name=f"{name}_1", **common)
    # Symmetric padding at every stride, as keras.applications (``…_2_pad``).
    y = conv_bn_act(y, filters, 3, stride, padding=1, name=f"{name}_2", **common)
    y = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(y)
    return keras.layers.Add(name=f"{name}_out")([shortcut, y])


def residual_stage(x, block, filters, blocks, stride=2, *, name, **block_kwargs):
    """``blocks`` blocks named ``{name}_block{i}``; the first one strides (v1)."""
    for i in range(1, blocks + 1):
        x = block(x, filters, stride if i == 1 else 1, name=f"{name}_block{i}",
                  **block_kwargs)
    return x


def preact_residual_stage(x, filters, blocks, stride=2, *, name, **block_kwargs):
    """keras.applications' ``stack_residual_blocks_v2``: a projection in the first
    block, the stride in the LAST block (so each stage ends at the next stride)."""
    for i in range(1, blocks + 1):
        x = preact_bottleneck_block(x, filters, stride if i == blocks else 1,
                                    conv_shortcut=i == 1, name=f"{name}_block{i}",
                                    **block_kwargs)
    return x
