"""Pooling that rounds up, as Caffe and PyTorch's ``ceil_mode`` do (ZFNet, SqueezeNet)."""

import keras


def max_pool_ceil(x, pool_size=3, strides=2, *, name):
    """Max-pool rounding the output size up (Caffe's and PyTorch's ``ceil_mode``).

    ``ceil((H - k) / s) + 1`` outputs: pad ``s - 1`` rows/columns at the bottom/right,
    then pool "valid"; the last window may hang over the edge. The padding is zero,
    not -inf, so the input must be non-negative (it follows a ReLU everywhere used):
    each window holds at least one real value >= 0, so the pad never wins.
    """
    pad = strides - 1
    x = keras.layers.ZeroPadding2D(((0, pad), (0, pad)), name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(pool_size, strides=strides, name=name)(x)
