"""Tolerances for float32 results that two computations reach in different orders.

TensorFlow's CPU kernels (oneDNN, Eigen, XNNPACK) pick their blocking and summation
order by CPU: AVX2, AVX-512 and AMX machines round the same convolution differently,
and a convolution and the dense layer it was converted from (or TFLite and Keras) are
different kernels on any machine. Such results are equal only to float32 rounding, so
a test compares them within a tolerance derived from that rounding, relative to the
values' size, never from the difference one machine happened to show.
"""

from __future__ import annotations

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: one float32 rounding, relative
# How far beyond the typical (random-walk, sqrt(terms)) accumulated rounding a
# result may land; well below the worst-case bound (terms * eps).
SPREAD = 16.0


def float32_atol(expected, *, terms=1, depth=1, scale=None) -> float:
    """The absolute tolerance for a float32 result ``expected`` computed in another
    order: ``SPREAD * sqrt(terms) * depth * EPS32`` times the values' size.

    Args:
        expected: the reference values (their largest magnitude is the size).
        terms: products summed into each value by the largest reduction in the
            computation (a 3x3 convolution over 512 channels: 4608).
        depth: how many such reductions the error passes through in sequence
            (layers of a network, a softmax after a dense layer...).
        scale: the values' size where it is not ``max |expected|`` (probabilities
            computed from logits: the logits' size).
    """
    if scale is None:
        values = np.abs(np.asarray(expected, dtype=np.float64))
        scale = float(values.max()) if values.size else 0.0
    return SPREAD * math.sqrt(max(terms, 1)) * max(depth, 1) * EPS32 * max(scale, 1e-30)


def assert_float32_close(actual, expected, *, terms=1, depth=1, scale=None, err_msg=""):
    """``assert_allclose`` within :func:`float32_atol` (``rtol=0``)."""
    atol = float32_atol(expected, terms=terms, depth=depth, scale=scale)
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=0, atol=atol,
                               err_msg=err_msg)
