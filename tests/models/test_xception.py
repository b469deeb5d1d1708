"""Xception: keras.applications parity and the paper's structure."""

import keras
import numpy as np

import kvision
from kvision import testing, weights


def test_keras_applications_weights_file_loads_with_identical_outputs():
    # Non-square, near the 71-pixel minimum: catches height/width mix-ups cheaply.
    diff = testing.assert_keras_parity("xception", keras.applications.Xception,
                                       (71, 87, 3))
    assert diff <= 1e-5


def test_imagenet_path_moves_keras_variables_in_order():
    # weights="imagenet" builds keras.applications' model and copies its variables
    # by position; prove that copy on a random reference (no download here).
    reference = testing.randomize_weights(
        keras.applications.Xception(weights=None, input_shape=(80, 80, 3)), seed=3)
    model = kvision.models.Xception(input_shape=(80, 80, 3))
    weights.transfer_weights(reference, model)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 80, 80, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(reference(x)),
                               atol=1e-6)


def test_paper_structure_36_convolutions_in_14_modules():
    model = kvision.models.Xception(include_top=False, input_shape=(71, 71, 3))
    layers = model.layers
    convs = [l for l in layers if isinstance(l, (keras.layers.Conv2D,
                                                 keras.layers.SeparableConv2D))]
    shortcuts = [l for l in convs if l.name.endswith("_residual_conv")]
    separable = [l for l in convs if isinstance(l, keras.layers.SeparableConv2D)]
    # "36 convolutional layers ... structured into 14 modules, all of which have
    # linear residual connections around them, except for the first and last".
    assert len(convs) - len(shortcuts) == 36
    assert len(separable) == 34 and len(shortcuts) == 4
    assert all(l.kernel_size == (1, 1) and l.strides == (2, 2) for l in shortcuts)
    adds = [l for l in layers if isinstance(l, keras.layers.Add)]
    assert [l.name for l in adds] == [f"block{i}_add" for i in range(2, 14)]
    # The middle flow repeats eight 728-channel blocks; the exit flow ends at 2048.
    assert all(model.get_layer(f"block{i}_sepconv3").filters == 728
               for i in range(5, 13))
    assert model.output_shape == (None, 3, 3, 2048)


def test_stage_outputs_have_the_entry_middle_exit_widths():
    model = kvision.models.Xception(include_top=False, input_shape=(299, 299, 3))
    info = kvision.models.get_info("xception")
    shapes = {s: model.get_layer(n).output.shape[1:]
              for s, n in info.stage_outputs.items()}
    assert shapes == {4: (74, 74, 128), 8: (37, 37, 256), 16: (19, 19, 728),
                      32: (10, 10, 2048)}
