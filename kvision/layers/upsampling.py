"""The decoder's tools that Keras lacks: max pooling that remembers where each maximum
was, the unpooling that puts values back there, resizing to a reference tensor's size,
and the bilinear initializer of learnable (transposed-convolution) upsampling.

Keras already has nearest/bilinear ``UpSampling2D``, ``Resizing`` and
``Conv2DTranspose``; use those. ``tf.nn.max_pool_with_argmax`` has no TFLite builtin,
so :class:`MaxPoolingWithArgmax2D` finds the argmax of each window with reshapes, a
transpose and ``argmax`` (all TFLite builtins), and :class:`MaxUnpooling2D` scatters with
a one-hot product and the inverse reshapes. Indices are *window positions*
``dy * pool_size + dx`` in ``[0, pool_size**2)``, not flat offsets:
:func:`flat_indices` converts them to ``tf.nn.max_pool_with_argmax``'s convention.
"""

from __future__ import annotations

import numpy as np

import keras
from keras import ops


def _check_pool_size(pool_size):
    if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 2:
        raise ValueError(f"pool_size must be an integer >= 2, got {pool_size!r}.")
    return pool_size


def _ceil(side, k):
    return None if side is None else -(-side // k)


@keras.saving.register_keras_serializable(package="kvision")
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """Max pooling over ``pool_size`` x ``pool_size`` windows (stride = pool size) that
    also returns where each maximum was (SegNet's encoder pooling).

    Input ``(N, H, W, C)``; outputs ``[pooled, indices]``, both ``(N, ceil(H/k),
    ceil(W/k), C)``, indices int32 window positions ``dy * k + dx`` (the first maximum
    in row-major order on ties, as ``tf.nn.max_pool_with_argmax``). Odd sides are
    padded at the bottom/right with the lowest float (Caffe's ceil mode); pass the
    encoder tensor as third input of :class:`MaxUnpooling2D` to crop back.
    """

    def __init__(self, pool_size=2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _check_pool_size(pool_size)

    def call(self, inputs):
        k = self.pool_size
        x = inputs
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        if height is None or width is None:
            shape = ops.shape(x)
            height = height if height is not None else shape[1]
            width = width if width is not None else shape[2]
        pad_h = (-height) % k
        pad_w = (-width) % k
        if isinstance(pad_h, int) and isinstance(pad_w, int):
            if pad_h or pad_w:
                x = ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]],
                            constant_values=float(np.finfo("float32").min))
        else:  # unknown size: pad unconditionally (a zero pad when even)
            x = ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]],
                        constant_values=float(np.finfo("float32").min))
        rows, cols = (height + pad_h) // k, (width + pad_w) // k
        # (N, H, W, C) -> (N*rows, k, cols, k, C) -> (N*rows, cols, C, k, k): 5-D at most.
        t = ops.reshape(x, (-1, k, cols, k, channels))
        t = ops.transpose(t, (0, 2, 4, 1, 3))
        t = ops.reshape(t, (-1, rows, cols, channels, k * k))
        pooled = ops.max(t, axis=-1)
        # The first position not beaten by another one of its window. Comparing the
        # window's values with each other (not with the pooled maximum, which int8
        # quantization may give another scale) and not keras' TF argmax (it brings
        # a BitwiseAnd for -0.0 that TFLite builtins lack) keeps this exact in float
        # and int8 TFLite; 4-D at most for TFLite's broadcasting comparisons.
        flat = ops.reshape(t, (-1, channels, k * k))
        beaten = ops.any(ops.greater(ops.expand_dims(flat, -2), ops.expand_dims(flat, -1)),
                         axis=-1)
        positions = ops.arange(k * k, dtype="int32")
        indices = ops.min(ops.where(beaten, k * k, positions), axis=-1)
        indices = ops.reshape(indices, (-1, rows, cols, channels))
        return [pooled, indices]

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        shape = (n, _ceil(h, self.pool_size), _ceil(w, self.pool_size), c)
        return [shape, shape]

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape(inputs.shape)[0]
        return [keras.KerasTensor(shape, dtype=self.compute_dtype),
                keras.KerasTensor(shape, dtype="int32")]

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package="kvision")
class MaxUnpooling2D(keras.layers.Layer):
    """Puts each value back at the window position its :class:`MaxPoolingWithArgmax2D`
    found, zeros elsewhere (SegNet's decoder upsampling).

    Called on ``[values, indices]`` (both ``(N, h, w, C)``), or on ``[values, indices,
    reference]`` to crop the ``(N, h*k, w*k, C)`` result to ``reference``'s height
    and width (the tensor that was pooled, when its sides were odd).
    """

    def __init__(self, pool_size=2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _check_pool_size(pool_size)

    def _check(self, shapes):
        if not isinstance(shapes, (list, tuple)) or len(shapes) not in (2, 3):
            raise ValueError("MaxUnpooling2D is called on [values, indices] or "
                             "[values, indices, reference].")
        values, indices = tuple(shapes[0]), tuple(shapes[1])
        if values[1:] != indices[1:]:
            raise ValueError(f"MaxUnpooling2D: values {values} and indices {indices} "
                             f"must have the same shape.")

    def call(self, inputs):
        self._check([tuple(t.shape) for t in inputs])
        k = self.pool_size
        values, indices = inputs[0], inputs[1]
        rows, cols, channels = values.shape[1], values.shape[2], values.shape[3]
        if rows is None or cols is None:
            shape = ops.shape(values)
            rows = rows if rows is not None else shape[1]
            cols = cols if cols is not None else shape[2]
        # A select, not a one-hot product: TFLite's int8 ONE_HOT does not give 0/1 in
        # its quantized scale. 3-D broadcasts (int8 kernels broadcast up to 4-D).
        indices = ops.reshape(ops.cast(indices, "int32"), (-1, channels, 1))
        hit = ops.equal(indices, ops.arange(k * k, dtype="int32"))  # (N*h*w, C, k*k)
        t = ops.where(hit, ops.reshape(values, (-1, channels, 1)), 0.0)
        t = ops.reshape(t, (-1, cols, channels, k, k))      # (N*h, w, C, k, k)
        t = ops.transpose(t, (0, 3, 1, 4, 2))               # (N*h, k, w, k, C)
        out = ops.reshape(t, (-1, rows * k, cols * k, channels))
        if len(inputs) == 3:
            ref = inputs[2]
            height, width = ref.shape[1], ref.shape[2]
            if height is None or width is None:
                height, width = ops.shape(ref)[1], ops.shape(ref)[2]
            out = out[:, :height, :width, :]
        return out

    def compute_output_shape(self, input_shapes):
        self._check(input_shapes)
        n, h, w, c = input_shapes[0]
        if len(input_shapes) == 3:
            return (n, input_shapes[2][1], input_shapes[2][2], c)
        k = self.pool_size
        return (n, None if h is None else h * k, None if w is None else w * k, c)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


def flat_indices(indices, input_shape, pool_size=2):
    """Window positions -> ``tf.nn.max_pool_with_argmax``'s flat offsets
    ``(y * W + x) * C + c`` (``include_batch_in_index=False``), with numpy."""
    indices = np.asarray(indices)
    _, height, width, channels = input_shape
    _, rows, cols, _ = indices.shape
    i, j, c = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(channels),
                          indexing="ij")
    y = i * pool_size + indices // pool_size
    x = j * pool_size + indices % pool_size
    return (y * width + x) * channels + c


@keras.saving.register_keras_serializable(package="kvision")
class ResizeLike(keras.layers.Layer):
    """Resizes ``x`` to the height and width of ``reference``: ``[x, reference] ->
    (N, H_ref, W_ref, C_x)``. Bilinear (``half_pixel_centers``, as ``tf.image``) or
    nearest; for decoders whose skip tensors are not an exact multiple apart."""

    def __init__(self, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got "
                             f"{interpolation!r}.")
        self.interpolation = interpolation

    def call(self, inputs):
        x, reference = inputs
        height, width = reference.shape[1], reference.shape[2]
        if height is None or width is None:
            height, width = ops.shape(reference)[1], ops.shape(reference)[2]
        if x.shape[1] == height and x.shape[2] == width:
            return x
        return ops.image.resize(x, (height, width), interpolation=self.interpolation)

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[3])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package="kvision")
class BilinearKernel(keras.initializers.Initializer):
    """Initializer of a ``Conv2DTranspose`` kernel ``(k, k, C, C)`` as bilinear
    interpolation, each channel to itself (FCN's initial "deconvolution" filters:
    with ``kernel_size = 2 * stride`` it upsamples exactly as bilinear does)."""

    def __call__(self, shape, dtype=None):
        kh, kw, out_channels, in_channels = shape
        if kh != kw or out_channels != in_channels:
            raise ValueError(f"BilinearKernel needs a square kernel mapping C channels "
                             f"to C, got shape {tuple(shape)}.")
        factor = (kh + 1) // 2
        center = factor - 1 if kh % 2 == 1 else factor - 0.5
        og = np.arange(kh)
        filt = 1 - np.abs(og - center) / factor
        kernel = np.zeros(shape, dtype="float32")
        for c in range(in_channels):
            kernel[:, :, c, c] = np.outer(filt, filt)
        return ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}
