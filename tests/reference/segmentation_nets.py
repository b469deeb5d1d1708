"""Segmentation networks in NumPy (NCHW, float64), each written from its reference's
own definition, not from kvision's code:

- FCN-32s/16s/8s: wkentaro/pytorch-fcn ``torchfcn/models/fcn{32,16,8}s.py`` (= the
  Caffe voc-fcn models): VGG16 with ceil-mode 2x2 pools, fc6 7x7, fc7 1x1,
  ``score_fr``, bias-free transposed convolutions ("deconvolutions") of kernel
  2x their stride, 1x1 scores of pool4 (and pool3) added, crops.
- SegNet: alexgkendall/SegNet-Tutorial ``Models/segnet_train.prototxt``: conv + BN +
  ReLU, 2x2/2 MAX pooling whose second top is the mask, the "Upsample" layer that
  writes each value at its mask position (zeros elsewhere), ``conv1_1_D`` the
  class scores.
- U-Net: Ronneberger et al. 2015, Fig. 1: two unpadded 3x3 conv + ReLU per step,
  2x2/2 max pool, 2x2 up-convolution, the contracting map center-cropped and
  concatenated (copy first), a final 1x1 convolution.
- DeepLab-LargeFOV (v1): the Caffe ``train.prototxt`` of DeepLab-LargeFOV: VGG16
  with 3x3 max pools of pad 1 (stride 2, 2, 2, then 1, 1), conv5 at rate 2, fc6 3x3
  at rate 12 (1024), fc7 1x1, fc8 the classes.
- DeepLabv3+: tensorflow/models ``research/deeplab/model.py``
  (``_extract_features`` and ``refine_by_decoder``, the branch without separable
  convolutions): ASPP = [image pooling, 1x1, 3x3 at each rate] each conv + BN +
  ReLU, concatenated in that order, 1x1 projection; decoder: the low-level
  features projected by a 1x1 conv (48), concatenated after the upsampled ASPP
  output, two 3x3 conv + BN + ReLU, 1x1 logits, upsampled to the input.

Where kvision documents a deliberate difference (FCN's "same" padding instead of the
100-pixel input padding and crops; U-Net's and SegNet's pixels scaled to [0, 1]
inside; half-pixel bilinear resizing at sides that are multiples of 32 instead of
align-corners at 8k+1 / 4k+1 sides), the function takes kvision's convention and
says so. The parameters are a torch-style state dict keyed by the Keras layer names
(:func:`state_from_keras`): only the names come from kvision.
"""

import numpy as np

from . import ops

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])  # the VGG Caffe models' mean
VGG16_DEPTHS = (2, 2, 3, 3, 3)


def state_from_keras(model, prefix=""):
    """``{f"{layer}.{weight|bias|running_mean|running_var|eps}": array}`` in torch's
    layouts, nested models included (by their inner layer names): Conv2D HWIO ->
    OIHW, Conv2DTranspose (kh, kw, out, in) -> torch's (in, out, kh, kw)
    (``transpose(3, 2, 0, 1)`` for both), BatchNormalization (gamma, beta, mean,
    variance) and its epsilon."""
    state = {}
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            state |= state_from_keras(layer, prefix)
            continue
        values = [np.asarray(v, np.float64) for v in layer.get_weights()]
        if not values:
            continue
        if type(layer).__name__ == "BatchNormalization":
            keys = ("weight", "bias", "running_mean", "running_var")
            state[f"{prefix}{layer.name}.eps"] = layer.epsilon
        else:
            keys = ("weight", "bias")
            values[0] = values[0].transpose(3, 2, 0, 1)
        state |= {f"{prefix}{layer.name}.{k}": v for k, v in zip(keys, values)}
    return state


def softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def conv(state, name, x, **kwargs):
    return ops.conv2d(x, state[f"{name}.weight"], state.get(f"{name}.bias"), **kwargs)


def bn(state, name, x, eps):
    return ops.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                          state[f"{name}.weight"], state[f"{name}.bias"], eps=eps)


def crop(x, top, left, height, width):
    """pytorch-fcn's ``h[:, :, top:top + height, left:left + width]``."""
    assert top + height <= x.shape[2] and left + width <= x.shape[3], (x.shape, top, left)
    return x[:, :, top:top + height, left:left + width]


def caffe_input(x):
    """The Caffe VGG models' input: RGB -> BGR, the ImageNet BGR mean subtracted."""
    return x[:, ::-1] - CAFFE_MEAN_BGR.reshape(1, 3, 1, 1)


# ---- FCN: pytorch-fcn's fcn32s.py / fcn16s.py / fcn8s.py ----

def _vgg16_convs(state, x, names, pools):
    """conv{b}_{i} + ReLU (pad 1), then each block's pool; returns every pool."""
    out = []
    for block, depth in enumerate(VGG16_DEPTHS, start=1):
        for i in range(1, depth + 1):
            x = ops.relu(conv(state, names(block, i), x, padding=1))
        x = pools[block - 1](x)
        out.append(x)
    return out


def fcn(state, x, skips):
    """FCN-32s (``skips=()``), FCN-16s (``(4,)``), FCN-8s (``(4, 3)``): logits.

    pytorch-fcn's forward, with the difference kvision documents: conv1_1 pads 1
    (not 100) and fc6 pads 3 (not 0), so pool5 sits at stride 32 on the input itself,
    and each crop moves from pytorch-fcn's offsets into the 100-pixel border
    (score_pool4c at 5, score_pool3c at 9, the last upscore at 19 / 27 / 31) to the
    offset that centers a bilinear deconvolution of factor f on the unpadded grid:
    f / 2 (its output pixel y then reads input coordinate (y + 0.5) / f - 0.5).
    """
    # pytorch-fcn's conv{b}_{i} are the Keras VGG16's block{b}_conv{i}.
    pool = lambda h: ops.max_pool2d(h, 2, 2, ceil_mode=True)  # noqa: E731
    pools = _vgg16_convs(state, caffe_input(x), "block{}_conv{}".format, [pool] * 5)
    h = ops.relu(conv(state, "fc6", pools[4], padding=3))   # drop6: inference
    h = ops.relu(conv(state, "fc7", h))                       # drop7: inference
    h = conv(state, "score_fr", h)
    factor = 32
    ups = {(): [], (4,): ["upscore2"], (4, 3): ["upscore2", "upscore_pool4"]}[tuple(skips)]
    for up, level in zip(ups, skips):
        h = ops.conv_transpose2d(h, state[f"{up}.weight"], stride=2)
        score = conv(state, f"score_pool{level}", pools[level - 1])
        h = crop(h, 1, 1, score.shape[2], score.shape[3])
        h = h + score
        factor //= 2
    final = {32: "upscore32", 16: "upscore16", 8: "upscore8"}[factor]
    h = ops.conv_transpose2d(h, state[f"{final}.weight"], stride=factor)
    return crop(h, factor // 2, factor // 2, x.shape[2], x.shape[3])


# ---- SegNet: segnet_train.prototxt ----

SEGNET_DECODER = {5: ("conv5_3_D", "conv5_2_D", "conv5_1_D"),
                  4: ("conv4_3_D", "conv4_2_D", "conv4_1_D"),
                  3: ("conv3_3_D", "conv3_2_D", "conv3_1_D"),
                  2: ("conv2_2_D", "conv2_1_D"),
                  1: ("conv1_2_D", "conv1_1_D")}


def segnet(state, x):
    """Logits (``conv1_1_D``): every "Convolution" pad 1, followed by "BN" and ReLU
    except the last; pool{b} keeps its mask, upsample{b} writes into a map of the
    pooled input's size (the prototxt's ``upsample_h`` / ``upsample_w``). Pixels
    scaled to [0, 1] first (kvision's documented input)."""
    h = x / 255.0
    masks = []

    def unit(name, h, last=False):
        h = conv(state, name, h, padding=1)
        if last:
            return h
        return ops.relu(bn(state, f"{name}_bn", h, state[f"{name}_bn.eps"]))

    for block, depth in enumerate(VGG16_DEPTHS, start=1):
        for i in range(1, depth + 1):
            h = unit(f"conv{block}_{i}", h)
        size = h.shape[2:]
        h, mask = ops.max_pool2d_with_mask(h, 2, 2)
        masks.append((mask, size))
    for block in range(5, 0, -1):
        mask, (height, width) = masks[block - 1]
        h = ops.max_unpool2d(h, mask, height, width)
        for name in SEGNET_DECODER[block]:
            h = unit(name, h, last=name == "conv1_1_D")
    return h


# ---- U-Net: the paper's Fig. 1 ----

def unet(state, x, padding=0, depth=4):
    """Logits. Fig. 1 with ``padding=0`` (unpadded convolutions, 572 -> 388);
    ``padding=1`` is kvision's documented "same" variant (the crops then cut
    nothing). Pixels scaled to [0, 1] first (kvision's documented input)."""

    def double(h, name):
        for i in (1, 2):
            h = ops.relu(conv(state, f"{name}_conv{i}", h, padding=padding))
        return h

    h = x / 255.0
    copies = []
    for level in range(1, depth + 1):
        h = double(h, f"down{level}")
        copies.append(h)
        h = ops.max_pool2d(h, 2, 2)
    h = double(h, "bottom")  # the dropout: inference
    for level in range(depth, 0, -1):
        up = f"up{level}_upconv"
        h = ops.conv_transpose2d(h, state[f"{up}.weight"], state[f"{up}.bias"], stride=2)
        copy = copies[level - 1]
        dh, dw = copy.shape[2] - h.shape[2], copy.shape[3] - h.shape[3]
        copy = crop(copy, dh // 2, dw // 2, h.shape[2], h.shape[3])
        h = double(np.concatenate([copy, h], axis=1), f"up{level}")
    return conv(state, "logits", h)


# ---- DeepLab-LargeFOV (v1): its Caffe train.prototxt ----

def deeplab_largefov(state, x, rate=12):
    """Logits at the input size: VGG16 convs (conv5 at rate 2), 3x3 max pools of pad
    1 (stride 2, 2, 2, 1, 1; Caffe's ceil mode), pool5a a 3x3 average of stride 1
    and pad 1 (Caffe divides by 9 at the border too), fc6 3x3 at ``rate`` (pad =
    rate), fc7 1x1 (both ReLU, dropout at inference none), fc8 1x1; then upsampled
    bilinearly (kvision's half-pixel resize to the input side; the Caffe model
    interpolates with aligned corners at sides 8k+1)."""
    h = caffe_input(x)
    for block, depth in enumerate(VGG16_DEPTHS, start=1):
        dilation = 2 if block == 5 else 1
        for i in range(1, depth + 1):
            h = ops.relu(conv(state, f"block{block}_conv{i}", h, padding=dilation,
                              dilation=dilation))
        h = ops.max_pool2d(h, 3, 2 if block <= 3 else 1, padding=1, ceil_mode=True)
    h = ops.avg_pool2d(h, 3, 1, padding=1, count_include_pad=True)  # pool5a
    h = ops.relu(conv(state, "fc6", h, padding=rate, dilation=rate))
    h = ops.relu(conv(state, "fc7", h))
    h = conv(state, "logits", h)
    return ops.resize_bilinear(h, x.shape[2], x.shape[3])


# ---- DeepLabv3+: tensorflow/models research/deeplab/model.py ----

DEEPLAB_BN_EPS = 1e-5  # model.py's batch_norm_params (ASPP and decoder)


def deeplabv3_plus_head(state, high, low, out_size, rates, names):
    """Logits from the backbone's output ``high`` and its stride-4 map ``low``.

    ``names``: the Keras layer of each reference unit, a dict with keys
    ``image_pooling``, ``aspp0``, ``aspp{i}`` (i = 1.. per rate),
    ``concat_projection``, ``feature_projection0``, ``decoder_conv0_{0,1}``,
    ``logits``: each a conv (no bias) + BN + ReLU but ``logits`` (conv + bias).
    The concatenations are the reference's: [image pooling, 1x1, rates...] and
    [upsampled features, projected low-level features]. Bilinear resizing with
    half-pixel centers (kvision's convention; the reference aligns corners at sides
    4k+1); the image-pooling branch is constant, so its resize is a broadcast.
    """

    def unit(name, h, **kwargs):
        conv_name, bn_name = names[name]
        h = conv(state, conv_name, h, **kwargs)
        return ops.relu(bn(state, bn_name, h, DEEPLAB_BN_EPS))

    pooled = unit("image_pooling", high.mean(axis=(2, 3), keepdims=True))
    branches = [np.broadcast_to(pooled, pooled.shape[:2] + high.shape[2:]),
                unit("aspp0", high)]
    for i, rate in enumerate(rates, start=1):
        branches.append(unit(f"aspp{i}", high, padding=rate, dilation=rate))
    h = unit("concat_projection", np.concatenate(branches, axis=1))  # dropout: none
    projected = unit("feature_projection0", low)
    h = ops.resize_bilinear(h, low.shape[2], low.shape[3])
    h = np.concatenate([h, projected], axis=1)
    h = unit("decoder_conv0_0", h, padding=1)
    h = unit("decoder_conv0_1", h, padding=1)
    h = conv(state, names["logits"], h)
    return ops.resize_bilinear(h, *out_size)
