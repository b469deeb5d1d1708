"""torch.nn.functional's building blocks in NumPy (NCHW), from torch's definitions.

Convolutions go through im2col and one matmul per group, in float64, so the
reference is far more precise than the float32 network it checks.
"""

import math

import numpy as np


def _pairs(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv2d``: x ``(N, C, H, W)``, weight ``(O, C/groups, kh, kw)``; zero padding,
    output side ``floor((H + 2p - d(k - 1) - 1) / s) + 1``."""
    (sh, sw), (ph, pw), (dh, dw) = _pairs(stride), _pairs(padding), _pairs(dilation)
    n, c, h, w = x.shape
    out_c, in_per_group, kh, kw = weight.shape
    if c != in_per_group * groups:
        raise ValueError(f"conv2d: {c} input channels, weight wants {in_per_group * groups}")
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    # columns[n, c, i, j, oh, ow] = x[n, c, oh*sh + i*dh, ow*sw + j*dw]
    columns = np.empty((n, c, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            columns[:, :, i, j] = x[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                                    j * dw:j * dw + sw * (ow - 1) + 1:sw]
    out = np.empty((n, out_c, oh, ow))
    per_out = out_c // groups
    for g in range(groups):
        cols = columns[:, g * in_per_group:(g + 1) * in_per_group]
        cols = cols.reshape(n, in_per_group * kh * kw, oh * ow)
        kernel = weight[g * per_out:(g + 1) * per_out].reshape(per_out, -1).astype(np.float64)
        out[:, g * per_out:(g + 1) * per_out] = (kernel @ cols).reshape(n, per_out, oh, ow)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def batch_norm(x, running_mean, running_var, weight, bias, eps=1e-5):
    """``F.batch_norm`` in inference: the running statistics, per channel (axis 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = weight / np.sqrt(running_var.astype(np.float64) + eps)
    return (x - running_mean.reshape(shape)) * scale.reshape(shape) + bias.reshape(shape)


def relu(x):
    return np.maximum(x, 0.0)


def linear(x, weight, bias=None):
    """``F.linear``: ``x @ weight.T + bias``, weight ``(out, in)``."""
    out = x.astype(np.float64) @ weight.astype(np.float64).T
    return out if bias is None else out + bias


def _pool_size(size, kernel, stride, padding, ceil_mode):
    """torch's pooling output size: with ``ceil_mode`` the last window may start in
    the right padding only if it starts inside the input or the left padding."""
    span = size + 2 * padding - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _windows(x, kernel_size, stride, padding, ceil_mode, fill):
    kh, kw = _pairs(kernel_size)
    sh, sw = _pairs(kernel_size if stride is None else stride)
    ph, pw = _pairs(padding)
    n, c, h, w = x.shape
    oh = _pool_size(h, kh, sh, ph, ceil_mode)
    ow = _pool_size(w, kw, sw, pw, ceil_mode)
    # Pad enough on the right for windows that run past the input (ceil_mode).
    extra_h = max(0, (oh - 1) * sh + kh - (h + 2 * ph))
    extra_w = max(0, (ow - 1) * sw + kw - (w + 2 * pw))
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph + extra_h),
                                           (pw, pw + extra_w)), constant_values=fill)
    windows = np.empty((n, c, oh, ow, kh, kw))
    for i in range(kh):
        for j in range(kw):
            windows[..., i, j] = padded[:, :, i:i + sh * (oh - 1) + 1:sh,
                                        j:j + sw * (ow - 1) + 1:sw]
    return windows, (h, w, kh, kw, sh, sw, ph, pw, oh, ow)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """``F.max_pool2d``: padding is -inf (never chosen)."""
    windows, _ = _windows(x, kernel_size, stride, padding, ceil_mode, -np.inf)
    return windows.max(axis=(-2, -1))


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """``F.avg_pool2d``: the divisor counts the zero padding (``count_include_pad``)
    but never the part of a ceil_mode window beyond the padded input."""
    windows, (h, w, kh, kw, sh, sw, ph, pw, oh, ow) = _windows(
        x, kernel_size, stride, padding, ceil_mode, 0.0)
    total = windows.sum(axis=(-2, -1))
    rows = np.arange(oh) * sh - ph
    cols = np.arange(ow) * sw - pw
    if count_include_pad:
        lo_h, hi_h, lo_w, hi_w = -ph, h + ph, -pw, w + pw
    else:
        lo_h, hi_h, lo_w, hi_w = 0, h, 0, w
    count_h = np.minimum(rows + kh, hi_h) - np.maximum(rows, lo_h)
    count_w = np.minimum(cols + kw, hi_w) - np.maximum(cols, lo_w)
    return total / (count_h[:, None] * count_w[None, :])


def adaptive_avg_pool2d(x, output_size):
    """``F.adaptive_avg_pool2d``: output cell i averages rows
    ``floor(i H / out) .. ceil((i + 1) H / out)``."""
    oh, ow = _pairs(output_size)
    n, c, h, w = x.shape
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            c0, c1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(-2, -1))
    return out


def channel_shuffle(x, groups):
    """torchvision's ``channel_shuffle``: view (N, g, C/g, H, W), transpose 1 and 2."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


# ---- Segmentation building blocks (tests/reference/segmentation_nets.py) ----

def conv_transpose2d(x, weight, bias=None, stride=1, padding=0):
    """``F.conv_transpose2d`` (Caffe's "Deconvolution"): weight ``(C_in, C_out, k, k)``;
    input pixel ``(i, j)`` adds ``x[i, j] * weight[:, :, a, b]`` at output
    ``(i s + a - p, j s + b - p)``; output side ``(H - 1) s - 2p + k``."""
    (sh, sw), (ph, pw) = _pairs(stride), _pairs(padding)
    n, c, h, w = x.shape
    in_c, out_c, kh, kw = weight.shape
    if c != in_c:
        raise ValueError(f"conv_transpose2d: {c} input channels, weight wants {in_c}")
    full = np.zeros((n, out_c, (h - 1) * sh + kh, (w - 1) * sw + kw))
    x = x.astype(np.float64)
    for a in range(kh):
        for b in range(kw):
            full[:, :, a:a + sh * (h - 1) + 1:sh, b:b + sw * (w - 1) + 1:sw] += np.einsum(
                "nihw,io->nohw", x, weight[:, :, a, b].astype(np.float64))
    out = full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def max_pool2d_with_mask(x, kernel_size, stride):
    """Caffe's MAX "Pooling" with a second top (the mask SegNet's "Upsample" reads),
    no padding: output side ``ceil((H - k) / s) + 1`` (the last window is cut at the
    border); the mask holds each maximum's flat position ``y * W + x`` in the input
    map, the first in row-major order on ties (Caffe compares with ``>``)."""
    n, c, h, w = x.shape
    oh, ow = -(-(h - kernel_size) // stride) + 1, -(-(w - kernel_size) // stride) + 1
    pooled = np.empty((n, c, oh, ow))
    mask = np.empty((n, c, oh, ow), dtype=np.int64)
    for i in range(oh):
        y0, y1 = i * stride, min(i * stride + kernel_size, h)
        for j in range(ow):
            x0, x1 = j * stride, min(j * stride + kernel_size, w)
            window = x[:, :, y0:y1, x0:x1].reshape(n, c, -1)
            first = window.argmax(axis=-1)  # numpy's argmax: the first maximum
            pooled[:, :, i, j] = np.take_along_axis(window, first[..., None], -1)[..., 0]
            mask[:, :, i, j] = (y0 + first // (x1 - x0)) * w + x0 + first % (x1 - x0)
    return pooled, mask


def max_unpool2d(x, mask, out_h, out_w):
    """SegNet's Caffe "Upsample" layer: an ``out_h x out_w`` map of zeros per
    channel, ``top[mask[i]] = bottom[i]`` for every input position ``i``."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, out_h * out_w))
    np.put_along_axis(out, mask.reshape(n, c, -1), x.reshape(n, c, -1), axis=-1)
    return out.reshape(n, c, out_h, out_w)


def resize_bilinear(x, out_h, out_w):
    """``F.interpolate(mode="bilinear", align_corners=False)`` (= ``tf.image.resize``'s
    half-pixel centers, no antialiasing): output pixel ``o`` reads input coordinate
    ``(o + 0.5) * in / out - 0.5``, clamped at 0, between its two neighbours."""

    def taps(size_in, size_out):
        src = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), size_in - 1)
        hi = np.minimum(lo + 1, size_in - 1)
        return lo, hi, src - lo

    x = x.astype(np.float64)
    lo, hi, f = taps(x.shape[2], out_h)
    x = x[:, :, lo] * (1 - f)[:, None] + x[:, :, hi] * f[:, None]
    lo, hi, f = taps(x.shape[3], out_w)
    return x[:, :, :, lo] * (1 - f) + x[:, :, :, hi] * f


def interpolate_nearest(x, size):
    """``F.interpolate(x, size=size, mode="nearest")``: output index ``i`` reads input
    ``floor(i * in / out)`` (clamped to the last), per spatial axis."""
    oh, ow = _pairs(size)
    h, w = x.shape[-2:]
    rows = np.minimum(np.floor(np.arange(oh) * (h / oh)).astype(int), h - 1)
    cols = np.minimum(np.floor(np.arange(ow) * (w / ow)).astype(int), w - 1)
    return x[:, :, rows][:, :, :, cols]


def _roi_align_axis(start, bin_size, grid, pooled, size):
    """torchvision's roi_align kernel along one axis: ``(pooled, size)``, the sum over
    a bin's ``grid`` samples of each sample's bilinear weights (zero for a sample
    beyond ``[-1, size]``). Bilinear interpolation and the kernel's out-of-range test
    are both separable, so the 2-D weights are the outer product of two of these."""
    weights = np.zeros((pooled, size))
    for p in range(pooled):
        for i in range(grid):
            y = start + p * bin_size + (i + 0.5) * bin_size / grid
            if y < -1.0 or y > size:
                continue
            y = max(y, 0.0)
            low = int(y)
            if low >= size - 1:
                high = low = size - 1
                y = float(low)
            else:
                high = low + 1
            frac = y - low
            weights[p, low] += 1.0 - frac
            weights[p, high] += frac
    return weights


def roi_align(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """``torchvision.ops.roi_align`` (its CPU kernel): x ``(N, C, H, W)``, rois ``(K, 5)``
    ``(batch index, x1, y1, x2, y2)`` in image pixels -> ``(K, C, oh, ow)``; each bin
    averages ``sampling_ratio`` (<= 0: ``ceil(roi side / out)``) samples per axis,
    bilinearly interpolated; ``aligned`` shifts the box by -0.5 pixel, unaligned
    boxes are at least 1 pixel wide."""
    oh, ow = _pairs(output_size)
    _, c, h, w = x.shape
    offset = 0.5 if aligned else 0.0
    out = np.zeros((len(rois), c, oh, ow))
    for k, (b, x1, y1, x2, y2) in enumerate(np.asarray(rois, np.float64)):
        start_w, start_h = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        roi_w = x2 * spatial_scale - offset - start_w
        roi_h = y2 * spatial_scale - offset - start_h
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / oh)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / ow)
        count = max(grid_h * grid_w, 1)
        wy = _roi_align_axis(start_h, roi_h / oh, grid_h, oh, h)
        wx = _roi_align_axis(start_w, roi_w / ow, grid_w, ow, w)
        out[k] = np.einsum("ph,chw,qw->cpq", wy, x[int(b)].astype(np.float64), wx) / count
    return out


def _c_round(value):
    """C's ``round``: halves away from zero."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def roi_pool(x, rois, output_size, spatial_scale=1.0):
    """Caffe's ROIPoolingLayer (Fast R-CNN), as ``torchvision.ops.roi_pool``: the RoI's
    corners rounded to feature cells (``round(x * scale)``), its side ``end - start +
    1`` (at least 1) cut into bins ``[floor(p * side / out), ceil((p + 1) * side /
    out))`` offset by the start and clipped to the map; each bin's max, 0 if empty."""
    oh, ow = _pairs(output_size)
    _, c, h, w = x.shape
    out = np.zeros((len(rois), c, oh, ow))
    for k, (b, x1, y1, x2, y2) in enumerate(np.asarray(rois, np.float64)):
        start_w, start_h = _c_round(x1 * spatial_scale), _c_round(y1 * spatial_scale)
        end_w, end_h = _c_round(x2 * spatial_scale), _c_round(y2 * spatial_scale)
        roi_w, roi_h = max(end_w - start_w + 1, 1), max(end_h - start_h + 1, 1)
        for p in range(oh):
            r0 = min(max(math.floor(p * roi_h / oh) + start_h, 0), h)
            r1 = min(max(math.ceil((p + 1) * roi_h / oh) + start_h, 0), h)
            for q in range(ow):
                c0 = min(max(math.floor(q * roi_w / ow) + start_w, 0), w)
                c1 = min(max(math.ceil((q + 1) * roi_w / ow) + start_w, 0), w)
                if r1 > r0 and c1 > c0:
                    out[k, :, p, q] = x[int(b), :, r0:r1, c0:c1].max(axis=(-2, -1))
    return out
