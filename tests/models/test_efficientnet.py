"""EfficientNet B0…B7: keras.applications parity, compound scaling, the MBConv block."""

import math

import keras
import numpy as np
import pytest

import kvision
from kvision import testing
from kvision.models.classification import efficientnet as effnet

SMALL = (32, 32, 3)

# The B0 stages of the paper's Table 1: (repeats, output channels).
B0_STAGES = ((1, 16), (2, 24), (2, 40), (3, 80), (3, 112), (4, 192), (1, 320))


@pytest.mark.parametrize("b", [
    0,
    # B3 and B7 differ from B0 only in the width/depth coefficients; each parity
    # run builds four networks of 400-900 layers, hence "slow".
    pytest.param(3, marks=pytest.mark.slow),
    pytest.param(7, marks=pytest.mark.slow),
])
def test_keras_weights_load_and_give_the_same_outputs(b):
    keras_builder = getattr(keras.applications, f"EfficientNetB{b}")
    # B3/B7: the full network only; B0 also checks the top-less file (same loader).
    tops = (True, False) if b == 0 else (True,)
    assert testing.assert_keras_parity(f"efficientnet_b{b}", keras_builder, SMALL,
                                       include_tops=tops) <= 1e-5


@pytest.fixture
def zero_initial_kernels(monkeypatch):
    """Builds without drawing random kernels (half the CPU of building a large
    EfficientNet goes into keras' truncated normals): every VarianceScaling
    initializer (keras' and kvision's conv/dense kernels) gives zeros, and the test
    draws the weights it compares with."""
    monkeypatch.setattr(keras.initializers.VarianceScaling, "__call__",
                        lambda self, shape, dtype=None: keras.ops.zeros(shape, dtype))


def _random_kernels(model, seed):
    """Fan-in scaled normal kernels (depthwise: over the window), so the logits of a
    deep network stay O(1); biases and BatchNorm from ``randomize_weights``."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for variable in layer.weights:
            if variable.path.endswith("kernel"):
                shape = tuple(variable.shape)
                fan_in = np.prod(shape[:2] if isinstance(
                    layer, keras.layers.DepthwiseConv2D) else shape[:-1])
                variable.assign(rng.standard_normal(shape, dtype=np.float32)
                                * np.float32(np.sqrt(1.0 / fan_in)))
    return testing.randomize_weights(model, seed)


@pytest.mark.parametrize("b", [1, 2, 4, 5, 6])
def test_the_other_members_compute_what_keras_applications_computes(
        b, zero_initial_kernels):
    """B1, B2, B4, B5, B6 at their cheapest (the file loader is B0's test above):
    keras.applications' network with random weights (BatchNorm statistics too) and
    3 classes at 32x32, its weights set into kvision's by order, and the logits of
    one image compared. A stage's repeat count or kernel size off fails the copy; a
    padding, activation or width off, the comparison."""
    common = dict(weights=None, input_shape=SMALL, classes=3, classifier_activation=None)
    reference = _random_kernels(
        getattr(keras.applications, f"EfficientNetB{b}")(**common), seed=b)
    model = kvision.create(f"efficientnet_b{b}", **common)
    model.set_weights(reference.get_weights())
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()  # as loading a weights file does
    x = np.random.default_rng(b).uniform(0, 255, (1, *SMALL)).astype("float32")
    expected = np.asarray(reference(x, training=False))
    assert np.ptp(expected) > 0.1 * np.abs(expected).max() > 0  # not degenerate
    # The same layers in the same order (0.0 here): B0's parity bound, 1e-5 of the
    # logits' size (~0.1 here, so not floored at 1: the SE gate made hard_sigmoid
    # moves them by 2e-4).
    np.testing.assert_allclose(np.asarray(model(x, training=False)), expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())


def _paper_round(channels, width):
    # The paper's rounding: nearest multiple of 8, at least 8, never 10% below.
    rounded = max(8, int(channels * width + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * channels * width else rounded


def test_b2_depth_width_and_drop_connect_follow_the_compound_scaling():
    width, depth = 1.1, 1.2
    model = kvision.models.EfficientNetB2(include_top=False, input_shape=SMALL)
    names = [layer.name for layer in model.layers]
    repeats = [math.ceil(depth * r) for r, _ in B0_STAGES]
    for stage, (count, (_, channels)) in enumerate(zip(repeats, B0_STAGES), start=1):
        blocks = [n for n in names if n.startswith(f"block{stage}") and
                  n.endswith("_dwconv")]
        assert len(blocks) == count, f"stage {stage}"
        last = model.get_layer(f"block{stage}{chr(ord('a') + count - 1)}_project_bn")
        assert last.output.shape[-1] == _paper_round(channels, width)
    assert model.get_layer("stem_conv").output.shape[-1] == _paper_round(32, width)
    assert model.output_shape[-1] == _paper_round(1280, width) == 1408
    # Drop-connect grows linearly with the block index, 0.2 * i / total.
    total = sum(repeats)
    index = {n[:-len("_dwconv")]: i for i, n in
             enumerate(n for n in names if n.endswith("_dwconv"))}
    drops = [layer for layer in model.layers if layer.name.endswith("_drop")]
    assert len(drops) == total - len(B0_STAGES)  # every block but a stage's first
    for layer in drops:
        assert layer.rate == pytest.approx(0.2 * index[layer.name[:-len("_drop")]] / total)


def _block_model(se_ratio, activation):
    inputs = keras.Input((8, 8, 16))
    args = dict(kernel_size=3, expand_ratio=6, se_ratio=se_ratio)
    outputs = effnet.mbconv(inputs, 24, args, strides=1, activation=activation,
                            drop_rate=0.0, name="b_")
    return keras.Model(inputs, outputs)


def test_mbconv_se_width_comes_from_input_channels_and_ratio_zero_removes_it():
    expanded, squeezed = 16 * 6, int(16 * 0.25)
    plain = (16 * expanded + 4 * expanded      # expand conv + BN
             + 9 * expanded + 4 * expanded     # depthwise + BN
             + expanded * 24 + 4 * 24)         # project + BN
    se = (expanded * squeezed + squeezed) + (squeezed * expanded + expanded)
    with_se = _block_model(0.25, "swish")
    assert with_se.count_params() == plain + se
    assert with_se.get_layer("b_se_reduce").output.shape[-1] == squeezed
    no_se = _block_model(0.0, "relu6")
    assert no_se.count_params() == plain
    assert not any(isinstance(layer, keras.layers.Multiply) for layer in no_se.layers)
    relus = [layer for layer in no_se.layers if isinstance(layer, keras.layers.ReLU)]
    assert len(relus) == 2 and all(layer.max_value == 6.0 for layer in relus)


def test_imagenet_preprocessing_divides_by_the_standard_deviation():
    # keras' ImageNet files store the standard deviations as the Normalization
    # variance; with weights="imagenet" the extra Rescaling makes that right.
    mean = np.array([0.485, 0.456, 0.406], "float32")
    std = np.array(effnet.IMAGENET_STDDEV_RGB, "float32")
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, effnet.preprocessing(inputs, imagenet=True))
    normalization = model.get_layer("normalization")
    normalization.set_weights([mean, std, np.array(0)])
    normalization.finalize_state()  # as loading a weights file does
    x = np.random.default_rng(0).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x)), (x / 255.0 - mean) / std,
                               rtol=1e-5, atol=1e-5)


def test_initializers_follow_keras_applications_for_training_from_scratch():
    """Same weights layout is not enough to train alike: every conv, the SE ones
    included, starts from keras' fan-out variance scaling."""
    ours = kvision.create("efficientnet_b0", include_top=False, input_shape=(32, 32, 3))
    ref = keras.applications.EfficientNetB0(weights=None, include_top=False,
                                            input_shape=(32, 32, 3))
    convs = [l for l in ref.layers if isinstance(l, keras.layers.Conv2D)
             and not isinstance(l, keras.layers.DepthwiseConv2D)]
    mine = [l for l in ours.layers if isinstance(l, keras.layers.Conv2D)
            and not isinstance(l, keras.layers.DepthwiseConv2D)]
    assert len(convs) == len(mine) and any("se_reduce" in l.name for l in convs)
    for a, b in zip(mine, convs):
        assert a.kernel_initializer.get_config() == b.kernel_initializer.get_config(), a.name
