"""DenseNet: keras.applications parity, the paper's parameter formula, the knobs."""

import keras
import pytest

import kvision
from kvision import testing
from kvision.models.classification.densenet import BLOCKS


def densenet_params(blocks, k=32, theta=0.5, classes=1000, bottleneck=4):
    """Parameters (keras convention: BatchNorm has 4 per channel) and the final
    width of DenseNet-BC, from the paper's description, without building it."""
    channels = 2 * k  # stem: 7x7 conv with 2k filters (no bias) + BN
    params = 7 * 7 * 3 * channels + 4 * channels
    for index, num_layers in enumerate(blocks):
        for _ in range(num_layers):
            # BN, 1x1 conv to 4k, BN, 3x3 conv to k; the k maps are concatenated.
            params += (4 * channels + channels * bottleneck * k + 4 * bottleneck * k
                       + 9 * bottleneck * k * k)
            channels += k
        if index < len(blocks) - 1:  # transition: BN, 1x1 conv to θ·C, avg-pool
            compressed = int(channels * theta)
            params += 4 * channels + channels * compressed
            channels = compressed
    params += 4 * channels + channels * classes + classes  # final BN, classifier
    return params, channels


# 169 and 201 share every line of code with 121 but take minutes to build twice,
# save and reload on a 2-core CPU: run with the slow tests.
@pytest.mark.parametrize("depth, shape", [
    (121, (64, 48, 3)),
    pytest.param(169, (32, 32, 3), marks=pytest.mark.slow),
    pytest.param(201, (32, 40, 3), marks=pytest.mark.slow),
])
def test_keras_applications_weights_file_loads_with_identical_outputs(depth, shape):
    keras_builder = getattr(keras.applications, f"DenseNet{depth}")
    tops = (True, False) if depth == 121 else (True,)  # 169/201: same loader as 121
    diff = testing.assert_keras_parity(f"densenet{depth}", keras_builder, shape,
                                       include_tops=tops)
    assert diff <= 1e-5


@pytest.mark.parametrize("depth", sorted(BLOCKS))
def test_registry_count_matches_the_papers_architecture(depth):
    expected, width = densenet_params(BLOCKS[depth])
    assert kvision.models.get_info(f"densenet{depth}").num_params == expected
    assert width == {121: 1024, 169: 1664, 201: 1920}[depth]
    # Depth in the name: 1 stem conv + 2 per dense layer + 3 transitions + classifier.
    assert 1 + 2 * sum(BLOCKS[depth]) + 3 + 1 == depth


@pytest.mark.parametrize("growth_rate, compression", [(12, 1.0), (24, 0.3)])
def test_growth_rate_and_compression_knobs(growth_rate, compression):
    model = kvision.models.DenseNet121(input_shape=(32, 32, 3), classes=10,
                                       growth_rate=growth_rate, compression=compression)
    params, width = densenet_params(BLOCKS[121], growth_rate, compression, classes=10)
    assert model.count_params() == params
    assert model.get_layer("relu").output.shape[-1] == width
    # Each dense layer adds k maps to the 2k of the stem; transitions keep θ of them.
    assert model.get_layer("conv2_block1_concat").output.shape[-1] == 3 * growth_rate
    assert model.get_layer("pool2_conv").filters == int(8 * growth_rate * compression)


def test_imagenet_weights_refuse_other_knobs():
    with pytest.raises(ValueError, match="growth_rate=32"):
        kvision.models.DenseNet169(weights="imagenet", growth_rate=12)
