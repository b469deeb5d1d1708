"""LeNet-5 (LeCun et al., 1998, "Gradient-Based Learning Applied to Document Recognition")."""

import keras

from kvision.models._builder import build, builder_args
from kvision.registry import register


@register("lenet5", task="classification", family="lenet", year=1998,
          paper="Gradient-Based Learning Applied to Document Recognition",
          key_idea="convolution + subsampling + FC, trained end to end",
          default_size=32, min_size=32, input_channels=1, default_classes=10,
          num_params=61_706, params_convention="keras",
          params_source="paper layout (C3 fully connected): 156+2,416+48,120+10,164+850",
          stage_outputs={4: "s4_pool"})
def LeNet5(include_top=True, weights=None, input_tensor=None, input_shape=None,
           pooling=None, classes=10, classifier_activation="softmax", name=None,
           activation="tanh", include_preprocessing=True):
    """LeNet-5: conv5x5·6 -> pool -> conv5x5·16 -> pool -> FC120 -> FC84 -> FC10.

    Input ``(32, 32, 1)`` raw pixels in ``[0, 255]`` (rescaled to ``[0, 1]`` inside
    when ``include_preprocessing``); output ``(N, classes)``. Average-pool
    subsampling and tanh as in the paper; C3 connects to all S2 maps (61,706
    parameters) rather than the paper's sparse table.
    """

    def body(x):
        if include_preprocessing:
            x = keras.layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
        x = keras.layers.Conv2D(6, 5, activation=activation, name="c1_conv")(x)
        x = keras.layers.AveragePooling2D(2, name="s2_pool")(x)
        x = keras.layers.Conv2D(16, 5, activation=activation, name="c3_conv")(x)
        return keras.layers.AveragePooling2D(2, name="s4_pool")(x)

    def head(x, classes, classifier_activation):
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(120, activation=activation, name="c5_fc")(x)
        x = keras.layers.Dense(84, activation=activation, name="f6_fc")(x)
        return keras.layers.Dense(classes, activation=classifier_activation,
                                  name="predictions")(x)

    return build("lenet5", body, head=head, fixed_size=True, **builder_args(locals()))
