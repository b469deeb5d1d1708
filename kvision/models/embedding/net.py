"""``embedding_net``: the registered embedding network that ``kvision train`` trains.

:func:`kvision.embedding.build` on a zoo backbone, under a registry name so the
command line, the contract tests and the profile reach it like any other network:
raw pixels ``"images"`` -> L2-normalized ``"embeddings"`` ``(N, dim)``.
"""

from __future__ import annotations

# The module, not its names: kvision.embedding imports kvision.models (the
# backbones), which imports this module while kvision.embedding is half-loaded.
import kvision.embedding as embedding_lib
from kvision.registry import register

PAPER = "FaceNet: A Unified Embedding for Face Recognition and Clustering"
BACKBONE = "resnet18"
DEFAULT_SIZE = 32  # the glyph identities' size, kvision train's default data


@register("embedding_net", task="embedding", family="embedding", year=2015, paper=PAPER,
          key_idea="a backbone mapped to a unit vector where one identity's images lie "
                   "close and different identities far, trained by triplets",
          default_size=DEFAULT_SIZE, min_size=32, default_classes=128,
          num_params=11_251_776,
          params_source="counted: ResNet-18 without its top (11,186,112 with BatchNorm "
                        "statistics) and the Dense 512 -> 128 (65,664)")
def EmbeddingNet(backbone=BACKBONE, dim=128, normalize=True, input_shape=None,
                 backbone_weights=None, trainable_backbone=True, name="embedding_net"):
    """An embedding network: ``backbone`` (default ResNet-18), average pooling, a
    Dense to ``dim`` and, with ``normalize``, unit length
    (:func:`kvision.embedding.build`). ``input_shape`` defaults to 32x32x3."""
    if input_shape is None:
        input_shape = (DEFAULT_SIZE, DEFAULT_SIZE, 3)
    return embedding_lib.build(backbone, dim=dim, normalize=normalize,
                               input_shape=input_shape, backbone_weights=backbone_weights,
                               trainable_backbone=trainable_backbone, name=name)
