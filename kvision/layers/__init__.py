"""Custom layers: each a registered, serializable ``keras.Layer`` (no ``Lambda``)."""

from kvision.layers.normalization import LocalResponseNormalization
from kvision.layers.residual import ScaledResidual
from kvision.layers.shuffle import ChannelShuffle, ChannelSplit

__all__ = ["ChannelShuffle", "ChannelSplit", "LocalResponseNormalization", "ScaledResidual"]
