"""torchvision's networks' forward passes in NumPy, from torchvision/models/*.py.

Each function takes ``state`` (a torch state dict of NumPy arrays, torch's layouts)
and images ``x`` ``(N, 3, H, W)``, and returns what the torchvision module returns
(logits; or, with ``features=True``, the map before the classifier's pooling).
Module names and order are torchvision's: ``self.features = nn.Sequential(...)``
gives ``features.<index>``.
"""

import numpy as np

from . import ops


def _conv(state, name, x, **kwargs):
    return ops.conv2d(x, state[f"{name}.weight"], state.get(f"{name}.bias"), **kwargs)


def _bn(state, name, x, eps=1e-5):
    return ops.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                          state[f"{name}.weight"], state[f"{name}.bias"], eps)


def _linear(state, name, x):
    return ops.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])


# ---- resnet.py: BasicBlock, Bottleneck, ResNet ----

def _basic_block(state, name, x, stride):
    """BasicBlock.forward: conv3x3(stride)-bn-relu-conv3x3-bn, += identity, relu."""
    out = ops.relu(_bn(state, f"{name}.bn1", _conv(state, f"{name}.conv1", x,
                                                    stride=stride, padding=1)))
    out = _bn(state, f"{name}.bn2", _conv(state, f"{name}.conv2", out, padding=1))
    identity = x
    if f"{name}.downsample.0.weight" in state:
        identity = _bn(state, f"{name}.downsample.1",
                       _conv(state, f"{name}.downsample.0", x, stride=stride))
    return ops.relu(out + identity)


def _bottleneck(state, name, x, stride, groups):
    """Bottleneck.forward: conv1x1-bn-relu, conv3x3(stride, groups)-bn-relu,
    conv1x1-bn, += identity, relu (stride in the 3x3: "v1.5")."""
    out = ops.relu(_bn(state, f"{name}.bn1", _conv(state, f"{name}.conv1", x)))
    out = ops.relu(_bn(state, f"{name}.bn2", _conv(state, f"{name}.conv2", out,
                                                    stride=stride, padding=1,
                                                    groups=groups)))
    out = _bn(state, f"{name}.bn3", _conv(state, f"{name}.conv3", out))
    identity = x
    if f"{name}.downsample.0.weight" in state:
        identity = _bn(state, f"{name}.downsample.1",
                       _conv(state, f"{name}.downsample.0", x, stride=stride))
    return ops.relu(out + identity)


def resnet(state, x, layers, *, bottleneck=False, groups=1, features=False):
    """ResNet.forward: conv1 7x7/2 pad 3, bn1, relu, maxpool 3/2 pad 1, layer1..4
    (the first block of layer2..4 strides 2), adaptive avgpool 1x1, fc."""
    x = ops.relu(_bn(state, "bn1", _conv(state, "conv1", x, stride=2, padding=3)))
    x = ops.max_pool2d(x, 3, 2, padding=1)
    for stage, blocks in enumerate(layers, start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            name = f"layer{stage}.{block}"
            x = (_bottleneck(state, name, x, stride, groups) if bottleneck
                 else _basic_block(state, name, x, stride))
    if features:
        return x
    x = ops.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
    return _linear(state, "fc", x)


# ---- alexnet.py ----

def alexnet(state, x, features=False):
    """AlexNet.forward: features (conv 11/4 p2, relu, maxpool 3/2, conv 5 p2, relu,
    maxpool, conv 3 p1 x3 with relu, maxpool), avgpool 6x6, flatten (C, H, W),
    classifier (dropout, fc 9216->4096, relu, dropout, fc, relu, fc)."""
    convs = {0: (4, 2), 3: (1, 2), 6: (1, 1), 8: (1, 1), 10: (1, 1)}
    for index, (stride, padding) in convs.items():
        x = ops.relu(_conv(state, f"features.{index}", x, stride=stride, padding=padding))
        if index in (0, 3, 10):
            x = ops.max_pool2d(x, 3, 2)
    if features:
        return x
    x = ops.adaptive_avg_pool2d(x, 6).reshape(x.shape[0], -1)
    x = ops.relu(_linear(state, "classifier.1", x))
    x = ops.relu(_linear(state, "classifier.4", x))
    return _linear(state, "classifier.6", x)


# ---- vgg.py: make_layers(cfg, batch_norm) ----

VGG_CFGS = {11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
            13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
            16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                 512, 512, 512, "M"],
            19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512,
                 "M", 512, 512, 512, 512, "M"]}


def vgg(state, x, depth, *, batch_norm=True, features=False):
    """VGG.forward: make_layers (conv3x3 p1 [+ BatchNorm2d] + ReLU per number, 2x2/2
    max-pool per "M"), adaptive avgpool 7x7, flatten, classifier (fc, relu,
    dropout, fc, relu, dropout, fc)."""
    index = 0
    for v in VGG_CFGS[depth]:
        if v == "M":
            x = ops.max_pool2d(x, 2, 2)
            index += 1
            continue
        x = _conv(state, f"features.{index}", x, padding=1)
        if batch_norm:
            x = _bn(state, f"features.{index + 1}", x)
        x = ops.relu(x)
        index += 3 if batch_norm else 2
    if features:
        return x
    x = ops.adaptive_avg_pool2d(x, 7).reshape(x.shape[0], -1)
    x = ops.relu(_linear(state, "classifier.0", x))
    x = ops.relu(_linear(state, "classifier.3", x))
    return _linear(state, "classifier.6", x)


# ---- the state dicts' shapes, from the modules' __init__ ----

def _conv_shapes(name, out_c, in_c, k, bias=False, groups=1):
    shapes = {f"{name}.weight": (out_c, in_c // groups, k, k)}
    return {**shapes, f"{name}.bias": (out_c,)} if bias else shapes


def _bn_shapes(name, c):
    return {f"{name}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} \
        | {f"{name}.num_batches_tracked": ()}


def _linear_shapes(name, out_f, in_f):
    return {f"{name}.weight": (out_f, in_f), f"{name}.bias": (out_f,)}


def resnet_shapes(layers, *, bottleneck=False, groups=1, width_per_group=64,
                  classes=1000):
    """ResNet.__init__ and _make_layer: a downsample where stride != 1 or the
    channels change; Bottleneck's width ``int(planes * base_width / 64) * groups``."""
    shapes = _conv_shapes("conv1", 64, 3, 7) | _bn_shapes("bn1", 64)
    expansion = 4 if bottleneck else 1
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            name = f"layer{stage}.{block}"
            if bottleneck:
                width = int(planes * width_per_group / 64) * groups
                shapes |= (_conv_shapes(f"{name}.conv1", width, inplanes, 1)
                           | _bn_shapes(f"{name}.bn1", width)
                           | _conv_shapes(f"{name}.conv2", width, width, 3, groups=groups)
                           | _bn_shapes(f"{name}.bn2", width)
                           | _conv_shapes(f"{name}.conv3", planes * 4, width, 1)
                           | _bn_shapes(f"{name}.bn3", planes * 4))
            else:
                shapes |= (_conv_shapes(f"{name}.conv1", planes, inplanes, 3)
                           | _bn_shapes(f"{name}.bn1", planes)
                           | _conv_shapes(f"{name}.conv2", planes, planes, 3)
                           | _bn_shapes(f"{name}.bn2", planes))
            if stride != 1 or inplanes != planes * expansion:
                shapes |= (_conv_shapes(f"{name}.downsample.0", planes * expansion,
                                        inplanes, 1)
                           | _bn_shapes(f"{name}.downsample.1", planes * expansion))
            inplanes = planes * expansion
    return shapes | _linear_shapes("fc", classes, 512 * expansion)


def alexnet_shapes(classes=1000):
    shapes = {}
    for index, (out_c, in_c, k) in {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3),
                                    8: (256, 384, 3), 10: (256, 256, 3)}.items():
        shapes |= _conv_shapes(f"features.{index}", out_c, in_c, k, bias=True)
    return (shapes | _linear_shapes("classifier.1", 4096, 256 * 6 * 6)
            | _linear_shapes("classifier.4", 4096, 4096)
            | _linear_shapes("classifier.6", classes, 4096))


def vgg_shapes(depth, *, batch_norm=True, classes=1000):
    shapes, index, in_c = {}, 0, 3
    for v in VGG_CFGS[depth]:
        if v == "M":
            index += 1
            continue
        shapes |= _conv_shapes(f"features.{index}", v, in_c, 3, bias=True)
        if batch_norm:
            shapes |= _bn_shapes(f"features.{index + 1}", v)
        index, in_c = index + (3 if batch_norm else 2), v
    return (shapes | _linear_shapes("classifier.0", 4096, 512 * 7 * 7)
            | _linear_shapes("classifier.3", 4096, 4096)
            | _linear_shapes("classifier.6", classes, 4096))


def random_state(shapes, seed=0):
    """Random weights for ``shapes``: He-scaled kernels (activations stay O(1) deep
    into the network), and BatchNorm affine parameters and running statistics far
    from their identity values, so a statistic left out or swapped shows."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(7, dtype=np.int64)
        elif len(shape) > 1:
            he = np.float32(np.sqrt(2.0 / np.prod(shape[1:])))  # fan-in scaling
            state[key] = rng.standard_normal(shape, dtype=np.float32) * he
        elif key.endswith(("running_var", ".weight")):  # variance, BN scale: > 0
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:  # biases, BN shifts, running means
            state[key] = rng.normal(0, 0.2, shape).astype(np.float32)
    return state


# ---- squeezenet.py: Fire, SqueezeNet ----

SQUEEZENET = {  # features: ("conv", out, kernel) | "M" | ("fire", squeeze, expand)
    "1_0": [("conv", 96, 7), "M", ("fire", 16, 64), ("fire", 16, 64), ("fire", 32, 128),
            "M", ("fire", 32, 128), ("fire", 48, 192), ("fire", 48, 192),
            ("fire", 64, 256), "M", ("fire", 64, 256)],
    "1_1": [("conv", 64, 3), "M", ("fire", 16, 64), ("fire", 16, 64), "M",
            ("fire", 32, 128), ("fire", 32, 128), "M", ("fire", 48, 192),
            ("fire", 48, 192), ("fire", 64, 256), ("fire", 64, 256)],
}


def _squeezenet_modules(version):
    """(features index, module) in nn.Sequential order (the conv's ReLU is one)."""
    index = 0
    for module in SQUEEZENET[version]:
        yield index, module
        index += 2 if module != "M" and module[0] == "conv" else 1


def squeezenet(state, x, version, features=False):
    """SqueezeNet.forward: features (conv stride 2 + ReLU, MaxPool 3/2 ceil_mode,
    Fire: relu(squeeze), cat(relu(expand1x1), relu(expand3x3 pad 1))), classifier
    (dropout, final conv 1x1, ReLU, adaptive avgpool 1x1), flatten."""
    for index, module in _squeezenet_modules(version):
        name = f"features.{index}"
        if module == "M":
            x = ops.max_pool2d(x, 3, 2, ceil_mode=True)
        elif module[0] == "conv":
            x = ops.relu(_conv(state, name, x, stride=2))
        else:
            s = ops.relu(_conv(state, f"{name}.squeeze", x))
            x = np.concatenate([ops.relu(_conv(state, f"{name}.expand1x1", s)),
                                ops.relu(_conv(state, f"{name}.expand3x3", s, padding=1))],
                               axis=1)
    if features:
        return x
    x = ops.relu(_conv(state, "classifier.1", x))
    return ops.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)


def squeezenet_shapes(version, classes=1000):
    shapes, channels = {}, 3
    for index, module in _squeezenet_modules(version):
        name = f"features.{index}"
        if module == "M":
            continue
        if module[0] == "conv":
            shapes |= _conv_shapes(name, module[1], channels, module[2], bias=True)
            channels = module[1]
        else:
            _, squeeze, expand = module
            shapes |= (_conv_shapes(f"{name}.squeeze", squeeze, channels, 1, bias=True)
                       | _conv_shapes(f"{name}.expand1x1", expand, squeeze, 1, bias=True)
                       | _conv_shapes(f"{name}.expand3x3", expand, squeeze, 3, bias=True))
            channels = 2 * expand
    return shapes | _conv_shapes("classifier.1", classes, 512, 1, bias=True)


# ---- shufflenetv2.py: InvertedResidual, ShuffleNetV2 ----

SHUFFLENET_WIDTHS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024)}


def _conv_bn(state, name, x, *, relu, **kwargs):
    """Sequential(conv, BatchNorm2d[, ReLU]) at ``name.0``, ``name.1``."""
    x = _bn(state, f"{name}.1", _conv(state, f"{name}.0", x, **kwargs))
    return ops.relu(x) if relu else x


def _inverted_residual(state, name, x, stride):
    """InvertedResidual.forward: stride 1 chunks the channels in two and keeps the
    first half; stride 2 feeds x to both branches; cat, channel_shuffle(2)."""
    def branch2(y):
        y = ops.relu(_bn(state, f"{name}.branch2.1", _conv(state, f"{name}.branch2.0", y)))
        y = _bn(state, f"{name}.branch2.4",
                _conv(state, f"{name}.branch2.3", y, stride=stride, padding=1,
                      groups=y.shape[1]))
        return ops.relu(_bn(state, f"{name}.branch2.6", _conv(state, f"{name}.branch2.5", y)))

    if stride == 1:
        x1, x2 = np.split(x, 2, axis=1)
        out = np.concatenate([x1, branch2(x2)], axis=1)
    else:
        b1 = _bn(state, f"{name}.branch1.1",
                 _conv(state, f"{name}.branch1.0", x, stride=stride, padding=1,
                       groups=x.shape[1]))
        b1 = ops.relu(_bn(state, f"{name}.branch1.3", _conv(state, f"{name}.branch1.2", b1)))
        out = np.concatenate([b1, branch2(x)], axis=1)
    return ops.channel_shuffle(out, 2)


def shufflenet_v2(state, x, features=False):
    """ShuffleNetV2.forward: conv1 (3x3/2 p1, BN, ReLU), maxpool 3/2 p1, stage2..4
    (4, 8, 4 units, the first strided), conv5 (1x1, BN, ReLU), mean over H, W, fc."""
    x = _conv_bn(state, "conv1", x, relu=True, stride=2, padding=1)
    x = ops.max_pool2d(x, 3, 2, padding=1)
    for stage, repeats in zip((2, 3, 4), (4, 8, 4)):
        for i in range(repeats):
            x = _inverted_residual(state, f"stage{stage}.{i}", x, 2 if i == 0 else 1)
    x = _conv_bn(state, "conv5", x, relu=True)
    if features:
        return x
    return _linear(state, "fc", x.mean(axis=(2, 3)))


def shufflenet_v2_shapes(width=1.0, classes=1000):
    stem, *stages, last = SHUFFLENET_WIDTHS[width]
    shapes = _conv_shapes("conv1.0", stem, 3, 3) | _bn_shapes("conv1.1", stem)
    inp = stem
    for stage, out, repeats in zip((2, 3, 4), stages, (4, 8, 4)):
        bf = out // 2
        for i in range(repeats):
            name = f"stage{stage}.{i}"
            if i == 0:
                shapes |= (_conv_shapes(f"{name}.branch1.0", inp, inp, 3, groups=inp)
                           | _bn_shapes(f"{name}.branch1.1", inp)
                           | _conv_shapes(f"{name}.branch1.2", bf, inp, 1)
                           | _bn_shapes(f"{name}.branch1.3", bf))
            b2_in = inp if i == 0 else bf
            shapes |= (_conv_shapes(f"{name}.branch2.0", bf, b2_in, 1)
                       | _bn_shapes(f"{name}.branch2.1", bf)
                       | _conv_shapes(f"{name}.branch2.3", bf, bf, 3, groups=bf)
                       | _bn_shapes(f"{name}.branch2.4", bf)
                       | _conv_shapes(f"{name}.branch2.5", bf, bf, 1)
                       | _bn_shapes(f"{name}.branch2.6", bf))
            inp = out
    return (shapes | _conv_shapes("conv5.0", last, inp, 1) | _bn_shapes("conv5.1", last)
            | _linear_shapes("fc", classes, last))


# ---- googlenet.py: BasicConv2d, Inception, GoogLeNet ----

GOOGLENET = {  # in, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


def _basic_conv2d(state, name, x, **kwargs):
    """BasicConv2d.forward: conv (no bias), BatchNorm2d(eps=0.001), ReLU."""
    return ops.relu(_bn(state, f"{name}.bn", _conv(state, f"{name}.conv", x, **kwargs),
                        eps=1e-3))


def _inception(state, name, x):
    """Inception.forward: cat of branch1 (1x1), branch2 (1x1, 3x3 p1), branch3 (1x1,
    3x3 p1: torchvision's kernel_size=3), branch4 (maxpool 3/1 p1 ceil, 1x1)."""
    b1 = _basic_conv2d(state, f"{name}.branch1", x)
    b2 = _basic_conv2d(state, f"{name}.branch2.1",
                       _basic_conv2d(state, f"{name}.branch2.0", x), padding=1)
    b3 = _basic_conv2d(state, f"{name}.branch3.1",
                       _basic_conv2d(state, f"{name}.branch3.0", x), padding=1)
    b4 = _basic_conv2d(state, f"{name}.branch4.1",
                       ops.max_pool2d(x, 3, 1, padding=1, ceil_mode=True))
    return np.concatenate([b1, b2, b3, b4], axis=1)


def googlenet(state, x, features=False):
    """GoogLeNet._forward (transform_input=False, no aux in eval): conv1 7x7/2 p3,
    maxpool1 3/2 ceil, conv2 1x1, conv3 3x3 p1, maxpool2 3/2 ceil, 3a, 3b, maxpool3
    3/2 ceil, 4a..4e, maxpool4 2/2 ceil, 5a, 5b, adaptive avgpool 1, dropout, fc."""
    x = _basic_conv2d(state, "conv1", x, stride=2, padding=3)
    x = ops.max_pool2d(x, 3, 2, ceil_mode=True)
    x = _basic_conv2d(state, "conv3", _basic_conv2d(state, "conv2", x), padding=1)
    x = ops.max_pool2d(x, 3, 2, ceil_mode=True)
    for name in GOOGLENET:
        x = _inception(state, name, x)
        if name in ("inception3b", "inception4e"):
            x = ops.max_pool2d(x, 3 if name == "inception3b" else 2, 2, ceil_mode=True)
    if features:
        return x
    return _linear(state, "fc", ops.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1))


def googlenet_shapes(classes=1000, aux_logits=True):
    """With the InceptionAux heads (conv 1x1 128, fc1 2048->1024, fc2), as
    torchvision's published checkpoint has them."""
    def basic(name, out_c, in_c, k):
        return _conv_shapes(f"{name}.conv", out_c, in_c, k) | _bn_shapes(f"{name}.bn", out_c)

    shapes = basic("conv1", 64, 3, 7) | basic("conv2", 64, 64, 1) | basic("conv3", 192, 64, 3)
    for name, (cin, c1, c3r, c3, c5r, c5, pool) in GOOGLENET.items():
        shapes |= (basic(f"{name}.branch1", c1, cin, 1)
                   | basic(f"{name}.branch2.0", c3r, cin, 1)
                   | basic(f"{name}.branch2.1", c3, c3r, 3)
                   | basic(f"{name}.branch3.0", c5r, cin, 1)
                   | basic(f"{name}.branch3.1", c5, c5r, 3)
                   | basic(f"{name}.branch4.1", pool, cin, 1))
    if aux_logits:
        for aux, cin in (("aux1", 512), ("aux2", 528)):
            shapes |= (basic(f"{aux}.conv", 128, cin, 1)
                       | _linear_shapes(f"{aux}.fc1", 1024, 2048)
                       | _linear_shapes(f"{aux}.fc2", classes, 1024))
    return shapes | _linear_shapes("fc", classes, 1024)
