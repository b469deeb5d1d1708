"""U-Net (Ronneberger, Fischer & Brox, 2015, "U-Net: Convolutional Networks for
Biomedical Image Segmentation").

The paper's network: a contracting path of four steps (two 3x3 convolutions + ReLU,
then 2x2 max-pool; 64 -> 512 filters, doubling), a 1024-filter bottom, an expanding path
of four steps (2x2 up-convolution halving the filters, concatenation with the cropped
contracting feature map, two 3x3 convolutions + ReLU) and a 1x1 class convolution.
``padding="valid"`` is the paper's (572x572 in, 388x388 out); ``padding="same"`` (the
default) keeps the input size. With ``encoder=`` any zoo / keras.applications network
(or keras.Model) is the contracting path (:func:`kvision.models.backbone.
build_backbone`): its levels P2, P3, P4 (strides 4, 8, 16) are the skips, P5 the
bottom.
"""

from __future__ import annotations

import keras

from kvision.layers.upsampling import ResizeLike
from kvision.models._builder import task_input
from kvision.models.backbone import build_backbone
from kvision.models.segmentation import _common
from kvision.registry import register

PAPER = "U-Net: Convolutional Networks for Biomedical Image Segmentation"
DEPTH = 4
PADDINGS = ("same", "valid")


def double_conv(x, filters, padding, name):
    """Two 3x3 convolutions + ReLU (one step of either path)."""
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding=padding, activation="relu",
                                name=f"{name}_conv{i}")(x)
    return x


def up_step(x, skip, filters, padding, name):
    """2x2 up-convolution, the skip cropped (valid) or resized (same) to it,
    concatenation, two convolutions."""
    x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    if padding == "valid":
        dh, dw = skip.shape[1] - x.shape[1], skip.shape[2] - x.shape[2]
        skip = keras.layers.Cropping2D(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)),
                                       name=f"{name}_crop")(skip)
    else:
        x = ResizeLike(name=f"{name}_fit")([x, skip])
    x = keras.layers.Concatenate(name=f"{name}_concat")([skip, x])
    return double_conv(x, filters, padding, name)


def _check_valid_size(input_shape):
    """Valid convolutions need sides that stay even at every pool and positive down
    to the output."""
    for side in input_shape[:2]:
        if side is None:
            raise ValueError("padding='valid' needs a fixed input size, e.g. "
                             "input_shape=(572, 572, 1).")
        if _valid_output_side(side) is None:
            near = sorted(range(max(side - 64, 1), side + 65), key=lambda n: abs(n - side))
            good = sorted([n for n in near if _valid_output_side(n)][:4])
            raise ValueError(f"U-Net with padding='valid' needs sides that stay even "
                             f"at each max-pool and leave an output; {side} does not. "
                             f"Close sizes: {good}.")


def _valid_output_side(n):
    """The output side of the valid U-Net for input side ``n`` (Fig. 1: 572 -> 388),
    or None where a pool meets an odd side or a map vanishes (the expanding path
    included: 140 passes every pool but its bottom is 1x1, too small to grow back)."""
    for _ in range(DEPTH):
        n -= 4
        if n <= 0 or n % 2:
            return None
        n //= 2
    for _ in range(DEPTH):
        n = 2 * (n - 4)
        if n <= 0:
            return None
    n -= 4
    return n if n > 0 else None


def _paper(x, filters, padding):
    skips = []
    for level in range(DEPTH):
        x = double_conv(x, filters * 2 ** level, padding, f"down{level + 1}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"down{level + 1}_pool")(x)
    x = double_conv(x, filters * 2 ** DEPTH, padding, "bottom")
    x = keras.layers.Dropout(0.5, name="bottom_dropout")(x)
    for level in reversed(range(DEPTH)):
        x = up_step(x, skips[level], filters * 2 ** level, padding, f"up{level + 1}")
    return x


def _with_encoder(taps, inputs, filters):
    """Decoder on an encoder's levels (P2, P3, P4 skips, P5 bottom), then two
    up-steps without skip back to the input size."""
    x, *skips = taps
    for level, skip in zip((4, 3, 2), skips):
        x = up_step(x, skip, filters * 2 ** (level - 1), "same", f"up{level}")
    for level in (1, 0):
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_upconv")(x)
        x = double_conv(x, filters, "same", f"up{level}")
    return ResizeLike(name="fit_input")([x, inputs])


@register("unet", task="segmentation", family="unet", year=2015, paper=PAPER,
          key_idea="symmetric encoder-decoder, skip connections by concatenation",
          default_size=572, min_size=32, input_channels=1, default_classes=2,
          num_params=31_030_658, params_convention="trainable",
          params_source="the paper's Fig. 1 layout (572x572x1, valid, 2 classes), "
                        "counted by hand",
          preprocessing="none")
def UNet(classes=2, input_shape=None, classifier_activation="softmax", weights=None,
         padding="same", filters=64, encoder=None, backbone_weights=None,
         trainable_backbone=True, backbone_kwargs=None, name=None):
    """U-Net (Ronneberger et al., 2015).

    Input ``(H, W, C)`` raw pixels in ``[0, 255]`` (scaled to ``[0, 1]`` inside),
    default ``(572, 572, 1)``; output ``(N, H, W, classes)`` per-pixel softmax
    (sigmoid for ``classes=1``) with ``padding="same"``, or ``(N, H - 184, W - 184,
    classes)`` with ``padding="valid"`` (572 -> 388, the paper). ``filters`` is the
    first level's width (64 in the paper). ``encoder``: None (the paper's
    contracting path), a zoo / keras.applications name or a keras.Model, with
    ``backbone_weights`` and ``trainable_backbone`` (True, False, an int of last
    blocks or a regime) as every task takes them.
    """
    activation = _common.check_classes(classes, classifier_activation)
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}.")
    if encoder is not None and padding != "same":
        raise ValueError("A U-Net on an encoder uses padding='same'.")
    if encoder is None:
        inputs = task_input("unet", input_shape)
        if padding == "valid":
            _check_valid_size(inputs.shape[1:])
        x = keras.layers.Rescaling(1 / 255, name="rescaling")(inputs)
        x = _paper(x, filters, padding)
    else:
        inputs, taps = build_backbone(encoder, ("P5", "P4", "P3", "P2"),
                                      input_shape=input_shape, weights=backbone_weights,
                                      trainable=trainable_backbone, task="unet",
                                      **(backbone_kwargs or {}))
        x = _with_encoder(taps, inputs, filters)
    outputs = _common.classifier(x, classes, activation)
    return _common.finish(inputs, outputs, name or "unet", weights)
