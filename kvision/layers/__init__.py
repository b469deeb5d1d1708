"""Custom layers: each a registered, serializable ``keras.Layer`` (no ``Lambda``)."""

from kvision.layers.backbone import InferenceBackbone
from kvision.layers.detection import NonMaxSuppression
from kvision.layers.normalization import LocalResponseNormalization
from kvision.layers.preprocessing import ImagePreprocessing
from kvision.layers.residual import ScaledResidual
from kvision.layers.shuffle import ChannelShuffle, ChannelSplit

__all__ = ["ChannelShuffle", "ChannelSplit", "ImagePreprocessing", "InferenceBackbone",
           "LocalResponseNormalization", "NonMaxSuppression", "ScaledResidual"]
