"""ImageNet input preprocessing as a layer, so that models take raw pixels."""

import keras
from keras import ops

from kvision.registry import PREPROCESSING_MODES as MODES  # noqa: E402  (one list)

# keras.applications.imagenet_utils' constants (RGB order for "torch", BGR for "caffe").
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def check_mode(mode):
    """``mode`` if it is one of :data:`MODES`, else ``ValueError``."""
    if mode not in MODES:
        raise ValueError(f"Preprocessing mode must be one of {MODES}, got {mode!r}.")
    return mode


@keras.saving.register_keras_serializable(package="kvision")
class ImagePreprocessing(keras.layers.Layer):
    """Raw RGB pixels in ``[0, 255]`` -> the input an ImageNet network expects.

    Gives exactly what ``keras.applications.imagenet_utils.preprocess_input(x,
    mode=mode)`` gives (channels last), inside the model, so that exported models
    take raw pixels:

    - ``"caffe"``: RGB -> BGR, then the ImageNet BGR mean subtracted (VGG, ResNet).
    - ``"tf"``: scaled to ``[-1, 1]`` (Inception, Xception, MobileNet v1/v2, ResNet v2).
    - ``"torch"``: scaled to ``[0, 1]``, then normalized by the ImageNet mean and
      standard deviation per channel (DenseNet).
    - ``"none"``: unchanged (networks that preprocess inside, or train on raw pixels).

    Input ``(..., C)`` (``C = 3`` for "caffe" and "torch"); output the same shape,
    in the layer's compute dtype. No weights.
    """

    def __init__(self, mode="none", **kwargs):
        super().__init__(**kwargs)
        self.mode = check_mode(mode)

    def build(self, input_shape):
        channels = input_shape[-1]
        if self.mode in ("caffe", "torch") and channels != 3:
            raise ValueError(
                f"ImagePreprocessing(mode={self.mode!r}) needs RGB inputs with 3 "
                f"channels, got input shape {tuple(input_shape)}."
            )
        super().build(input_shape)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        # The same operations in the same order as keras' preprocess_input, so the
        # float32 results are identical, not merely close.
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            x = x / 255.0 + ops.convert_to_tensor([-m for m in TORCH_MEAN], x.dtype)
            return x / ops.convert_to_tensor(TORCH_STD, x.dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)  # RGB -> BGR
            return x + ops.convert_to_tensor([-m for m in CAFFE_MEAN_BGR], x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
