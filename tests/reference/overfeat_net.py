"""OverFeat's "fast" model in NumPy (NCHW, float64), from the paper's definition.

Sermanet et al. 2014, "OverFeat: Integrated Recognition, Localization and Detection
using Convolutional Networks", Table 1 (fast model): layers 1-5 are
11x11/4 conv 96 -> ReLU -> 2x2/2 max pool; 5x5/1 conv 256 -> ReLU -> 2x2/2 max pool;
3x3/1 conv 512, 3x3/1 conv 1024, 3x3/1 conv 1024 (zero padding 1 each) -> ReLU,
the last followed by a 2x2/2 max pool; no contrast normalization. Section 3.5: at
test time the fully connected layers are convolutions sliding over the image, the
first one's kernel the size of the pool-5 map of one window, the later ones 1x1.
Section 4.2: the box regressor reads the same pool-5 features through two hidden
layers (4096, 1024) to 4 box coordinates.

Where kvision documents a deliberate difference, this follows kvision's docstring
(kvision/models/detection/overfeat.py): raw pixels in [0, 255] scaled by 1/255; the
class head's widths configurable and its output ``classes + 1`` softmax channels,
the last the background class; one class-agnostic box per window (not the paper's
per-class regressors), normalized ``(x, y, w, h)`` in the window by a sigmoid.
"""

import numpy as np

from reference import ops

# (name, kernel, stride, zero padding, max pool after) of the paper's Table 1.
FAST_BODY = (("conv1", 11, 4, 0, 2), ("conv2", 5, 1, 0, 2), ("conv3", 3, 1, 1, 0),
             ("conv4", 3, 1, 1, 0), ("conv5", 3, 1, 1, 2))


def fast_body(x, params):
    """Layers 1-5 on raw pixels ``x`` (N, C, H, W); ``params[name] = (weight (O, C,
    kh, kw), bias)``."""
    x = np.asarray(x, np.float64) / 255.0
    for name, kernel, stride, padding, pool in FAST_BODY:
        weight, bias = params[name]
        assert weight.shape[2:] == (kernel, kernel), (name, weight.shape)
        x = ops.relu(ops.conv2d(x, weight, bias, stride=stride, padding=padding))
        if pool:
            x = ops.max_pool2d(x, pool, stride=pool)
    return x


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _conv_head(x, layers):
    """Convolutions (the first as large as one window's pool-5 map, then 1x1), ReLU
    between them, none after the last."""
    for i, (weight, bias) in enumerate(layers):
        x = ops.conv2d(x, weight, bias)
        if i < len(layers) - 1:
            x = ops.relu(x)
    return x


def overfeat_fast(x, params, activate=True):
    """Every window's class scores and box on image ``x`` (N, C, H, W), raw pixels.

    ``params`` holds the body's convs and ``"fc"`` / ``"box_fc"``: lists of (weight,
    bias) in conv layout (O, C, kh, kw). Returns ``(classes (N, K + 1, h, w) softmax
    over channels, the last background; boxes (N, 4, h, w) in (0, 1))``, cell (i, j)
    the window at (32 i, 32 j) pixels (the body's stride, 4 * 2 * 2 * 2).
    ``activate=False``: the logits before the softmax and sigmoid.
    """
    features = fast_body(x, params)
    classes, boxes = (_conv_head(features, params[k]) for k in ("fc", "box_fc"))
    if not activate:
        return classes, boxes
    return _softmax(classes, axis=1), _sigmoid(boxes)
