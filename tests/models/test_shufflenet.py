"""ShuffleNet V2: counts per width (formula and torchvision), the unit's structure."""

import keras
import numpy as np
import pytest

import kvision
from kvision.layers import ChannelShuffle

# torchvision's num_params of shufflenet_v2_x0_5 … x2_0 (ShuffleNet_V2_X*_Weights).
TORCHVISION = {0.5: 1_366_792, 1.0: 2_278_604, 1.5: 3_503_624, 2.0: 7_393_996}
STAGES = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024),
          1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048)}


def _formula(width, classes=1000):
    """Trainable parameters: convs have no bias, each BatchNorm has 2 per channel."""
    def conv_bn(cin, cout, k=1):
        return k * k * cin * cout + 2 * cout

    def depthwise_bn(c):
        return 9 * c + 2 * c

    *stages, last = STAGES[width]
    count, cin = conv_bn(3, 24, 3), 24
    for cout, repeats in zip(stages, (4, 8, 4)):
        half = cout // 2
        count += depthwise_bn(cin) + conv_bn(cin, half)                  # branch1
        count += conv_bn(cin, half) + depthwise_bn(half) + conv_bn(half, half)
        count += (repeats - 1) * (2 * conv_bn(half, half) + depthwise_bn(half))
        cin = cout
    return count + conv_bn(cin, last) + last * classes + classes


@pytest.mark.parametrize("width", sorted(TORCHVISION))
def test_counts_per_width(width):
    model = kvision.models.ShuffleNetV2(input_shape=(32, 32, 3), width_multiplier=width)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == _formula(width) == TORCHVISION[width]
    assert model.name == f"shufflenet_v2_x{str(width).replace('.', '_')}"
    assert model.get_layer("conv5_relu").output.shape[-1] == STAGES[width][-1]


def test_unknown_width_is_refused():
    with pytest.raises(ValueError, match="width_multiplier"):
        kvision.models.ShuffleNetV2(width_multiplier=0.75)


def test_stride_one_unit_passes_half_through_and_shuffles():
    model = kvision.models.ShuffleNetV2(include_top=False, input_shape=(64, 64, 3),
                                        width_multiplier=0.5)
    shuffles = [l for l in model.layers if isinstance(l, ChannelShuffle)]
    assert len(shuffles) == 16 and all(l.groups == 2 for l in shuffles)
    taps = keras.Model(model.input, [model.get_layer("stage3_block1_shuffle").output,
                                     model.get_layer("stage3_block2_shuffle").output])
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    unit_in, unit_out = (np.asarray(t) for t in taps(x))
    half = unit_in.shape[-1] // 2
    # The shuffle interleaves [passthrough, branch2]: even channels are the input's
    # first half, untouched; odd ones are the branch's output.
    np.testing.assert_array_equal(unit_out[..., 0::2], unit_in[..., :half])
    assert not np.allclose(unit_out[..., 1::2], unit_in[..., half:])


def test_stage_widths_and_strides():
    model = kvision.models.ShuffleNetV2(include_top=False, input_shape=(224, 224, 3))
    for layer, shape in (("maxpool", (56, 56, 24)),
                         ("stage2_block4_shuffle", (28, 28, 116)),
                         ("stage3_block8_shuffle", (14, 14, 232)),
                         ("stage4_block4_shuffle", (7, 7, 464)),
                         ("conv5_relu", (7, 7, 1024))):
        assert model.get_layer(layer).output.shape[1:] == shape, layer
