"""Channel split and channel shuffle (Zhang et al., 2018, "ShuffleNet"; Ma et al.,
2018, "ShuffleNet V2"): the two channel operations of ShuffleNet units."""

import keras
from keras import ops


def _check_divisible(channels, parts, what):
    if channels is None or channels % parts:
        raise ValueError(
            f"{what} needs a known channel count divisible by {parts}, got {channels}."
        )


@keras.saving.register_keras_serializable(package="kvision")
class ChannelShuffle(keras.layers.Layer):
    """Interleaves the channels of ``groups`` groups so that information crosses them.

    Channels seen as a ``(groups, C / groups)`` matrix are transposed and flattened
    back: with 2 groups, ``[a0, a1, b0, b1] -> [a0, b0, a1, b1]`` (torchvision's
    ``channel_shuffle`` on channels-last tensors). Any rank, channels last; no weights.
    """

    def __init__(self, groups=2, **kwargs):
        super().__init__(**kwargs)
        if int(groups) < 1:
            raise ValueError(f"groups must be >= 1, got {groups}.")
        self.groups = int(groups)

    def build(self, input_shape):
        _check_divisible(input_shape[-1], self.groups, "ChannelShuffle")

    def call(self, inputs):
        channels = inputs.shape[-1]
        # Every position's channel vector is one row: (positions, groups, C/groups),
        # so the spatial sizes may be unknown until run time.
        x = ops.reshape(inputs, (-1, self.groups, channels // self.groups))
        x = ops.transpose(x, (0, 2, 1))
        return ops.reshape(x, ops.shape(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="kvision")
class ChannelSplit(keras.layers.Layer):
    """Splits the channels into ``num_splits`` equal consecutive parts (a list).

    ShuffleNet V2's stride-1 unit sends the first half through unchanged and the
    second half through its branch (torchvision's ``x.chunk(2, dim=1)``).
    """

    def __init__(self, num_splits=2, **kwargs):
        super().__init__(**kwargs)
        if int(num_splits) < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}.")
        self.num_splits = int(num_splits)

    def build(self, input_shape):
        _check_divisible(input_shape[-1], self.num_splits, "ChannelSplit")

    def call(self, inputs):
        return ops.split(inputs, self.num_splits, axis=-1)

    def compute_output_shape(self, input_shape):
        part = (*input_shape[:-1], input_shape[-1] // self.num_splits)
        return [part] * self.num_splits

    def get_config(self):
        return {**super().get_config(), "num_splits": self.num_splits}
