"""Cost of a model: parameters, multiply-accumulates, weight size.

FLOPs are counted the way the papers count them: one multiply-accumulate (MAC) of a
convolution or a fully-connected layer is one "FLOP"; other layers (BatchNorm,
activations, pooling, additions) are left out, as they are in the papers' tables.
Each layer call is counted from the shapes it sees when the model runs at its input
size, inside nested models too (:func:`layer_macs` gives the count per layer).
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from kvision import features


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


# The layers with multiply-accumulates (subclasses included: AtrousConv2D is a Conv2D).
_COUNTED = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
            keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
            keras.layers.Conv3DTranspose, keras.layers.DepthwiseConv1D,
            keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
            keras.layers.Dense)


def _spatial(shape):
    return math.prod(int(d) for d in shape[1:-1])


def _layer_macs(layer, in_shape, out_shape) -> int:
    """MACs of one call of a ``_COUNTED`` layer for one sample, from the shapes that
    call sees."""
    kernel = getattr(layer, "kernel_size", None)
    k = math.prod(kernel) if kernel else 1
    if isinstance(layer, keras.layers.SeparableConv2D):
        depthwise = _spatial(out_shape) * in_shape[-1] * layer.depth_multiplier
        return depthwise * k + depthwise * out_shape[-1]
    if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.DepthwiseConv1D)):
        return _spatial(out_shape) * out_shape[-1] * k
    if isinstance(layer, (keras.layers.Conv2DTranspose, keras.layers.Conv1DTranspose,
                          keras.layers.Conv3DTranspose)):
        return _spatial(in_shape) * in_shape[-1] * k * out_shape[-1]
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        return _spatial(out_shape) * out_shape[-1] * k * in_shape[-1] // layer.groups
    # Dense, on (B, units) or on every position of a map
    return _spatial(out_shape) * in_shape[-1] * out_shape[-1]


def _calls(model):
    """``(path, layer, input shape, output shape)`` of every call of a ``_COUNTED``
    layer in ``model`` at its input size, nested models inlined.

    The graph's own shapes are used where they hold; a nested model built for any
    size (OverFeat's ``(None, None, 3)`` body) records ``None`` dimensions, so its
    layers' shapes are computed (symbolically) from the tensors they are given.
    """
    g = features.graph(model)
    values = {id(t): t for t in features.functional(model).inputs}
    for step in g.steps:
        feed = {raw: values[outer] for raw, outer in step.alias.items()}
        if all(tuple(t.shape) == tuple(feed[id(t)].shape) for t in step.node.input_tensors):
            outputs = step.node.outputs
        else:
            args, kwargs = step.node.arguments.fill_in(feed)
            outputs = keras.tree.flatten(step.op.compute_output_spec(*args, **kwargs))
        for t, value in zip(step.outputs, outputs):
            values[t] = value
        if isinstance(step.op, _COUNTED):
            yield ("/".join(step.path), step.op,
                   tuple(feed[id(step.node.input_tensors[0])].shape),
                   tuple(outputs[0].shape))


def _check_fixed_input(model):
    shapes = [tuple(t.shape) for t in features.functional(model).inputs]
    if any(d is None for shape in shapes for d in shape[1:]):
        raise ValueError(
            f"Counting FLOPs needs a fixed input size; {model.name} takes "
            f"{shapes[0] if len(shapes) == 1 else shapes}. Build it with "
            f"input_shape=(H, W, C)."
        )


def layer_macs(model) -> dict:
    """``{layer path: MACs}`` of every convolution and Dense layer of ``model``, for
    one sample at the model's input size.

    A layer inside a nested model is named by its path (``"backbone/conv1"``); a
    layer called several times counts every call.
    """
    _check_fixed_input(model)
    macs = {}
    for path, layer, in_shape, out_shape in _calls(model):
        if None in in_shape[1:] or None in out_shape[1:]:
            raise ValueError(f"Layer {path!r} of {model.name} sees shapes {in_shape} -> "
                             f"{out_shape} at the model's fixed input size; its "
                             f"multiply-accumulates cannot be counted.")
        macs[path] = macs.get(path, 0) + _layer_macs(layer, in_shape, out_shape)
    return macs


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on one sample."""
    return sum(layer_macs(model).values())


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
