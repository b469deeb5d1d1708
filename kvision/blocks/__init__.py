"""Building blocks shared by the families: each a short function on Keras tensors.

Blocks take a ``name`` prefix and name their layers from it, so a network's layer
names are stable and meaningful (``conv2_block1_1_conv``) and its features can be
tapped by name. A block used by one family only lives in that family's file; one
used by several lives here, one module per kind of block:

- ``conv``: conv -> BatchNorm -> activation
- ``residual``: basic, bottleneck (groups, width, SE) and pre-activation blocks
- ``inception``: multi-branch modules from branch lists
- ``dense``: dense blocks and transitions
- ``mobile``: depthwise-separable and inverted-residual (MBConv) blocks
- ``se``: squeeze-and-excitation
- ``pooling``: ceil-mode max pooling
"""

from kvision.blocks.conv import activation_layer, conv_bn_act
from kvision.blocks.dense import dense_block, transition_block
from kvision.blocks.inception import inception_module
from kvision.blocks.mobile import depthwise_separable, inverted_residual
from kvision.blocks.pooling import max_pool_ceil
from kvision.blocks.residual import (basic_block, bottleneck_block,
                                     preact_bottleneck_block, residual_stage)
from kvision.blocks.se import squeeze_excite
from kvision.layers import LocalResponseNormalization

__all__ = ["LocalResponseNormalization", "activation_layer", "basic_block",
           "bottleneck_block", "conv_bn_act", "dense_block", "depthwise_separable",
           "inception_module", "inverted_residual", "max_pool_ceil",
           "preact_bottleneck_block", "residual_stage", "squeeze_excite",
           "transition_block"]
