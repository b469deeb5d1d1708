"""timm's SE-ResNet / SE-ResNeXt and Inception-v4 forward passes in NumPy.

Written from timm's module code (huggingface/pytorch-image-models, read at
aa4b5850: ``timm/models/resnet.py`` ``Bottleneck`` and ``ResNet``,
``timm/layers/squeeze_excite.py`` ``SEModule``, ``timm/layers/helpers.py``
``make_divisible``, ``timm/models/inception_v4.py``), taking a timm state dict of
NumPy arrays in torch's layouts and images ``(N, 3, H, W)``. Nothing here imports
kvision.
"""

import math

import numpy as np

from . import ops
from .torchvision_nets import _bn, _bn_shapes, _conv, _conv_shapes, _linear, _linear_shapes


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---- resnet.py with block_args=dict(attn_layer='se') ----

def make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    """timm.layers.helpers.make_divisible."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def _se_module(state, name, x):
    """SEModule.forward: mean over H, W (keepdim), fc1 (1x1 conv, bias), ReLU (bn is
    Identity), fc2, sigmoid gate times x."""
    s = x.mean(axis=(2, 3), keepdims=True)
    s = ops.relu(_conv(state, f"{name}.fc1", s))
    return x * _sigmoid(_conv(state, f"{name}.fc2", s))


def _se_bottleneck(state, name, x, stride, groups):
    """Bottleneck.forward: conv1-bn1-act1, conv2 (3x3, stride, groups, pad 1)-bn2-
    act2, conv3-bn3, se, += downsample(shortcut), act3."""
    out = ops.relu(_bn(state, f"{name}.bn1", _conv(state, f"{name}.conv1", x)))
    out = ops.relu(_bn(state, f"{name}.bn2", _conv(state, f"{name}.conv2", out,
                                                    stride=stride, padding=1,
                                                    groups=groups)))
    out = _bn(state, f"{name}.bn3", _conv(state, f"{name}.conv3", out))
    out = _se_module(state, f"{name}.se", out)
    shortcut = x
    if f"{name}.downsample.0.weight" in state:  # downsample_conv: 1x1 (stride), BN
        shortcut = _bn(state, f"{name}.downsample.1",
                       _conv(state, f"{name}.downsample.0", x, stride=stride))
    return ops.relu(out + shortcut)


def seresnet(state, x, layers=(3, 4, 6, 3), *, groups=1, features=False):
    """ResNet.forward (stem_type ''): conv1 7x7/2 p3, bn1, act1, maxpool 3/2 p1,
    layer1..4 (the first block of layer2..4 strides), global avg pool, fc."""
    x = ops.relu(_bn(state, "bn1", _conv(state, "conv1", x, stride=2, padding=3)))
    x = ops.max_pool2d(x, 3, 2, padding=1)
    for stage, blocks in enumerate(layers, start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _se_bottleneck(state, f"layer{stage}.{block}", x, stride, groups)
    if features:
        return x
    return _linear(state, "fc", x.mean(axis=(2, 3)))


def seresnet_shapes(layers=(3, 4, 6, 3), *, groups=1, base_width=64, classes=1000):
    """ResNet.__init__/make_blocks with Bottleneck: width ``floor(planes *
    base_width / 64) * cardinality``; SE width ``make_divisible(out / 16, 8,
    round_limit=0)``; a downsample where stride != 1 or the channels change."""
    shapes = _conv_shapes("conv1", 64, 3, 7) | _bn_shapes("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for block in range(blocks):
            name, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            width = int(math.floor(planes * (base_width / 64)) * groups)
            out = planes * 4
            rd = make_divisible(out / 16, 8, round_limit=0.0)
            shapes |= (_conv_shapes(f"{name}.conv1", width, inplanes, 1)
                       | _bn_shapes(f"{name}.bn1", width)
                       | _conv_shapes(f"{name}.conv2", width, width, 3, groups=groups)
                       | _bn_shapes(f"{name}.bn2", width)
                       | _conv_shapes(f"{name}.conv3", out, width, 1)
                       | _bn_shapes(f"{name}.bn3", out)
                       | _conv_shapes(f"{name}.se.fc1", rd, out, 1, bias=True)
                       | _conv_shapes(f"{name}.se.fc2", out, rd, 1, bias=True))
            if stride != 1 or inplanes != out:
                shapes |= (_conv_shapes(f"{name}.downsample.0", out, inplanes, 1)
                           | _bn_shapes(f"{name}.downsample.1", out))
            inplanes = out
    return shapes | _linear_shapes("fc", classes, 2048)


# ---- inception_v4.py ----
# A ConvNormAct is (out, kernel, stride, padding), kernel/padding ints or (h, w);
# its keys are ``<name>.conv.weight`` and ``<name>.bn.*`` (BatchNorm eps 1e-3).

def _cna(out, kernel=1, stride=1, padding=0):
    return (out, kernel, stride, padding)


# Factorized kernels: (kernel, stride, padding).
K17, K71 = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
K13, K31 = ((1, 3), 1, (0, 1)), ((3, 1), 1, (1, 0))
# Each module: branch name -> list of ConvNormAct (a Sequential when more than one,
# indexed from 0), "maxpool" (3/2), or ("avgpool", conv) (avg 3/1 p1 without the
# padding in the mean, then a 1x1 at index 1). Branch order is torch.cat's order.
INCEPTION_V4 = {
    "mixed_3a": {"maxpool": "maxpool", "conv": [_cna(96, 3, 2)]},
    "mixed_4a": {"branch0": [_cna(64), _cna(96, 3)],
                 "branch1": [_cna(64), _cna(64, *K17), _cna(64, *K71), _cna(96, 3)]},
    "mixed_5a": {"conv": [_cna(192, 3, 2)], "maxpool": "maxpool"},
    "inception_a": {"branch0": [_cna(96)], "branch1": [_cna(64), _cna(96, 3, 1, 1)],
                    "branch2": [_cna(64), _cna(96, 3, 1, 1), _cna(96, 3, 1, 1)],
                    "branch3": ("avgpool", _cna(96))},
    "reduction_a": {"branch0": [_cna(384, 3, 2)],
                    "branch1": [_cna(192), _cna(224, 3, 1, 1), _cna(256, 3, 2)],
                    "branch2": "maxpool"},
    "inception_b": {"branch0": [_cna(384)],
                    "branch1": [_cna(192), _cna(224, *K17), _cna(256, *K71)],
                    "branch2": [_cna(192), _cna(192, *K71), _cna(224, *K17),
                                _cna(224, *K71), _cna(256, *K17)],
                    "branch3": ("avgpool", _cna(128))},
    "reduction_b": {"branch0": [_cna(192), _cna(192, 3, 2)],
                    "branch1": [_cna(256), _cna(256, *K17), _cna(320, *K71),
                                _cna(320, 3, 2)],
                    "branch2": "maxpool"},
}
# InceptionC's convs are attributes, not Sequentials: (name, spec, input).
INCEPTION_C = [("branch0", _cna(256), "x"), ("branch1_0", _cna(384), "x"),
               ("branch1_1a", _cna(256, *K13), "branch1_0"),
               ("branch1_1b", _cna(256, *K31), "branch1_0"),
               ("branch2_0", _cna(384), "x"), ("branch2_1", _cna(448, *K31), "branch2_0"),
               ("branch2_2", _cna(512, *K13), "branch2_1"),
               ("branch2_3a", _cna(256, *K13), "branch2_2"),
               ("branch2_3b", _cna(256, *K31), "branch2_2")]


def inception_v4_modules():
    """``features.<i>``: the stem's three ConvNormAct, then the mixed modules, in
    InceptionV4.__init__'s order."""
    stem = [_cna(32, 3, 2), _cna(32, 3), _cna(64, 3, 1, 1)]
    kinds = (["mixed_3a", "mixed_4a", "mixed_5a"] + ["inception_a"] * 4 + ["reduction_a"]
             + ["inception_b"] * 7 + ["reduction_b"] + ["inception_c"] * 3)
    return [("conv", spec) for spec in stem] + [(kind, None) for kind in kinds]


def _conv_norm_act(state, name, x, spec):
    """ConvNormAct.forward: conv (no bias) -> BatchNormAct2d (eps 1e-3, ReLU)."""
    _, kernel, stride, padding = spec
    x = _conv(state, f"{name}.conv", x, stride=stride, padding=padding)
    return ops.relu(_bn(state, f"{name}.bn", x, eps=1e-3))


def _branch(state, name, x, branch):
    if branch == "maxpool":
        return ops.max_pool2d(x, 3, 2)
    if isinstance(branch, tuple):  # nn.Sequential(AvgPool2d, conv_block)
        pooled = ops.avg_pool2d(x, 3, 1, padding=1, count_include_pad=False)
        return _conv_norm_act(state, f"{name}.1", pooled, branch[1])
    if len(branch) == 1:  # a lone ConvNormAct attribute; several: a Sequential
        return _conv_norm_act(state, name, x, branch[0])
    for i, spec in enumerate(branch):
        x = _conv_norm_act(state, f"{name}.{i}", x, spec)
    return x


def _inception_c(state, name, x):
    outs = {"x": x}
    for part, spec, source in INCEPTION_C:
        outs[part] = _conv_norm_act(state, f"{name}.{part}", outs[source], spec)
    pooled = ops.avg_pool2d(x, 3, 1, padding=1, count_include_pad=False)
    outs["branch3"] = _conv_norm_act(state, f"{name}.branch3.1", pooled, _cna(256))
    return np.concatenate([outs[k] for k in ("branch0", "branch1_1a", "branch1_1b",
                                             "branch2_3a", "branch2_3b", "branch3")],
                          axis=1)


def inception_v4(state, x, features=False):
    """InceptionV4.forward: features (Sequential), global avg pool, last_linear."""
    for index, (kind, spec) in enumerate(inception_v4_modules()):
        name = f"features.{index}"
        if kind == "conv":
            x = _conv_norm_act(state, name, x, spec)
        elif kind == "inception_c":
            x = _inception_c(state, name, x)
        else:
            x = np.concatenate([_branch(state, f"{name}.{part}", x, branch)
                                for part, branch in INCEPTION_V4[kind].items()], axis=1)
    if features:
        return x
    return _linear(state, "last_linear", x.mean(axis=(2, 3)))


def _cna_shapes(name, spec, in_c):
    out, kernel, _, _ = spec
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return {f"{name}.conv.weight": (out, in_c, kh, kw)} | _bn_shapes(f"{name}.bn", out)


def inception_v4_shapes(classes=1000):
    shapes, channels = {}, 3
    for index, (kind, spec) in enumerate(inception_v4_modules()):
        name = f"features.{index}"
        if kind == "conv":
            shapes |= _cna_shapes(name, spec, channels)
            channels = spec[0]
            continue
        if kind == "inception_c":
            widths = {"x": channels}
            for part, part_spec, source in INCEPTION_C:
                shapes |= _cna_shapes(f"{name}.{part}", part_spec, widths[source])
                widths[part] = part_spec[0]
            shapes |= _cna_shapes(f"{name}.branch3.1", _cna(256), channels)
            channels = 1536
            continue
        out = 0
        for part, branch in INCEPTION_V4[kind].items():
            if branch == "maxpool":
                out += channels
            elif isinstance(branch, tuple):
                shapes |= _cna_shapes(f"{name}.{part}.1", branch[1], channels)
                out += branch[1][0]
            else:
                single = len(branch) == 1
                in_c = channels
                for i, part_spec in enumerate(branch):
                    shapes |= _cna_shapes(f"{name}.{part}" + ("" if single else f".{i}"),
                                          part_spec, in_c)
                    in_c = part_spec[0]
                out += in_c
        channels = out
    return shapes | _linear_shapes("last_linear", classes, 1536)
