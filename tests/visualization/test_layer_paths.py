"""kvision.visualization.layers: layers by path through nested models, filters and
activation grids. (Named test_layer_paths: tests/layers/test_layers.py exists and
pytest's default import mode needs distinct basenames.)"""

import numpy as np
import pytest

import keras

from kvision.testing import float32_atol
from kvision.visualization import layers


def _nested():
    """A classifier whose convolutions live in a nested "backbone" keras.Model."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(5, 3, strides=2, padding="same", name="c2")(x)
    x = keras.layers.ReLU(name="r2")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    images = keras.Input((12, 12, 3))
    y = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(images))
    y = keras.layers.Dense(3, activation="softmax", name="predictions")(y)
    return keras.Model(images, y, name="outer"), backbone


def test_layer_output_reaches_inside_a_nested_model():
    model, backbone = _nested()
    # The naive sub-model is the failure this module exists for.
    with pytest.raises(ValueError, match="not connected"):  # "Graph disconnected" in TF 2
        keras.Model(model.inputs, backbone.get_layer("c2").output)
    x = np.random.default_rng(0).uniform(0, 255, (2, 12, 12, 3)).astype("float32")
    sub = layers.layer_output(model, "backbone/c2")
    direct = backbone.get_layer("c2")(backbone.get_layer("c1")(x))
    atol = float32_atol(direct, terms=36, depth=2)  # 3x3x4 taps, two convolutions
    np.testing.assert_allclose(sub(x), direct, atol=atol)
    # A name unique in the flattened graph needs no prefix, and it is the same layer.
    np.testing.assert_allclose(layers.activations(model, x, "c2"), direct, atol=atol)
    assert layers.find_layer(model, "backbone/c2") is backbone.get_layer("c2")
    assert layers.last_spatial_layer(model) == "backbone/r2"
    assert layers.first_conv(model) == "backbone/c1"


def test_unknown_path_names_the_close_ones():
    model, _ = _nested()
    with pytest.raises(ValueError, match=r"No layer 'backbone/c3'.*backbone/c2"):
        layers.layer_output(model, "backbone/c3")


def test_filters_grid_shows_each_kernel_scaled_on_its_own(tmp_path):
    model, backbone = _nested()
    kernel = np.asarray(backbone.get_layer("c1").kernel)  # (3, 3, 3, 4)
    image = layers.filters_grid(model, out=tmp_path / "filters.png")
    assert (tmp_path / "filters.png").is_file()
    factor = image.shape[0] // (2 * (3 + 1) + 1)  # 2x2 tiles of 3x3, 1-pixel gaps
    small = image[::factor, ::factor]
    for k in range(4):
        r, q = divmod(k, 2)
        tile = small[1 + 4 * r:4 + 4 * r, 1 + 4 * q:4 + 4 * q]
        f = kernel[..., k]
        expected = np.round((f - f.min()) / (f.max() - f.min()) * 255)
        np.testing.assert_allclose(tile, expected, atol=1)


def test_activations_grid_tiles_each_channel(tmp_path):
    maps = np.zeros((4, 4, 3), "float32")
    maps[0, 0, 0] = 1.0  # channel 0 lights its top-left pixel only
    maps[..., 2] = 5.0  # a constant channel is black, not noise
    image = layers.activations_grid(maps, out=tmp_path / "maps.png")
    factor = image.shape[1] // (2 * (4 + 1) + 1)
    small = image[::factor, ::factor, 0]
    assert small[1, 1] == 255 and small[1:5, 1:5].sum() == 255
    assert small[6:10, 1:5].max() == 0  # channel 2 (second row)
    with pytest.raises(ValueError, match=r"\(h, w, C\)"):
        layers.activations_grid(np.zeros((1, 4, 4, 3)))


def test_the_package_exports_the_maps_and_layer_tools():
    import kvision.visualization as visualization
    from kvision.visualization import attribution

    assert visualization.gradcam is attribution.gradcam
    assert visualization.layer_output is layers.layer_output
    from kvision.visualization import atlas, dream

    assert visualization.deep_dream is dream.deep_dream
    assert visualization.activation_atlas is atlas.activation_atlas
    assert set(visualization.__all__) >= {"gradcam", "gradcam_plus_plus", "saliency",
                                          "guided_backprop", "deconvnet", "occlusion",
                                          "layer_output", "filters_grid", "activations",
                                          "deep_dream", "class_model", "activation_atlas"}
