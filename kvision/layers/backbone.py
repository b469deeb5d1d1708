"""A backbone that stays in inference mode inside a model being trained."""

import keras


@keras.saving.register_keras_serializable(package="kvision")
class InferenceBackbone(keras.Model):
    """A functional backbone that always runs in inference mode.

    Built like a functional model, ``InferenceBackbone(inputs, outputs, name=...)``.
    Calling a nested model with ``training=False`` is not enough in Keras 3: during
    ``fit`` the outer functional model passes its own ``training=True`` to nested
    models, overriding the ``False`` recorded in the graph (keras-team/keras#20285),
    so unfrozen BatchNorm layers would update their moving statistics. This class
    ignores the flag: its BatchNorm layers use their moving statistics and its
    dropout is off, trainable or not; gradients still reach trainable weights.
    """

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)
