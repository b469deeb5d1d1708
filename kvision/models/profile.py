"""Cost of a model: parameters, multiply-accumulates, weight size.

FLOPs are counted the way the papers count them: one multiply-accumulate (MAC) of a
convolution or a fully-connected layer is one "FLOP"; other layers (BatchNorm,
activations, pooling, additions) are left out, as they are in the papers' tables.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np


@dataclasses.dataclass(frozen=True)
class Profile:
    """Cost of a model at its input size (batch 1)."""

    total_params: int
    trainable_params: int
    macs: int
    size_mb: float
    input_shape: tuple

    @property
    def gflops(self) -> float:
        """Giga multiply-accumulates, the papers' "GFLOPs"."""
        return self.macs / 1e9

    def as_dict(self):
        return {**dataclasses.asdict(self), "gflops": self.gflops}


def _spatial(shape):
    return math.prod(int(d) for d in shape[1:-1])


def _layer_macs(layer) -> int:
    """MACs of one layer for one sample; 0 for layers without multiplies."""
    if isinstance(layer, keras.Model):
        return sum(_layer_macs(sub) for sub in layer.layers)
    if not layer.weights:
        return 0
    try:
        in_shape = layer.input.shape
        out_shape = layer.output.shape
    except (AttributeError, ValueError):
        return 0
    kernel = getattr(layer, "kernel_size", None)
    k = math.prod(kernel) if kernel else 1
    if isinstance(layer, keras.layers.SeparableConv2D):
        depthwise = _spatial(out_shape) * in_shape[-1] * layer.depth_multiplier * k
        return depthwise + _spatial(out_shape) * in_shape[-1] * layer.depth_multiplier * out_shape[-1]
    if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.DepthwiseConv1D)):
        return _spatial(out_shape) * out_shape[-1] * k
    if isinstance(layer, (keras.layers.Conv2DTranspose, keras.layers.Conv1DTranspose,
                          keras.layers.Conv3DTranspose)):
        return _spatial(in_shape) * in_shape[-1] * k * out_shape[-1]
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        return _spatial(out_shape) * out_shape[-1] * k * in_shape[-1] // layer.groups
    if isinstance(layer, keras.layers.Dense):
        return _spatial(out_shape) * in_shape[-1] * out_shape[-1] if len(out_shape) > 2 \
            else in_shape[-1] * out_shape[-1]
    return 0


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on one sample."""
    shapes = model.inputs[0].shape if model.inputs else None
    if shapes is None or any(d is None for d in shapes[1:]):
        raise ValueError(
            f"Counting FLOPs needs a fixed input size; {model.name} takes "
            f"{tuple(shapes) if shapes is not None else None}. Build it with input_shape=(H, W, C)."
        )
    return int(sum(_layer_macs(layer) for layer in model.layers))


def profile(model) -> Profile:
    """Parameters (total/trainable), MACs at the model's input size, size in MB.

    The size is that of the float32 weights (every variable, BatchNorm statistics
    included), in MB of 10^6 bytes.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"profile() expects a keras.Model, got {type(model).__name__}.")
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    total = int(model.count_params())
    size = sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights)
    return Profile(total_params=total, trainable_params=trainable,
                   macs=count_macs(model), size_mb=float(size) / 1e6,
                   input_shape=tuple(model.inputs[0].shape[1:]))
