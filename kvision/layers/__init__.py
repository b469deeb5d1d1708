"""Custom layers: each a registered, serializable ``keras.Layer`` (no ``Lambda``)."""

from kvision.layers.normalization import LocalResponseNormalization

__all__ = ["LocalResponseNormalization"]
