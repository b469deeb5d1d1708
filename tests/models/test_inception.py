"""Inception-v3, Inception-v4, Inception-ResNet-v2: keras parity, counts, aux head."""

import os

import keras
import numpy as np
import pytest

import kvision
from kvision.models.classification.inception_v3 import LOSS_WEIGHTS, inference_model
from kvision.layers import ScaledResidual
from kvision.testing import assert_keras_parity, counted_params, randomize_weights


def test_inception_v3_loads_keras_weights():
    assert assert_keras_parity("inception_v3", keras.applications.InceptionV3,
                               (75, 75, 3)) <= 1e-5


@pytest.mark.slow
def test_inception_resnet_v2_loads_keras_weights():
    # The full network only: the top-less file is the same loader InceptionV3 checks.
    diff = assert_keras_parity("inception_resnet_v2",
                               keras.applications.InceptionResNetV2, (75, 75, 3),
                               include_tops=(True,))
    assert diff <= 1e-5


def _aux_params(classes):
    # torchvision's InceptionAux on 768 channels; BatchNorm without gamma
    # (beta, moving mean and variance: 3 per channel, keras convention).
    conv0 = 768 * 128 + 3 * 128
    conv1 = 5 * 5 * 128 * 768 + 3 * 768
    return conv0 + conv1 + 768 * classes + classes


def test_inception_v3_aux_head_count():
    model = kvision.models.InceptionV3(input_shape=(299, 299, 3), classes=10,
                                       aux_logits=True)
    assert model.output_names == ["predictions", "aux"]
    assert set(LOSS_WEIGHTS) == set(model.output_names)
    assert inference_model(model).output_shape == (None, 10)
    # keras.applications' count with a 10-class top, plus the auxiliary head.
    main = 23_851_784 - (2048 * 1000 + 1000) + (2048 * 10 + 10)
    assert model.count_params() == main + _aux_params(10)
    assert sum(layer.count_params() for layer in model.layers
               if layer.name.startswith("aux")) == _aux_params(10)


@pytest.mark.slow
def test_inception_v3_aux_model_loads_main_network_weights(tmp_path):
    main = kvision.models.InceptionV3(input_shape=(299, 299, 3), classes=10)
    randomize_weights(main)
    path = os.path.join(tmp_path, "main.weights.h5")
    main.save_weights(path)
    model = kvision.models.InceptionV3(input_shape=(299, 299, 3), classes=10,
                                       aux_logits=True, weights=path)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 299, 299, 3)).astype("float32")
    predictions, aux = (np.asarray(o) for o in model(x, training=False))
    np.testing.assert_allclose(predictions, np.asarray(main(x, training=False)),
                               atol=1e-6)
    assert aux.shape == (1, 10) and np.all(np.isfinite(aux))


def test_inception_v3_aux_head_refuses_small_inputs():
    with pytest.raises(ValueError, match="at least 299x299"):
        kvision.models.InceptionV3(aux_logits=True, input_shape=(298, 298, 3))


def _conv(cin, cout, kh, kw=None):
    """Trainable parameters of conv (no bias) + BatchNorm (gamma, beta)."""
    return kh * (kw or kh) * cin * cout + 2 * cout


def inception_v4_count(classes=1000):
    """Figures 3-9 of the paper (timm's channels), summed module by module."""
    stem = (_conv(3, 32, 3) + _conv(32, 32, 3) + _conv(32, 64, 3) + _conv(64, 96, 3)
            + _conv(160, 64, 1) + _conv(64, 96, 3) + _conv(160, 64, 1)
            + _conv(64, 64, 1, 7) + _conv(64, 64, 7, 1) + _conv(64, 96, 3)
            + _conv(192, 192, 3))
    block_a = (_conv(384, 96, 1) + _conv(384, 64, 1) + _conv(64, 96, 3)
               + _conv(384, 64, 1) + _conv(64, 96, 3) + _conv(96, 96, 3)
               + _conv(384, 96, 1))
    reduction_a = _conv(384, 384, 3) + _conv(384, 192, 1) + _conv(192, 224, 3) \
        + _conv(224, 256, 3)
    block_b = (_conv(1024, 384, 1) + _conv(1024, 192, 1) + _conv(192, 224, 1, 7)
               + _conv(224, 256, 7, 1) + _conv(1024, 192, 1) + _conv(192, 192, 7, 1)
               + _conv(192, 224, 1, 7) + _conv(224, 224, 7, 1) + _conv(224, 256, 1, 7)
               + _conv(1024, 128, 1))
    reduction_b = (_conv(1024, 192, 1) + _conv(192, 192, 3) + _conv(1024, 256, 1)
                   + _conv(256, 256, 1, 7) + _conv(256, 320, 7, 1) + _conv(320, 320, 3))
    block_c = (_conv(1536, 256, 1) + _conv(1536, 384, 1) + 2 * _conv(384, 256, 1, 3)
               + _conv(1536, 384, 1) + _conv(384, 448, 3, 1) + _conv(448, 512, 1, 3)
               + 2 * _conv(512, 256, 1, 3) + _conv(1536, 256, 1))
    return (stem + 4 * block_a + reduction_a + 7 * block_b + reduction_b
            + 3 * block_c + 1536 * classes + classes)


def test_inception_v4_count_and_widths_follow_the_paper():
    assert inception_v4_count() == 42_679_816  # timm inception_v4
    model = kvision.models.InceptionV4(input_shape=(75, 75, 3), classes=10)
    assert counted_params(model, "trainable") == inception_v4_count(10)
    widths = {name: model.get_layer(name).output.shape[-1]
              for name in ("mixed_5a", "mixed_5e", "mixed_6a", "mixed_6h",
                           "mixed_7a", "mixed_7d")}
    assert widths == {"mixed_5a": 384, "mixed_5e": 384, "mixed_6a": 1024,
                      "mixed_6h": 1024, "mixed_7a": 1536, "mixed_7d": 1536}


def test_scaled_residual_scales_only_the_residual_and_serializes():
    layer = ScaledResidual(0.17, name="block35_1")
    shortcut, residual = np.full((1, 2, 2, 3), 2.0, "float32"), np.ones((1, 2, 2, 3),
                                                                          "float32")
    np.testing.assert_allclose(np.asarray(layer([shortcut, residual])), 2.17, rtol=1e-6)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(
        layer))
    assert isinstance(clone, ScaledResidual) and clone.scale == pytest.approx(0.17)
