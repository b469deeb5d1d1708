"""Darknet-53: the count from YOLOv3's Table 1, the layer inventory, the unit."""

import keras
import numpy as np

import kvision
from kvision.models import get_info

# Table 1: stem conv 32, then per stage a 3x3/2 conv and residual units.
STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


def _table1_count(classes=1000):
    """Conv weights (no bias) + BatchNorm gamma/beta + the connected layer."""
    def conv_bn(cin, cout, k):
        return k * k * cin * cout + 2 * cout

    count, cin = conv_bn(3, 32, 3), 32
    for cout, units in STAGES:
        count += conv_bn(cin, cout, 3)
        count += units * (conv_bn(cout, cout // 2, 1) + conv_bn(cout // 2, cout, 3))
        cin = cout
    return count + cin * classes + classes


def test_count_from_table_1_and_timm():
    count = _table1_count()
    assert count == 41_609_928 == get_info("darknet53").num_params
    assert round(count / 1e6, 1) == 41.6  # timm darknet53 model card: 41.6M


def test_53_layers_bias_free_leaky():
    model = kvision.models.Darknet53(input_shape=(32, 32, 3), classes=10)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert len(convs) + len(dense) == 53 and len(dense) == 1
    assert not any(conv.use_bias for conv in convs)
    leaky = [l for l in model.layers if isinstance(l, keras.layers.LeakyReLU)]
    assert len(leaky) == 52 and all(l.negative_slope == 0.1 for l in leaky)
    assert len([l for l in model.layers if isinstance(l, keras.layers.Add)]) == 23


def test_yolov3_taps_at_416():
    """YOLOv3 reads 52x52x256, 26x26x512 and 13x13x1024 maps at 416x416."""
    model = kvision.models.Darknet53(include_top=False, input_shape=(416, 416, 3))
    taps = get_info("darknet53").stage_outputs
    assert taps == {4: "stage2_block2_out", 8: "stage3_block8_out",
                    16: "stage4_block8_out", 32: "stage5_block4_out"}
    for stride, channels in ((8, 256), (16, 512), (32, 1024)):
        shape = model.get_layer(taps[stride]).output.shape[1:]
        assert shape == (416 // stride, 416 // stride, channels)


def test_residual_unit_adds_its_input_unactivated():
    """With the unit's last BatchNorm zeroed, its branch is 0: output == input."""
    model = kvision.models.Darknet53(include_top=False, input_shape=(32, 32, 3))
    bn = model.get_layer("stage2_block2_2_bn")
    bn.gamma.assign(np.zeros(bn.gamma.shape, "float32"))
    bn.beta.assign(np.zeros(bn.beta.shape, "float32"))
    taps = keras.Model(model.input, [model.get_layer("stage2_block1_out").output,
                                     model.get_layer("stage2_block2_out").output])
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    unit_in, unit_out = (np.asarray(t) for t in taps(x))
    np.testing.assert_allclose(unit_out, unit_in, rtol=1e-6, atol=1e-6)
    assert np.any(unit_in < 0)  # the sum is not passed through another activation
