"""Building blocks shared by the families: each a short function on Keras tensors.

Blocks take a ``name`` prefix and name their layers from it, so a network's layer
names are stable and meaningful (``conv2_block1_1_conv``) and its features can be
tapped by name. A block used by one family only lives in that family's file; one
used by several lives here, one module per kind of block.
"""

from kvision.blocks.conv import activation_layer, conv_bn_act
from kvision.blocks.se import squeeze_excite
from kvision.layers import LocalResponseNormalization

__all__ = ["LocalResponseNormalization", "activation_layer", "conv_bn_act",
           "squeeze_excite"]
