"""Networks with no torchvision/timm module to follow, written in NumPy from their
papers' layout tables: ZFNet (Zeiler & Fergus 2013, Fig. 3), Darknet-53 (Redmon &
Farhadi 2018, Table 1, darknet's conventions) and LeNet-5 (LeCun et al. 1998, as
kvision documents its simplifications).

The parameters are a torch-style state dict (``<layer>.weight`` OIHW / ``(out, in)``,
``.bias``, BatchNorm's ``.running_mean`` ...) keyed by the Keras layer names, made
from a Keras model by :func:`state_from_keras`; only the names come from kvision,
the computation (order, strides, padding, pooling, normalization) from the paper.
"""

import numpy as np

from . import ops
from .torchvision_nets import _bn, _conv, _linear


def state_from_keras(model):
    """``{f"{layer}.{weight|bias|running_mean|running_var}": array}`` in torch's
    layouts: Conv2D HWIO -> OIHW, Dense (in, out) -> (out, in), BatchNormalization
    (gamma, beta, moving mean, moving variance)."""
    state = {}
    for layer in model.layers:
        values = [np.asarray(v, np.float64) for v in layer.get_weights()]
        if not values:
            continue
        if type(layer).__name__ == "BatchNormalization":
            keys = ("weight", "bias", "running_mean", "running_var")
        else:
            keys = ("weight", "bias")
            kernel = values[0]
            values[0] = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
        state |= {f"{layer.name}.{k}": v for k, v in zip(keys, values)}
    return state


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Krizhevsky et al. 2012, Section 3.3: ``b_c = a_c / (k + alpha * sum over the
    n = size channels centred on c (cut at the ends) of a^2) ** beta``."""
    squared = np.pad(x ** 2, ((0, 0), (size // 2, size // 2), (0, 0), (0, 0)))
    channels = x.shape[1]
    window = sum(squared[:, i:i + channels] for i in range(size))
    return x / (k + alpha * window) ** beta


# ---- ZFNet, Fig. 3: (kernel, stride, padding) of layers 1-5 ----

ZFNET = {"conv1": (7, 2, 1), "conv2": (5, 2, 0), "conv3": (3, 1, 1),
         "conv4": (3, 1, 1), "conv5": (3, 1, 1)}


def zfnet_features(state, x):
    """Layers 1-5 of Fig. 3: conv + ReLU; after 1 and 2 a 3x3/2 max pool (sizes 55
    and 13 at 224 need the last window rounded up) then contrast normalization
    across maps; after 5 the same pool (6x6)."""
    for name, (kernel, stride, padding) in ZFNET.items():
        x = ops.relu(_conv(state, name, x, stride=stride, padding=padding))
        if name in ("conv1", "conv2", "conv5"):
            x = ops.max_pool2d(x, 3, 2, ceil_mode=True)
        if name in ("conv1", "conv2"):
            x = local_response_norm(x)
    return x


# ---- Darknet-53, Table 1 ----

DARKNET53 = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


def _darknet_conv(state, name, x, stride=1):
    """A darknet [convolutional] layer with batch_normalize=1, pad=1 (k // 2 on every
    side), activation=leaky (slope 0.1), no bias."""
    kernel = state[f"{name}_conv.weight"].shape[-1]
    x = _conv(state, f"{name}_conv", x, stride=stride, padding=kernel // 2)
    x = _bn(state, f"{name}_bn", x)
    return np.where(x > 0, x, 0.1 * x)


def darknet53(state, x, features=False):
    """Table 1: 3x3 32; per stage a 3x3/2 conv, then units of (1x1 C/2, 3x3 C) added
    to their input ([shortcut] activation=linear); global average pool, connected."""
    x = _darknet_conv(state, "stem", x)
    for stage, (channels, units) in enumerate(DARKNET53, start=1):
        x = _darknet_conv(state, f"stage{stage}_down", x, stride=2)
        for unit in range(1, units + 1):
            name = f"stage{stage}_block{unit}"
            x = x + _darknet_conv(state, f"{name}_2", _darknet_conv(state, f"{name}_1", x))
    if features:
        return x
    return _linear(state, "predictions", x.mean(axis=(2, 3)))


# ---- LeNet-5 ----

def lenet5(state, x):
    """x / 255; C1 5x5 6 maps, tanh; S2 2x2 average; C3 5x5 16 maps (connected to
    all of S2, kvision's documented choice), tanh; S4; C5 FC 120, tanh; F6 84, tanh;
    output FC. The flatten is in the (H, W, C) order of the Keras model whose
    weights ``state`` holds."""
    x = np.tanh(_conv(state, "c1_conv", x / 255.0))
    x = ops.avg_pool2d(x, 2)
    x = np.tanh(_conv(state, "c3_conv", x))
    x = ops.avg_pool2d(x, 2)
    x = x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1)
    x = np.tanh(_linear(state, "c5_fc", x))
    x = np.tanh(_linear(state, "f6_fc", x))
    return _linear(state, "predictions", x)
