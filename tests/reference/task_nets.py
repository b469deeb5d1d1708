"""The task networks' forward passes in NumPy (NCHW, float64), each from its reference's
own definition, not from kvision's code:

- YOLO v1: the paper's Figure 3 with darknet's conventions (cfg/yolov1.cfg:
  ``[convolutional]`` with ``pad=1``, i.e. ``k // 2`` zero padding on every side,
  leaky 0.1; ``[maxpool] size=2 stride=2``; a connected layer on the map flattened in
  darknet's C, H, W order); the output reshaped to ``S x S x (5B + C)``.
- YOLOv3: qqwweee/keras-yolo3's ``yolo_body`` (``make_last_layers``, the 1x1 conv +
  nearest 2x upsampling, ``Concatenate()([upsampled, darknet tap])``) on Darknet-53
  (darknet's layout, ``paper_nets``), the heads' ``A*(5+C)`` channels split per anchor
  as ``yolo_head``'s reshape does.
- YOLOv3-tiny: darknet's cfg/yolov3-tiny.cfg, layer by layer (its ``[maxpool] size=2
  stride=1`` pads ``size - 1 = 1`` at the bottom/right: ``-pad / 2 = 0`` before).
- The stacked hourglass: bearpaw/pytorch-pose ``pose/models/hourglass.py``
  (``Bottleneck.forward``, ``Hourglass._hour_glass_forward``, ``HourglassNet.forward``),
  keyed by that module's state-dict names.
- The localizer and ``embedding_net``: kvision's documented layouts (the README's zoo
  table, the builders' docstrings), written with torch-style blocks.

``state`` is a torch-style state dict of NumPy arrays (``.weight`` OIHW / ``(out,
in)``, ``.bias``, ``.running_mean``, ``.running_var``).
"""

import numpy as np

from . import ops
from .paper_nets import DARKNET53, _darknet_conv
from .torchvision_nets import _bn, _conv, _linear


def leaky(x, slope=0.1):
    """darknet's ``leaky`` activation: ``x > 0 ? x : 0.1 x``."""
    return np.where(x > 0, x, slope * x)


def darknet_maxpool(x, size, stride):
    """darknet's ``[maxpool]`` (maxpool_layer.c): ``padding = size - 1``, windows
    starting at ``-padding / 2`` (C integer division), out-of-image taps ignored,
    output side ``(w + padding - size) / stride + 1``."""
    pad = size - 1
    before = pad // 2
    padded = np.pad(x, ((0, 0), (0, 0), (before, pad - before), (before, pad - before)),
                    constant_values=-np.inf)
    return ops.max_pool2d(padded, size, stride)  # side (w + pad - size) / stride + 1


# ---- YOLO v1: Figure 3 -----------------------------------------------------------

# (filters, size, stride) per conv, "M" a 2x2/2 max pool: the figure read left to right.
YOLOV1_LAYERS = (
    (64, 7, 2), "M",
    (192, 3, 1), "M",
    (128, 1, 1), (256, 3, 1), (256, 1, 1), (512, 3, 1), "M",
    (256, 1, 1), (512, 3, 1), (256, 1, 1), (512, 3, 1), (256, 1, 1), (512, 3, 1),
    (256, 1, 1), (512, 3, 1), (512, 1, 1), (1024, 3, 1), "M",
    (512, 1, 1), (1024, 3, 1), (512, 1, 1), (1024, 3, 1), (1024, 3, 1), (1024, 3, 2),
    (1024, 3, 1), (1024, 3, 1))


def yolov1(state, x, grid, boxes, classes, batch_norm=False, slope=0.1):
    """``x`` NCHW, already as the network's first layer sees it -> ``(N, S, S, 5B +
    C)``. Convs ``conv1..conv24`` (the paper's: with bias, no BatchNorm; with
    ``batch_norm``, darknet's yolov1.cfg ``batch_normalize=1``: no bias, then
    BatchNorm ``conv<i>.bn``), then ``fc1`` (leaky), ``fc2`` (linear), whose ``(out,
    C*H*W)`` kernels read darknet's flatten order."""
    conv = 0
    for layer in YOLOV1_LAYERS:
        if layer == "M":
            x = darknet_maxpool(x, 2, 2)
            continue
        conv += 1
        _, size, stride = layer
        x = _conv(state, f"conv{conv}", x, stride=stride, padding=size // 2)
        if batch_norm:
            x = _bn(state, f"conv{conv}.bn", x)
        x = leaky(x, slope)
    assert conv == 24
    x = leaky(_linear(state, "fc1", x.reshape(x.shape[0], -1)), slope)
    x = _linear(state, "fc2", x)
    return x.reshape(x.shape[0], grid, grid, 5 * boxes + classes)


# ---- YOLOv3: keras-yolo3's yolo_body on Darknet-53 ------------------------------

def darknet53_taps(state, x):
    """Darknet-53 (``paper_nets``' layer conventions) -> the outputs of its last
    residual units of stages 3, 4, 5 (keras-yolo3's ``darknet.layers[92]``,
    ``layers[152]`` and ``darknet.output``: strides 8, 16, 32)."""
    x = _darknet_conv(state, "stem", x)
    taps = []
    for stage, (_, units) in enumerate(DARKNET53, start=1):
        x = _darknet_conv(state, f"stage{stage}_down", x, stride=2)
        for unit in range(1, units + 1):
            name = f"stage{stage}_block{unit}"
            x = x + _darknet_conv(state, f"{name}_2", _darknet_conv(state, f"{name}_1", x))
        taps.append(x)
    return taps[2:]


def upsample_nearest(x, factor=2):
    """``UpSampling2D(2)`` / darknet's ``[upsample] stride=2``: each pixel repeated."""
    return x.repeat(factor, axis=2).repeat(factor, axis=3)


def split_anchors(x, anchors):
    """``(N, A*(5+C), H, W)`` -> ``(N, H, W, A, 5+C)``: keras-yolo3's ``yolo_head``
    reshape of the NHWC map (darknet's ``entry_index``: anchor-major channels)."""
    n, channels, h, w = x.shape
    return x.transpose(0, 2, 3, 1).reshape(n, h, w, anchors, channels // anchors)


def _make_last_layers(state, prefix, x):
    """Five DarknetConv2D_BN_Leaky (1x1, 3x3, 1x1, 3x3, 1x1) -> x; one more 3x3 and
    the linear 1x1 output conv -> y."""
    for i in range(1, 6):
        x = _darknet_conv(state, f"{prefix}_{i}", x)
    y = _darknet_conv(state, f"{prefix}_6", x)
    return x, y


def yolov3(state, x, anchors=3):
    """``yolo_body``: three raw outputs, coarse (stride 32) to fine, each split per
    anchor. Head layers are ``head{stride}_{1..6}`` / ``head{stride}_reduce`` (conv
    + BN + leaky) and ``stride{stride}_conv`` (linear, with bias)."""
    c3, c4, c5 = darknet53_taps(state, x)
    x, y = _make_last_layers(state, "head32", c5)
    outputs = [_conv(state, "stride32_conv", y)]
    for stride, tap in ((16, c4), (8, c3)):
        x = upsample_nearest(_darknet_conv(state, f"head{stride}_reduce", x))
        x = np.concatenate([x, tap], axis=1)
        x, y = _make_last_layers(state, f"head{stride}", x)
        outputs.append(_conv(state, f"stride{stride}_conv", y))
    return [split_anchors(o, anchors) for o in outputs]


# ---- YOLOv3-tiny: cfg/yolov3-tiny.cfg --------------------------------------------

def yolov3_tiny(state, x, anchors=3):
    """Layers 0-23 of the cfg. 0-11: conv 3x3 (16 .. 512) each followed by a maxpool
    size 2, stride 2 except after the sixth (stride 1); 12: conv 3x3 1024; 13: conv
    1x1 256; 14: conv 3x3 512; 15: conv 1x1 linear -> yolo (mask 3,4,5); 17: route
    -4 (layer 13); 18: conv 1x1 128; 19: upsample 2; 20: route -1, 8 (upsampled
    first, then layer 8: the fifth conv, before its pool); 21: conv 3x3 256; 22:
    conv 1x1 linear -> yolo (mask 1,2,3)."""
    layers = {}
    for i in range(1, 7):
        x = _darknet_conv(state, f"tiny{i}", x)
        layers[i] = x
        x = darknet_maxpool(x, 2, 1 if i == 6 else 2)
    x = _darknet_conv(state, "tiny7", x)
    layer13 = _darknet_conv(state, "head32_1", x)
    out32 = _conv(state, "stride32_conv", _darknet_conv(state, "head32_2", layer13))
    x = upsample_nearest(_darknet_conv(state, "head16_reduce", layer13))
    x = np.concatenate([x, layers[5]], axis=1)
    out16 = _conv(state, "stride16_conv", _darknet_conv(state, "head16_1", x))
    return [split_anchors(out32, anchors), split_anchors(out16, anchors)]


# ---- the stacked hourglass: bearpaw/pytorch-pose hourglass.py --------------------

def _bottleneck(state, name, x):
    """Bottleneck.forward: bn1-relu-conv1 (1x1), bn2-relu-conv2 (3x3 pad 1),
    bn3-relu-conv3 (1x1, planes * 2); plus ``downsample(x)`` (a 1x1 conv of the
    un-normalized input) where there is one, else x."""
    out = _conv(state, f"{name}.conv1", ops.relu(_bn(state, f"{name}.bn1", x)))
    out = _conv(state, f"{name}.conv2", ops.relu(_bn(state, f"{name}.bn2", out)),
                padding=1)
    out = _conv(state, f"{name}.conv3", ops.relu(_bn(state, f"{name}.bn3", out)))
    residual = x
    if f"{name}.downsample.0.weight" in state:
        residual = _conv(state, f"{name}.downsample.0", x)
    return out + residual


def _sequential(state, name, x):
    """An ``nn.Sequential`` of Bottlenecks ``{name}.0``, ``{name}.1`` ..."""
    i = 0
    while f"{name}.{i}.conv1.weight" in state:
        x = _bottleneck(state, f"{name}.{i}", x)
        i += 1
    assert i, name
    return x


def _hour_glass_forward(state, name, n, x):
    """``up1 = hg[n-1][0](x)``; ``low1 = hg[n-1][1](max_pool2d(x, 2, 2))``; ``low2``
    the next level (n > 1) or ``hg[n-1][3](low1)``; ``low3 = hg[n-1][2](low2)``;
    ``up1 + upsample(low3)``."""
    up1 = _sequential(state, f"{name}.hg.{n - 1}.0", x)
    low1 = _sequential(state, f"{name}.hg.{n - 1}.1", ops.max_pool2d(x, 2, 2))
    if n > 1:
        low2 = _hour_glass_forward(state, name, n - 1, low1)
    else:
        low2 = _sequential(state, f"{name}.hg.{n - 1}.3", low1)
    low3 = _sequential(state, f"{name}.hg.{n - 1}.2", low2)
    return up1 + upsample_nearest(low3)


def hourglass_net(state, x, num_stacks, depth=4):
    """HourglassNet.forward: conv1 7x7/2 pad 3, bn1, relu, layer1, maxpool 2/2,
    layer2, layer3; per stack hg, res, fc (conv-bn-relu), score (appended to the
    outputs) and, but for the last, ``x = x + fc_(y) + score_(score)``. Returns the
    list of every stack's scores."""
    x = ops.relu(_bn(state, "bn1", _conv(state, "conv1", x, stride=2, padding=3)))
    x = _sequential(state, "layer1", x)
    x = ops.max_pool2d(x, 2, 2)
    x = _sequential(state, "layer3", _sequential(state, "layer2", x))
    out = []
    for i in range(num_stacks):
        y = _hour_glass_forward(state, f"hg.{i}", depth, x)
        y = _sequential(state, f"res.{i}", y)
        y = ops.relu(_bn(state, f"fc.{i}.1", _conv(state, f"fc.{i}.0", y)))
        score = _conv(state, f"score.{i}", y)
        out.append(score)
        if i < num_stacks - 1:
            x = x + _conv(state, f"fc_.{i}", y) + _conv(state, f"score_.{i}", score)
    return out


# ---- the localizer and embedding_net: kvision's documented layouts ---------------

def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def localizer(state, x):
    """The zoo's localizer: VGG-16's convolutions (torchvision's ``vgg.features``,
    no BatchNorm) on caffe-preprocessed pixels, the map flattened (C, H, W), then two
    branches: ``class_fc`` (ReLU) -> ``class_logits`` -> softmax and ``box_fc``
    (ReLU) -> ``box_logits`` -> sigmoid. Returns ``(classes, boxes)``."""
    from .torchvision_nets import vgg

    x = vgg(state, x, 16, batch_norm=False, features=True).reshape(x.shape[0], -1)
    classes = softmax(_linear(state, "class_logits",
                              ops.relu(_linear(state, "class_fc", x))))
    boxes = sigmoid(_linear(state, "box_logits", ops.relu(_linear(state, "box_fc", x))))
    return classes, boxes


def embedding_net(state, x, bn_eps=1e-3):
    """``embedding_net``'s small body: pixels to ``[-1, 1]`` (``x / 127.5 - 1``);
    stages of two conv3x3 (pad 1, no bias)-BN-ReLU of w, 2w, 4w channels, each then a
    2x2/2 max pool; one conv-BN-ReLU of 8w; flattened (C, H, W); ``projection``
    (linear); unit length. ``bn_eps``: Keras' BatchNormalization default, which the
    body uses."""
    x = x / 127.5 - 1.0
    for stage, convs in ((1, 2), (2, 2), (3, 2), (4, 1)):
        for i in range(1, convs + 1):
            name = f"stage{stage}_conv{i}"
            x = ops.relu(_bn(state, f"{name}_bn", _conv(state, f"{name}_conv", x,
                                                         padding=1), eps=bn_eps))
        if stage < 4:
            x = ops.max_pool2d(x, 2, 2)
    x = _linear(state, "projection", x.reshape(x.shape[0], -1))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
