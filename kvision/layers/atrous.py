"""Atrous (dilated) convolution that skips the taps which can only see padding.

With "same" padding and stride 1, a ``k``-tap kernel dilated by ``d`` reads the inputs
at offsets ``(i - (k - 1) / 2) * d`` from each output position. A tap whose offset is
at least the map's side lies outside the map for *every* output position, so it only
ever multiplies zero padding. DeepLab's ASPP meets this all the time on small inputs:
rates 12/24/36 (output stride 8) on an 8x8 map leave only the centre tap of each 3x3
kernel, yet a plain ``Conv2D`` pads the map to 32x32 to 80x80 and convolves the zeros
(on TF's CPU kernels a training step of a 64-pixel DeepLab v3+ takes 9.0 s that way
and 0.22 s with this layer: ``benchmarks/atrous_speed.py``).

:class:`AtrousConv2D` is a ``keras.layers.Conv2D`` (same weights, same config, same
parameter count) whose convolution uses only the live taps when the map's size is
known when the graph is built; the result is the same number, computed without the dead
taps. Gradients of dead taps are zero either way.
"""

from __future__ import annotations

import keras
from keras import ops


def live_taps(kernel_size, dilation, side):
    """``(first, stop)`` of the kernel taps along one axis that can see the map.

    ``kernel_size`` odd taps dilated by ``dilation``, "same" padding, stride 1, on a
    map of ``side`` pixels (``None`` when unknown: every tap). Tap ``i`` sits at offset
    ``(i - (kernel_size - 1) // 2) * dilation``; it is live when ``|offset| < side``.
    """
    if side is None or kernel_size % 2 == 0:
        return 0, kernel_size
    centre = (kernel_size - 1) // 2
    reach = min(centre, (side - 1) // dilation)
    return centre - reach, centre + reach + 1


@keras.saving.register_keras_serializable(package="kvision")
class AtrousConv2D(keras.layers.Conv2D):
    """``Conv2D`` that drops the taps of a dilated kernel which lie wholly in the
    padding (see the module docstring). Shapes, weights and config are
    ``Conv2D``'s: ``(N, H, W, C) -> (N, H, W, filters)`` with "same" padding.

    Only stride 1, "same" padding and channels-last inputs are trimmed; anything else
    is a plain ``Conv2D``.
    """

    def convolution_op(self, inputs, kernel):
        dilation = list(self.dilation_rate)
        if (self.padding == "same" and tuple(self.strides) == (1, 1)
                and self.data_format == "channels_last" and max(dilation) > 1):
            (top, bottom), (left, right) = (
                live_taps(self.kernel_size[axis], dilation[axis], inputs.shape[1 + axis])
                for axis in (0, 1))
            if (top, bottom, left, right) != (0, self.kernel_size[0], 0,
                                              self.kernel_size[1]):
                kernel = kernel[top:bottom, left:right]
                dilation = [rate if stop - first > 1 else 1
                            for rate, (first, stop) in zip(dilation, ((top, bottom),
                                                                       (left, right)))]
        return ops.conv(inputs, kernel, strides=list(self.strides), padding=self.padding,
                        dilation_rate=dilation, data_format=self.data_format)
