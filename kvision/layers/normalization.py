"""Local response normalization (Krizhevsky et al., 2012), as in AlexNet and ZFNet."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kvision")
class LocalResponseNormalization(keras.layers.Layer):
    """Normalizes each activation by its neighbours across channels.

    ``b_c = a_c / (bias + alpha * sum_{c'=c-r}^{c+r} a_{c'}^2) ** beta``, the formula
    of the AlexNet paper (its k=2, n=5, alpha=1e-4, beta=0.75 are the defaults, with
    n = 2r + 1), identical to ``tf.nn.local_response_normalization``. Channels-last
    input of any rank; no weights.
    """

    def __init__(self, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75, **kwargs):
        super().__init__(**kwargs)
        if int(depth_radius) < 0:
            raise ValueError(f"depth_radius must be >= 0, got {depth_radius}.")
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs):
        r = self.depth_radius
        channels = inputs.shape[-1]
        squared = ops.square(inputs)
        pad = [[0, 0]] * (len(inputs.shape) - 1) + [[r, r]]
        padded = ops.pad(squared, pad)
        window = padded[..., 0:channels]
        for i in range(1, 2 * r + 1):
            window = window + padded[..., i:i + channels]
        return inputs / ops.power(self.bias + self.alpha * window, self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "depth_radius": self.depth_radius,
                "bias": self.bias, "alpha": self.alpha, "beta": self.beta}
