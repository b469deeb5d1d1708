"""Scaled residual addition (Inception-ResNet's "scale the residuals" trick)."""

import keras


@keras.saving.register_keras_serializable(package="kvision")
class ScaledResidual(keras.layers.Layer):
    """``inputs[0] + scale * inputs[1]``: a residual added after scaling it down.

    keras.applications' ``CustomScaleLayer`` (not serializable with
    ``safe_mode``); no weights, so keras' weight files are unaffected.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        shortcut, residual = inputs
        return shortcut + residual * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
